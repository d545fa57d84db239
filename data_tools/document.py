"""The document record, the step contract, run statistics and the bad-input log shared by every step."""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Document:
    """One document: text plus where it came from (id is unique within its source)."""
    text: str
    id: str
    source: str = ""
    url: str | None = None
    title: str | None = None
    meta: dict = field(default_factory=dict)

    def split_words(self) -> list[str]:
        """``self.text.split()``, split once per text and shared by the filters that only read it
        (recomputed when ``text`` is replaced). Callers must not modify the list."""
        cached = self.__dict__.get("_split")
        if cached is None or cached[0] is not self.text:
            cached = self.__dict__["_split"] = (self.text, self.text.split())
        return cached[1]

    def to_json(self) -> dict:
        d = {"id": self.id, "source": self.source, "text": self.text}
        if self.url is not None:
            d["url"] = self.url
        if self.title is not None:
            d["title"] = self.title
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_json(cls, d: dict) -> Document:
        return cls(text=d["text"], id=d["id"], source=d.get("source", ""), url=d.get("url"),
                   title=d.get("title"), meta=d.get("meta") or {})


class Step(Protocol):
    """What every pipeline step is (datatrove's contract): ``step(docs, stats)`` takes an iterator of
    documents and yields the ones it keeps, possibly rewritten, and counts each decision in
    ``stats`` under its ``name`` (``kept``, ``dropped:<reason>``, ...), the name its time is
    reported under too. Steps are lazy and keep nothing from one document to the next, except
    what a step records for a later stage (``SignatureStep.table``)."""
    name: str

    def __call__(self, docs: Iterator[Document], stats: Stats) -> Iterator[Document]: ...


class InputError(RuntimeError):
    """Raised under --strict for the first bad input record; the message names file and offset."""


class ErrorLog:
    """Bad input is counted and logged (file, offset, kind, message), never fatal unless strict.

    Only the first ``keep`` entries per file are kept verbatim so a file of binary garbage cannot
    grow the report without bound; counts are always exact.
    """

    def __init__(self, strict: bool = False, keep: int = 20):
        self.strict = strict
        self.keep = keep
        self.entries: list[dict] = []
        self.counts: Counter = Counter()
        self._per_file: Counter = Counter()

    def add(self, path, offset, kind: str, message: str) -> None:
        path = str(path)
        self.counts[kind] += 1
        self._per_file[path] += 1
        line = f"{path}: offset {offset}: {kind}: {message}"
        if self.strict:
            raise InputError(line)
        if self._per_file[path] <= self.keep:
            self.entries.append({"file": path, "offset": offset, "kind": kind, "message": message})

    def to_json(self) -> dict:
        return {"counts": dict(self.counts), "entries": self.entries}


class Stats:
    """Counters per step (``stats.count("gopher_quality", "dropped:few_words")``) and timers
    (``with stats.timer("filter"):`` adds the block's wall time to ``stats.times["filter"]``)."""

    def __init__(self):
        self.counters: dict[str, Counter] = defaultdict(Counter)
        self.times: dict[str, float] = defaultdict(float)

    def count(self, step: str, key: str, n: int = 1) -> None:
        self.counters[step][key] += n

    @contextmanager
    def timer(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[stage] += time.perf_counter() - t0

    def merge(self, other: Stats | dict) -> None:
        if isinstance(other, Stats):
            other = other.to_json()
        for step, c in other.get("counters", {}).items():
            self.counters[step].update(c)
        for stage, t in other.get("times", {}).items():
            self.times[stage] += t

    def to_json(self) -> dict:
        return {"counters": {k: dict(v) for k, v in self.counters.items()},
                "times": dict(self.times)}


def concat(parts: list, dtype):
    """``np.concatenate`` of ``parts`` as ``dtype``, which also takes no parts (an empty array)."""
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
