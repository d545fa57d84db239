"""Scoring: log P(continuation | context) for many requests, batched, as evaluation, fine-tuning
checks and MMI reranking need it.

Requests are sorted by length (longest first) and batched with left padding, through the same
padding-aware forward as generation (``DecodeState`` without a cache); results come back in the
order given. Under tensor parallelism the per-token log-probabilities come from the vocab-parallel
cross-entropy, so full-vocabulary logits are never gathered, and only the greedy check gathers
each rank's maximum.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megagpt.model.cache import DecodeState


@dataclass
class Score:
    """``logprob``: sum of log P over the continuation tokens; ``greedy``: every continuation token
    is the argmax at its position; ``n_tokens``: how many tokens were scored."""

    logprob: float
    greedy: bool
    n_tokens: int


def _request_rows(requests, n_pos):
    rows = []
    for i, (ctx, cont) in enumerate(requests):
        ctx, cont = [int(t) for t in ctx], [int(t) for t in cont]
        if not cont:
            raise ValueError(f"request {i}: the continuation is empty.")
        if not ctx:
            raise ValueError(f"request {i}: the context is empty (start it with EOD).")
        if len(cont) > n_pos:
            raise ValueError(f"request {i}: a continuation of {len(cont)} tokens does not fit "
                             f"model.n_positions={n_pos}.")
        seq = (ctx + cont)[-(n_pos + 1):]  # the context is cut from the left to fit
        rows.append((seq, len(cont)))
    return rows


@torch.no_grad()
def loglikelihood(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                  batch_size: int = 16) -> list[Score]:
    """One ``Score`` per (context ids, continuation ids) request."""
    model.eval()
    cfg, ps = model.cfg, model.ps
    device = next(model.parameters()).device
    rows = _request_rows(requests, cfg.n_positions)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[Score | None] = [None] * len(rows)
    for b in range(0, len(order), batch_size):
        chunk = order[b:b + batch_size]
        seqs = [rows[i][0] for i in chunk]
        T = max(len(s) for s in seqs) - 1  # inputs are all tokens but the last
        idx = torch.zeros(len(chunk), T, dtype=torch.long, device=device)
        tgt = torch.full((len(chunk), T), -100, dtype=torch.long, device=device)
        for r, i in enumerate(chunk):
            s, n_cont = rows[i]
            L = len(s) - 1
            idx[r, T - L:] = torch.tensor(s[:-1], device=device)
            tgt[r, T - n_cont:] = torch.tensor(s[-n_cont:], device=device)  # only continuation tokens
        pad = torch.tensor([T - (len(s) - 1) for s in seqs], device=device)
        logits = model.head(model.hidden_states(idx, DecodeState(cfg, pad, T)))  # (B, T, V_local)
        nll = model.head.loss(logits, tgt)  # (B, T), 0 where tgt == -100
        # greedy: the target's logit is the largest over the whole vocabulary
        local_max = logits.float().max(-1).values
        if ps.tp_size > 1:
            dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=ps.tp_group)
        start = model.head.embedding[0].vocab_start
        local_t = (tgt - start).clamp(0, logits.size(-1) - 1)
        owned = (tgt >= start) & (tgt < start + logits.size(-1))
        t_logit = torch.where(owned, logits.float().gather(-1, local_t.unsqueeze(-1)).squeeze(-1),
                              torch.full_like(local_max, float("-inf")))
        if ps.tp_size > 1:
            dist.all_reduce(t_logit, op=dist.ReduceOp.MAX, group=ps.tp_group)
        is_max = (t_logit >= local_max) | (tgt == -100)
        for r, i in enumerate(chunk):
            n_cont = rows[i][1]
            out[i] = Score(-float(nll[r, T - n_cont:].sum()), bool(is_max[r].all()), n_cont)
    return out
