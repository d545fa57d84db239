"""The pretraining loop. ``Trainer`` builds the engine, resumes, opens the data stream, then
steps, logs, evaluates and saves, top to bottom; each of those is a collaborator with a narrow
interface: ``step.BatchShape`` (the batch arithmetic), ``step.optimizer_step`` (one optimizer
step), ``cursor.DataCursor`` (where the data stream is, the windows left out), ``guard.StepGuard``
(bad steps skipped, rewinds), ``accounting.SourceAccounting`` (per-source losses and tokens),
``validation.HeldOutLoss`` (held-out loss), ``resume.CheckpointPolicy`` (where the run starts, how
it saves, where it rewinds to), ``metrics.MetricsWriter`` and the hang ``Watchdog``. Evaluation
beyond the held-out loss comes in as ``eval_hooks`` from the layer above
(``megagpt.eval.in_training`` for ``train.eval_tasks``): a hook is called as ``hook(built, step)``
at every ``eval_interval`` and returns scalars to log."""
from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from megagpt.config import RunConfig
from megagpt.model.flops import model_flops_per_token
from megagpt.parallel.watchdog import Watchdog
from megagpt.train.accounting import SourceAccounting
from megagpt.train.consolidate import export
from megagpt.train.cursor import DataCursor
from megagpt.train.datasets import build_datasets
from megagpt.train.engine import build_engine
from megagpt.train.faults import Fault
from megagpt.train.guard import StepGuard, Verdict
from megagpt.train.memory import precision_of
from megagpt.train.metrics import MetricsWriter, device_peak_flops, format_line, peak_memory_bytes
from megagpt.train.resume import CheckpointPolicy
from megagpt.train.step import BatchShape, batch_size_at, optimizer_step
from megagpt.train.validation import HeldOutLoss


class GuardError(RuntimeError):
    """The guard wanted to rewind and had nowhere to go."""


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Trainer:
    def __init__(self, run: RunConfig, eval_hooks=()):
        self.run, self.eval_hooks = run, list(eval_hooks)
        tr = run.train
        self.batch, self.seq = BatchShape.of(run, dist.get_world_size()), run.seq_length
        self.built = build_engine(run, total_tokens=tr.train_iters * self.batch.full * self.seq)
        self.engine, self.ps = self.built.engine, self.built.ps
        self.is_logger = dist.get_rank() == 0
        self.metrics = MetricsWriter.for_run(run)
        self.flops_per_token = model_flops_per_token(run.model, self.seq)
        self.dtype = DTYPES[precision_of(run.deepspeed)]
        self.peak, self.peak_source = device_peak_flops(self.dtype)

        self.checkpoints = CheckpointPolicy(run, self.built, self.metrics)
        state = self.checkpoints.resume() or {"step": 0, "consumed_samples": 0, "tokens": 0}
        self.step, self.tokens = state["step"], state["tokens"]
        self.guard = StepGuard(tr.guard, check_grad_norm=self.dtype != torch.float16, state=state.get("guard"))
        self.fault = Fault(tr.fault)

        self.train_ds, self.valid_ds, self.valid_by_source = build_datasets(
            run, train_samples=tr.train_iters * self.batch.full,
            valid_samples=tr.eval_iters * self.batch.micro * self.batch.dp)
        self.cursor = DataCursor(self.train_ds, consumed=state["consumed_samples"],
                                 skip=tr.skip_data + state.get("skip_data", []), micro=self.batch.micro,
                                 dp_rank=self.ps.dp_rank, dp=self.batch.dp, with_source=not self.built.pipeline,
                                 log=self.metrics.console)
        self.sources = SourceAccounting(self.train_ds, self.seq, self.cursor.consumed, pipeline=self.built.pipeline,
                                        dp=self.batch.dp, dp_group=self.ps.dp_group, device=self.engine.device,
                                        skip=self.cursor.skip)
        self.held_out = HeldOutLoss(self.built, micro=self.batch.micro, dp=self.batch.dp, eval_iters=tr.eval_iters)

    def train_step(self) -> Verdict:
        """One step on the cursor's next batch: its ``Verdict``. Only an applied step moves the step
        count, the tokens seen and the LR schedule; every step moves the data position (the
        cursor leaves the batch of a step that was not applied out)."""
        bs = batch_size_at(self.run.train, self.tokens, self.batch)
        data = self.cursor.next_batch(bs)
        self.fault.before_step(self.step + 1)
        verdict = optimizer_step(self.built, data, batch_size=bs, seq=self.seq,
                                 seed=self.run.train.seed * 1_000_003 + self.step, accounting=self.sources,
                                 guard=self.guard if self.run.train.guard.enabled else None, fault=self.fault,
                                 step=self.step + 1)
        self.cursor.advance(verdict.applied)
        if verdict.applied:
            if self.sources.enabled:
                self.sources.add_batch(*self.cursor.last_batch)
            self.tokens += bs * self.seq
            self.step += 1
        return verdict

    def held_out_loss(self) -> dict[str, float]:
        """valid/loss (and per source valid/loss/<source> for a mixture)."""
        return self.held_out(self.valid_ds, self.valid_by_source, self.train_ds)

    def save(self) -> None:
        self.checkpoints.save(self.step, {"consumed_samples": self.cursor.consumed, "tokens": self.tokens,
                                          "guard": self.guard.state_dict(), "skip_data": self.cursor.skip})

    def train(self) -> list[float]:
        tr = self.run.train
        stop = min(tr.train_iters, tr.exit_after_iters or tr.train_iters)
        losses = []
        self.metrics.console(
            f"training {self.run.parallel.layout}: tp={self.ps.tp_size} pp={self.ps.pp_size} dp={self.batch.dp}, "
            f"batch {self.batch.full} x {self.seq} tokens, steps {self.step + 1}..{stop} of {tr.train_iters}; "
            f"peak {self.peak / 1e12:.3f} TFLOP/s per device ({self.peak_source})")
        window_t, window_tokens = time.perf_counter(), 0
        saved_at = self.step
        watchdog = Watchdog(tr.hang_timeout_s).start(self.step)
        try:
            while self.step < stop:
                t0 = time.perf_counter()
                verdict = self.train_step()
                step_time = time.perf_counter() - t0
                watchdog.progress(self.step)
                rewind = self.guard.record(verdict)
                if verdict.bad:
                    with watchdog.paused():  # a rewind loads a checkpoint
                        self._bad_step(verdict, rewind)
                    saved_at = min(saved_at, self.step)
                    if rewind or not verdict.applied:
                        continue
                losses.append(verdict.loss)
                window_tokens += self.engine.train_batch_size() * self.seq
                if self.step % tr.log_interval == 0 or self.step == stop or self.step == 1:
                    self._log(verdict.loss, step_time, window_tokens / (time.perf_counter() - window_t))
                    window_t, window_tokens = time.perf_counter(), 0
                # evaluations and saves may rightly take longer than a step: the collective
                # timeout covers them
                if self.step % tr.eval_interval == 0 or self.step == tr.train_iters:
                    with watchdog.paused():
                        self._evaluate_and_log()
                if self.checkpoints.due(self.step):
                    with watchdog.paused():
                        self.save()
                    saved_at = self.step
            if saved_at != self.step:
                with watchdog.paused():
                    self.save()
        finally:
            watchdog.close()
        if tr.export_path and self.step == tr.train_iters:
            export(self.built, self.run.model, tr.export_path, tokenizer=self.run.data.tokenizer, step=self.step,
                   run_name=tr.run_name)
            self.metrics.console(f"exported fp32 weights to {tr.export_path}")
        self.metrics.close()
        return losses

    def _bad_step(self, verdict, rewind: bool) -> None:
        """A bad step: one console line and ``guard/skipped``; the K-th in a row rewinds."""
        start, end = self.cursor.last_batch
        if verdict.applied:
            what = f"step {self.step:>6} | guard: {verdict.reason}; applied (the pipeline engine steps by itself)"
        else:
            what = f"step {self.step + 1:>6} | guard: {verdict.reason}; update skipped, samples {start}..{end} left out"
        self.metrics.console(f"{what} ({self.guard.bad_in_row} bad in a row)")
        self.metrics.scalars(self.step, {"guard/skipped": float(self.guard.skipped)})
        if rewind:
            self._rewind()

    def _rewind(self) -> None:
        """Reload the newest whole checkpoint at least ``rewind_min_steps`` older and leave the data
        from there to here out (PaLM's remedy for loss spikes)."""
        cfg = self.run.train.guard
        bad_from, t0 = self.step, time.perf_counter()
        if self.guard.rewinds >= cfg.max_rewinds:
            raise GuardError(f"the guard saw {cfg.rewind_after} bad steps in a row at step {self.step + 1} after "
                             f"{self.guard.rewinds} rewinds (train.guard.max_rewinds): the loss has moved, not "
                             f"spiked; look at the run, then resume (a higher max_rewinds, or a lower LR).")
        state = self.checkpoints.rewind(self.step - cfg.rewind_min_steps)
        if state is None:
            raise GuardError(f"the guard saw {cfg.rewind_after} bad steps in a row at step {self.step + 1} and "
                             f"there is no whole checkpoint at or before step {self.step - cfg.rewind_min_steps} "
                             f"in train.checkpoint_dir={self.run.train.checkpoint_dir} to rewind to; save more "
                             f"often (train.save_interval) or lower train.guard.rewind_min_steps.")
        window = self.cursor.rewind(state["consumed_samples"], state.get("skip_data", []))
        self.checkpoints.record_rewind(state["step"], self.cursor.skip)
        self.step, self.tokens = state["step"], state["tokens"]
        self.guard.rewound((state.get("guard") or {}).get("history", []))
        self.sources.reset(self.cursor.consumed, self.cursor.skip)
        line = (f"guard: {cfg.rewind_after} bad steps in a row after step {bad_from}: rewound to step {self.step}, "
                f"samples {window[0]}..{window[1]} left out (rewind {self.guard.rewinds}, "
                f"{time.perf_counter() - t0:.1f}s)")
        self.metrics.console(line)
        self.metrics.scalars(self.step, {"guard/rewinds": float(self.guard.rewinds)})
        if self.metrics.tb is not None:
            self.metrics.tb.add_text("guard/rewind", line, self.step)

    def _log(self, loss: float, step_time: float, tok_s: float) -> None:
        tflops = tok_s * self.flops_per_token / dist.get_world_size() / 1e12
        grad_norm = self.engine.get_global_grad_norm()
        m = {"train/loss": loss, "train/ppl": math.exp(min(loss, 50.0)),
             "train/lr": self.engine.lr_scheduler.get_lr()[0],
             "train/grad_norm": None if grad_norm is None else float(grad_norm),
             "train/tokens_seen": float(self.tokens), "train/batch_size": float(self.engine.train_batch_size()),
             "perf/tokens_per_sec": tok_s, "perf/tflops_per_device": tflops,
             "perf/mfu": tflops * 1e12 / self.peak, "perf/step_time": step_time,
             "perf/peak_memory_gb": peak_memory_bytes() / 2 ** 30}
        m.update(self.sources.scalars())
        if self.dtype == torch.float16:
            m["train/loss_scale"] = float(self.engine.optimizer.cur_scale)
        self.metrics.scalars(self.step, m)
        self.metrics.console(format_line(self.step, self.run.train.train_iters, m))

    def _evaluate_and_log(self) -> None:
        """The held-out loss and every eval hook, logged to TensorBoard and the console."""
        v = self.held_out_loss()
        if v:
            v["valid/ppl"] = math.exp(min(v["valid/loss"], 50.0))
            self.metrics.scalars(self.step, v)
            self.metrics.console(f"step {self.step:>6} | " + " | ".join(f"{k[6:]} {val:.4f}" for k, val in v.items()))
        for hook in self.eval_hooks:
            t0 = time.perf_counter()
            out = hook(self.built, self.step)
            if out:
                self.metrics.scalars(self.step, out)
                self.metrics.console(f"step {self.step:>6} | {getattr(hook, 'name', 'eval')} "
                                     f"({time.perf_counter() - t0:.1f}s) | "
                                     + " | ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in out.items()))
