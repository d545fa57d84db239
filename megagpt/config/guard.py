"""The ``train.guard`` section (what counts as a bad step, when to rewind) and ``train.fault``
(failures injected on purpose, for tests). Values only: the guard itself is ``megagpt.train.guard``."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from megagpt.config.checks import ConfigError, _positive, from_dict

FAULT_KINDS = ("nan", "spike", "stop", "crash")
FAULTS_ALLOWED = "MEGAGPT_ALLOW_FAULTS"


@dataclass
class GuardConfig:
    """Every step all ranks agree whether the loss is non-finite or a spike (a z-score above
    ``zscore`` over the last ``window`` accepted losses AND at least ``min_ratio`` times their mean);
    such a step is skipped. After ``rewind_after`` bad steps in a row the run reloads the newest
    whole checkpoint at least ``rewind_min_steps`` steps older and skips the data in between."""

    enabled: bool = True
    nonfinite: bool = True  # skip a step whose loss (or, outside fp16, gradient norm) is NaN/inf
    spikes: bool = True
    window: int = 100  # trailing accepted losses the spike test compares against
    min_history: int = 20  # no spike test before this many accepted steps
    zscore: float = 6.0
    min_ratio: float = 1.3
    rewind_after: int = 3  # K consecutive bad steps
    rewind_min_steps: int = 10  # N: rewind to a checkpoint at least this many steps older
    max_rewinds: int = 10  # then the run stops: the loss has moved, not spiked

    def validate(self) -> GuardConfig:
        w = "train.guard"
        _positive(w, window=self.window, rewind_after=self.rewind_after, max_rewinds=self.max_rewinds)
        if not isinstance(self.min_history, int) or not 2 <= self.min_history <= self.window:
            raise ConfigError(f"{w}.min_history must be an integer in [2, window={self.window}], "
                              f"got {self.min_history!r}.")
        if not self.zscore > 0:
            raise ConfigError(f"{w}.zscore must be > 0, got {self.zscore!r}.")
        if not self.min_ratio >= 1.0:
            raise ConfigError(f"{w}.min_ratio must be >= 1 (a spike is above the trailing mean), got "
                              f"{self.min_ratio!r}.")
        if self.rewind_min_steps < 0:
            raise ConfigError(f"{w}.rewind_min_steps must be >= 0, got {self.rewind_min_steps!r}.")
        return self


@dataclass
class FaultConfig:
    """One failure injected on purpose: rank ``rank`` at optimizer step ``step`` (the step being
    trained, 1-based) makes its loss NaN (``nan``) or ``spike_factor`` times larger (``spike``) on
    its first ``count`` tries of that step, stops itself with SIGSTOP (``stop``: a hang), or kills
    itself with SIGKILL (``crash``, only in the first life of a job that torchrun restarts).
    Refused unless the environment has MEGAGPT_ALLOW_FAULTS=1: it exists for the tests."""

    kind: str = "nan"
    step: int = 1
    rank: int = 0
    count: int = 1
    spike_factor: float = 20.0

    def validate(self) -> FaultConfig:
        if os.environ.get(FAULTS_ALLOWED) != "1":
            raise ConfigError(f"train.fault injects a failure on purpose and only runs in tests; set "
                              f"{FAULTS_ALLOWED}=1 in the environment to allow it.")
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"train.fault.kind must be one of {', '.join(FAULT_KINDS)}, got {self.kind!r}.")
        _positive("train.fault", step=self.step, count=self.count)
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ConfigError(f"train.fault.rank must be an integer >= 0, got {self.rank!r}.")
        return self


def section(cls, value: Any, where: str):
    """A nested section given as a mapping (from YAML or overrides), built and validated."""
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {value!r}.")
    return from_dict(cls, value, where).validate()


def skip_windows(value: Any, where: str = "train.skip_data") -> list[list[int]]:
    """``train.skip_data``: [[start, end], ...] sample ranges of the training stream to leave out."""
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(w, (list, tuple)) and len(w) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  for v in w) and 0 <= w[0] < w[1] for w in value):
        raise ConfigError(f"{where} must be a list of [start, end] sample ranges with 0 <= start < end, "
                          f"got {value!r}.")
    return [list(w) for w in value]
