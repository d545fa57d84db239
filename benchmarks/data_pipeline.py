"""Data pipeline throughput per stage on one core, with datasketch's MinHashLSH side by side.

    python -m benchmarks.data_pipeline --docs 3000
    python -m benchmarks.data_pipeline --real-only [--real demo/raw]

``--real`` (default: the demo's raw corpus when it exists, else Python's own documentation from
pydoc_data) times the filter stage the way build_source.py runs it -- clean, Gopher quality,
Gopher repetition and MinHash signatures, one document after another through each step -- on
real English text, in MB of input per second on one core, with the compiled kernels
(data_tools/_native.c) beside the numpy/Python code they replace, and whether both keep the same
documents.

Generates an English-like corpus with planted near-duplicates (contiguous edits of 0-10% of the
words), then times each stage in this one process and prints docs/s and MB/s. For dedup, both
implementations get the same documents, the same word 5-gram shingles and the same bands x rows;
their candidate-pair recall is measured against exact Jaccard >= 0.8 ground truth.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from data_tools import dedup as dd
from data_tools import native
from data_tools.clean import clean
from data_tools.document import Document, ErrorLog, Stats
from data_tools.filters import C4Filter, FineWebFilter, GopherQuality, GopherRepetition, LanguageFilter
from data_tools.readers import read_file

WORDS = ("the be to of and a in that have it for not on with he as you do at this but his by from they we "
         "say her she or an will my one all would there their what so up out if about who get which go me "
         "river mountain garden village teacher market window history science music letter morning winter "
         "island kitchen forest doctor engine bridge harbor library painter farmer soldier student valley "
         "carried walked opened studied painted built visited noticed remembered followed answered").split()


def corpus(n, seed=0):
    rng = np.random.default_rng(seed)
    vocab = np.array(WORDS + [f"name{i}" for i in range(3000)])
    docs = []
    for i in range(n):
        if i >= 10 and rng.random() < 0.2:  # planted near-duplicate of an earlier document
            w = docs[int(rng.integers(0, i))].split(" ")
            k = int(len(w) * rng.uniform(0, 0.1))
            s = int(rng.integers(0, len(w) - k))
            w[s:s + k] = list(rng.choice(vocab, k))
            docs.append(" ".join(w))
            continue
        sents = [" ".join(rng.choice(vocab, int(rng.integers(8, 16)))).capitalize() + "."
                 for _ in range(int(rng.integers(10, 30)))]
        docs.append("\n".join(" ".join(sents[j:j + 4]) for j in range(0, len(sents), 4)))
    return docs


def rate(name, t, docs, nbytes, rows):
    rows.append((name, t, docs / t, nbytes / 1e6 / t))


def real_texts(where: str | None) -> tuple[list[Document], str]:
    """Documents of real English text and what they are."""
    root = Path(where) if where else Path(__file__).resolve().parents[1] / "demo" / "raw"
    if root.is_dir():
        from data_tools.readers import list_inputs

        docs = []
        for f in list_inputs([str(root)]):
            if not f.name.startswith("."):
                docs += list(read_file(f, f.parent.name, ErrorLog()))
        return docs, f"{root} ({len(docs)} documents of the demo's raw sources)"
    from pydoc_data.topics import topics

    docs = [Document(t, k) for k, t in sorted(topics.items())]
    return docs, f"pydoc_data help topics ({len(docs)} documents; no {root})"


def filter_stage(docs: list[Document], cfg) -> dict:
    """Seconds per step over ``docs`` (fresh copies), the whole stage's MB/s, and the kept ids."""
    from data_tools.clean import clean

    nbytes = sum(len(d.text.encode()) for d in docs)
    quality = GopherQuality()
    quality.check(Document("warm up", "warm-up"))  # compiles its letter class once per process
    steps = [("clean", lambda it, st: clean(it, st)), ("gopher_quality", quality),
             ("gopher_repetition", GopherRepetition()), ("minhash_signatures", dd.SignatureStep(cfg))]
    it = iter([Document(d.text, d.id) for d in docs])
    times = {}
    for name, step in steps:
        t0 = time.perf_counter()
        out = list(step(it, Stats()))
        times[name] = time.perf_counter() - t0
        it = iter(out)
    total = sum(times.values())
    return {"bytes": nbytes, "times": times, "total": total, "kept": [d.id for d in out]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--bands", type=int, default=20)
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--real", help="a directory of raw inputs (default: demo/raw, else pydoc_data)")
    ap.add_argument("--real-only", action="store_true", help="only the filter stage on real text")
    a = ap.parse_args()
    docs, what = real_texts(a.real)
    cfg = dd.DedupConfig(bands=a.bands, rows=a.rows)
    # the same documents through the compiled kernels and, as the baseline, the numpy/Python code
    runs = {}
    kernels = native.kernels
    for label, k in (("numpy/Python", None), ("compiled", kernels)):
        if label == "compiled" and kernels is None:
            continue
        native.kernels = k
        runs[label] = filter_stage(docs, cfg)
    native.kernels = kernels
    base = runs["numpy/Python"]
    mb = base["bytes"] / 1e6
    print(f"filter stage on real text: {what}, {mb:.2f} MB, one core, MB/s of input")
    print(f"  {'step':<22}" + "".join(f"{label:>16}" for label in runs))
    for name in base["times"]:
        print(f"  {name:<22}" + "".join(f"{mb / r['times'][name]:16.2f}" for r in runs.values()))
    print(f"  {'whole stage':<22}" + "".join(f"{mb / r['total']:16.2f}" for r in runs.values()))
    print(f"  {'seconds':<22}" + "".join(f"{r['total']:16.3f}" for r in runs.values()))
    print(f"  {'documents kept':<22}" + "".join(f"{len(r['kept']):16d}" for r in runs.values()))
    if "compiled" in runs:
        same = runs["compiled"]["kept"] == base["kept"]
        print(f"  same kept ids: {same}; speed-up {base['total'] / runs['compiled']['total']:.2f}x")
    else:
        print("  (compiled kernels not built: `pip install -e .` with a C compiler builds them)")
    if a.real_only:
        return
    texts = corpus(a.docs)
    nbytes = sum(len(t.encode()) for t in texts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "c.jsonl"
        p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        t0 = time.perf_counter()
        docs = list(read_file(p, "bench", ErrorLog()))
        rate("read jsonl", time.perf_counter() - t0, len(docs), nbytes, rows)
    t0 = time.perf_counter()
    docs = list(clean(iter(docs), Stats()))
    rate("clean", time.perf_counter() - t0, len(docs), nbytes, rows)
    for f in (LanguageFilter(), GopherQuality(), GopherRepetition(), C4Filter(), FineWebFilter()):
        d2 = [Document(d.text, d.id) for d in docs]
        if f.name == "language":
            f.check(d2[0])  # model load is not throughput
        t0 = time.perf_counter()
        list(f(iter(d2), Stats()))
        rate(f.name, time.perf_counter() - t0, len(d2), nbytes, rows)

    from data_tools.decontam import DecontamConfig, Decontaminate
    step = Decontaminate(DecontamConfig(), texts=[texts[i] for i in range(0, len(texts), 50)])
    d2 = [Document(d.text, d.id) for d in docs]
    t0 = time.perf_counter()
    list(step(iter(d2), Stats()))
    rate("decontaminate (13-grams)", time.perf_counter() - t0, len(d2), nbytes, rows)

    import sentencepiece as spm

    from data_tools.tokenizer import TokenizerConfig, train
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = train(iter(texts), Path(tmp) / "tok.model", TokenizerConfig(vocab_size=600))
        rate("tokenizer training (vocab 600)", time.perf_counter() - t0, len(texts), nbytes, rows)
        sp = spm.SentencePieceProcessor(model_file=str(model))
        t0 = time.perf_counter()
        for i in range(0, len(texts), 64):
            sp.encode(texts[i:i + 64])
        rate("tokenize (sentencepiece encode)", time.perf_counter() - t0, len(texts), nbytes, rows)

    cfg = dd.DedupConfig(bands=a.bands, rows=a.rows)
    # ours: shingles -> signatures -> band keys -> buckets
    t0 = time.perf_counter()
    step = dd.SignatureStep(cfg)
    list(step((Document(t, str(i)) for i, t in enumerate(texts)), Stats()))
    t_sig = time.perf_counter() - t0
    t0 = time.perf_counter()
    gids = np.arange(len(texts), dtype=np.int64)
    bands, keys, g = dd.table_keys(step.table, gids, dd.DedupConfig(bands=a.bands, rows=a.rows, exact=False))
    cand = {tuple(e) for e in dd.bucket_edges(keys, g, bands).tolist()}
    t_lsh = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = dd.dedup_texts(texts, cfg)
    t_all = time.perf_counter() - t0

    # datasketch: same shingles (word 5-grams of the same normalised words), same b x r
    from datasketch import MinHash, MinHashLSH
    t0 = time.perf_counter()
    mhs = []
    for t in texts:
        w = dd.words(t)
        m = MinHash(num_perm=cfg.num_perm)
        m.update_batch([" ".join(w[i:i + 5]).encode() for i in range(max(1, len(w) - 4))])
        mhs.append(m)
    t_ds_sig = time.perf_counter() - t0
    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(a.bands, a.rows))
    ds_cand = set()
    for i, m in enumerate(mhs):
        for j in lsh.query(m):
            ds_cand.add((j, i))
        lsh.insert(i, m)
    t_ds_lsh = time.perf_counter() - t0

    # ground truth: exact Jaccard >= 0.8 over all pairs (shingle sets)
    sh = [dd.shingle_hashes(t) for t in texts]
    sets = [set(s.tolist()) for s in sh]
    truth = set()
    for i, j in itertools.combinations(range(len(texts)), 2):
        # cheap size bound first: J <= min/max
        if min(len(sh[i]), len(sh[j])) >= 0.8 * max(len(sh[i]), len(sh[j])):
            inter = len(sets[i] & sets[j])
            if inter / (len(sets[i]) + len(sets[j]) - inter) >= 0.8:
                truth.add((i, j))
    def closure(pairs):  # all pairs inside the connected components of ``pairs``
        groups = dd.clusters(np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2))
        return {tuple(p) for grp in groups for p in itertools.combinations(sorted(grp.tolist()), 2)}


    def recall(c):
        return len(c & truth) / max(len(truth), 1)

    found = closure({tuple(e) for e in res["edges"].tolist()})
    edge_prec = np.mean([tuple(sorted(e)) in truth for e in res["edges"].tolist()]) if len(res["edges"]) else 1.0
    cand, ds_cand = closure(cand), closure(ds_cand)

    rate("minhash signatures (ours)", t_sig, len(texts), nbytes, rows)
    rate("minhash signatures (datasketch)", t_ds_sig, len(texts), nbytes, rows)
    rate("lsh buckets (ours)", t_lsh, len(texts), nbytes, rows)
    rate("lsh buckets (datasketch)", t_ds_lsh, len(texts), nbytes, rows)
    rate("dedup all passes incl. exact verify (ours)", t_all, len(texts), nbytes, rows)
    print(f"corpus: {len(texts)} documents, {nbytes / 1e6:.2f} MB, {len(truth)} true pairs at Jaccard >= 0.8, "
          f"bands x rows = {a.bands} x {a.rows}, 1 process")
    print(f"{'stage':<44}{'s':>8}{'docs/s':>11}{'MB/s':>8}")
    for name, t, dps, mbs in rows:
        print(f"{name:<44}{t:>8.3f}{dps:>11.0f}{mbs:>8.2f}")
    print(f"candidate recall (pairs within candidate clusters): ours {recall(cand):.3f}, "
          f"datasketch {recall(ds_cand):.3f}")
    print(f"after exact verification (ours): recall {recall(found):.3f}, precision of confirmed edges "
          f"{edge_prec:.3f}, {len(res['clusters'])} clusters, {len(res['removed'])} removed")
    print(f"speed-up signatures+LSH vs datasketch: {(t_ds_sig + t_ds_lsh) / (t_sig + t_lsh):.1f}x")


if __name__ == "__main__":
    main()
