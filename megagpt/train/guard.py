"""The step guard: before the last backward of every step all ranks agree, through the one small
all-reduce that also averages the loss, whether the step is bad (a non-finite loss on any rank, or
a spike: a z-score above ``zscore`` over the trailing accepted losses and at least ``min_ratio``
times their mean). A bad step is not applied on any rank (``step.optimizer_step`` discards its
gradients through DeepSpeed's own overflow path) and its samples are left out of the stream
(``cursor.DataCursor``); after ``rewind_after`` bad steps in a row the Trainer rewinds
(``resume.CheckpointPolicy.rewind``) and leaves the data in between out."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megagpt.config.guard import GuardConfig


@dataclass
class Verdict:
    loss: float  # the step's loss, averaged over micro-batches and ranks
    reason: str | None = None  # why the step is bad; None for a good one
    applied: bool = True  # whether the update went in (a bad step is skipped where the layout can)

    @property
    def bad(self) -> bool:
        return self.reason is not None


class StepGuard:
    def __init__(self, cfg: GuardConfig, *, check_grad_norm: bool, state: dict | None = None):
        self.cfg, self.check_grad_norm = cfg, check_grad_norm
        state = state or {}
        self.history = deque(state.get("history", []), maxlen=cfg.window)
        self.bad_in_row = 0
        self.skipped = int(state.get("skipped", 0))
        self.rewinds = int(state.get("rewinds", 0))

    def state_dict(self) -> dict:
        return {"history": list(self.history), "skipped": self.skipped, "rewinds": self.rewinds}

    def agree(self, local_loss: torch.Tensor, device) -> Verdict:
        """``local_loss``: this rank's loss (mean over its micro-batches). One all-reduce over the
        world of [loss, one non-finite flag per rank]; every rank reaches the same verdict."""
        world, rank = dist.get_world_size(), dist.get_rank()
        value = local_loss.detach().float().reshape(1).cpu()
        finite = bool(torch.isfinite(value).all())
        flags = torch.zeros(world)
        flags[rank] = 0.0 if finite else 1.0
        both = torch.cat([value if finite else torch.zeros(1), flags]).to(device)
        if world > 1:
            dist.all_reduce(both)
        both = both.cpu()
        loss = float(both[0] / world)
        bad_ranks = [r for r in range(world) if both[1 + r] > 0]
        if bad_ranks:
            loss = float("nan")
        return Verdict(loss, self.judge(loss, bad_ranks))

    def judge(self, loss: float, bad_ranks=()) -> str | None:
        """Why a step with this (agreed) loss is bad, or None."""
        cfg = self.cfg
        if not cfg.enabled:
            return None
        if not math.isfinite(loss):
            if not cfg.nonfinite:
                return None
            where = f" on rank{'s' if len(bad_ranks) > 1 else ''} {', '.join(map(str, bad_ranks))}" if bad_ranks else ""
            return f"non-finite loss{where}"
        if cfg.spikes and len(self.history) >= cfg.min_history:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / len(self.history))
            z = (loss - mean) / max(std, 1e-6 * abs(mean), 1e-12)
            if z > cfg.zscore and loss >= cfg.min_ratio * mean:
                return (f"loss spike {loss:.4f} (trailing mean {mean:.4f} over {len(self.history)} steps, "
                        f"z-score {z:.1f})")
        return None

    def after_step(self, verdict: Verdict, grad_norm) -> Verdict:
        """A step whose gradient norm came out non-finite (outside fp16, where the loss scaler owns
        that case) was skipped by DeepSpeed: count it as bad."""
        if (not verdict.bad and self.cfg.enabled and self.cfg.nonfinite and self.check_grad_norm
                and grad_norm is not None and not math.isfinite(float(grad_norm))):
            verdict.reason, verdict.applied = "non-finite gradient norm", False
        return verdict

    def record(self, verdict: Verdict) -> bool:
        """Book a step; True when ``rewind_after`` bad steps have come in a row."""
        if not verdict.bad:
            self.history.append(verdict.loss)
            self.bad_in_row = 0
            return False
        self.skipped += not verdict.applied
        self.bad_in_row += 1
        return self.bad_in_row >= self.cfg.rewind_after

    def rewound(self, history) -> None:
        """The run went back to a checkpoint whose accepted losses were ``history``."""
        self.history.clear()
        self.history.extend(history)
        self.rewinds += 1
        self.bad_in_row = 0

