"""The value checks every config section shares: ``ConfigError`` (one sentence naming the key),
type checks against a field's annotation, and sections built from plain dicts with unknown keys
rejected."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any


class ConfigError(ValueError):
    """A configuration value a user has to fix; the message names the key."""


_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
          "list": "a list", "dict": "a mapping"}


def check_value(where: str, value, annotation: str, *, error=None) -> None:
    """Check ``value`` against a dataclass field's annotation (``int``, ``float | None``, ...):
    booleans are not integers, numbers are finite and not negative (no size, count, rate or seed
    here can be), strings are not numbers. Raises ``error`` (default ConfigError) naming ``where``."""
    error = error or ConfigError
    kinds = [t.strip() for t in str(annotation).split("|")]
    if value is None:
        if "None" in kinds:
            return
        raise error(f"{where} must be set, got null.")
    kinds = [k.split("[")[0] for k in kinds if k != "None"]
    known = [k for k in kinds if k in _KINDS or k in ("tuple", "Any")]
    if not known or "Any" in known:
        return
    ok = False
    for k in known:
        if k == "bool":
            ok |= isinstance(value, bool)
        elif k == "int":
            ok |= isinstance(value, int) and not isinstance(value, bool)
        elif k == "float":
            ok |= isinstance(value, (int, float)) and not isinstance(value, bool)
        elif k == "str":
            ok |= isinstance(value, str)
        elif k in ("list", "tuple"):
            ok |= isinstance(value, (list, tuple)) or ("str" not in known and isinstance(value, str))
        elif k == "dict":
            ok |= isinstance(value, Mapping)
    want = " or ".join(_KINDS.get(k, "a list") for k in known)
    if not ok:
        raise error(f"{where} must be {want}, got {value!r}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise error(f"{where} must be a finite number, got {value!r}.")
        if value < 0:
            raise error(f"{where} must not be negative, got {value!r}.")


def from_dict(cls, data: Mapping[str, Any], where: str = ""):
    """Build dataclass ``cls`` from ``data``, rejecting keys it does not declare and values of the
    wrong type (see ``check_value``). ``where`` is the section's place in the messages (``train``:
    "train.lr must be ..."); a top-level config (data_tools' ``PipelineConfig``) leaves it empty."""
    here = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{here}expected a mapping of keys to values, got {type(data).__name__}.")
    allowed = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{here}unknown key '{unknown[0]}'; allowed keys are {', '.join(sorted(allowed))}.")
    for key, value in data.items():
        check_value(f"{where}.{key}" if where else key, value, allowed[key].type)
    return cls(**data)


def _positive(where: str, **values) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}.{key} must be a positive integer, got {value!r}.")


def _probability(where: str, **values) -> None:
    for key, value in values.items():
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{where}.{key} must be a probability in [0, 1), got {value!r}.")
