"""Which evaluation items overlap the training text, by GPT-3's rule (Brown et al. 2020, App. C):
an item is dirty when any of its N-grams appears in the training data, with N the 5th percentile
of the task's item lengths in words, clipped to 8..13. Words and n-gram hashes are those of
``data_tools.decontam`` (the filter that removes evaluation text from training shards), so the
report and the filter agree on what overlaps."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from megagpt import jsonl
from megagpt.data.ngrams import ngram_hashes, words
from megagpt.eval.tasks import Item, Task


def training_texts(paths: Iterable[str | Path]) -> Iterator[str]:
    """Documents of ``.jsonl`` files (their ``text`` field) and ``.txt`` files, or of every such
    file under a directory (the ``deduped/`` output of ``build_source.py``)."""
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.suffix in (".jsonl", ".txt")) if p.is_dir() else [p]
        if not files:
            raise FileNotFoundError(f"{p}: no .jsonl or .txt training text found.")
        for f in files:
            if f.suffix == ".jsonl":
                yield from jsonl.texts(f)
            else:
                yield f.read_text(encoding="utf-8", errors="replace")


def item_text(item: Item) -> str:
    return f"{item.context} {item.gold()}"


def ngram_size(task: Task) -> int:
    lengths = [len(words(item_text(it))) for it in task.test]
    return int(np.clip(np.percentile(lengths, 5), 8, 13)) if lengths else 13


class TrainingNgrams:
    """The training text's n-gram hashes, built once per N and kept sorted for binary search."""

    def __init__(self, paths: Iterable[str | Path]):
        self.paths = [str(p) for p in paths]
        self._by_n: dict[int, np.ndarray] = {}

    def grams(self, n: int) -> np.ndarray:
        if n not in self._by_n:
            parts = [ngram_hashes(words(t), n) for t in training_texts(self.paths)]
            self._by_n[n] = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        return self._by_n[n]

    def dirty(self, task: Task, items: list[Item] | None = None) -> tuple[int, list[bool]]:
        """(N, one flag per item: shares an N-gram with the training text)."""
        n = ngram_size(task)
        grams = self.grams(n)
        flags = []
        for it in items if items is not None else task.test:
            h = ngram_hashes(words(item_text(it)), n)
            if not len(h) or not len(grams):
                flags.append(False)
                continue
            i = np.minimum(np.searchsorted(grams, h), len(grams) - 1)
            flags.append(bool((grams[i] == h).any()))
        return n, flags
