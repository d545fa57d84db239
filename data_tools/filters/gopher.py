"""Gopher quality and repetition rules (Rae et al. 2021, Appendix A; thresholds as published)."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from data_tools.document import Document
from data_tools.filters.base import Filter, duplicate_stats

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


class GopherQuality(Filter):
    """Gopher's document quality heuristics."""
    name = "gopher_quality"

    def __init__(self, cfg: GopherQualityConfig = GopherQualityConfig()):
        self.cfg = cfg
        self.stop = set(cfg.stop_words)

    def check(self, doc: Document) -> str | None:
        c = self.cfg
        text = doc.text
        words = text.split()
        # words that are pure punctuation do not count as words (Gopher counts "non-symbol words")
        real = [w for w in words if w.strip(_PUNCT_STRIP)]
        n = len(real)
        if n < c.min_words:
            return "few_words"
        if n > c.max_words:
            return "many_words"
        mean_len = sum(len(w) for w in real) / n
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
        if sum(any(ch.isalpha() for ch in w) for w in words) / len(words) < c.min_alpha_words_ratio:
            return "alpha_words"
        found = {w.lower().strip(_PUNCT_STRIP) for w in words} & self.stop
        if len(found) < c.min_stop_words:
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
    """Gopher's repetition rules: duplicate lines/paragraphs and repeated n-grams."""
    name = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig = GopherRepetitionConfig()):
        self.cfg = cfg

    def check(self, doc: Document) -> str | None:
        c = self.cfg
        text = doc.text
        paras = [p.strip() for p in _PARAS.split(text) if p.strip()]
        n, chars = duplicate_stats(paras)
        if paras and n / len(paras) > c.dup_para_frac:
            return "dup_para_frac"
        if chars / max(len(text), 1) > c.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = [l.strip() for l in text.split("\n") if l.strip()]
        n, chars = duplicate_stats(lines)
        if lines and n / len(lines) > c.dup_line_frac:
            return "dup_line_frac"
        if chars / max(len(text), 1) > c.dup_line_char_frac:
            return "dup_line_char_frac"
        words = text.split()
        total = sum(len(w) for w in words)
        if not total:
            return None
        for k, thr in sorted(c.top_ngram_char_frac.items()):
            k = int(k)
            if len(words) < k:
                continue
            grams = Counter(zip(*(words[i:] for i in range(k))))
            gram, count = grams.most_common(1)[0]
            if count > 1 and sum(len(w) for w in gram) * count / total > thr:
                return f"top_{k}gram"
        dup = sorted((int(k), v) for k, v in c.dup_ngram_char_frac.items())
        for n, (k, thr) in enumerate(dup):
            if len(words) < k:
                continue
            grams = list(zip(*(words[i:] for i in range(k))))
            counts = Counter(grams)
            covered = bytearray(len(words))  # a word counts once even under overlapping repeats
            for i, g in enumerate(grams):
                if counts[g] > 1:
                    covered[i:i + k] = b"\x01" * k
            dup_chars = sum(len(w) for w, m in zip(words, covered) if m)
            if dup_chars / total > thr:
                return f"dup_{k}gram"
            # words under a repeated longer n-gram are under repeated k-grams too, so the longer
            # fractions can only be smaller: stop once none of the remaining thresholds is reachable
            if all(dup_chars / total <= t for kk, t in dup[n + 1:] if kk > k):
                break
        return None
