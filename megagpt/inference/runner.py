"""The tensor side of decoding: how a batch's rows run through the model, behind one interface the
engine (``megagpt.inference.batching``) drives. Three kinds:

- ``CachedRunner``: key/value caches of a running batch whose rows join and leave between steps
  (continuous batching; the server's, and ``generate``'s default).
- ``StaticRunner``: ``generate(compile=True)``'s compiled one-token step over a static cache
  (``megagpt.inference.compiled``), for one job whose rows leave together.
- ``RecomputeRunner``: no cache, every step runs each row's last ``n_positions`` tokens again
  (``generate(use_cache=False)``, the reference the caches are tested against).

The interface: ``prefill(tokens, pad, capacity)`` runs new left-padded rows and returns their
last logits (and hidden states, for prompt log-probabilities, where the runner has them);
``join(keep, slots)`` lets the prefilled rows ``keep`` into the batch, each needing up to
``slots`` more cache slots; ``keep(idx)`` keeps only those batch rows; ``step(tokens)`` runs one
token per row. When ``full``, the next token has no cache slot: the engine calls
``refill(tokens, pad)`` instead, with every row's last ``window`` tokens (the window slides: the
context never exceeds ``n_positions``).
"""
from __future__ import annotations

import torch

from megagpt.inference.compiled import StaticDecoder, check_compilable
from megagpt.model.cache import DecodeState, KVCache


def slide_keep(n_positions: int) -> int:
    """Tokens a row keeps when its window slides: the last three quarters of the context (a prompt
    longer than the context starts with as many)."""
    return n_positions - max(1, n_positions // 4)


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` as one (B, longest) tensor, each row right-aligned after ``pad_id`` padding, and the
    padding per row (B,)."""
    P = max(len(r) for r in rows)
    idx = torch.full((len(rows), P), pad_id, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        idx[i, P - len(r):] = torch.tensor(r, dtype=torch.long, device=device)
    pad = torch.tensor([P - len(r) for r in rows], dtype=torch.long, device=device)
    return idx, pad


def _run(model, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
    logits = model.next_token_logits(tokens, state)
    state.advance(tokens.size(1))
    return logits


class CachedRunner:
    """The running batch's key/value caches. Rows advance in lockstep, each writing cache slot
    ``S`` at a step; a row's position is its slot minus its left padding. A prefilled group joins
    with its caches copied so that its last prompt slot lines up with the batch's last filled slot
    (the batch is shifted right first when the group is longer than ``S``); when every remaining
    row has left padding the batch is shifted left, so the caches stay about as long as the
    longest row in flight."""

    def __init__(self, model):
        self.model, self.cfg = model, model.cfg
        self.banded = [bool(b.attn.banded) for b in model.blocks]
        self.window = slide_keep(model.cfg.n_positions)
        self.state: DecodeState | None = None
        self.ends = torch.zeros(0, dtype=torch.long)  # per row: the slot count it can need at most
        self._pending: DecodeState | None = None

    @property
    def full(self) -> bool:
        return self.state.start == self.state.capacity

    def prefill(self, tokens: torch.Tensor, pad: torch.Tensor, capacity: int):
        model = self.model
        state = DecodeState.allocate(model, pad, capacity)
        h = model.hidden_states(tokens, state)
        state.advance(tokens.size(1))
        self._pending = state
        return model.head.gather(model.head(h[:, -1:]))[:, 0], h  # what next_token_logits computes

    def join(self, keep: list[int], slots: list[int]) -> None:
        new, self._pending = self._pending, None
        if not keep:
            return
        P, cap = new.start, new.capacity
        S_old = self.state.start if self.state is not None else 0
        S = max(S_old, P)
        ends = torch.cat([self.ends + (S - S_old), S + torch.tensor(slots, dtype=torch.long)])
        cap_new = int(ends.max())
        self.ends = ends
        if self.state is None and len(keep) == new.pad.size(0) and cap_new == cap:
            self.state = new  # the whole group into an empty batch: its caches as they are
            return
        keep_t = torch.tensor(keep, device=new.pad.device)
        caches = self._relayout([_rows(c, keep_t) for c in new.caches], cap, S, P - S, cap_new)
        pad = new.pad[keep_t] + (S - P)
        if self.state is not None:
            old = self._relayout(self.state.caches, self.state.capacity, S, S_old - S, cap_new)
            caches = [_cat(a, b) for a, b in zip(old, caches)]
            pad = torch.cat([self.state.pad + (S - S_old), pad])
        self._set_state(pad, cap_new, caches, S)

    def keep(self, idx: list[int]) -> None:
        if not idx:
            self.reset()
            return
        st = self.state
        keep_t = torch.tensor(idx, device=st.pad.device)
        pad, S, cap = st.pad[keep_t], st.start, st.capacity
        caches = [_rows(c, keep_t) for c in st.caches]
        ends = self.ends[torch.tensor(idx)]
        shift = int(pad.min())
        if shift:  # every remaining row starts later: move the batch left, shrink the caches
            new_cap = int(ends.max()) - shift
            caches = self._relayout(caches, cap, S - shift, shift, new_cap)
            pad, S, ends, cap = pad - shift, S - shift, ends - shift, new_cap
        self.ends = ends
        self._set_state(pad, cap, caches, S)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return _run(self.model, tokens, self.state)

    def refill(self, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """The batch again from ``tokens`` (B, T), into the same buffers (the cache was full)."""
        cap = self.state.capacity
        self.state = DecodeState(self.cfg, pad, cap, self.state.caches)
        self.ends = torch.full_like(self.ends, cap)
        return _run(self.model, tokens, self.state)

    def reset(self) -> None:
        self.state, self._pending, self.ends = None, None, torch.zeros(0, dtype=torch.long)

    def _layout(self, capacity: int, layer: int) -> tuple[bool, int]:
        ring = self.banded[layer] and self.cfg.local_window < capacity
        return ring, (self.cfg.local_window if ring else capacity)

    def _relayout(self, caches, old_cap: int, S_new: int, shift: int, new_cap: int) -> list[KVCache]:
        new = []
        for layer, c in enumerate(caches):
            old_ring = self._layout(old_cap, layer)[0]
            ring, slots = self._layout(new_cap, layer)
            k, v = (_remap(t, old_ring=old_ring, new_ring=ring, new_slots=slots, S_new=S_new, shift=shift,
                           banded=self.banded[layer], window=self.cfg.local_window) for t in (c.k, c.v))
            new.append(KVCache.of(k, v, ring=ring))
        return new

    def _set_state(self, pad: torch.Tensor, capacity: int, caches, S: int) -> None:
        self.state = DecodeState(self.cfg, pad, capacity, caches)
        self.state.start = S


class StaticRunner:
    """The compiled one-token step over a static cache, for one job whose rows stay in the batch
    until all of them have finished (``Job.lockstep``: ``generate``'s)."""

    state = None

    def __init__(self, model):
        check_compilable(model)
        self.model, self.window = model, slide_keep(model.cfg.n_positions)
        self.decoder: StaticDecoder | None = None

    @property
    def full(self) -> bool:
        return self.decoder.full

    def prefill(self, tokens: torch.Tensor, pad: torch.Tensor, capacity: int):
        if self.decoder is not None:
            raise ValueError("the static cache decodes one batch at a time: rows cannot join it")
        self.decoder = StaticDecoder(self.model, tokens.size(0), capacity)
        return self.decoder.prefill(tokens, pad), None

    def join(self, keep: list[int], slots: list[int]) -> None:
        if not keep:
            self.reset()

    def keep(self, idx: list[int]) -> None:
        if idx:
            raise ValueError("the static cache decodes one batch at a time: its rows leave together")
        self.reset()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder.step(tokens)

    def refill(self, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.decoder.prefill(tokens, pad)

    def reset(self) -> None:
        self.decoder = None


class RecomputeRunner:
    """No cache: every step is a ``refill`` with each row's last ``n_positions`` tokens."""

    state = None
    full = True

    def __init__(self, model):
        self.model, self.window = model, model.cfg.n_positions

    def prefill(self, tokens: torch.Tensor, pad: torch.Tensor, capacity: int):
        return self.refill(tokens, pad), None

    def refill(self, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return _run(self.model, tokens, DecodeState(self.model.cfg, pad, tokens.size(1)))

    def join(self, keep: list[int], slots: list[int]) -> None:
        pass

    def keep(self, idx: list[int]) -> None:
        pass

    def reset(self) -> None:
        pass


def _remap(old: torch.Tensor, *, old_ring: bool, new_ring: bool, new_slots: int, S_new: int, shift: int,
           banded: bool, window: int) -> torch.Tensor:
    """``old``'s keys (or values) in a new slot layout: new slot ``t`` holds old slot ``t + shift``
    for the filled slots ``t < S_new``. A ring holds slot ``t`` at ``t % window``; a banded layer
    only ever reads its last ``window`` slots, so only those are copied."""
    lo = max(0, S_new - window) if banded else 0
    t = torch.arange(max(lo, -shift), S_new, device=old.device)
    src = t + shift
    new = old.new_zeros(old.size(0), old.size(1), new_slots, old.size(3))
    if t.numel():
        new[:, :, t % window if new_ring else t] = old[:, :, src % window if old_ring else src]
    return new


def _rows(c: KVCache, idx: torch.Tensor) -> KVCache:
    return KVCache.of(c.k.index_select(0, idx), c.v.index_select(0, idx), ring=c.ring)


def _cat(a: KVCache, b: KVCache) -> KVCache:
    return KVCache.of(torch.cat([a.k, b.k]), torch.cat([a.v, b.v]), ring=a.ring)
