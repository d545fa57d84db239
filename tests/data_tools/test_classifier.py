"""GPT-3 quality classifier: separates curated from raw text; apply is seeded and Pareto-ruled."""
import json
import subprocess
import sys

from data_tools.classifier import ClassifierFilter, QualityClassifier
from data_tools.document import Document, Stats

SPAM = "buy cheap click here free casino win now best price login cart menu home".split()


def spam(rng):
    return " ".join(rng.choice(SPAM) for _ in range(60))


def test_train_and_apply(rng, make_doc):
    pos = [make_doc(rng) for _ in range(150)]
    neg = [spam(rng) for _ in range(150)]
    clf = QualityClassifier().train(pos, neg)
    sp, sn = clf.score([make_doc(rng) for _ in range(50)]), clf.score([spam(rng) for _ in range(50)])
    assert sp.min() > 0.8 and sn.max() < 0.2
    # Pareto rule: P(pareto(9) > 1 - s) is ~1 for s near 1 and ~0.002 for s near 0
    docs = [Document(make_doc(rng), f"g{i}") for i in range(50)] + [Document(spam(rng), f"b{i}") for i in range(50)]
    stats = Stats()
    kept = [d.id for d in ClassifierFilter(clf)(iter(docs), stats)]
    assert sum(k.startswith("g") for k in kept) >= 45 and sum(k.startswith("b") for k in kept) <= 5
    assert stats.counters["quality_classifier"]["dropped:low_quality"] >= 45
    again = [d.id for d in ClassifierFilter(clf)(iter(reversed(docs)), Stats())]
    assert sorted(again) == sorted(kept)  # seeded per document id, not per position


def test_cli_train_apply(tmp_path, rng, make_doc, jsonl_writer):
    jsonl_writer(tmp_path / "pos.jsonl", [{"text": make_doc(rng)} for _ in range(80)])
    jsonl_writer(tmp_path / "neg.jsonl", [{"text": spam(rng)} for _ in range(80)])
    jsonl_writer(tmp_path / "cc.jsonl",
                 [{"text": make_doc(rng)} for _ in range(20)] + [{"text": spam(rng)} for _ in range(20)])
    model = tmp_path / "q.npz"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "data_tools.quality_classifier", *args],
                              capture_output=True, text=True, check=True)

    run("train", "--positive", str(tmp_path / "pos.jsonl"), "--negative", str(tmp_path / "neg.jsonl"),
        "--model", str(model))
    out = run("apply", "--model", str(model), "--out", str(tmp_path / "kept.jsonl"), str(tmp_path / "cc.jsonl"))
    counts = json.loads(out.stdout)["counts"]
    assert counts["kept"] >= 18 and counts["dropped:low_quality"] >= 18
    kept = [json.loads(l) for l in open(tmp_path / "kept.jsonl")]
    assert all(k["meta"]["quality"] > 0.5 for k in kept[:18])
