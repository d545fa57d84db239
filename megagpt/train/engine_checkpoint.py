"""Checkpoints through DeepSpeed, made safe to resume from.

DeepSpeed writes model, optimizer and scheduler state under ``<dir>/<tag>/``; each rank adds its
RNG streams. Only after every rank has finished (a barrier) does rank 0 write ``megagpt.json`` (the
model config and layout, for offline readers) and ``manifest.json`` (every file's size and xxh3
hash), then move ``latest`` to the new tag (each written to a temporary file, then renamed), and
only then are tags beyond the last K deleted, so an interrupted save is never taken for a whole one.

On resume rank 0 verifies ``latest`` against its manifest (sizes always, hashes with
``train.verify_checkpoint: full``) and, if a file is missing, truncated or corrupted, says so in
one line and falls back to the newest older tag that verifies (``train.resume_fallback``); every
rank loads the tag rank 0 chose.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megagpt.formats.manifest import (
    TAG,
    CheckpointError,
    choose_tag,
    describe,
    latest_tag,
    saved_layout,
    step_of,
    tags,
    verify,
    write_atomic,
    write_manifest,
)


def _rng_path(ckpt_dir: Path, tag: str, rank: int) -> Path:
    return ckpt_dir / tag / f"rng_rank{rank}.pt"

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


class SaveError(RuntimeError):
    """A save that could not be completed (disk full, quota): nothing of it is kept."""


def _raised_by_torch_save(e: BaseException) -> bool:
    """A RuntimeError from inside ``torch.save`` (its zip writer's way of saying a write failed)."""
    import traceback

    return any(f.filename.endswith(os.path.join("torch", "serialization.py"))
               for f in traceback.extract_tb(e.__traceback__))


def save(engine, ckpt_dir: str | Path, step: int, client_state: dict, ps, keep_last: int,
         meta: dict | None = None) -> str:
    """``meta`` (model config, layout, step) goes to ``<tag>/megagpt.json``: what an offline reader
    (``megagpt.formats.checkpoint_reader``) needs to rebuild the weights without the run file."""
    ckpt_dir = Path(ckpt_dir)
    tag = TAG.format(step)
    rank = dist.get_rank()
    if rank == 0 and (ckpt_dir / tag).is_dir() and (latest_tag(ckpt_dir) != tag or verify(ckpt_dir / tag, "size")):
        shutil.rmtree(ckpt_dir / tag)  # an unfinished or broken save of this step, passed over on resume
    dist.barrier()
    failed, ds_done = None, False
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        ds_done = True
        (ckpt_dir / tag).mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(ps), _rng_path(ckpt_dir, tag, rank))
    except (OSError, RuntimeError) as e:  # disk full, quota, a vanished mount: this rank's files
        # are not whole (torch.save reports a failed write as a RuntimeError from its zip writer)
        if isinstance(e, RuntimeError) and not _raised_by_torch_save(e):
            raise
        failed = (f"{e.filename or ckpt_dir / tag}: {e.strerror or e}" if isinstance(e, OSError)
                  else f"{ckpt_dir / tag}: {str(e).strip().splitlines()[0]}")
        if not ds_done:  # the collectives DeepSpeed runs after its writes, which this rank skipped:
            # ZeRO-3 gathers its persistent parameters back, then a closing barrier
            if engine._optimizer_has_ckpt_event_epilogue():
                engine.optimizer.checkpoint_event_epilogue()
            dist.barrier()
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, failed)
    failed = next((e for e in errors if e), None)
    if rank == 0 and failed is None:
        try:
            if meta is not None:  # after every rank's files, before `latest`
                write_atomic(ckpt_dir / tag / "megagpt.json", json.dumps(meta, indent=1) + "\n")
            write_manifest(ckpt_dir / tag, meta)
            write_atomic(ckpt_dir / "latest", tag)
        except OSError as e:
            failed = f"{e.filename or ckpt_dir / tag}: {e.strerror or e}"
    verdict = [failed]
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        if rank == 0 and latest_tag(ckpt_dir) != tag:  # free the space; `latest` still names the
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)  # previous whole checkpoint
            (ckpt_dir / "latest.tmp").unlink(missing_ok=True)
        dist.barrier()
        raise SaveError(f"saving checkpoint {tag} failed ({verdict[0]}); it was removed and 'latest' still "
                        f"names {latest_tag(ckpt_dir)}.")
    if rank == 0:
        # only tags at or before this one: a newer folder is a save that never completed (or a
        # broken one passed over), never counted against keep_last; the new `latest` is whole
        steps = sorted(step_of(t) for t in tags(ckpt_dir))
        steps = [s for s in steps if s <= step]
        for old in steps[:-keep_last]:
            shutil.rmtree(ckpt_dir / TAG.format(old), ignore_errors=True)
    dist.barrier()
    return tag


def load(engine, ckpt_dir: str | Path, ps, *, verify_level: str = "full", fallback: bool = True,
         log=None, layout: dict | None = None, reshard=None, max_step: int | None = None) -> dict | None:
    """Restore the newest whole checkpoint; returns its client state (None if there is none).

    Rank 0 verifies (sizes, and hashes with ``verify_level='full'``) and every rank loads the tag
    it chose (the newest at or before step ``max_step``, when given). ``log(line)`` receives a line per
    broken checkpoint passed over. When ``layout``
    (this run's layout, tp, pp, dp, zero_stage) differs from the tag's, ``reshard(tag)`` loads it
    instead of DeepSpeed (which only resumes the layout it saved); without one that is an error."""
    choice = [None, [], None]
    if dist.get_rank() == 0:
        try:
            choice[0], choice[1] = choose_tag(ckpt_dir, verify_level, fallback, max_step)
        except CheckpointError as e:
            choice[2] = str(e)
    dist.broadcast_object_list(choice, src=0)
    tag, skipped, error = choice
    if error:
        raise CheckpointError(error)
    if tag is None:
        return None
    for line in skipped:
        if log is not None:
            log(f"{line} Resuming from {tag} instead.")
    saved = saved_layout(Path(ckpt_dir) / tag) if layout is not None else None
    if saved is not None and saved != layout:
        if reshard is None:
            raise CheckpointError(f"{Path(ckpt_dir) / tag}: saved as {describe(saved)} but this run is "
                                  f"{describe(layout)}; resume it in the layout it was saved with.")
        return reshard(tag)
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise CheckpointError(f"{ckpt_dir}/{tag}: DeepSpeed could not load this checkpoint.")
    rng_file = _rng_path(Path(ckpt_dir), tag, dist.get_rank())
    if rng_file.is_file():  # absent when resuming on a different world size
        _set_rng_state(ps, torch.load(rng_file, weights_only=True))
    return client_state
