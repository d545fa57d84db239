"""13-gram decontamination against evaluation sets, with GPT-3's rules (Brown et al. 2020, App. C):
every 13-gram shared with an evaluation text is removed together with 200 characters on each side;
the remaining pieces shorter than 200 characters are dropped; a document split into more than 10
pieces is dropped whole."""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.document import Document, Stats
from megagpt.data.ngrams import PUNCT, ngram_hashes, words

_SPAN = re.compile(r"\S+")


@dataclass
class DecontamConfig:
    eval_files: tuple[str, ...] = ()   # .txt (one text per file) or .jsonl (a "text" field a line)
    ngram: int = 13
    margin: int = 200                  # characters removed on each side of a matched n-gram
    min_piece: int = 200               # pieces shorter than this are dropped
    max_pieces: int = 10               # more pieces than this: the document is dropped


def eval_texts(paths: Iterable[str]) -> Iterator[str]:
    for p in map(Path, paths):
        if p.suffix == ".jsonl":
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    obj = json.loads(line)
                    yield " ".join(str(v) for v in obj.values() if isinstance(v, str))
        else:
            yield p.read_text(encoding="utf-8")


class Decontaminate:
    """Step: removes evaluation 13-grams (and margins) from documents."""
    name = "decontam"

    def __init__(self, cfg: DecontamConfig, texts: Iterable[str] | None = None):
        self.cfg = cfg
        grams = [ngram_hashes(words(t), cfg.ngram)
                 for t in (texts if texts is not None else eval_texts(cfg.eval_files))]
        self.grams = np.unique(np.concatenate(grams)) if grams else np.zeros(0, np.uint64)

    def _hits(self, h: np.ndarray) -> np.ndarray:
        # self.grams is sorted and unique: a binary search per n-gram, no re-sort per document
        i = np.minimum(np.searchsorted(self.grams, h), len(self.grams) - 1)
        return np.flatnonzero(self.grams[i] == h)

    def process(self, text: str) -> tuple[str | None, str]:
        """(new text or None to drop, outcome)."""
        if not len(self.grams):
            return text, "clean"
        h = ngram_hashes(words(text), self.cfg.ngram)
        hit = self._hits(h)
        if not len(hit):  # the common case: no word spans needed
            return text, "clean"
        # translate() maps each punctuation character to one space, so spans index ``text``
        spans = [(m.start(), m.end()) for m in _SPAN.finditer(text.translate(PUNCT))]
        h = ngram_hashes([text[a:b].lower() for a, b in spans], self.cfg.ngram)
        hit = self._hits(h)
        n, mg = self.cfg.ngram, self.cfg.margin
        cuts = []  # merged character ranges to remove
        for i in hit.tolist():
            a, b = max(0, spans[i][0] - mg), min(len(text), spans[i + n - 1][1] + mg)
            if cuts and a <= cuts[-1][1]:
                cuts[-1][1] = max(cuts[-1][1], b)
            else:
                cuts.append([a, b])
        pieces, pos = [], 0
        for a, b in cuts:
            pieces.append(text[pos:a])
            pos = b
        pieces.append(text[pos:])
        pieces = [p for p in pieces if p.strip()]
        if len(pieces) > self.cfg.max_pieces:
            return None, "too_many_pieces"
        pieces = [p.strip() for p in pieces if len(p.strip()) >= self.cfg.min_piece]
        if not pieces:
            return None, "nothing_left"
        return "\n".join(pieces), "cut"

    def __call__(self, docs: Iterator[Document], stats: Stats) -> Iterator[Document]:
        for doc in docs:
            text, outcome = self.process(doc.text)
            if text is None:
                stats.count(self.name, f"dropped:{outcome}")
                continue
            stats.count(self.name, "kept" if outcome == "clean" else "kept:cut")
            doc.text = text
            yield doc
