"""One optimizer step: the batch size at this point of the ramp-up, the dropout streams re-seeded
from (seed, step), then the micro-batches through DeepSpeed (the pipeline engine's
``train_batch``, or forward/backward/step with an explicit accumulation boundary)."""
from __future__ import annotations

import torch

from megagpt.data.gpt_dataset import token_mean
from megagpt.parallel.launch import dp_mean
from megagpt.train.schedule import rampup_batch_size


def batch_size_at(train_cfg, tokens: int, *, full: int, multiple: int) -> int:
    """GPT-3's batch ramp-up: the global batch after ``tokens`` tokens (``full`` without one)."""
    if not train_cfg.rampup_start_batch:
        return full
    return rampup_batch_size(tokens, full=full, start=train_cfg.rampup_start_batch,
                             rampup_tokens=train_cfg.rampup_tokens, multiple=multiple)


def train_step(built, data, *, batch_size: int, seq: int, seed: int, accounting=None) -> float:
    """Train on the next ``batch_size`` samples of ``data``; returns the loss averaged over
    micro-batches and data-parallel ranks. ``accounting`` (a ``SourceAccounting``) receives each
    micro-batch's per-sample losses by source."""
    engine, ps = built.engine, built.ps
    # Dropout streams are re-seeded from (seed, step) every step: a resumed run draws the same
    # masks as an uninterrupted one whatever else touched the generators in between (the
    # pipeline engine's first batch does).
    ps.seed(seed)
    if batch_size != engine.train_batch_size():
        engine.set_train_batch_size(batch_size)  # changes the gradient accumulation steps
        if built.pipeline:
            engine.micro_batches = engine.gradient_accumulation_steps()
    engine.lr_scheduler.pending_tokens = batch_size * seq
    if built.pipeline:
        return float(engine.train_batch(data_iter=data))  # averaged over micro-batches and DP
    total = torch.zeros(())
    gas = engine.gradient_accumulation_steps()
    for k in range(gas):
        # explicit boundary: DeepSpeed's own (micro_steps % gas) drifts once gas changes
        engine.set_gradient_accumulation_boundary(k == gas - 1)
        x, y, src = next(data)
        y = y.to(engine.device)
        token_loss = engine(x.to(engine.device), y)
        loss = token_mean(token_loss, y)
        engine.backward(loss)
        engine.step()
        total += loss.detach().float().cpu()
        if accounting:
            accounting.add_micro_batch(token_loss, y, src)
    return float(dp_mean(total / gas, ps, engine.device))
