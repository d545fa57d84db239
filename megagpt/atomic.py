"""Files that appear whole or not at all, for megagpt and data_tools alike.

A file is written under a temporary name in its own directory (so the rename never crosses file
systems), optionally fsynced, then ``os.replace``d over the target: a reader sees the old file or
the complete new one, never a part of it, and a write that raises leaves no temporary behind.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_path(path: str | Path, suffix: str = "", unique: bool = True) -> Path:
    """The temporary beside ``path``: ``<name>.tmp<pid><suffix>``. ``unique=False`` leaves the pid
    out, for a name that something records (or a listing skips); ``suffix`` is for writers that
    add their own extension to a name without it (``np.save``: ``.npy``, ``np.savez``: ``.npz``)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp{os.getpid() if unique else ''}{suffix}")


def _fsync(path: str | Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: str | Path, path: str | Path, fsync: bool = False) -> None:
    """Move the finished ``tmp`` over ``path``; with ``fsync`` the data reaches the disk before the
    rename, and the rename before this returns."""
    if fsync:
        _fsync(tmp)
    os.replace(tmp, path)
    if fsync:
        _fsync(Path(path).parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


@contextmanager
def replacing(path: str | Path, suffix: str = "", unique: bool = True, fsync: bool = False) -> Iterator[Path]:
    """``with replacing(path) as tmp:`` write ``tmp`` (see ``temp_path``); when the block ends it
    replaces ``path``, and when the block raises it is removed and ``path`` is left as it was."""
    tmp = temp_path(path, suffix, unique)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    replace(tmp, path, fsync)


def write_atomic(path: str | Path, data: str | bytes, unique: bool = True, fsync: bool = False) -> None:
    """``data`` as the whole of ``path`` (text as UTF-8), through ``replacing``."""
    with replacing(path, unique=unique, fsync=fsync) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
