"""Failures on purpose (``train.fault``, tests only): a NaN loss, a loss spike, a stopped rank or
a crashed rank at a chosen step, so the tests run the guard, the watchdog and the restart path of
a real run rather than a simulation of them."""
from __future__ import annotations

import os
import signal
import sys

import torch
import torch.distributed as dist

from megagpt.config.guard import FaultConfig


class Fault:
    def __init__(self, cfg: FaultConfig | None):
        self.cfg = cfg
        self.tries = 0
        self.mine = cfg is not None and dist.get_rank() == cfg.rank

    def _fires(self, step: int) -> bool:
        return self.mine and step == self.cfg.step

    def before_step(self, step: int) -> None:
        """``step`` (1-based) is about to be trained: a ``stop`` or ``crash`` fault acts now."""
        if not self._fires(step) or self.cfg.kind not in ("stop", "crash"):
            return
        if self.cfg.kind == "crash" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return  # a restarted job runs through: the crash happened in its first life
        print(f"fault: rank {dist.get_rank()} {'stops (SIGSTOP)' if self.cfg.kind == 'stop' else 'crashes (SIGKILL)'} "
              f"before step {step}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP if self.cfg.kind == "stop" else signal.SIGKILL)

    def loss(self, loss: torch.Tensor, step: int, last_micro_batch: bool) -> torch.Tensor:
        """The micro-batch loss, made NaN or ``spike_factor`` times larger on this rank's first
        ``count`` tries of the fault's step."""
        if not self._fires(step) or self.cfg.kind not in ("nan", "spike") or self.tries >= self.cfg.count:
            return loss
        if last_micro_batch:
            self.tries += 1
        return loss * (float("nan") if self.cfg.kind == "nan" else self.cfg.spike_factor)
