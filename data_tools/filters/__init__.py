"""Document filters. Each answers keep-or-drop with a reason; ``Filter.__call__`` is the step."""
from data_tools.filters.base import Filter  # noqa: F401
from data_tools.filters.c4 import C4Config, C4Filter  # noqa: F401
from data_tools.filters.fineweb import FineWebConfig, FineWebFilter  # noqa: F401
from data_tools.filters.gopher import GopherQuality, GopherQualityConfig, GopherRepetition, GopherRepetitionConfig  # noqa: F401
from data_tools.filters.lang import LanguageConfig, LanguageFilter  # noqa: F401
from data_tools.filters.url import UrlConfig, UrlFilter  # noqa: F401
