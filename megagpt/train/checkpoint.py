"""Checkpoints through DeepSpeed, made safe to resume from.

DeepSpeed writes model, optimizer and scheduler state under ``<dir>/<tag>/``; each rank adds its
RNG streams. Only after every rank has finished (a barrier) does rank 0 write ``megagpt.json`` (the
model config and layout, for offline readers) and then move ``latest`` to the new tag (each written
to a temporary file, then renamed), and only then are tags beyond the last K deleted, so an
interrupted save is never taken for a whole one.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

TAG = "global_step{}"


def _rng_path(ckpt_dir: Path, tag: str, rank: int) -> Path:
    return ckpt_dir / tag / f"rng_rank{rank}.pt"


def latest_tag(ckpt_dir: str | Path) -> str | None:
    p = Path(ckpt_dir) / "latest"
    return p.read_text().strip() if p.is_file() else None


def _rng_state(ps) -> dict:
    """Every RNG stream as tensors, ints and tuples only, so it loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"megagpt": ps.rng.state_dict(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate()}


def _set_rng_state(ps, rng: dict) -> None:
    ps.rng.load_state_dict(rng["megagpt"])
    n = rng["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


def save(engine, ckpt_dir: str | Path, step: int, client_state: dict, ps, keep_last: int,
         meta: dict | None = None) -> str:
    """``meta`` (model config, layout, step) goes to ``<tag>/megagpt.json``: what an offline reader
    (``megagpt.inference.checkpoint_reader``) needs to rebuild the weights without the run file."""
    ckpt_dir = Path(ckpt_dir)
    tag = TAG.format(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    rank = dist.get_rank()
    (ckpt_dir / tag).mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(ps), _rng_path(ckpt_dir, tag, rank))
    dist.barrier()
    if rank == 0:
        if meta is not None:  # after every rank's files, before `latest`: its presence means complete
            tmp = ckpt_dir / tag / "megagpt.json.tmp"
            tmp.write_text(json.dumps(meta, indent=1) + "\n")
            os.replace(tmp, ckpt_dir / tag / "megagpt.json")
        tmp = ckpt_dir / "latest.tmp"
        tmp.write_text(tag)
        os.replace(tmp, ckpt_dir / "latest")
        steps = sorted(int(m.group(1)) for d in ckpt_dir.iterdir()
                       if (m := re.fullmatch(r"global_step(\d+)", d.name)) and d.is_dir())
        # only tags at or before this one: a newer folder is a save that never completed, and it
        # is never counted against keep_last (the new `latest` is always kept)
        steps = [s for s in steps if s <= step]
        for old in steps[:-keep_last]:
            shutil.rmtree(ckpt_dir / TAG.format(old), ignore_errors=True)
    dist.barrier()
    return tag


def load(engine, ckpt_dir: str | Path, ps) -> dict | None:
    """Restore the newest complete checkpoint; returns its client state (None if there is none)."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"{ckpt_dir}/{tag}: DeepSpeed could not load this checkpoint.")
    rng_file = _rng_path(Path(ckpt_dir), tag, dist.get_rank())
    if rng_file.is_file():  # absent when resuming on a different world size
        _set_rng_state(ps, torch.load(rng_file, weights_only=True))
    return client_state
