"""The batch arithmetic of a run (``BatchShape``, shared by pretraining and fine-tuning, and the
ramp-up's batch size at a point of the run) and one optimizer step of pretraining: the dropout
streams re-seeded from (seed, step), then the micro-batches through DeepSpeed (the pipeline
engine's ``train_batch``, or forward/backward/step with an explicit accumulation boundary)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from megagpt.data.gpt_dataset import token_mean
from megagpt.parallel.launch import dp_mean
from megagpt.train.guard import Verdict
from megagpt.train.schedule import rampup_batch_size


@dataclass(frozen=True)
class BatchShape:
    """The batch arithmetic of a run: ``micro`` samples per rank per forward, ``accumulation``
    micro-batches per step, ``dp`` data-parallel ranks; ``full`` samples per optimizer step."""
    micro: int
    accumulation: int
    dp: int

    @classmethod
    def of(cls, run, world_size: int) -> BatchShape:
        ds = run.deepspeed
        return cls(ds["train_micro_batch_size_per_gpu"], ds.get("gradient_accumulation_steps", 1),
                   run.parallel.dp_size(world_size))

    @property
    def full(self) -> int:
        return self.micro * self.accumulation * self.dp

    def describe(self) -> str:
        return f"micro {self.micro} x accumulation {self.accumulation} x dp {self.dp}"


def batch_size_at(train_cfg, tokens: int, shape: BatchShape) -> int:
    """GPT-3's batch ramp-up: the global batch after ``tokens`` tokens (the full one without a
    ramp-up), a multiple of one micro-batch on every data-parallel rank."""
    if not train_cfg.rampup_start_batch:
        return shape.full
    return rampup_batch_size(tokens, full=shape.full, start=train_cfg.rampup_start_batch,
                             rampup_tokens=train_cfg.rampup_tokens, multiple=shape.micro * shape.dp)


def optimizer_step(built, data, *, batch_size: int, seq: int, seed: int, accounting=None, guard=None,
                   fault=None, step: int = 0) -> Verdict:
    """Train on the next ``batch_size`` samples of ``data``: the step's ``Verdict``, whose loss is
    averaged over micro-batches and data-parallel ranks. ``accounting`` (a ``SourceAccounting``)
    receives each micro-batch's per-sample losses by source when it is enabled (a mixture). With a
    ``guard`` (``StepGuard``) the ranks agree on the step before its last backward; a bad step is
    not applied: its last backward runs on a NaN loss so DeepSpeed's optimizer takes its overflow
    path on every rank (no update, optimizer state and LR schedule untouched, gradients freed), or
    without a DeepSpeed optimizer wrapper (ZeRO stage 0 in fp32) the gradients are dropped and no
    step is taken. ``fault`` (``faults.Fault``) and ``step`` (the 1-based step being trained):
    injected failures."""
    engine = built.engine
    # Dropout streams are re-seeded from (seed, step) every step: a resumed run draws the same
    # masks as an uninterrupted one whatever else touched the generators in between (the
    # pipeline engine's first batch does).
    built.ps.seed(seed)
    if batch_size != engine.train_batch_size():
        engine.set_train_batch_size(batch_size)  # changes the gradient accumulation steps
        if built.pipeline:
            engine.micro_batches = engine.gradient_accumulation_steps()
    engine.lr_scheduler.pending_tokens = batch_size * seq
    if built.pipeline:
        # the pipeline engine owns the step: the guard can only judge it afterwards
        loss = float(engine.train_batch(data_iter=data))  # averaged over micro-batches and DP
        return Verdict(loss, guard.judge(loss) if guard is not None else None)
    by_source = accounting is not None and accounting.enabled
    verdict, seen = _accumulate(built, data, guard=guard, fault=fault, step=step, keep_losses=by_source)
    if by_source and verdict.applied:
        for token_loss, y, src in seen:
            accounting.add_micro_batch(token_loss, y, src)
    return verdict


def _accumulate(built, data, *, guard, fault, step: int, keep_losses: bool) -> tuple[Verdict, list]:
    """The zero3 layout's step: forward and backward over the accumulation steps, then the
    optimizer (or, for a step the guard judged bad, its overflow path). The verdict, and with
    ``keep_losses`` each micro-batch's (per-token loss, targets, source ids)."""
    engine, ps = built.engine, built.ps
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
        token_loss = engine.module.token_losses(engine(x.to(engine.device)), y)
        loss = token_mean(token_loss, y)
        if fault is not None:
            loss = fault.loss(loss, step, last)
        total += loss.detach().float().cpu()
        if keep_losses:
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
        return Verdict(float(dp_mean(total / gas, ps, engine.device))), seen
    return guard.after_step(verdict, engine.get_global_grad_norm()), seen  # the guard's verdict


def has_overflow_path(engine) -> bool:
    """Whether DeepSpeed's optimizer skips a step whose gradients are not finite (its ZeRO, bf16
    and fp16 optimizers do; the bare torch optimizer of ZeRO stage 0 in fp32 does not)."""
    return hasattr(engine.optimizer, "overflow")
