"""Offline language id with py3langid (its model ships inside the wheel: no download at run time)."""
from __future__ import annotations

from dataclasses import dataclass

from data_tools.document import Document
from data_tools.filters.base import Filter

_IDENTIFIER = None


def identifier():
    global _IDENTIFIER  # one model per process; loading it costs ~0.3 s
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


@dataclass
class LanguageConfig:
    languages: tuple[str, ...] = ("en",)   # ISO 639-1 codes to keep; empty keeps all
    min_score: float = 0.65                # FineWeb's threshold on the top language probability
    max_chars: int = 20_000                # the first characters decide; books need not be read whole


class LanguageFilter(Filter):
    name = "language"

    def __init__(self, cfg: LanguageConfig = LanguageConfig()):
        self.cfg = cfg

    def check(self, doc: Document) -> str | None:
        lang, score = identifier().classify(doc.text[: self.cfg.max_chars])
        doc.meta["lang"], doc.meta["lang_score"] = lang, round(float(score), 4)
        if self.cfg.languages and lang not in self.cfg.languages:
            return f"lang_{lang}"
        if score < self.cfg.min_score:
            return "low_lang_score"
        return None
