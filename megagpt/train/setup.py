"""Run setup: the step between a validated run file and a built engine. It decides what the run
file leaves to megagpt (``"auto"`` DeepSpeed values, through ``autotune`` and the memory model),
then checks the decided values as ``validate_run`` checks written ones. Entry points call it
before any process group exists."""
from __future__ import annotations

from megagpt.config import RunConfig, check_stage, validate_run
from megagpt.train.autotune import resolve


def setup_run(run: RunConfig, world_size: int) -> RunConfig:
    """``validate_run``, then every ``"auto"`` resolved (each choice a sentence in ``run.notes``,
    printed by the trainer), then the ZeRO stage checked against the layout."""
    validate_run(run, world_size)
    run.notes = resolve(run, world_size)
    check_stage(run)
    return run
