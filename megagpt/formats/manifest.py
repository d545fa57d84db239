"""What makes a training checkpoint whole, read and written without an engine.

A tag ``<dir>/global_step<N>/`` is whole once rank 0 has written its ``manifest.json`` (every
file's size and xxh3 hash) after every rank's files, and ``latest`` names the newest whole tag.
``verify`` checks a tag against its manifest, ``choose_tag`` picks the tag to resume from
(falling back past broken ones), and ``megagpt.json`` records the model config and the layout a
tag was saved in (``LAYOUT_KEYS``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from megagpt._version import __version__
from megagpt.atomic import write_atomic  # train/ writes `latest`, megagpt.json and guard.json with it too
from megagpt.config import zero_stage

TAG = "global_step{}"


def step_of(tag: str) -> int:
    return int(tag.removeprefix("global_step"))


def latest_tag(ckpt_dir: str | Path) -> str | None:
    p = Path(ckpt_dir) / "latest"
    return p.read_text().strip() if p.is_file() else None


MANIFEST = "manifest.json"
VERIFY_LEVELS = ("full", "size", "none")


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
    files = {}
    for f in sorted(tag_dir.rglob("*")):
        if f.is_file() and f.name not in (MANIFEST, MANIFEST + ".tmp"):
            files[str(f.relative_to(tag_dir))] = {"size": f.stat().st_size, "xxh3_64": file_hash(f)}
    manifest = dict(meta or {}, megagpt_version=__version__, files=files)
    write_atomic(tag_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n", unique=False)  # the name skipped above


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


def choose_tag(ckpt_dir: str | Path, level: str = "full", fallback: bool = True,
               max_step: int | None = None) -> tuple[str | None, list[str]]:
    """The tag to resume from (the newest at or before ``latest``, and at or before ``max_step``
    when given, that verifies) and a line for each newer one passed over. Raises
    ``CheckpointError`` when ``latest`` is broken and ``fallback`` is off, or when no tag verifies."""
    latest = latest_tag(ckpt_dir)
    if latest is None:
        return None, []
    newest = step_of(latest) if max_step is None else min(step_of(latest), max_step)
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
    if max_step is not None and not skipped:  # a rewind: no tag at or before max_step
        return None, []
    raise CheckpointError(f"{ckpt_dir}: no whole checkpoint to resume from ({'; '.join(skipped)}). Move the "
                          f"directory away to start fresh, or set train.verify_checkpoint=none to force.")


LAYOUT_KEYS = ("layout", "tp", "pp", "dp", "zero_stage")  # what DeepSpeed's own load needs unchanged


def layout_of(run, ps) -> dict:
    """The layout a run trains in, as ``megagpt.json`` records it (``LAYOUT_KEYS``)."""
    return {"layout": run.parallel.layout, "tp": ps.tp_size, "pp": ps.pp_size, "dp": ps.dp_size,
            "zero_stage": zero_stage(run.deepspeed)}


def saved_layout(tag_dir: Path) -> dict | None:
    """The layout a tag was saved with (None: no megagpt.json)."""
    try:
        meta = json.loads((tag_dir / "megagpt.json").read_text())
        return {k: meta[k] for k in LAYOUT_KEYS}
    except (OSError, ValueError, KeyError):
        return None


def describe(layout: dict) -> str:
    return (f"{layout['layout']} tp={layout['tp']} pp={layout['pp']} dp={layout['dp']} "
            f"ZeRO {layout['zero_stage']}")
