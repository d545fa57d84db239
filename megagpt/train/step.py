"""One optimizer step: the batch size at this point of the ramp-up, the dropout streams re-seeded
from (seed, step), then the micro-batches through DeepSpeed (the pipeline engine's
``train_batch``, or forward/backward/step with an explicit accumulation boundary)."""
from __future__ import annotations

import torch

from megagpt.data.gpt_dataset import token_mean
from megagpt.parallel.launch import dp_mean
from megagpt.train.guard import Verdict
from megagpt.train.schedule import rampup_batch_size


def batch_size_at(train_cfg, tokens: int, *, full: int, multiple: int) -> int:
    """GPT-3's batch ramp-up: the global batch after ``tokens`` tokens (``full`` without one)."""
    if not train_cfg.rampup_start_batch:
        return full
    return rampup_batch_size(tokens, full=full, start=train_cfg.rampup_start_batch,
                             rampup_tokens=train_cfg.rampup_tokens, multiple=multiple)


def train_step(built, data, *, batch_size: int, seq: int, seed: int, accounting=None, guard=None, fault=None,
               step: int = 0) -> Verdict:
    """Train on the next ``batch_size`` samples of ``data``: the step's ``Verdict``, whose loss is
    averaged over micro-batches and data-parallel ranks. ``accounting`` (a ``SourceAccounting``)
    receives each micro-batch's per-sample losses by source. With a ``guard`` (``StepGuard``) the
    ranks agree on the step before its last backward; a bad step is not applied: its last backward
    runs on a NaN loss so DeepSpeed's optimizer takes its overflow path on every rank (no update,
    optimizer state and LR schedule untouched, gradients freed), or without a DeepSpeed optimizer
    wrapper (ZeRO stage 0 in fp32) the gradients are dropped and no step is taken. ``fault``
    (``faults.Fault``) and ``step`` (the 1-based step being trained): injected failures."""
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
        # the pipeline engine owns the step: the guard can only judge it afterwards
        loss = float(engine.train_batch(data_iter=data))  # averaged over micro-batches and DP
        return Verdict(loss, guard.judge(loss) if guard is not None else None)
    total = torch.zeros(())
    gas = engine.gradient_accumulation_steps()
    verdict, seen = None, []
    overflow_path = has_overflow_path(engine)
    for k in range(gas):
        last = k == gas - 1
        # explicit boundary: DeepSpeed's own (micro_steps % gas) drifts once gas changes
        engine.set_gradient_accumulation_boundary(last)
        x, y, src = next(data)
        y = y.to(engine.device)
        token_loss = engine(x.to(engine.device), y)
        loss = token_mean(token_loss, y)
        if fault is not None:
            loss = fault.loss(loss, step, last)
        total += loss.detach().float().cpu()
        if accounting:
            seen.append((token_loss.detach(), y, src))
        if last and guard is not None:
            verdict = guard.agree(total / gas, engine.device)
            if verdict.bad:
                verdict.applied = False
                if overflow_path:
                    loss = loss * float("nan")
        engine.backward(loss)
        if last and verdict is not None and verdict.bad and not overflow_path:
            engine.zero_grad()
        else:
            engine.step()
    if verdict is None:
        verdict = Verdict(float(dp_mean(total / gas, ps, engine.device)))
    else:  # the guard's verdict
        verdict = guard.after_step(verdict, engine.get_global_grad_norm())
    if accounting and verdict.applied:
        for token_loss, y, src in seen:
            accounting.add_micro_batch(token_loss, y, src)
    return verdict


def has_overflow_path(engine) -> bool:
    """Whether DeepSpeed's optimizer skips a step whose gradients are not finite (its ZeRO, bf16
    and fp16 optimizers do; the bare torch optimizer of ZeRO stage 0 in fp32 does not)."""
    return hasattr(engine.optimizer, "overflow")
