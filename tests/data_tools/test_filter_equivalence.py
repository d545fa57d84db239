"""The vectorised Gopher repetition rules decide exactly as the straightforward implementation
they replaced (kept below as the reference) on real English prose: Python's own documentation
(pydoc_data's help topics), cut into documents, and the same documents with repeated spans,
lines and paragraphs planted to trip each rule."""
import random
import re
from collections import Counter

import pytest

from data_tools.document import Document
from data_tools.filters import GopherRepetition, GopherRepetitionConfig
from data_tools.filters.base import duplicate_stats

_PARAS = re.compile(r"\n{2,}")


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


def test_vectorised_repetition_rules_decide_as_before():
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
def test_tiny_and_edge_documents(words, reason):
    text = " ".join(words)
    assert GopherRepetition().check(Document(text, "d")) == reference_repetition(text) == reason
