"""Key/value caches and the per-call state of inference (prefill, then one token per step).

Sequences of a batch are left-padded to a common length and advance in lockstep, so every row
writes the same cache *slot* at each step; a row's *position* (what the position embedding
sees) is its slot minus its padding. Padding slots are never attended to.

A dense layer caches every slot (``capacity`` = prompt + new tokens, at most ``n_positions``). A
GPT-3 banded layer only ever looks at the last ``local_window`` keys, so its cache is a ring of
``min(local_window, capacity)`` slots: slot t lives at ``t % window``. Attention is
permutation-invariant over keys (positions are already in the embeddings), so the ring's order
does not matter, only which slots it holds.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from megagpt.config import ModelConfig


class KVCache(nn.Module):
    """One layer's key and value buffers, (B, n_head_local, slots, head_dim), allocated once."""

    def __init__(self, batch: int, n_head: int, slots: int, head_dim: int, *, ring: bool,
                 dtype=torch.float32, device=None):
        super().__init__()
        self.ring = ring
        shape = (batch, n_head, slots, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @classmethod
    def of(cls, k: torch.Tensor, v: torch.Tensor, *, ring: bool) -> KVCache:
        """A cache over existing buffers (continuous batching builds its batch's caches this way)."""
        c = cls(0, 0, 0, 0, ring=ring, device="meta")
        c.k, c.v = k, v
        return c

    @property
    def slots(self) -> int:
        return self.k.size(2)

    def update(self, k: torch.Tensor, v: torch.Tensor, start: int):
        """Store the keys/values of slots ``start .. start+T-1``; return what attention reads.

        From an empty cache (``start == 0``, prefill) attention reads the new keys themselves. A
        dense cache then serves slots ``0 .. start+T-1``; a ring serves all of its slots (one new
        token per step: a ring cannot take several tokens after the prefill)."""
        T = k.size(2)
        if not self.ring:
            self.k[:, :, start:start + T] = k
            self.v[:, :, start:start + T] = v
            return (k, v) if start == 0 else (self.k[:, :, :start + T], self.v[:, :, :start + T])
        W = self.slots
        if start == 0:  # keep the last W slots of the prompt
            keep = min(T, W)
            idx = torch.arange(T - keep, T, device=k.device)
            self.k[:, :, idx % W] = k[:, :, T - keep:]
            self.v[:, :, idx % W] = v[:, :, T - keep:]
            return k, v
        if T != 1:
            raise ValueError("a banded layer's ring cache takes one token per step after the prefill")
        self.k[:, :, start % W] = k[:, :, 0]
        self.v[:, :, start % W] = v[:, :, 0]
        return self.k, self.v


class DecodeState:
    """What one inference forward needs besides the tokens: where they go (``start``, the slot of
    the first one), each row's left padding, which slots hold real tokens, and the caches
    (``None``: no cache, the whole sequence is passed each time and ``start`` is 0)."""

    def __init__(self, cfg: ModelConfig, pad: torch.Tensor, capacity: int,
                 caches: list[KVCache] | None = None):
        self.window = cfg.local_window
        self.n_positions = cfg.n_positions
        self.pad = pad  # (B,) left-padding slots per row
        self.capacity = capacity
        self.caches = caches
        self.start = 0
        slots = torch.arange(capacity, device=pad.device)
        self.key_mask = slots.unsqueeze(0) >= pad.unsqueeze(1)  # (B, capacity): real tokens
        self._masks: dict = {}
        self._masks_for: tuple | None = None

    @classmethod
    def allocate(cls, model, pad: torch.Tensor, capacity: int, *, dtype=None) -> DecodeState:
        """A state with empty caches for every layer of ``model`` (a ``megagpt.model.GPT``)."""
        cfg = model.cfg
        B = pad.size(0)
        dtype = dtype or next(model.parameters()).dtype
        caches = []
        for block in model.blocks:
            attn = block.attn
            ring = attn.banded and cfg.local_window < capacity
            slots = cfg.local_window if ring else capacity
            caches.append(KVCache(B, attn.n_head, slots, attn.head_dim, ring=ring, dtype=dtype,
                                  device=pad.device))
        return cls(cfg, pad, capacity, caches)

    def advance(self, n: int) -> None:
        """The tokens just run are in the cache: the next call starts ``n`` slots later."""
        self.start += n

    def positions(self, T: int) -> torch.Tensor:
        """(B, T) positions of slots ``start .. start+T-1``; padding slots get 0."""
        end = self.start + T
        if end > self.capacity:
            raise ValueError(f"slots {self.start}..{end - 1} exceed the cache capacity {self.capacity}")
        slots = torch.arange(self.start, end, device=self.pad.device)
        pos = (slots.unsqueeze(0) - self.pad.unsqueeze(1)).clamp_(min=0)
        if end - int(self.pad.min()) > self.n_positions:
            raise ValueError(f"position {end - 1 - int(self.pad.min())} is outside model.n_positions="
                             f"{self.n_positions}; slide the window (generation does) or shorten the input")
        return pos

    def mask(self, banded: bool, T: int) -> torch.Tensor:
        """(B, 1, T, S) boolean attention mask for the current call, True where a query may see a
        key: causal, real keys only (each query always sees itself, so padding rows stay finite),
        and within ``local_window`` for a banded layer. Built once per call, shared by the layers."""
        key = (self.start, T)
        if self._masks_for != key:
            self._masks, self._masks_for = {}, key
        if banded not in self._masks:
            self._masks[banded] = self._build_mask(banded, T)
        return self._masks[banded]

    def _build_mask(self, banded: bool, T: int) -> torch.Tensor:
        dev = self.pad.device
        ring = banded and self.caches is not None and self.start > 0 and self.window < self.capacity
        if ring:  # ring slot j holds the newest slot t <= start with t = j (mod window)
            W = self.window
            j = torch.arange(W, device=dev)
            t = self.start - (self.start - j) % W  # (W,)
            real = self.key_mask[:, t.clamp(min=0)] & (t >= 0)  # (B, W)
            m = real.unsqueeze(1) | (t == self.start).unsqueeze(0).unsqueeze(0)  # (B, 1, W)
            return m.unsqueeze(1)  # (B, 1, 1, W)
        q = torch.arange(self.start, self.start + T, device=dev)  # this call's query slots
        return attention_mask(q, self.key_mask[:, :self.start + T], self.window if banded else None)


def attention_mask(q_slots: torch.Tensor, key_mask: torch.Tensor, window: int | None) -> torch.Tensor:
    """(B, 1, T, S) boolean mask for queries at slots ``q_slots`` (T,) over keys at slots 0..S-1:
    causal, real keys only (``key_mask`` (B, S)), within ``window`` when given; each query always
    sees itself, so padding rows stay finite."""
    q = q_slots.unsqueeze(1)  # (T, 1)
    k = torch.arange(key_mask.size(1), device=q.device).unsqueeze(0)  # (1, S)
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    m = (allowed.unsqueeze(0) & key_mask.unsqueeze(1)) | (k == q).unsqueeze(0)  # (B, T, S)
    return m.unsqueeze(1)
