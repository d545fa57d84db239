"""Cleaning step: mojibake repair (ftfy), Unicode NFC, whitespace normalisation."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterator

from data_tools.document import Document, Stats

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000\u202f\u205f]+")
_BLANKS = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_EDGES = re.compile(r"[^\S\n]*\n[^\S\n]*")  # whitespace around a line break (str.strip's whitespace)


@dataclass
class CleanConfig:
    fix_mojibake: bool = True
    nfc: bool = True
    whitespace: bool = True


def clean_text(text: str, cfg: CleanConfig = CleanConfig()) -> str:
    if cfg.fix_mojibake and not text.isascii():
        # ftfy only matters for non-ASCII text; skipping it for ASCII saves most of its cost
        import ftfy
        text = ftfy.fix_text(text, normalization="NFC" if cfg.nfc else None)
    elif cfg.nfc and not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if cfg.whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", text)
        # every line's space runs become one space and its ends are stripped, in passes over the
        # whole text (the text's own two ends go with the final strip)
        text = _LINE_EDGES.sub("\n", _SPACES.sub(" ", text))
        text = _BLANKS.sub("\n\n", text).strip()
    return text


def clean(docs: Iterator[Document], stats: Stats, cfg: CleanConfig = CleanConfig()) -> Iterator[Document]:
    """Step: cleaned documents; ones left empty are dropped with reason ``empty``."""
    for doc in docs:
        before = doc.text
        doc.text = clean_text(doc.text, cfg)
        if doc.text != before:
            stats.count("clean", "changed")
        if not doc.text:
            stats.count("clean", "dropped:empty")
            continue
        stats.count("clean", "kept")
        yield doc
