"""Batched autoregressive generation: a loop over the serving engine's iterations
(``megagpt.inference.batching``), as nano-vllm's ``generate`` is a loop over its engine's
``step``. All rows are one job: one prefill runs the (left-padded) prompts and fills the cache,
then each step runs one token per row; sampling, penalties, stop strings and EOD are the
engine's (``megagpt.inference.sampling`` says what the options do). The rows decode in lockstep
until every one has finished, drawn by one seeded generator. Every rank of a tensor-parallel group
runs this same loop on identical full-vocabulary logits, so all ranks pick the same tokens.

The context never exceeds ``model.n_positions``: when the longest row fills it, the window
slides by a quarter of ``n_positions`` and the cache is recomputed from the last three quarters
(one prefill). After a slide the model sees a shorter context than a full recompute sliding one
token at a time would, so cached and uncached outputs agree exactly only while everything fits.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from megagpt.inference.batching import BatchEngine, Job, Outcome, TokenEvent
from megagpt.inference.runner import CachedRunner, RecomputeRunner, StaticRunner
from megagpt.inference.sampling import SamplingParams, filter_logits, penalize_repetition

__all__ = ["Completion", "SamplingParams", "filter_logits", "generate", "penalize_repetition"]


@dataclass
class Completion:
    """One generated continuation: ``prompt_index`` into the prompts given, ``tokens`` the new
    tokens (EOD not included), ``text`` when a decoder was given (cut before a stop string),
    ``finish_reason`` 'eod', 'stop' or 'length'."""

    prompt_index: int
    tokens: list[int]
    text: str | None = None
    finish_reason: str = "length"
    scores: list = field(default_factory=list, repr=False)


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None, *,
             eod_id: int | None = None, decode: Callable[[list[int]], str] | None = None,
             use_cache: bool = True, keep_scores: bool = False, compile: bool = False) -> list[Completion]:
    """Continue each prompt (a list of token ids) ``num_return_sequences`` times.

    ``decode`` turns ids into text (needed for stop strings and ``Completion.text``);
    ``use_cache=False`` recomputes the whole window at every step (the reference the cache is
    tested and benchmarked against); ``keep_scores`` keeps each step's processed full-vocabulary
    logits in ``Completion.scores``; ``compile`` decodes with a compiled one-token step over a static
    cache (``megagpt.inference.compiled``; the same tokens, faster once compiled)."""
    p = (params or SamplingParams()).validate()
    if not prompts or any(len(r) == 0 for r in prompts):
        raise ValueError("every prompt needs at least one token (an empty prompt can start from EOD).")
    if compile and not use_cache:
        raise ValueError("compile=True decodes over a cache; it cannot be combined with use_cache=False.")
    model.eval()
    runner = StaticRunner(model) if compile else CachedRunner(model) if use_cache else RecomputeRunner(model)
    rows = [list(map(int, r)) for r in prompts for _ in range(p.num_return_sequences)]
    engine = BatchEngine(model, eod_id=eod_id, max_rows=len(rows), decode=decode, runner=runner)
    out = Outcome()
    engine.add([Job(0, rows[0], p, rows=rows, lockstep=True, keep_scores=keep_scores)], out)
    while engine.active:
        engine.step(out)
    return _completions(out.tokens, len(rows), p.num_return_sequences)


def _completions(events: list[TokenEvent], n_rows: int, per_prompt: int) -> list[Completion]:
    done = [Completion(i // per_prompt, []) for i in range(n_rows)]
    for e in events:
        c = done[e.row]
        if e.finished != "eod":
            c.tokens.append(e.token)
        if e.scores is not None:
            c.scores.append(e.scores)
        c.text, c.finish_reason = e.text, e.finished or c.finish_reason
    return done
