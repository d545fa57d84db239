"""FineWeb's own quality rules (Penedo et al. 2024), datatrove's published defaults."""
from __future__ import annotations

from dataclasses import dataclass

from data_tools.document import Document
from data_tools.filters.base import TERMINAL_PUNCT, Filter, duplicate_stats


@dataclass
class FineWebConfig:
    line_punct_thr: float = 0.12           # keep if >= 12% of lines end in terminal punctuation
    short_line_length: int = 30
    short_line_thr: float = 0.67           # drop if > 67% of lines have <= 30 characters
    char_duplicates_ratio: float = 0.01    # drop if > 1% of characters are in repeated lines
    new_line_ratio: float = 0.3            # drop if newlines / words > 0.3 (list-like pages)
    line_end_punct: tuple[str, ...] = TERMINAL_PUNCT


class FineWebFilter(Filter):
    name = "fineweb"

    def __init__(self, cfg: FineWebConfig = FineWebConfig()):
        self.cfg = cfg

    def check(self, doc: Document) -> str | None:
        c = self.cfg
        lines = [l for l in doc.text.split("\n") if l.strip()]
        if not lines:
            return "empty"
        if sum(l.rstrip().endswith(c.line_end_punct) for l in lines) / len(lines) < c.line_punct_thr:
            return "line_punct_ratio"
        if sum(len(l) <= c.short_line_length for l in lines) / len(lines) > c.short_line_thr:
            return "short_line_ratio"
        _, dup_chars = duplicate_stats(lines)
        if dup_chars / len(doc.text) > c.char_duplicates_ratio:
            return "char_dup_ratio"
        words = doc.text.split()
        if doc.text.count("\n") / max(len(words), 1) > c.new_line_ratio:
            return "list_ratio"
        return None
