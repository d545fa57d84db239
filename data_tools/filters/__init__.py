"""Document filters. Each answers keep-or-drop with a reason; ``Filter.__call__`` is the step."""
from data_tools.filters.base import Filter
from data_tools.filters.c4 import C4Config, C4Filter
from data_tools.filters.fineweb import FineWebConfig, FineWebFilter
from data_tools.filters.gopher import GopherQuality, GopherQualityConfig, GopherRepetition, GopherRepetitionConfig
from data_tools.filters.lang import LanguageConfig, LanguageFilter
from data_tools.filters.url import UrlConfig, UrlFilter

__all__ = ["Filter", "C4Config", "C4Filter", "FineWebConfig", "FineWebFilter", "GopherQuality", "GopherQualityConfig",
           "GopherRepetition", "GopherRepetitionConfig", "LanguageConfig", "LanguageFilter", "UrlConfig", "UrlFilter"]
