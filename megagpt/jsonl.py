"""JSON Lines as megagpt's task, fine-tuning and corpus files use them: read with errors that name
the file and line, written under a temporary name that is renamed only when complete."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from megagpt.atomic import replacing


def objects(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, str, dict]]:
    """(line number, "path:line", object) for each non-empty line. Bad JSON, a line that is not an
    object, or bytes that are not UTF-8 raise ``error`` with one sentence naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    obj = json.loads(raw)
                except ValueError as e:
                    raise error(f"{where}: not valid JSON ({e.msg}).") from None
                if not isinstance(obj, dict):
                    raise error(f"{where}: expected a JSON object.")
                yield n, where, obj
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a line).") from None


def texts(path: str | Path) -> Iterator[str]:
    """The ``text`` field of each line (a corpus: one document per line)."""
    for _, where, obj in objects(path):
        if not isinstance(obj.get("text"), str):
            raise ValueError(f"{where}: expected a JSON object with a 'text' string.")
        yield obj["text"]


def write(path: str | Path, rows: Iterable[dict]) -> Path:
    """One JSON object per line; the file appears under ``path`` only when whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, unique=False) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
