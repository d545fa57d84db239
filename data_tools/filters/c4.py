"""C4 rules (Raffel et al. 2020, section 2.2): line rules drop lines, document rules drop documents."""
from __future__ import annotations

import re
from dataclasses import dataclass

from data_tools.document import Document
from data_tools.filters.base import TERMINAL_PUNCT, Filter

_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f]+(?=[\s\"'\u201d\u2019)]|$)")


@dataclass
class C4Config:
    min_words_per_line: int = 5            # the paper's "at least five words"
    min_sentences: int = 3
    max_word_length: int = 1000
    line_end_punct: tuple[str, ...] = TERMINAL_PUNCT
    drop_line_phrases: tuple[str, ...] = ("javascript", "terms of use", "privacy policy",
                                          "cookie policy", "uses cookies", "use of cookies",
                                          "use cookies")
    drop_doc_phrases: tuple[str, ...] = ("lorem ipsum",)
    drop_curly_brace: bool = True
    bad_words: tuple[str, ...] = ()        # the paper's blocklist is not bundled; pass one in


class C4Filter(Filter):
    """Keeps lines ending in terminal punctuation with enough words and no boilerplate phrase;
    drops documents with lorem ipsum, a curly brace, a bad word, or too few sentences left."""
    name = "c4"

    def __init__(self, cfg: C4Config = C4Config()):
        self.cfg = cfg
        self.bad = {w.lower() for w in cfg.bad_words}

    def check(self, doc: Document) -> str | None:
        c = self.cfg
        low = doc.text.lower()
        if any(p in low for p in c.drop_doc_phrases):
            return "lorem_ipsum"
        if c.drop_curly_brace and "{" in doc.text:
            return "curly_brace"
        if self.bad and set(re.findall(r"\w+", low)) & self.bad:
            return "bad_words"
        kept = []
        for line in doc.text.split("\n"):
            s = line.strip()
            if not s:
                continue
            words = s.split()
            ls = s.lower()
            if any(len(w) > c.max_word_length for w in words):
                self._line_drop("long_word")
            elif not s.endswith(c.line_end_punct):
                self._line_drop("no_terminal_punct")
            elif len(words) < c.min_words_per_line:
                self._line_drop("few_words")
            elif any(p in ls for p in c.drop_line_phrases):
                self._line_drop("boilerplate_phrase")
            else:
                kept.append(s)
        text = "\n".join(kept)
        if len(_SENTENCE_END.findall(text)) < c.min_sentences:
            return "few_sentences"
        doc.text = text
        return None
