"""GPT-3's quality classifier from the command line.

    python data_tools/quality_classifier.py train --positive webtext.jsonl books/ --negative cc.jsonl --model q.npz
    python data_tools/quality_classifier.py apply --model q.npz --out kept.jsonl cc.jsonl

``apply`` keeps a document when ``np.random.pareto(9) > 1 - score`` (seeded per document id) and
prints kept/dropped counts; in ``build_source.py`` the same rule runs as a step (``--classifier``).
"""
from __future__ import annotations

import argparse
import json
import sys

from data_tools.classifier import ClassifierConfig, ClassifierFilter, QualityClassifier
from data_tools.document import ErrorLog, Stats
from data_tools.readers import list_inputs, read_file


def _texts(inputs, limit):
    errors = ErrorLog()
    out = []
    for p in list_inputs(inputs):
        for d in read_file(p, "train", errors):
            out.append(d.text)
            if len(out) >= limit:
                return out
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fit on curated (positive) vs raw (negative) text")
    t.add_argument("--positive", nargs="+", required=True)
    t.add_argument("--negative", nargs="+", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--max-docs", type=int, default=200_000, help="per class; bounds memory")
    t.add_argument("--epochs", type=int, default=ClassifierConfig.epochs)
    a_ = sub.add_parser("apply", help="score documents and keep by the Pareto rule")
    a_.add_argument("inputs", nargs="+")
    a_.add_argument("--model", required=True)
    a_.add_argument("--out", required=True, help="JSONL of kept documents (with meta.quality)")
    a = p.parse_args(argv)
    if a.cmd == "train":
        pos, neg = _texts(a.positive, a.max_docs), _texts(a.negative, a.max_docs)
        if not pos or not neg:
            p.error("both --positive and --negative need at least one readable document.")
        clf = QualityClassifier(ClassifierConfig(epochs=a.epochs)).train(pos, neg)
        clf.save(a.model)
        s_pos, s_neg = clf.score(pos[:2000]).mean(), clf.score(neg[:2000]).mean()
        print(f"trained on {len(pos)} positive / {len(neg)} negative documents; "
              f"mean score {s_pos:.3f} / {s_neg:.3f}; saved {a.model}")
        return 0
    from megagpt.jsonl import write

    clf, stats, errors = QualityClassifier.load(a.model), Stats(), ErrorLog()
    step = ClassifierFilter(clf)
    docs = (doc for path in list_inputs(a.inputs) for doc in step(read_file(path, "apply", errors), stats))
    write(a.out, (doc.to_json() for doc in docs))
    print(json.dumps({"counts": dict(stats.counters[step.name]), "errors": errors.counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
