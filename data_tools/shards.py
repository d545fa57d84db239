"""Tokenize step: deduplicated JSONL -> Megatron ``.bin/.idx`` shards (EOD after each document),
one shard per input file in worker processes, then optionally merged into one shard."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from megagpt.data.indexed import IndexedDataset, IndexedDatasetWriter, paths, token_dtype


def tokenize_file(jsonl: Path, model_path: Path, prefix: Path, position: int = 0,
                  batch: int = 64, progress: bool = True) -> dict:
    """Writes ``prefix.{bin,idx}``; returns {documents, tokens, bytes}. Skips a finished shard."""
    import sentencepiece as spm
    bin_p, idx_p = paths(prefix)
    if bin_p.is_file() and idx_p.is_file():
        ds = IndexedDataset(prefix)
        return {"documents": len(ds), "tokens": ds.num_tokens, "bytes": None, "skipped": True}
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    eod = sp.eos_id()
    dtype = token_dtype(sp.get_piece_size())
    n_bytes = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=Path(jsonl).stat().st_size, unit="B", unit_scale=True, position=position,
                   desc=Path(jsonl).name, leave=False, mininterval=1.0)
    with IndexedDatasetWriter(prefix, dtype) as w, open(jsonl, "rb") as f:
        buf: list[str] = []

        def flush():
            for ids in sp.encode(buf):
                ids.append(eod)
                w.add_document(np.asarray(ids, dtype=dtype))
            buf.clear()

        for line in f:
            n_bytes += len(line)
            buf.append(json.loads(line)["text"])
            if len(buf) >= batch:
                flush()
            if bar is not None:
                bar.update(len(line))
        flush()
        docs, tokens = len(w._sizes), w.tokens
    if bar is not None:
        bar.close()
    return {"documents": docs, "tokens": tokens, "bytes": n_bytes, "skipped": False}


def merge(prefixes: list[Path], out_prefix: Path) -> dict:
    """Concatenates shards (same dtype) into ``out_prefix``, document order preserved."""
    readers = [IndexedDataset(p) for p in prefixes]
    dtype = readers[0].dtype if readers else np.uint16
    docs = 0
    with IndexedDatasetWriter(out_prefix, dtype) as w:
        for r in readers:
            if r.dtype != dtype:
                raise ValueError(f"{r.prefix}: dtype {r.dtype} differs from {dtype}; cannot merge.")
            for i in range(len(r)):
                w.add_document(r[i])
                docs += 1
        tokens = w.tokens
    return {"documents": docs, "tokens": tokens}
