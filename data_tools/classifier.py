"""GPT-3's Common Crawl quality classifier (Brown et al. 2020, Appendix A): logistic regression on
hashed token features, positives = curated text (WebText, books, Wikipedia), negatives = raw
Common Crawl. ``apply`` keeps a document when ``np.random.pareto(alpha) > 1 - score``, so low
scores are mostly dropped but not all (alpha = 9 as published); the draw is seeded per document
id, so the decision does not depend on order, workers or ranks."""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import xxhash

from data_tools.document import Document, Stats, concat
from megagpt.atomic import replacing

_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass
class ClassifierConfig:
    n_features: int = 1 << 18
    epochs: int = 30
    lr: float = 0.5
    l2: float = 1e-6
    alpha: float = 9.0            # Pareto shape from the paper
    seed: int = 1234


def featurize(texts: Iterable[str], n_features: int):
    """CSR parts (indptr, indices, values): hashed, L2-normalised token counts (signed hashing)."""
    indptr, indices, values = [0], [], []
    for t in texts:
        toks = _TOKEN.findall(t.lower())
        if not toks:
            indptr.append(indptr[-1])
            continue
        h = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in toks), np.uint64, len(toks))
        idx = (h % np.uint64(n_features)).astype(np.int64)
        sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)  # a sign bit halves collision bias
        u, inv = np.unique(idx, return_inverse=True)
        v = np.bincount(inv, weights=sign)
        v /= max(np.linalg.norm(v), 1e-12)
        indices.append(u)
        values.append(v)
        indptr.append(indptr[-1] + len(u))
    return np.asarray(indptr, np.int64), concat(indices, np.int64), concat(values, np.float64)


def _dot(w, indptr, indices, values):
    prod = w[indices] * values
    out = np.zeros(len(indptr) - 1)
    nz = np.flatnonzero(np.diff(indptr))
    if len(nz):
        out[nz] = np.add.reduceat(prod, indptr[:-1][nz])
    return out


class QualityClassifier:
    """Hashed-feature logistic regression, trained full-batch with Adagrad (numpy only)."""

    def __init__(self, cfg: ClassifierConfig = ClassifierConfig(), w=None, b: float = 0.0):
        self.cfg = cfg
        self.w = np.zeros(cfg.n_features) if w is None else w
        self.b = b

    def train(self, positives: list[str], negatives: list[str]) -> QualityClassifier:
        c = self.cfg
        indptr, idx, val = featurize(list(positives) + list(negatives), c.n_features)
        y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
        rows = np.repeat(np.arange(len(y)), np.diff(indptr))
        gw2, gb2 = np.full(c.n_features, 1e-8), 1e-8
        for _ in range(c.epochs):
            p = 1 / (1 + np.exp(-(_dot(self.w, indptr, idx, val) + self.b)))
            r = (p - y) / len(y)
            g = np.bincount(idx, weights=val * r[rows], minlength=c.n_features) + c.l2 * self.w
            gb = r.sum()
            gw2 += g * g
            gb2 += gb * gb
            self.w -= c.lr * g / np.sqrt(gw2)
            self.b -= c.lr * gb / np.sqrt(gb2)
        return self

    def score(self, texts: list[str]) -> np.ndarray:
        indptr, idx, val = featurize(texts, self.cfg.n_features)
        return 1 / (1 + np.exp(-(_dot(self.w, indptr, idx, val) + self.b)))

    def keep(self, doc_id: str, score: float) -> bool:
        rng = np.random.default_rng([self.cfg.seed, xxhash.xxh64_intdigest(doc_id.encode())])
        return bool(rng.pareto(self.cfg.alpha) > 1 - score)

    def save(self, path) -> None:
        with replacing(path, ".npz", unique=False) as tmp:
            np.savez(tmp, w=self.w.astype(np.float32), b=self.b, cfg=json.dumps(asdict(self.cfg)))

    @classmethod
    def load(cls, path) -> QualityClassifier:
        z = np.load(path)
        cfg = ClassifierConfig(**json.loads(str(z["cfg"])))
        return cls(cfg, z["w"].astype(np.float64), float(z["b"]))


class ClassifierFilter:
    """Step: scores documents in batches and keeps them by the Pareto rule; the score is kept
    in ``meta['quality']``."""
    name = "quality_classifier"

    def __init__(self, clf: QualityClassifier, batch: int = 256):
        self.clf = clf
        self.batch = batch

    def __call__(self, docs: Iterator[Document], stats: Stats) -> Iterator[Document]:
        buf: list[Document] = []
        for doc in docs:
            buf.append(doc)
            if len(buf) >= self.batch:
                yield from self._flush(buf, stats)
                buf = []
        yield from self._flush(buf, stats)

    def _flush(self, buf, stats):
        if not buf:
            return
        for doc, s in zip(buf, self.clf.score([d.text for d in buf])):
            doc.meta["quality"] = round(float(s), 4)
            if self.clf.keep(doc.id, float(s)):
                stats.count(self.name, "kept")
                yield doc
            else:
                stats.count(self.name, "dropped:low_quality")
