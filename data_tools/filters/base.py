"""The filter contract: ``check(doc)`` returns None to keep or a short reason to drop."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from data_tools.document import Document, Stats

TERMINAL_PUNCT = (".", "!", "?", '"', "'", "\u201d", "\u2019", "\u3002", "\uff01", "\uff1f", "\u2026")


class Filter:
    """Base filter, a ``Step``. Subclasses set ``name`` and implement ``check``; ``check`` may also
    rewrite ``doc.text`` (C4 drops lines) and count each line it drops with ``self._line_drop(reason)``:
    the counts gather in ``self._line_counts`` until ``__call__`` reports them for that document as
    ``line_dropped:<reason>``."""
    name = "filter"
    _line_counts: Counter | None = None  # made by _line_drop, reported and cleared by __call__

    def check(self, doc: Document) -> str | None:
        raise NotImplementedError

    def __call__(self, docs: Iterator[Document], stats: Stats) -> Iterator[Document]:
        for doc in docs:
            reason = self.check(doc)
            if self._line_counts is not None:
                for key, n in self._line_counts.items():
                    stats.count(self.name, f"line_dropped:{key}", n)
                self._line_counts = None
            if reason:
                stats.count(self.name, f"dropped:{reason}")
            else:
                stats.count(self.name, "kept")
                yield doc

    def _line_drop(self, key: str) -> None:
        if self._line_counts is None:
            self._line_counts = Counter()
        self._line_counts[key] += 1


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
