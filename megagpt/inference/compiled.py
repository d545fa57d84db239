"""A compiled one-token decode step over a static key/value cache (gpt-fast's approach).

``torch.compile`` wants the same shapes at every call. The eager cache (``megagpt.model.cache``) grows
what attention reads by one slot per step and keeps GPT-3's banded layers in rings; here every
layer instead gets a buffer of a fixed ``capacity`` written with ``index_copy_`` at a slot given
as a tensor, and attention reads all ``capacity`` slots under a mask (causal, real tokens only,
and the band for a banded layer), so one graph serves every step of a generation. The prefill
runs eagerly through the same buffers. Masked slots get zero weight, so the logits equal the
eager cache's up to float rounding (same greedy tokens; tests check both).

Capacities are rounded up to a multiple of 64 so that prompts of different lengths share a
compiled graph; each (batch, capacity) pair compiles once per model.
"""
from __future__ import annotations

import torch

from megagpt.model.cache import attention_mask
from megagpt.model.gpt import GPT

_ROUND = 64


class _StaticCache:
    def __init__(self, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor):
        self.k, self.v, self.slots = k, v, slots

    def update(self, k, v, start):
        self.k.index_copy_(2, self.slots, k)
        self.v.index_copy_(2, self.slots, v)
        return self.k, self.v


class StaticState:
    """The ``DecodeState`` interface over fixed-size buffers: ``slots`` (T,) are the cache slots of
    this call's tokens, ``key_mask`` (B, capacity) marks the slots that hold real tokens."""

    start = 0  # unused: the slots are a tensor

    def __init__(self, cfg, slots: torch.Tensor, pad: torch.Tensor, key_mask: torch.Tensor,
                 ks: list[torch.Tensor], vs: list[torch.Tensor]):
        self.window = cfg.local_window
        self.slots, self.pad, self.key_mask = slots, pad, key_mask
        self.caches = [_StaticCache(k, v, slots) for k, v in zip(ks, vs)]

    def positions(self, T: int) -> torch.Tensor:
        return (self.slots.unsqueeze(0) - self.pad.unsqueeze(1)).clamp(min=0)

    def mask(self, banded: bool, T: int) -> torch.Tensor:
        return attention_mask(self.slots, self.key_mask, self.window if banded else None)


def _step(model, idx, slots, pad, key_mask, ks, vs):
    return model.next_token_logits(idx, StaticState(model.cfg, slots, pad, key_mask, ks, vs))


def check_compilable(model) -> None:
    """A ValueError where the compiled step is not supported."""
    if getattr(model, "quantized", None):
        raise ValueError("compiled decoding runs fp32/bf16/fp16 weights; int8 decodes eagerly "
                         "(FBGEMM's packed matmul breaks the graph, and eager int8 measured faster).")
    if model.ps.tp_size > 1:
        raise ValueError("compiled decoding runs at tensor-parallel size 1 (the all-reduces would "
                         "break the graph in every layer); decode tensor-parallel models eagerly.")


class StaticDecoder:
    """Prefill (eager) and one-token steps (compiled once per model, batch and capacity)."""

    def __init__(self, model: GPT, batch: int, capacity: int, *, compile: bool = True):
        check_compilable(model)
        p = next(model.parameters())
        self.model, self.device = model, p.device
        n_pos = model.cfg.n_positions
        self.capacity = min(n_pos, -(-capacity // _ROUND) * _ROUND)
        shape = (batch, model.cfg.n_head, self.capacity, model.cfg.head_dim)
        self.ks = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.blocks]
        self.vs = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.blocks]
        self.start = 0
        if compile:
            if getattr(model, "_compiled_step", None) is None:
                model._compiled_step = torch.compile(_step, dynamic=False)
            self._run = model._compiled_step
        else:
            self._run = _step

    @property
    def full(self) -> bool:
        return self.start >= self.capacity

    def prefill(self, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) after ``tokens`` (B, T), left-padded by ``pad``; empties the cache."""
        T = tokens.size(1)
        if T > self.capacity:
            raise ValueError(f"{T} tokens exceed the static cache's capacity {self.capacity}")
        self.pad = pad
        self.key_mask = torch.arange(self.capacity, device=self.device).unsqueeze(0) >= pad.unsqueeze(1)
        slots = torch.arange(T, device=self.device)
        logits = _step(self.model, tokens, slots, pad, self.key_mask, self.ks, self.vs)
        self.start = T
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) after one more token per row, ``tokens`` (B, 1)."""
        slots = torch.full((1,), self.start, dtype=torch.long, device=self.device)
        logits = self._run(self.model, tokens, slots, self.pad, self.key_mask, self.ks, self.vs)
        self.start += 1
        return logits
