"""Offline data pipeline: raw dumps -> cleaned, filtered, deduplicated, tokenized Megatron shards.

Every step follows one contract (datatrove style): it takes an iterator of ``Document`` and yields
``Document``; filters answer keep-or-drop with a reason, and every reason is counted in ``Stats``.
"""
from data_tools.document import Document, ErrorLog, InputError, Stats

__all__ = ["Document", "ErrorLog", "InputError", "Stats"]
