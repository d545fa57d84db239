"""Tensor-parallel-aware random numbers.

Dropout on activations that every TP rank holds whole (embeddings, block outputs) must draw the
same mask on each rank, so it uses the default generator, seeded identically across the TP group.
Dropout on activations split across ranks (attention probabilities of a rank's own heads) must
draw independent masks, so it runs inside ``fork()``, which swaps in a second stream seeded per
TP rank. Both streams live in the process's global generators, because dropout and
``scaled_dot_product_attention`` take no generator argument.
"""
from __future__ import annotations

import contextlib

import torch

_TP_SEED_OFFSET = 2718  # Megatron's offset between the default and the model-parallel stream


def _get_states():
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_states(states):
    torch.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"])


class TPRandom:
    """The default stream (same on TP peers) and a forked stream (different per TP rank)."""

    def __init__(self):
        self._tp_states = None

    def seed(self, seed: int, tp_rank: int = 0, pp_rank: int = 0) -> None:
        # Pipeline stages hold different layers, so they get different default streams too.
        torch.manual_seed(seed + 100 * pp_rank)
        default = _get_states()
        torch.manual_seed(seed + _TP_SEED_OFFSET + tp_rank)
        self._tp_states = _get_states()
        _set_states(default)

    @contextlib.contextmanager
    def fork(self):
        """Run the body on the per-TP-rank stream, then return to the default stream."""
        if self._tp_states is None:  # never seeded: one stream is all there is
            yield
            return
        default = _get_states()
        _set_states(self._tp_states)
        try:
            yield
        finally:
            self._tp_states = _get_states()
            _set_states(default)

    def checkpoint_contexts(self):
        """``context_fn`` for ``torch.utils.checkpoint``: recomputation replays the forked stream.

        torch restores the default stream itself; the forked stream is recorded at forward and put
        back for the recompute, then returned to wherever it had got to since.
        """
        recorded = {}

        @contextlib.contextmanager
        def forward_ctx():
            recorded["tp"] = self._tp_states
            yield

        @contextlib.contextmanager
        def recompute_ctx():
            current = self._tp_states
            self._tp_states = recorded["tp"]
            try:
                yield
            finally:
                self._tp_states = current

        return forward_ctx(), recompute_ctx()

    def state_dict(self):
        return {"tp": self._tp_states, "default": _get_states()}

    def load_state_dict(self, state):
        self._tp_states = state["tp"]
        _set_states(state["default"])
