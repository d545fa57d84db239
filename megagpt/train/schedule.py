"""GPT-3's optimisation schedule: linear warmup, cosine decay to a floor, batch-size ramp-up.

Both are functions of tokens seen (GPT-3 warms up over 375M tokens and decays over 260B), so they
stay right while the batch size ramps. Steps are converted with the full batch when a config
gives steps instead of tokens.
"""
from __future__ import annotations

import math


class WarmupCosineLR:
    """lr = peak * factor(tokens): linear warmup from 0, then cosine to ``min_ratio`` * peak.

    Has the interface DeepSpeed expects of ``lr_scheduler`` (step, get_lr, state_dict,
    load_state_dict); ``step`` is told how many tokens the finished step consumed.
    """

    def __init__(self, optimizer, *, warmup_tokens: int, decay_tokens: int, min_ratio: float = 0.1):
        if decay_tokens <= warmup_tokens:
            raise ValueError(f"train.lr_decay_tokens ({decay_tokens}) must exceed "
                             f"train.lr_warmup_tokens ({warmup_tokens}).")
        self.optimizer = optimizer
        self.peak = [g["lr"] for g in optimizer.param_groups]
        self.warmup_tokens, self.decay_tokens, self.min_ratio = warmup_tokens, decay_tokens, min_ratio
        self.tokens = 0
        self._apply()

    def factor(self, tokens: int) -> float:
        if tokens < self.warmup_tokens:
            return tokens / self.warmup_tokens
        if tokens >= self.decay_tokens:
            return self.min_ratio
        progress = (tokens - self.warmup_tokens) / (self.decay_tokens - self.warmup_tokens)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _apply(self):
        f = self.factor(self.tokens)
        for group, peak in zip(self.optimizer.param_groups, self.peak):
            group["lr"] = peak * f

    def step(self, tokens: int | None = None):
        # DeepSpeed calls step() with no argument after each optimizer step; the loop has set
        # ``pending_tokens`` to what that step consumed.
        self.tokens += self.pending_tokens if tokens is None else tokens
        self._apply()

    pending_tokens = 0

    def get_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self):
        return self.get_lr()

    def state_dict(self):
        return {"tokens": self.tokens, "peak": self.peak}

    def load_state_dict(self, state):
        self.tokens, self.peak = state["tokens"], state["peak"]
        self._apply()


class WarmupLinearLR(WarmupCosineLR):
    """GPT-1's fine-tuning schedule: linear warmup from 0, then linear decay to 0 at
    ``decay_tokens`` (any unit the loop counts in: fine-tuning counts samples)."""

    def __init__(self, optimizer, *, warmup_tokens: int, decay_tokens: int):
        super().__init__(optimizer, warmup_tokens=warmup_tokens, decay_tokens=decay_tokens, min_ratio=0.0)

    def factor(self, tokens: int) -> float:
        if tokens < self.warmup_tokens:
            return tokens / self.warmup_tokens
        return max(0.0, (self.decay_tokens - tokens) / (self.decay_tokens - self.warmup_tokens))


def rampup_batch_size(tokens_seen: int, *, full: int, start: int, rampup_tokens: int,
                      multiple: int) -> int:
    """GPT-3's batch ramp: linear from ``start`` to ``full`` samples over ``rampup_tokens``,
    rounded down to a multiple of micro-batch x data-parallel size."""
    if rampup_tokens <= 0 or tokens_seen >= rampup_tokens:
        return full
    size = start + (full - start) * tokens_seen / rampup_tokens
    return max(multiple, min(full, int(size) // multiple * multiple))
