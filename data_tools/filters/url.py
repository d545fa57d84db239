"""URL blocklist hook: blocked domains (and their subdomains) from a list or file, plus any
user callable ``hook(url) -> reason | None``."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from data_tools.document import Document
from data_tools.filters.base import Filter


@dataclass
class UrlConfig:
    blocked_domains: tuple[str, ...] = ()
    blocklist_file: str | None = None      # one domain a line, '#' comments
    blocked_substrings: tuple[str, ...] = ()


class UrlFilter(Filter):
    name = "url"

    def __init__(self, cfg: UrlConfig = UrlConfig(), hook: Callable[[str], str | None] | None = None):
        self.cfg = cfg
        self.hook = hook
        self.domains = {d.lower().strip(".") for d in cfg.blocked_domains}
        if cfg.blocklist_file:
            for line in Path(cfg.blocklist_file).read_text().splitlines():
                line = line.split("#", 1)[0].strip().lower()
                if line:
                    self.domains.add(line.strip("."))

    def check(self, doc: Document) -> str | None:
        if not doc.url:
            return None
        host = (urlsplit(doc.url).hostname or "").lower()
        parts = host.split(".")
        # example.com blocks www.example.com and a.b.example.com too
        if any(".".join(parts[i:]) in self.domains for i in range(len(parts))):
            return "blocked_domain"
        low = doc.url.lower()
        if any(s in low for s in self.cfg.blocked_substrings):
            return "blocked_substring"
        if self.hook is not None:
            return self.hook(doc.url)
        return None
