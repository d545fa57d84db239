"""The faster cleaning step and Gopher rules decide exactly as the straightforward code they
replaced (kept below as the references): on real English prose -- Python's own documentation
(pydoc_data's help topics) cut into documents -- on the same documents with repeated spans, lines
and paragraphs planted to trip each repetition rule, and on documents mutated with Unicode
whitespace, punctuation-only words, letters outside ASCII, digits and symbols. The Gopher rules
are checked through the compiled kernels (when built) and through the numpy/Python code."""
import random
import re
from collections import Counter

import pytest

from data_tools import native
from data_tools.clean import _BLANKS, _CONTROL, clean_text
from data_tools.document import Document
from data_tools.filters import GopherQuality, GopherQualityConfig, GopherRepetition, GopherRepetitionConfig
from data_tools.filters.base import duplicate_stats

_PARAS = re.compile(r"\n{2,}")


@pytest.fixture(params=["compiled", "python"])
def filter_path(request, monkeypatch):
    """Runs a test through the compiled kernels, then through the numpy/Python code."""
    if request.param == "python":
        monkeypatch.setattr(native, "kernels", None)
    elif native.kernels is None:
        pytest.skip("compiled kernels not built")
    return request.param


def reference_repetition(text: str, c: GopherRepetitionConfig = GopherRepetitionConfig()) -> str | None:
    paras = [p.strip() for p in _PARAS.split(text) if p.strip()]
    n, chars = duplicate_stats(paras)
    if paras and n / len(paras) > c.dup_para_frac:
        return "dup_para_frac"
    if chars / max(len(text), 1) > c.dup_para_char_frac:
        return "dup_para_char_frac"
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
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
        if len(words) < k:
            continue
        grams = Counter(zip(*(words[i:] for i in range(k))))
        gram, count = grams.most_common(1)[0]
        if count > 1 and sum(len(w) for w in gram) * count / total > thr:
            return f"top_{k}gram"
    for k, thr in sorted(c.dup_ngram_char_frac.items()):
        if len(words) < k:
            continue
        grams = list(zip(*(words[i:] for i in range(k))))
        counts = Counter(grams)
        covered = [False] * len(words)
        for i, g in enumerate(grams):
            if counts[g] > 1:
                covered[i:i + k] = [True] * k
        if sum(len(w) for w, m in zip(words, covered) if m) / total > thr:
            return f"dup_{k}gram"
    return None


_PUNCT_STRIP = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u2026\u201c\u201d\u2018\u2019"
_BULLETS = ("\u2022", "-", "*", "\u2023", "\u25e6", "\u2043", "\u2219", "\u25cf", "\u25aa")


def reference_quality(text: str, c: GopherQualityConfig = GopherQualityConfig()) -> str | None:
    words = text.split()
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
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if lines:
        if sum(ln.lstrip().startswith(_BULLETS) for ln in lines) / len(lines) > c.max_bullet_lines_ratio:
            return "bullet_lines"
        if sum(ln.rstrip().endswith(("...", "\u2026")) for ln in lines) / len(lines) > c.max_ellipsis_lines_ratio:
            return "ellipsis_lines"
    if sum(any(ch.isalpha() for ch in w) for w in words) / len(words) < c.min_alpha_words_ratio:
        return "alpha_words"
    found = {w.lower().strip(_PUNCT_STRIP) for w in words} & set(c.stop_words)
    if len(found) < c.min_stop_words:
        return "stop_words"
    return None


_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000\u202f\u205f]+")


def reference_whitespace(text: str) -> str:
    """The whitespace part of clean_text as it was: line by line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


ODD = ["\u00a0", "\u2003", "\u3000", "\x0b", "\x0c", "\x1c", "\x1f", "\u2028", "\u2029", "\x85", "\t", "\r",
       "\r\n", " \n ", "\n\n\n\n", "--", "...", "\u2026", "#", "'", "\u201c\u201d", "\u00b2", "\u2460", "\u00aa",
       "\u0130", "\u03a3", "\u4e2d\u6587", "\u00e9t\u00e9", "12345", "_", "\u2022 item", "THE", "'the'", "(and)",
       "\ufb01"]


def mutated(docs: list[str], rng: random.Random) -> list[str]:
    out = []
    for d in docs:
        w = d.split(" ")
        for _ in range(rng.randint(1, 30)):
            w.insert(rng.randrange(len(w) + 1), rng.choice(ODD))
        out.append(rng.choice([" ", "", "\n"]).join(w) if rng.random() < 0.3 else " ".join(w))
    return out


def test_quality_and_whitespace_decide_as_before(filter_path):
    docs = real_documents()
    corpus = docs + mutated(docs, random.Random(2)) + mutated(docs, random.Random(3))
    f = GopherQuality()
    reasons = Counter()
    for i, t in enumerate(corpus):
        want = reference_quality(t)
        assert f.check(Document(t, str(i))) == want, (i, t[:200])
        reasons[want] += 1
        if t.isascii():  # no ftfy step: the whole of clean_text is the whitespace part
            assert clean_text(t) == reference_whitespace(t), (i, t[:200])
        else:
            from data_tools.clean import CleanConfig

            assert clean_text(t, CleanConfig(fix_mojibake=False, nfc=False)) == reference_whitespace(t), (i, t[:200])
    assert reasons[None] > 100 and len(reasons) >= 4, reasons


def test_fix_text_equals_ftfy_on_what_it_fixes():
    """clean.fix_text hands ftfy only the lines it could change, and equals ftfy.fix_text on
    text with mojibake, HTML entities before and after a '<', terminal escapes, controls, curly
    quotes, ligatures, full-width letters and line separators."""
    import ftfy

    from data_tools.clean import fix_text

    rng = random.Random(4)
    extra = ["&amp;", "&lt;x&gt;", "<b>", "\x1b[31m", "Ã©", "â€™", "\x80", "\x00", "\x7f", "\uff21", "\u2019",
             "caf\u0065\u0301", "\ufb02", "\u00a0", "\u2028", "\r", "&#233;", "\ud7ff"]
    docs = [d.replace(" ", "\n", 3) for d in real_documents()[:200]]
    corpus = []
    for d in docs:
        w = d.split(" ")
        for _ in range(rng.randint(0, 12)):
            w.insert(rng.randrange(len(w) + 1), rng.choice(extra + ODD))
        corpus.append(" ".join(w))
    changed = 0
    for t in corpus:
        for norm in ("NFC", None):
            want = ftfy.fix_text(t, normalization=norm)
            assert fix_text(t, norm) == want, t[:300]
            changed += want != t
    assert changed > 100  # ftfy had work to do
    # a '<' on a line ftfy is not given still turns HTML unescaping off for the lines after it
    for t in ("x < y\nfish &amp; chips caf\u00e9", "fish &amp; chips caf\u00e9\nx < y\n&lt;b&gt; \u00e9"):
        assert fix_text(t) == ftfy.fix_text(t), t


def test_fix_text_equals_ftfy_on_a_line_longer_than_its_segments():
    """A line over ftfy's max_decode_length (a million characters) is fixed in pieces of that
    length, each piece on its own, as ftfy.fix_text walks it."""
    import ftfy

    from data_tools.clean import fix_text

    rng = random.Random(6)
    words = ["plain", "caf\u00e9", "\u2019s", "&amp;", "<b>", "\u00c3\u00a9", "na\u00efve", "x", "\ufb01ne", "\u2014"]
    line = " ".join(rng.choice(words) for _ in range(300_000))
    assert len(line) > ftfy.TextFixerConfig().max_decode_length
    text = "short \u2019 line &amp;\n" + line + "\nafter &amp; \u00e9\n"
    want = ftfy.fix_text(text)
    assert want != text and fix_text(text) == want


def test_words_through_bytes_equal_str_translate():
    """dedup.words' bytes paths give what str.lower/translate/split gives, ASCII or not."""
    import string

    from data_tools.dedup import words
    from megagpt.data.ngrams import PUNCT as _PUNCT

    rng = random.Random(5)
    alphabet = string.printable + "\x1c\x1d\x1e\x1f\x0b\x0c"
    docs = [d for d in real_documents() if d.isascii()]
    assert len(docs) > 200
    wide = "\u2018\u2019\u201c\u201d\u2026\u2013\u2014\u00ab\u00bb\u00bf\u00a1" \
        "\u3001\u3002\uff0c\uff01\uff1f\uff1a\uff1b" \
        "\u00e9\u00c9\u0130\u03a3\u4e2d\u6587\u2028\u00a0\u3000\U0001f600"
    odd = ["".join(rng.choice(alphabet + wide) for _ in range(400)) for _ in range(300)]
    for d in docs + mutated(docs, rng) + odd:
        assert words(d) == d.lower().translate(_PUNCT).split()


def real_documents() -> list[str]:
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        paras = [p for p in topics[name].split("\n\n") if p.strip()]
        for i in range(0, len(paras), 6):
            docs.append("\n\n".join(paras[i:i + 6]))
    return [d for d in docs if len(d.split()) >= 20]


def planted(docs: list[str], rng: random.Random) -> list[str]:
    out = []
    for d in docs:
        w = d.split(" ")
        k = rng.randint(2, 12)
        s = rng.randrange(max(1, len(w) - k))
        span = w[s:s + k]
        kind = rng.randrange(4)
        if kind == 0:  # one span repeated several times
            w[s:s] = span * rng.randint(1, 6)
            out.append(" ".join(w))
        elif kind == 1:  # a few spans each repeated once
            for _ in range(rng.randint(1, 8)):
                t = rng.randrange(len(w))
                w[t:t] = w[s:s + rng.randint(5, 12)]
            out.append(" ".join(w))
        elif kind == 2:  # repeated lines
            lines = d.split("\n")
            out.append("\n".join(lines + rng.sample(lines, min(len(lines), rng.randint(1, 4)))))
        else:  # a repeated paragraph
            paras = d.split("\n\n")
            out.append("\n\n".join(paras + [rng.choice(paras)]))
    return out


def test_vectorised_repetition_rules_decide_as_before(filter_path):
    docs = real_documents()
    assert len(docs) > 300
    corpus = docs + planted(docs, random.Random(0)) + planted(docs, random.Random(1))
    f = GopherRepetition()
    got = [f.check(Document(t, str(i))) for i, t in enumerate(corpus)]
    want = [reference_repetition(t) for t in corpus]
    assert got == want
    reasons = Counter(want)
    assert reasons[None] > 200 and len(reasons) >= 6, reasons  # keeps, and drops for many rules


@pytest.mark.parametrize("words,reason", [
    (["a"], None),
    (["x", "y"] * 3, "top_2gram"),
    # a 5-gram twice among 60 other words: 50 of 290 characters repeated (> 0.15), while its
    # 4-gram, 3-gram and 2-gram stay under their top-n-gram thresholds
    (["alpha", "bravo", "charl", "delta", "echos"] * 2 + [f"w{100 + i}" for i in range(60)], "dup_5gram"),
])
def test_tiny_and_edge_documents(words, reason, filter_path):
    text = " ".join(words)
    assert GopherRepetition().check(Document(text, "d")) == reference_repetition(text) == reason


def test_mojibake_trigger_is_in_every_is_bad_match():
    """clean.fix_text runs ftfy's is_bad only on segments holding a trigger character; every
    string is_bad flags holds one: fuzzed from the characters of ftfy's own mojibake classes,
    with real mojibake and with text around them."""
    from ftfy.badness import MOJIBAKE_CATEGORIES, is_bad

    from data_tools.clean import _mojibake_trigger

    trigger = _mojibake_trigger()
    assert not trigger.search("caf\u00e9 na\u00efve \u2014 \u00fcber")  # common accents do not trigger
    pool = sorted({c for v in MOJIBAKE_CATEGORIES.values() for c in re.sub(r"(.)-(.)", lambda m: "".join(
        map(chr, range(ord(m[1]), ord(m[2]) + 1))), v)} | set("abcxyzABC .,?!\n\u00c3\u00c2\u00e0\u00d8\u00d9"
                                                         "\u0412\u0413\u0420\u0421\u03b2\u0392\u0101\u221a\u2248\u201a"))
    rng = random.Random(9)
    flagged = 0
    for _ in range(20000):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(2, 6)))
        if is_bad(s):
            flagged += 1
            assert trigger.search(s), repr(s)
    for s in ["\u00c3\u00a9", "\u00e2\u20ac\u2122", "caf\u00c3\u00a9 au lait", "\u00c3 ", "\u0432\u0402"]:
        assert is_bad(s) and trigger.search(s), s
    assert flagged > 1000
