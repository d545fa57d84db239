"""Gopher quality and repetition rules (Rae et al. 2021, Appendix A; thresholds as published)."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from data_tools import native
from data_tools.document import Document
from data_tools.filters.base import Filter, duplicate_stats

_MIX = np.uint64(0x9E3779B97F4A7C15)

_BULLETS = ("\u2022", "-", "*", "\u2023", "\u25e6", "\u2043", "\u2219", "\u25cf", "\u25aa")
_PUNCT_STRIP = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u2026\u201c\u201d\u2018\u2019"


@dataclass
class GopherQualityConfig:
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1        # '#' and '...' per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")


def _class_of(pred) -> str:
    """A regex character class (without brackets) of every code point for which ``pred`` holds."""
    ranges, start = [], None
    for cp in range(0x110000 + 1):
        ok = cp < 0x110000 and not 0xD800 <= cp < 0xE000 and pred(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            ranges.append(re.escape(chr(start)) + ("-" + re.escape(chr(cp - 1)) if cp - 1 > start else ""))
            start = None
    return "".join(ranges)


_WORD_CLASSES = None  # (pure punctuation, no letter) word patterns, compiled on first use
_P = "".join(map(re.escape, _PUNCT_STRIP))
# words are joined by single spaces; a match is a whole word: no non-space character either side
_WHOLE = "(?<![^ ]){}(?![^ ])"


_ASCII_NO_LETTER = re.compile(_WHOLE.format("[^ A-Za-z]+"))


def _word_classes():
    """(pure punctuation, no letter at all) whole-word patterns; the second for any text (every
    code point str.isalpha accepts, compiled once: slow to build, then as fast as a small class)."""
    global _WORD_CLASSES
    if _WORD_CLASSES is None:
        _WORD_CLASSES = (re.compile(_WHOLE.format(f"[{_P}]+")),
                         re.compile(_WHOLE.format("[^ " + _class_of(str.isalpha) + "]+")))
    return _WORD_CLASSES


class GopherQuality(Filter):
    """Gopher's document quality heuristics. The word-level counts come from one pass of the
    compiled kernel over the text, or, without it, from each distinct word once (``Counter``
    over ``text.split()``)."""
    name = "gopher_quality"

    def __init__(self, cfg: GopherQualityConfig = GopherQualityConfig()):
        self.cfg = cfg
        self.stop = set(cfg.stop_words)
        # a stop word with punctuation stripped from its ends, in any case
        self._stop = re.compile(_WHOLE.format(f"[{_P}]*({'|'.join(map(re.escape, cfg.stop_words))})[{_P}]*"))
        # the compiled kernel strips a word's punctuation ends before comparing: the same as the
        # pattern above for stop words that neither start nor end with punctuation nor hold
        # whitespace (the pattern could match across two joined words), each counted once
        stop = tuple(dict.fromkeys(cfg.stop_words))
        ok = all(w and w[0] not in _PUNCT_STRIP and w[-1] not in _PUNCT_STRIP and len(w) <= 64
                 and not any(ch.isspace() for ch in w) for w in stop) and len(stop) <= 64
        self._native_stop = stop if ok else None

    def word_counts(self, doc: Document) -> tuple[int, int, int, int, int, int]:
        """(words, their characters, pure-punctuation words, their characters, words without a
        letter, distinct stop words found): everything the word-level rules compare."""
        kernels = native.kernels
        if kernels is not None and self._native_stop:
            return kernels.gopher_words(doc.text, _PUNCT_STRIP, self._native_stop)
        words = doc.split_words()
        counts = Counter(words)
        # each rule over the distinct words at once: one regex scan of them joined by spaces
        punct_only, no_letter_word = _word_classes()
        joined = " ".join(counts)
        symbol_words = symbol_chars = no_letter = 0
        for w in punct_only.findall(joined):  # pure punctuation: not a word for Gopher's counts
            symbol_words += counts[w]
            symbol_chars += counts[w] * len(w)
        for w in (_ASCII_NO_LETTER if joined.isascii() else no_letter_word).findall(joined):
            no_letter += counts[w]
        found = set(self._stop.findall(joined.lower()))
        return len(words), sum(map(len, words)), symbol_words, symbol_chars, no_letter, len(found)

    def check(self, doc: Document) -> str | None:
        c = self.cfg
        text = doc.text
        n_words, chars, symbol_words, symbol_chars, no_letter, n_found = self.word_counts(doc)
        n = n_words - symbol_words
        if n < c.min_words:
            return "few_words"
        if n > c.max_words:
            return "many_words"
        mean_len = (chars - symbol_chars) / n
        if not c.min_mean_word_length <= mean_len <= c.max_mean_word_length:
            return "mean_word_length"
        symbols = text.count("#") + text.count("...") + text.count("\u2026")
        if symbols / n > c.max_symbol_word_ratio:
            return "symbol_word_ratio"
        lines = [l for l in text.split("\n") if l.strip()]
        if lines:
            if sum(l.lstrip().startswith(_BULLETS) for l in lines) / len(lines) > c.max_bullet_lines_ratio:
                return "bullet_lines"
            if sum(l.rstrip().endswith(("...", "\u2026")) for l in lines) / len(lines) > c.max_ellipsis_lines_ratio:
                return "ellipsis_lines"
        if (n_words - no_letter) / n_words < c.min_alpha_words_ratio:
            return "alpha_words"
        if n_found < c.min_stop_words:
            return "stop_words"
        return None


@dataclass
class GopherRepetitionConfig:
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_ngram_char_frac: dict = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_ngram_char_frac: dict = field(default_factory=lambda: {
        5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})


_PARAS = re.compile(r"\n{2,}")


class GopherRepetition(Filter):
    """Gopher's repetition rules: duplicate lines/paragraphs and repeated n-grams, counted by the
    compiled kernels or, without them, by the numpy/Python code below."""
    name = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig = GopherRepetitionConfig()):
        self.cfg = cfg

    @staticmethod
    def duplicate_counts(text: str) -> tuple[int, int, int, int, int, int]:
        """(paragraphs, paragraphs repeating an earlier one, characters in those, and the same
        three for lines); paragraphs and lines stripped, the empty ones left out."""
        if native.kernels is not None:
            return native.kernels.gopher_duplicates(text)
        paras = [p.strip() for p in _PARAS.split(text) if p.strip()]
        lines = [l.strip() for l in text.split("\n") if l.strip()]
        return (len(paras), *duplicate_stats(paras), len(lines), *duplicate_stats(lines))

    def check(self, doc: Document) -> str | None:
        c = self.cfg
        text = doc.text
        n_paras, n, chars, n_lines, n_line, line_chars = self.duplicate_counts(text)
        if n_paras and n / n_paras > c.dup_para_frac:
            return "dup_para_frac"
        if chars / max(len(text), 1) > c.dup_para_char_frac:
            return "dup_para_char_frac"
        if n_lines and n_line / n_lines > c.dup_line_frac:
            return "dup_line_frac"
        if line_chars / max(len(text), 1) > c.dup_line_char_frac:
            return "dup_line_char_frac"
        kernels = native.kernels
        rules = self._rules()
        if kernels is not None and all(1 <= k <= 64 for k, _ in rules[0] + rules[1]):
            return kernels.gopher_ngrams(text, *rules)
        words = doc.split_words()
        if not words:
            return None
        return self._ngram_rules(words)

    def _rules(self) -> tuple[tuple, tuple]:
        """The (k, threshold) pairs of the top and duplicate n-gram rules."""
        return tuple((int(k), float(v)) for k, v in sorted(self.cfg.top_ngram_char_frac.items())), \
            tuple((int(k), float(v)) for k, v in sorted(self.cfg.dup_ngram_char_frac.items()))

    def _ngram_rules(self, words: list[str]) -> str | None:
        """The n-gram rules over integer keys: each word gets an id, each k-gram a 64-bit key
        built from the (k-1)-gram's (numpy, no per-gram Python objects)."""
        c = self.cfg
        index: dict[str, int] = {}
        # a word's id is the position of its first occurrence (map keeps the loop in C)
        ids = np.fromiter(map(index.setdefault, words, range(len(words))), dtype=np.uint64, count=len(words))
        lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        total = int(lens.sum())
        if not total:
            return None
        cum = np.concatenate(([0], np.cumsum(lens)))
        top = {int(k): v for k, v in c.top_ngram_char_frac.items()}
        dup = sorted((int(k), v) for k, v in c.dup_ngram_char_frac.items())
        need = max(list(top) + [k for k, _ in dup] + [1])
        n = len(words)
        keys = ids.copy()
        dup_from = 0
        for k in range(2, min(need, n) + 1):
            with np.errstate(over="ignore"):
                keys = (keys[:-1] ^ (keys[:-1] >> np.uint64(31))) * _MIX + ids[k - 1:] + np.uint64(1)
            if k in top:
                ordered = np.sort(keys)
                starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
                counts = np.diff(np.append(starts, len(ordered)))
                best = int(counts.max())
                # the rule needs the first-seen of the most frequent grams only when even the
                # longest k-gram of the text repeated that often could pass the threshold
                if best > 1 and best * int((cum[k:] - cum[:-k]).max()) / total > top[k]:
                    tied = ordered[starts[counts == best]]
                    # Counter.most_common: of the tied grams, the one seen first
                    i = int(np.argmax(keys == tied[0])) if len(tied) == 1 else \
                        int(np.flatnonzero(np.isin(keys, tied))[0])
                    if (cum[i + k] - cum[i]) * best / total > top[k]:
                        return f"top_{k}gram"
            while dup_from < len(dup) and dup[dup_from][0] < k:
                dup_from += 1
            if dup_from < len(dup) and dup[dup_from][0] == k:
                thr = dup[dup_from][1]
                frac = _repeated_fraction(keys, k, lens) / total
                if frac > thr:
                    return f"dup_{k}gram"
                # words under a repeated longer n-gram are under repeated k-grams too, so the longer
                # fractions can only be smaller: stop once none of the remaining thresholds is
                # reachable and no top n-gram rule is left
                if all(frac <= t for kk, t in dup[dup_from + 1:] if kk > k) and all(kk <= k for kk in top):
                    break
        return None


def _repeated_fraction(keys: np.ndarray, k: int, lens: np.ndarray) -> int:
    """Characters in the words under a k-gram (``keys``: one per start position) that occurs more
    than once; a word counts once under overlapping repeats."""
    # the positions whose k-gram occurs more than once: equal neighbours once sorted
    order = np.argsort(keys)
    same = keys[order]
    same = same[1:] == same[:-1]
    repeated = np.zeros(len(keys), dtype=bool)
    repeated[1:] = same
    repeated[:-1] |= same
    mask = np.empty(len(keys), dtype=bool)
    mask[order] = repeated
    starts = np.flatnonzero(mask)
    n = len(lens)
    edge = np.zeros(n + 1, dtype=np.int64)
    edge[starts] += 1  # starts are distinct positions
    edge[starts + k] -= 1
    covered = np.cumsum(edge[:n]) > 0
    return int(lens[covered].sum())
