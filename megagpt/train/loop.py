"""The pretraining loop: data stream, steps, logging, evaluation, checkpoints, resume."""
from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist

from megagpt.config import ConfigError, RunConfig
from megagpt.data.gpt_dataset import (GPTDataset, micro_batches, range_tokens, source_counts,
                                      split_documents, token_mean)
from megagpt.data.indexed import ShardError, open_shard
from megagpt.model.flops import model_flops_per_token
from megagpt.train import checkpoint
from megagpt.train.engine import build_engine, dp_mean, param_group_names
from megagpt.train.metrics import MetricsWriter, device_peak_flops, format_line, peak_memory_bytes
from megagpt.train.schedule import rampup_batch_size


def _dtype(ds_config: dict) -> torch.dtype:
    from megagpt.train.memory import precision_of

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision_of(ds_config)]


def build_datasets(run: RunConfig, train_samples: int, valid_samples: int):
    """(train, valid, valid by source). A mixture's train set is its blended dataset; a single
    source's is one packed dataset over its shards."""
    d = run.data
    if d.mixture:
        from megagpt.data import mixture

        spec = mixture.load_spec(d.mixture)
        spec.loss_mask = d.loss_mask
        if spec.seq_length != run.seq_length:
            raise ConfigError(f"{d.mixture}: seq_length {spec.seq_length} differs from the run's "
                              f"{run.seq_length} (data.seq_length / model.n_positions).")
        # rank 0 checks the shards and builds (or finds) the cached index once; the report (or the
        # failure) reaches every rank, which then loads that index without hashing the shards again
        outcome = [None, None]  # report, error
        if dist.get_rank() == 0:
            try:
                outcome[0] = mixture.build(spec)
                print(mixture.format_report(outcome[0]), flush=True)
            except ConfigError as e:
                outcome[1] = str(e)
        dist.broadcast_object_list(outcome, src=0)
        if outcome[1]:
            raise ConfigError(outcome[1])
        train, valid_by_source = mixture.load(spec, outcome[0])
        if len(train) < train_samples:
            raise ConfigError(f"{d.mixture}: total_tokens gives {len(train)} samples but the run needs "
                              f"{train_samples} (train_iters x batch); raise total_tokens.")
        return train, None, {k: v for k, v in valid_by_source.items() if v is not None}
    try:
        shards = [open_shard(p, d.loss_mask) for p in d.prefixes]
        valid_shards = [open_shard(p, d.loss_mask) for p in d.valid_prefixes]
    except ShardError as e:
        raise ConfigError(f"data: {e}") from None
    if d.valid_prefixes:
        train_ranges, _ = split_documents(shards, 0.0)
        valid_ranges, _ = split_documents(valid_shards, 0.0)
    else:
        train_ranges, valid_ranges = split_documents(shards, d.valid_fraction)
    train = GPTDataset(train_ranges, run.seq_length, train_samples, d.seed, name="train")
    valid = None
    valid_tokens = range_tokens(valid_ranges)
    if valid_tokens > run.seq_length + 1:
        valid = GPTDataset(valid_ranges, run.seq_length, valid_samples, d.seed + 1, name="valid")
    elif valid_tokens and dist.get_rank() == 0:
        print(f"warning: {valid_tokens} held-out tokens are fewer than one sample of {run.seq_length + 1}; "
              f"no validation (raise data.valid_fraction or give data.valid_prefixes).", flush=True)
    return train, valid, {}


class Trainer:
    def __init__(self, run: RunConfig):
        self.run = run
        tr, ds = run.train, run.deepspeed
        world = dist.get_world_size()
        self.dp = run.parallel.dp_size(world)
        self.micro = ds["train_micro_batch_size_per_gpu"]
        self.full_batch = self.micro * ds.get("gradient_accumulation_steps", 1) * self.dp
        self.seq = run.seq_length
        total_tokens = tr.train_iters * self.full_batch * self.seq
        self.built = build_engine(run, total_tokens)
        self.engine, self.ps = self.built.engine, self.built.ps
        self.is_logger = dist.get_rank() == 0
        self.metrics = MetricsWriter(tr.tensorboard_dir, self.is_logger)
        for note in run.notes:
            self.metrics.console(note)
        self.flops_per_token = model_flops_per_token(run.model, self.seq)
        self.dtype = _dtype(ds)
        self.peak, self.peak_source = device_peak_flops(self.dtype)
        self.step, self.consumed, self.tokens = 0, 0, 0
        if tr.resume:
            state, source = None, tr.checkpoint_dir
            if tr.checkpoint_dir:
                state = checkpoint.load(self.engine, tr.checkpoint_dir, self.ps, verify_level=tr.verify_checkpoint,
                                        fallback=tr.resume_fallback, log=self._fallback_note,
                                        layout=checkpoint.layout_of(run, self.ps), reshard=self._reshard)
            if state is None and tr.resume_from:
                state, source = self._resume_from(tr.resume_from), tr.resume_from
            if state is not None:
                self.step, self.consumed, self.tokens = state["step"], state["consumed_samples"], state["tokens"]
                self.metrics.console(f"resumed from {source} at step {self.step} "
                                     f"({self.consumed} samples, {self.tokens} tokens)")
        self.train_ds, self.valid_ds, self.valid_by_source = build_datasets(
            run, train_samples=tr.train_iters * self.full_batch,
            valid_samples=tr.eval_iters * self.micro * self.dp)
        self.sources = list(getattr(self.train_ds, "names", []))
        self._reset_source_window()
        self._src_tokens = source_counts(self.train_ds, 0, self.consumed, len(self.sources)) * self.seq

    def _reshard(self, tag: str) -> dict:
        """A checkpoint of ``checkpoint_dir`` saved in another layout: through its universal form."""
        from megagpt.train import universal

        root = universal.ensure_universal(self.run.train.checkpoint_dir, tag)
        return universal.load_into(self.built, self.run, root, log=self.metrics.console)

    def _resume_from(self, source: str) -> dict:
        """``train.resume_from``: a universal checkpoint, a run's checkpoint directory (its
        ``latest``) or one tag of it, in any layout."""
        from pathlib import Path

        from megagpt.train import universal

        path = Path(source)
        if not universal.is_universal(path):
            latest = checkpoint.latest_tag(path)
            if latest is not None:
                path = path / latest
            if not (path / "megagpt.json").is_file():
                raise ConfigError(f"train.resume_from={source}: not a universal checkpoint, a checkpoint "
                                  f"directory with 'latest', or a checkpoint tag.")
            path = universal.ensure_universal(path.parent, path.name, verify_level=self.run.train.verify_checkpoint)
        return universal.load_into(self.built, self.run, path, log=self.metrics.console)

    def _fallback_note(self, line: str) -> None:
        """A broken checkpoint passed over: on the console and in TensorBoard's text tab."""
        self.metrics.console(f"warning: {line}")
        if self.metrics.tb is not None:
            self.metrics.tb.add_text("checkpoint/fallback", line)

    # ----------------------------------------------------------------------------------------
    def _batch_size(self) -> int:
        tr = self.run.train
        if not tr.rampup_start_batch:
            return self.full_batch
        return rampup_batch_size(self.tokens, full=self.full_batch, start=tr.rampup_start_batch,
                                 rampup_tokens=tr.rampup_tokens, multiple=self.micro * self.dp)

    def _dp_mean(self, value: torch.Tensor) -> float:
        return float(dp_mean(value, self.ps, self.engine.device))

    def train_step(self, data) -> float:
        # Dropout streams are re-seeded from (seed, step) every step: a resumed run draws the same
        # masks as an uninterrupted one whatever else touched the generators in between (the
        # pipeline engine's first batch does).
        self.ps.seed(self.run.train.seed * 1_000_003 + self.step)
        bs = self._batch_size()
        if bs != self.engine.train_batch_size():
            self.engine.set_train_batch_size(bs)  # changes the gradient accumulation steps
            if self.built.pipeline:
                self.engine.micro_batches = self.engine.gradient_accumulation_steps()
        self.engine.lr_scheduler.pending_tokens = bs * self.seq
        if self.built.pipeline:
            loss = self.engine.train_batch(data_iter=data)  # averaged over micro-batches and DP
            value = float(loss)
        else:
            total = torch.zeros(())
            gas = self.engine.gradient_accumulation_steps()
            for k in range(gas):
                # explicit boundary: DeepSpeed's own (micro_steps % gas) drifts once gas changes
                self.engine.set_gradient_accumulation_boundary(k == gas - 1)
                x, y, src = next(data)
                y = y.to(self.engine.device)
                token_loss = self.engine(x.to(self.engine.device), y)
                loss = token_mean(token_loss, y)
                self.engine.backward(loss)
                self.engine.step()
                total += loss.detach().float().cpu()
                if self.sources:
                    learned = (y != -100).sum(dim=1).clamp(min=1)
                    per_sample = (token_loss.detach().float().sum(dim=1) / learned).cpu()
                    self._src_loss.index_add_(0, src, per_sample)
                    self._src_n.index_add_(0, src, torch.ones_like(per_sample))
            value = self._dp_mean(total / gas)
        if self.sources:
            self._src_tokens += source_counts(self.train_ds, self.consumed, self.consumed + bs,
                                              len(self.sources)) * self.seq
        self.consumed += bs
        self.tokens += bs * self.seq
        self.step += 1
        return value

    def _reset_source_window(self):
        n = len(self.sources)
        self._src_loss, self._src_n = torch.zeros(n), torch.zeros(n)

    def _source_scalars(self) -> dict[str, float]:
        """train/loss/<source> over the log window (zero3 layout) and train/tokens/<source>."""
        out = {}
        if not self.sources:
            return out
        if not self.built.pipeline:
            both = torch.stack([self._src_loss, self._src_n]).to(self.engine.device)
            if self.dp > 1:
                dist.all_reduce(both, group=self.ps.dp_group)
            both = both.cpu()
            for i, name in enumerate(self.sources):
                if both[1, i] > 0:
                    out[f"train/loss/{name}"] = float(both[0, i] / both[1, i])
        for i, name in enumerate(self.sources):
            out[f"train/tokens/{name}"] = float(self._src_tokens[i])
        self._reset_source_window()
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """valid/loss (and per source valid/loss/<source> for a mixture)."""
        if self.valid_by_source:
            out = {f"valid/loss/{name}": self._eval_on(ds) for name, ds in self.valid_by_source.items()}
            # weight each source's held-out loss by its share of the training mixture
            weights = dict(zip(self.sources, self.train_ds.counts.tolist()))
            total = sum(weights[n] for n in self.valid_by_source)
            out["valid/loss"] = sum(out[f"valid/loss/{n}"] * weights[n] / total for n in self.valid_by_source)
            return out
        if self.valid_ds is None:
            return {}
        return {"valid/loss": self._eval_on(self.valid_ds)}

    def _eval_on(self, dataset) -> float:
        it = micro_batches(dataset, 0, self.micro, self.ps.dp_rank, self.dp)
        n = self.run.train.eval_iters
        if self.built.pipeline:
            gas = self.engine.gradient_accumulation_steps()
            losses = [float(self.engine.eval_batch(it)) for _ in range(max(1, n // gas))]
            return float(np.mean(losses))
        self.engine.eval()
        total = torch.zeros(())
        for _ in range(n):
            x, y = next(it)
            y = y.to(self.engine.device)
            total += token_mean(self.engine(x.to(self.engine.device), y), y).float().cpu()
        self.engine.train()
        return self._dp_mean(total / n)

    def evaluate_tasks(self) -> dict[str, float]:
        """``train.eval_tasks`` on the current weights: gathered like an export (every rank takes
        part), scored on global rank 0, logged as ``eval/<task>/<metric>``; the others wait."""
        from megagpt.eval.runner import Evaluator, run_suite, tensorboard_scalars
        from megagpt.eval.tasks import load_task
        from megagpt.inference import build_empty
        from megagpt.inference.tokenizer import Tokenizer
        from megagpt.inference.weights import load_weights
        from megagpt.train.export import consolidated_state_dict

        tr = self.run.train
        full = consolidated_state_dict(self.built, self.run.model)
        out: dict[str, float] = {}
        if full is not None:
            t0 = time.perf_counter()
            model = build_empty(self.run.model)
            load_weights(model, full, "the running model")
            model.to(self.engine.device).eval().requires_grad_(False)
            ev = Evaluator(model, Tokenizer(self.run.data.tokenizer))
            rows = run_suite(ev, [load_task(p) for p in tr.eval_tasks], tr.eval_task_shots, seed=tr.seed,
                             limit=tr.eval_task_limit or None)
            out = tensorboard_scalars(rows)
            self.metrics.scalars(self.step, out)
            self.metrics.console(f"step {self.step:>6} | tasks ({time.perf_counter() - t0:.1f}s) | " + " | ".join(
                f"{k[5:]} {v:.4f}" for k, v in out.items()))
            del model, full
        dist.barrier()
        return out

    def save(self):
        tr = self.run.train
        if tr.checkpoint_dir:
            run = self.run
            meta = {"model": asdict(run.model), **checkpoint.layout_of(run, self.ps), "step": self.step,
                    "tokens": self.tokens, "tokenizer": run.data.tokenizer}
            try:
                checkpoint.save(self.engine, tr.checkpoint_dir, self.step,
                                {"step": self.step, "consumed_samples": self.consumed, "tokens": self.tokens,
                                 "param_names": param_group_names(self.engine.module.named_parameters())},
                                self.ps, tr.keep_last, meta=meta)
            except checkpoint.SaveError as e:
                if tr.save_failure != "warn":
                    raise
                self.metrics.console(f"warning: {e} Training goes on (train.save_failure=warn).")
                if self.metrics.tb is not None:
                    self.metrics.tb.add_text("checkpoint/save_failure", str(e), self.step)

    # ----------------------------------------------------------------------------------------
    def train(self) -> list[float]:
        tr = self.run.train
        data = micro_batches(self.train_ds, self.consumed, self.micro, self.ps.dp_rank, self.dp,
                             with_source=not self.built.pipeline)
        stop = min(tr.train_iters, tr.exit_after_iters or tr.train_iters)
        losses = []
        self.metrics.console(
            f"training {self.run.parallel.layout}: tp={self.ps.tp_size} pp={self.ps.pp_size} dp={self.dp}, "
            f"batch {self.full_batch} x {self.seq} tokens, steps {self.step + 1}..{stop} of {tr.train_iters}; "
            f"peak {self.peak / 1e12:.3f} TFLOP/s per device ({self.peak_source})")
        window_t, window_tokens = time.perf_counter(), 0
        saved_at = self.step
        while self.step < stop:
            t0 = time.perf_counter()
            loss = self.train_step(data)
            step_time = time.perf_counter() - t0
            losses.append(loss)
            window_tokens += self.engine.train_batch_size() * self.seq
            if self.step % tr.log_interval == 0 or self.step == stop or self.step == 1:
                elapsed = time.perf_counter() - window_t
                tok_s = window_tokens / elapsed
                tflops = tok_s * self.flops_per_token / dist.get_world_size() / 1e12
                m = {"train/loss": loss, "train/ppl": math.exp(min(loss, 50.0)),
                     "train/lr": self.engine.lr_scheduler.get_lr()[0],
                     "train/grad_norm": self.engine.get_global_grad_norm(),
                     "train/tokens_seen": float(self.tokens), "train/batch_size": float(self.engine.train_batch_size()),
                     "perf/tokens_per_sec": tok_s, "perf/tflops_per_device": tflops,
                     "perf/mfu": tflops * 1e12 / self.peak, "perf/step_time": step_time,
                     "perf/peak_memory_gb": peak_memory_bytes() / 2 ** 30}
                if m["train/grad_norm"] is not None:
                    m["train/grad_norm"] = float(m["train/grad_norm"])
                m.update(self._source_scalars())
                if self.dtype == torch.float16:
                    m["train/loss_scale"] = float(self.engine.optimizer.cur_scale)
                self.metrics.scalars(self.step, m)
                self.metrics.console(format_line(self.step, tr.train_iters, m))
                window_t, window_tokens = time.perf_counter(), 0
            if self.step % tr.eval_interval == 0 or self.step == tr.train_iters:
                v = self.evaluate()
                if v:
                    v["valid/ppl"] = math.exp(min(v["valid/loss"], 50.0))
                    self.metrics.scalars(self.step, v)
                    self.metrics.console(f"step {self.step:>6} | " + " | ".join(
                        f"{k[6:]} {val:.4f}" for k, val in v.items()))
                if tr.eval_tasks:
                    self.evaluate_tasks()
            if tr.save_interval and self.step % tr.save_interval == 0:
                self.save()
                saved_at = self.step
        if saved_at != self.step:
            self.save()
        if tr.export_path and self.step == tr.train_iters:
            from megagpt.train.export import export

            export(self.built, self.run.model, tr.export_path, tokenizer=self.run.data.tokenizer,
                   step=self.step)
            self.metrics.console(f"exported fp32 weights to {tr.export_path}")
        self.metrics.close()
        return losses
