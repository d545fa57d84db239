"""Dedup: planted near-duplicates found with recall and precision >= 0.95 against exact Jaccard
ground truth at 0.8; exact duplicates; cross-source removal; 13-gram decontamination."""
import itertools

import numpy as np

from data_tools.decontam import DecontamConfig, Decontaminate
from data_tools.dedup import DedupConfig, MinHasher, dedup_texts, shingle_hashes
from data_tools.document import Document, Stats


def jaccard(a, b):
    sa, sb = (shingle_hashes(a), shingle_hashes(b)) if isinstance(a, str) else (a, b)
    inter = len(np.intersect1d(sa, sb))
    return inter / (len(sa) + len(sb) - inter)


def edit(rng, words, frac, spans):
    """Replace about ``frac`` of the words, in ``spans`` contiguous runs."""
    w = list(words)
    per = max(1, int(len(w) * frac / spans))
    for _ in range(spans):
        s = int(rng.integers(0, len(w) - per))
        w[s:s + per] = [f"edit{int(rng.integers(1e9))}" for _ in range(per)]
    return w


def planted_corpus(seed=0, n_base=150, n_near=100, n_far=40, n_words=300):
    rng = np.random.default_rng(seed)
    vocab = [f"v{i}" for i in range(5000)]
    base = [list(rng.choice(vocab, n_words)) for _ in range(n_base)]
    docs = [" ".join(b) for b in base]
    for i in range(n_near):  # ~10% of words edited (0-10%, in 1-2 spans)
        docs.append(" ".join(edit(rng, base[i], rng.uniform(0.0, 0.1), int(rng.integers(1, 3)))))
    for i in range(n_far):   # decoys: heavy edits, far below the threshold
        docs.append(" ".join(edit(rng, base[n_near + i], 0.35, 5)))
    return docs


def test_minhash_estimates_jaccard():
    docs = planted_corpus(n_base=20, n_near=20, n_far=0)
    h = MinHasher(DedupConfig(bands=32, rows=8))
    sig = h.signatures([shingle_hashes(d) for d in docs])
    errs = [abs(np.mean(sig[i] == sig[20 + i]) - jaccard(docs[i], docs[20 + i])) for i in range(20)]
    assert np.mean(errs) < 0.05


def test_near_duplicate_precision_recall():
    docs = planted_corpus()
    sh = [shingle_hashes(d) for d in docs]
    truth = {(i, j) for i, j in itertools.combinations(range(len(docs)), 2)
             if jaccard(sh[i], sh[j]) >= 0.8}
    assert len(truth) >= 60  # the planted edits put most copies above 0.8
    res = dedup_texts(docs, DedupConfig(threshold=0.8))
    found = {tuple(p) for g in res["clusters"] for p in itertools.combinations(sorted(g.tolist()), 2)}
    tp = len(found & truth)
    recall, precision = tp / len(truth), tp / max(len(found), 1)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    # one document kept per cluster: the first (the original)
    assert all(int(g[0]) < 150 for g in res["clusters"])
    assert len(res["removed"]) == sum(len(g) - 1 for g in res["clusters"])


def test_exact_duplicates_normalised():
    a = "The quick brown fox jumps over the lazy dog."
    res = dedup_texts([a, "the  QUICK brown fox, jumps over the lazy dog", "something else entirely here"],
                      DedupConfig(minhash=False))
    assert res["removed"].tolist() == [1]


def test_cross_source_removal():
    docs = planted_corpus(n_base=40, n_near=0, n_far=0)
    webtext = [docs[3], docs[7] + " extra", "unrelated words " * 50]
    cc = docs + [docs[10]]  # docs[10] twice inside cc too
    res = dedup_texts(cc, DedupConfig(), references=webtext)
    assert res["cross"].tolist() == [3, 7]
    assert res["removed"].tolist() == [3, 7, 40]


def test_decontamination_gpt3_rules():
    rng = np.random.default_rng(1)

    def filler(n):
        return " ".join(f"f{int(x)}" for x in rng.integers(0, 10_000, n))

    ev = "what is the name of the longest river that flows through the city of paris in france"
    gram13 = " ".join(ev.split()[:13])
    left, right = filler(150), filler(150)
    text = left + " " + gram13.upper() + ", " + right
    step = Decontaminate(DecontamConfig(), texts=[ev])
    stats = Stats()
    out = list(step([Document(text, "d")], stats))
    assert len(out) == 1 and "longest" not in out[0].text.lower()
    s = text.upper().index(gram13.upper())
    e = s + len(gram13)
    assert out[0].text == text[:s - 200].strip() + "\n" + text[e + 200:].strip()
    assert stats.counters["decontam"]["kept:cut"] == 1
    # pieces under 200 characters are dropped
    short = filler(20) + " " + gram13 + " " + filler(150)
    out = list(step([Document(short, "s")], stats))
    assert out[0].text == short[short.index(gram13) + len(gram13) + 200:].strip()
    # a document split into more than 10 pieces is dropped
    many = (" " + gram13 + " ").join(filler(80) for _ in range(12))
    assert list(step([Document(many, "m")], stats)) == []
    assert stats.counters["decontam"]["dropped:too_many_pieces"] == 1
    clean = filler(300)
    assert list(step([Document(clean, "c")], stats))[0].text == clean
