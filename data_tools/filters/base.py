"""The filter contract: ``check(doc)`` returns None to keep or a short reason to drop."""
from __future__ import annotations

from collections.abc import Iterator

from data_tools.document import Document, Stats

TERMINAL_PUNCT = (".", "!", "?", '"', "'", "\u201d", "\u2019", "\u3002", "\uff01", "\uff1f", "\u2026")


class Filter:
    """Base filter. Subclasses set ``name`` and implement ``check``; a filter may also rewrite
    ``doc.text`` (C4 drops lines) and report line-level removals through ``self.line_counts``."""
    name = "filter"

    def check(self, doc: Document) -> str | None:
        raise NotImplementedError

    def __call__(self, docs: Iterator[Document], stats: Stats) -> Iterator[Document]:
        for doc in docs:
            reason = self.check(doc)
            for key, n in getattr(self, "_line_counts", {}).items():
                stats.count(self.name, f"line_dropped:{key}", n)
            self._line_counts = {}
            if reason:
                stats.count(self.name, f"dropped:{reason}")
            else:
                stats.count(self.name, "kept")
                yield doc

    def _line_drop(self, key: str) -> None:
        counts = getattr(self, "_line_counts", None)
        if counts is None:
            counts = self._line_counts = {}
        counts[key] = counts.get(key, 0) + 1


def duplicate_stats(items: list[str]) -> tuple[int, int]:
    """(number of items that repeat an earlier one, characters in those repeats)."""
    seen: set[str] = set()
    n = chars = 0
    for it in items:
        if it in seen:
            n += 1
            chars += len(it)
        else:
            seen.add(it)
    return n, chars
