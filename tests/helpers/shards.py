"""Tiny learnable Megatron shards for training tests (real .bin/.idx files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from megagpt.data.indexed import IndexedDatasetWriter

EOD = 0


def write_pattern_shard(prefix: str | Path, n_docs: int = 200, vocab: int = 96, seed: int = 0,
                        min_len: int = 20, max_len: int = 120) -> str:
    """Documents are arithmetic progressions mod (vocab-1) (+1 so EOD=0 stays reserved), each
    ending in EOD: easy to learn, so the loss visibly falls within a few dozen steps."""
    rng = np.random.RandomState(seed)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for _ in range(n_docs):
            n = rng.randint(min_len, max_len)
            start, step = rng.randint(0, vocab - 1), rng.randint(1, 4)
            doc = (start + step * np.arange(n)) % (vocab - 1) + 1
            w.add_document(np.append(doc, EOD))
    return str(prefix)
