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
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

TAG = "global_step{}"


def _rng_path(ckpt_dir: Path, tag: str, rank: int) -> Path:
    return ckpt_dir / tag / f"rng_rank{rank}.pt"


def step_of(tag: str) -> int:
    return int(tag.removeprefix("global_step"))


def _write_atomic(path: Path, text: str) -> None:
    """``text`` under a temporary name, then renamed: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


MANIFEST = "manifest.json"
VERIFY_LEVELS = ("full", "size", "none")


class SaveError(RuntimeError):
    """A save that could not be completed (disk full, quota): nothing of it is kept."""


class CheckpointError(ValueError):
    """No checkpoint to resume from that the user asked for: the message names the tag and file."""


def file_hash(path: Path, chunk: int = 8 << 20) -> str:
    """xxh3-64 of a file, streamed (several GB/s: small next to writing the file)."""
    import xxhash

    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(tag_dir: Path, meta: dict | None) -> None:
    """Every file of the tag with its size and hash, plus the layout and step (rank 0, after every
    rank has written, before ``latest`` moves: a tag without a manifest never finished)."""
    import megagpt

    files = {}
    for f in sorted(tag_dir.rglob("*")):
        if f.is_file() and f.name not in (MANIFEST, MANIFEST + ".tmp"):
            files[str(f.relative_to(tag_dir))] = {"size": f.stat().st_size, "xxh3_64": file_hash(f)}
    manifest = dict(meta or {}, megagpt_version=megagpt.__version__, files=files)
    _write_atomic(tag_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def verify(tag_dir: str | Path, level: str = "full") -> str | None:
    """None when the tag is whole, else why not (one sentence naming the file)."""
    tag_dir = Path(tag_dir)
    if level == "none":
        return None if tag_dir.is_dir() else f"{tag_dir}: missing."
    m = tag_dir / MANIFEST
    if not m.is_file():
        return f"{tag_dir}: no {MANIFEST} (the save did not finish)."
    try:
        files = json.loads(m.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{m}: not a valid manifest."
    for rel, info in files.items():
        f = tag_dir / rel
        if not f.is_file():
            return f"{f}: missing."
        size = f.stat().st_size
        if size != info["size"]:
            return f"{f}: {size} bytes, the manifest says {info['size']} (truncated or overwritten)."
        if level == "full" and file_hash(f) != info["xxh3_64"]:
            return f"{f}: contents differ from the manifest's hash (corrupted)."
    return None


def tags(ckpt_dir: str | Path) -> list[str]:
    """Checkpoint tags, newest step first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    steps = sorted((int(m.group(1)) for d in ckpt_dir.iterdir()
                    if (m := re.fullmatch(r"global_step(\d+)", d.name)) and d.is_dir()), reverse=True)
    return [TAG.format(s) for s in steps]


def choose_tag(ckpt_dir: str | Path, level: str = "full", fallback: bool = True) -> tuple[str | None, list[str]]:
    """The tag to resume from (the newest at or before ``latest`` that verifies) and a line for
    each newer one passed over. Raises ``CheckpointError`` when ``latest`` is broken and
    ``fallback`` is off, or when no tag verifies."""
    latest = latest_tag(ckpt_dir)
    if latest is None:
        return None, []
    newest = step_of(latest)
    skipped = []
    for tag in tags(ckpt_dir):
        if step_of(tag) > newest:
            continue  # newer than `latest`: a save that never completed
        why = verify(Path(ckpt_dir) / tag, level)
        if why is None:
            return tag, skipped
        if not fallback:
            raise CheckpointError(f"checkpoint {tag} is broken: {why} Set train.resume_fallback=true to "
                                  f"resume from the newest whole checkpoint instead.")
        skipped.append(f"checkpoint {tag} is broken: {why}")
    raise CheckpointError(f"{ckpt_dir}: no whole checkpoint to resume from ({'; '.join(skipped)}). Move the "
                          f"directory away to start fresh, or set train.verify_checkpoint=none to force.")


def _raised_by_torch_save(e: BaseException) -> bool:
    """A RuntimeError from inside ``torch.save`` (its zip writer's way of saying a write failed)."""
    import traceback

    return any(f.filename.endswith(os.path.join("torch", "serialization.py"))
               for f in traceback.extract_tb(e.__traceback__))


def save(engine, ckpt_dir: str | Path, step: int, client_state: dict, ps, keep_last: int,
         meta: dict | None = None) -> str:
    """``meta`` (model config, layout, step) goes to ``<tag>/megagpt.json``: what an offline reader
    (``megagpt.inference.checkpoint_reader``) needs to rebuild the weights without the run file."""
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
                _write_atomic(ckpt_dir / tag / "megagpt.json", json.dumps(meta, indent=1) + "\n")
            write_manifest(ckpt_dir / tag, meta)
            _write_atomic(ckpt_dir / "latest", tag)
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


LAYOUT_KEYS = ("layout", "tp", "pp", "dp", "zero_stage")  # what DeepSpeed's own load needs unchanged


def layout_of(run, ps) -> dict:
    """The layout a run trains in, as ``megagpt.json`` records it (``LAYOUT_KEYS``)."""
    from megagpt.config import zero_stage

    return {"layout": run.parallel.layout, "tp": ps.tp_size, "pp": ps.pp_size, "dp": ps.dp_size,
            "zero_stage": zero_stage(run.deepspeed)}


def saved_layout(tag_dir: Path) -> dict | None:
    """The layout a tag was saved with (None: no megagpt.json)."""
    try:
        meta = json.loads((tag_dir / "megagpt.json").read_text())
        return {k: meta[k] for k in LAYOUT_KEYS}
    except (OSError, ValueError, KeyError):
        return None


def load(engine, ckpt_dir: str | Path, ps, *, verify_level: str = "full", fallback: bool = True,
         log=None, layout: dict | None = None, reshard=None) -> dict | None:
    """Restore the newest whole checkpoint; returns its client state (None if there is none).

    Rank 0 verifies (sizes, and hashes with ``verify_level='full'``) and every rank loads the tag
    it chose. ``log(line)`` receives a line per broken checkpoint passed over. When ``layout``
    (this run's layout, tp, pp, dp, zero_stage) differs from the tag's, ``reshard(tag)`` loads it
    instead of DeepSpeed (which only resumes the layout it saved); without one that is an error."""
    choice = [None, [], None]
    if dist.get_rank() == 0:
        try:
            choice[0], choice[1] = choose_tag(ckpt_dir, verify_level, fallback)
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
            from megagpt.train.universal import describe

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
