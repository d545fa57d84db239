"""The fine-tuning loop: DeepSpeed engine (zero3 layout, any tp x dp, ZeRO stage 0-3), epochs of
seeded shuffles, validation metrics, the best model by validation metric, exact resume."""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from megagpt.config import ConfigError, RunConfig, zero_stage
from megagpt.finetuning.data import Encoder, FinetuneTask, collate, epoch_order, load_finetune_task
from megagpt.finetuning.model import FinetuneGPT
from megagpt.parallel.launch import dp_mean
from megagpt.train.metrics import MetricsWriter
from megagpt.train.resume import CheckpointPolicy
from megagpt.train.step import BatchShape

if TYPE_CHECKING:
    from megagpt.train.engine import Built


def model_config_for(run: RunConfig):
    """The pretrained weights' architecture, with the run file's explicit model keys (dropout)
    on top: a fine-tuning run file need not repeat the model."""
    from megagpt.formats import read_weights

    if not run.train.init_from:
        raise ConfigError("fine-tuning needs train.init_from: the pretrained weights (an export, a Hugging Face "
                          "GPT-2 directory or a pretraining checkpoint).")
    cfg, _, meta = read_weights(run.train.init_from)
    return replace(cfg, **{k: getattr(run.model, k) for k in run.model_keys if k != "preset"}), meta


# --- metrics --------------------------------------------------------------------------------------
def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # ties share their mean rank
        m = x == v
        r[m] = r[m].mean()
    return r


def classification_metrics(pred: list[int], gold: list[int], n_classes: int) -> dict[str, float]:
    p, g = np.asarray(pred), np.asarray(gold)
    out = {"accuracy": float((p == g).mean())}
    if n_classes == 2:  # F1 of class 1 (the second label)
        tp, fp, fn = (int(((p == a) & (g == b)).sum()) for a, b in ((1, 1), (1, 0), (0, 1)))
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return out


def regression_metrics(pred: list[float], gold: list[float]) -> dict[str, float]:
    p, g = np.asarray(pred, float), np.asarray(gold, float)
    if len(p) < 2 or p.std() == 0 or g.std() == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(np.corrcoef(p, g)[0, 1]), "spearman": float(np.corrcoef(_ranks(p), _ranks(g))[0, 1])}


def predictions(task: FinetuneTask, scores: torch.Tensor) -> list:
    if task.regression:
        return [float(x) for x in scores]
    return [int(i) for i in scores.argmax(-1)]


def task_metrics(task: FinetuneTask, pred: list, gold: list) -> dict[str, float]:
    if task.regression:
        return regression_metrics(pred, gold)
    n = max(len(e.choices) for e in task.examples) if task.type == "multiple_choice" else len(task.labels)
    return classification_metrics(pred, gold, n)


def main_metric(task: FinetuneTask) -> str:
    return "pearson" if task.regression else "accuracy"


# --- the trainer ----------------------------------------------------------------------------------
class FinetuneTrainer:
    def __init__(self, run: RunConfig, *, model_cfg=None, weights_meta=None):
        self.run, ft, tr = run, run.finetune, run.train
        self._encode_task(weights_meta)
        self.batch = BatchShape.of(run, dist.get_world_size())
        n_train = len(self.encoded["train"])
        self.steps_per_epoch = n_train // self.batch.full
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{ft.task_file}: {n_train} training examples are fewer than one batch of "
                              f"{self.batch.full} ({self.batch.describe()}).")
        self.total_steps = ft.epochs * self.steps_per_epoch
        self.built = self._build_engine()
        self.engine, self.ps = self.built.engine, self.built.ps
        self.metrics = MetricsWriter.for_run(run)
        self.best_dir = Path(ft.best_dir or (Path(tr.checkpoint_dir or ".") / "best"))
        self.checkpoints = CheckpointPolicy(run, self.built, self.metrics, universal=False)
        state = self.checkpoints.resume() or {"step": 0}
        self.step, self.best = state["step"], state.get("best")

    def _encode_task(self, weights_meta) -> None:
        """The task file, the tokenizer (the run's, or the one recorded with the pretrained
        weights) and every split encoded, cut to ``max_length`` tokens."""
        from megagpt.data.tokenizer import Tokenizer

        run, ft = self.run, self.run.finetune
        self.task = load_finetune_task(ft.task_file)
        tok_path = run.data.tokenizer or (weights_meta or {}).get("tokenizer")
        if not tok_path:
            raise ConfigError("data.tokenizer: no tokenizer recorded with the pretrained weights; set data.tokenizer.")
        self.tok = Tokenizer(tok_path)
        cfg = run.model
        if self.tok.vocab_size > cfg.vocab_size:
            raise ConfigError(f"{tok_path} has {self.tok.vocab_size} tokens but the model only {cfg.vocab_size}.")
        self.max_length = min(ft.max_length or cfg.n_positions, cfg.n_positions)
        enc = Encoder(self.task, self.tok, self.max_length)
        self.encoded = {s: [enc.encode(e) for e in self.task.split(s)] for s in ("train", "valid", "test")}
        self.truncated = {s: sum(e.truncated for e in v) for s, v in self.encoded.items()}
        self.n_choices = max(len(e.seqs) for v in self.encoded.values() for e in v)

    def _build_engine(self) -> Built:
        """The zero3 layout's engine around ``FinetuneGPT``, or the 3d layout's pipeline with W_y
        on its last stage (``pipe_loss`` its loss); the LR warms up over ``warmup_fraction`` of
        the run's samples, then falls linearly to zero."""
        from megagpt.train.engine import build_3d, build_zero3, starts_fresh
        from megagpt.train.schedule import WarmupLinearLR

        run, ft, tr, cfg = self.run, self.run.finetune, self.run.train, self.run.model
        total = self.total_steps * self.batch.full
        warmup = int(ft.warmup_fraction * total)

        def scheduler(optimizer):
            return WarmupLinearLR(optimizer, warmup_tokens=warmup, decay_tokens=max(total, warmup + 1))

        init = starts_fresh(run)
        self.pipe_loss = None
        if run.parallel.layout == "3d":
            from megagpt.finetuning.pipeline import build_finetune_pipeline
            from megagpt.model.naming import pipeline_param_name

            def make_pipe(ps, topo):
                module, self.pipe_loss = build_finetune_pipeline(
                    cfg, ps, topo, task=self.task, clf_pdrop=ft.clf_pdrop, lm_coef=ft.lm_coef, init_seed=tr.seed,
                    checkpoint_activations=tr.activation_checkpointing)
                return module

            return build_3d(run, make_pipe, scheduler, init, name_map=lambda n: pipeline_param_name(n, cfg.n_layer))

        def make(ps):
            from megagpt.model.gpt import GPT

            gpt = GPT(cfg, ps, checkpoint_activations=tr.activation_checkpointing, init_seed=tr.seed)
            return FinetuneGPT(gpt, self.task.type, self.task.n_outputs, clf_pdrop=ft.clf_pdrop,
                               regression=self.task.regression, init_seed=tr.seed)

        return build_zero3(run, make, scheduler, init, gpt_of=lambda m: m.gpt)

    # ----------------------------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.engine.device) for k, v in batch.items()}

    def _batch(self, rows) -> dict:
        if self.built.pipeline:  # fixed shapes
            return collate(rows, self.tok.eod_id, self.task.regression, length=self.max_length, choices=self.n_choices)
        return collate(rows, self.tok.eod_id, self.task.regression)

    @staticmethod
    def _pipe_micro(b: dict):
        """(inputs, labels) as the pipeline engine takes them: the first stage gets the token
        ids, the loss on the last stage everything else."""
        N, S, T = b["idx"].shape
        return b["idx"].view(N * S, T), (b["lm_targets"], b["extract"], b["choice_mask"].long(), b["labels"])

    def _pipe_sums(self) -> torch.Tensor:
        """(task, lm, micro-batches) summed over the last stage's ranks since the last call."""
        t = self.pipe_loss.sums.clone().to(self.engine.device)  # zeros except on the last stage
        self.pipe_loss.sums.zero_()
        dist.all_reduce(t)
        return t.cpu()

    def train_step(self) -> tuple[float, float, float, int]:
        """One optimizer step; (loss, task loss, LM loss) averaged over the global batch, tokens."""
        epoch, k = divmod(self.step, self.steps_per_epoch)
        order = epoch_order(len(self.encoded["train"]), self.run.train.seed, epoch)
        micro, gas, dp, full = self.batch.micro, self.batch.accumulation, self.batch.dp, self.batch.full
        ids = order[k * full:(k + 1) * full]
        self.engine.lr_scheduler.pending_tokens = full
        lm_coef = self.run.finetune.lm_coef
        batches = []
        for m in range(gas):
            start = (m * dp + self.ps.dp_rank) * micro  # the same partition as one process
            batches.append(self._batch([self.encoded["train"][i] for i in ids[start:start + micro]]))
        tokens = sum(int((b["lm_targets"] != -100).sum()) for b in batches) * dp
        if self.built.pipeline:
            loss = float(self.engine.train_batch(data_iter=iter([self._pipe_micro(b) for b in batches])))
            t = self._pipe_sums()
            self.step += 1
            return loss, float(t[0] / t[2]), float(t[1] / t[2]), tokens
        sums = torch.zeros(3)
        for m, batch in enumerate(batches):
            self.engine.set_gradient_accumulation_boundary(m == gas - 1)
            loss, task, lm, _ = self.engine(**self._to_device(batch), lm_coef=lm_coef)
            self.engine.backward(loss)
            self.engine.step()
            sums += torch.stack([loss.detach().float().cpu(), task.float().cpu(), lm.float().cpu()])
        mean = dp_mean(sums / gas, self.ps, self.engine.device)
        self.step += 1
        return float(mean[0]), float(mean[1]), float(mean[2]), tokens

    @torch.no_grad()
    def score_split(self, split: str) -> torch.Tensor:
        """The head's outputs for every example of ``split``, in order, on every rank. The DP
        groups share the examples and run the same number of forward passes (ZeRO-3's gathers
        and the pipeline's sends are collective)."""
        data = self.encoded[split]
        n = len(data)
        micro, dp = self.batch.micro, self.batch.dp
        per = math.ceil(n / dp)
        mine = list(range(self.ps.dp_rank * per, min(n, (self.ps.dp_rank + 1) * per)))
        local: dict[int, list] = {}
        if self.built.pipeline:
            self.pipe_loss.collect = []
        else:
            self.engine.eval()
        chunks = [mine[b:b + micro] for b in range(0, per, micro)]
        for idx in chunks:
            rows = [data[i] for i in idx] or [data[0]]  # a rank out of examples still joins in
            rows += [rows[-1]] * (micro - len(rows)) if self.built.pipeline else []
            # every example padded to the task's most answers: score rows of equal width
            batch = self._batch(rows) if self.built.pipeline else collate(
                rows, self.tok.eod_id, self.task.regression, choices=self.n_choices)
            if self.built.pipeline:
                self.engine.eval_batch(iter([self._pipe_micro(batch)]), num_micro_batches=1)
                continue
            scores = self.engine(**self._to_device(batch), lm_coef=0.0)[3].float().cpu()
            local.update((i, scores[j].tolist()) for j, i in enumerate(idx))
        if self.built.pipeline:
            if self.engine.is_last_stage() and self.ps.tp_rank == 0:
                for idx, scores in zip(chunks, self.pipe_loss.collect):
                    local.update((i, scores[j].tolist()) for j, i in enumerate(idx))
            self.pipe_loss.collect = None
        else:
            self.engine.train()
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        merged = {k: v for p in parts for k, v in p.items()}
        return torch.tensor([merged[i] for i in range(n)])

    def validation_metrics(self) -> dict[str, float]:
        """The task's metrics on the valid split (finetune/accuracy, ..., finetune/valid_loss_task);
        {} without one."""
        if not self.encoded["valid"]:
            return {}
        from megagpt.finetuning.model import task_loss

        scores = self.score_split("valid")
        gold = [e.target for e in self.encoded["valid"]]
        out = {f"finetune/{k}": v for k, v in task_metrics(self.task, predictions(self.task, scores), gold).items()}
        labels = torch.tensor(gold, dtype=torch.float32 if self.task.regression else torch.long)
        out["finetune/valid_loss_task"] = float(task_loss(scores, labels, self.task.regression))
        return out

    def save_best(self, value: float, metrics: dict) -> None:
        """The fine-tuned model (an export megagpt.load reads, plus W_y and the task) in best_dir."""
        from megagpt.formats.weights import save_export
        from megagpt.train.consolidate import consolidated_state_dict, replicated_fp32

        module = self.engine.module
        if self.built.pipeline:
            from megagpt.finetuning.pipeline import classifier_params

            full = consolidated_state_dict(self.built, self.run.model)
            params = classifier_params(module)  # on the last stage, whose DP groups gather them
            head = replicated_fp32(params) if params else None
            parts = [None] * dist.get_world_size()
            keep = params and self.ps.dp_rank == 0 and self.ps.tp_rank == 0
            dist.all_gather_object(parts, head if keep else None)
            head = next(p for p in parts if p is not None)
        else:
            full = consolidated_state_dict(self.built, self.run.model, named=module.gpt.named_parameters())
            head = replicated_fp32([module.classifier.weight, module.classifier.bias])
        if dist.get_rank() == 0:
            from safetensors.torch import save_file

            tmp = self.best_dir.with_name(self.best_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_export(full, self.run.model, tmp / "model.safetensors", tokenizer=str(Path(self.tok.path).resolve()),
                        step=self.step)
            save_file({"weight": head[0].contiguous(), "bias": head[1].contiguous()},
                      str(tmp / "classifier.safetensors"))
            info = {"task": self.task.name, "type": self.task.type, "labels": self.task.labels,
                    "regression": self.task.regression, "max_length": self.max_length, "step": self.step,
                    "metric": main_metric(self.task), "value": value, "valid": metrics,
                    "lm_coef": self.run.finetune.lm_coef}
            (tmp / "finetune.json").write_text(json.dumps(info, indent=1) + "\n")
            shutil.rmtree(self.best_dir, ignore_errors=True)
            tmp.rename(self.best_dir)
        dist.barrier()

    def _better(self, value: float) -> bool:
        """A NaN metric (e.g. a correlation of constant predictions) never wins, and never blocks."""
        if math.isnan(value):
            return self.best is None
        return self.best is None or math.isnan(self.best) or value > self.best

    def save(self) -> None:
        self.checkpoints.save(self.step, {"best": self.best})

    def _validate(self) -> None:
        """The validation metrics, logged; a main metric better than the best so far puts this
        model in ``best_dir``."""
        v = self.validation_metrics()
        if not v:
            return
        self.metrics.scalars(self.step, v)
        self.metrics.console(f"step {self.step:>5} | valid " + " | ".join(f"{k.split('/')[1]} {x:.4f}"
                                                                          for k, x in v.items()))
        key = f"finetune/{main_metric(self.task)}"
        if self._better(v[key]):
            self.best = v[key]
            self.save_best(self.best, v)
            self.metrics.scalars(self.step, {"finetune/best": self.best})

    def train(self) -> list[float]:
        tr = self.run.train
        self.metrics.console(
            f"fine-tuning {self.task.name} ({self.task.type}, {len(self.encoded['train'])} train / "
            f"{len(self.encoded['valid'])} valid examples, {self.truncated['train']} train inputs cut to "
            f"{self.max_length} tokens): tp={self.ps.tp_size} dp={self.batch.dp}, batch {self.batch.full}, "
            f"{self.run.finetune.epochs} epochs = {self.total_steps} steps, lm_coef {self.run.finetune.lm_coef}, "
            f"zero stage {zero_stage(self.run.deepspeed)}; majority baseline {self.task.majority():.4f}")
        losses, saved_at = [], self.step
        t0, tok_window = time.perf_counter(), 0
        stop = min(self.total_steps, tr.exit_after_iters or self.total_steps)  # an early stop keeps the schedule
        while self.step < stop:
            loss, task, lm, tokens = self.train_step()
            losses.append(loss)
            tok_window += tokens
            if self.step % tr.log_interval == 0 or self.step == self.total_steps:
                dt = time.perf_counter() - t0
                m = {"finetune/loss": loss, "finetune/loss_task": task, "finetune/loss_lm": lm,
                     "finetune/lr": self.engine.lr_scheduler.get_lr()[0], "finetune/tokens_per_sec": tok_window / dt}
                self.metrics.scalars(self.step, m)
                self.metrics.console(f"step {self.step:>5}/{self.total_steps} | loss {loss:.4f} | task {task:.4f} | "
                                     f"lm {lm:.4f} | lr {m['finetune/lr']:.3e} | "
                                     f"{m['finetune/tokens_per_sec']:.0f} tok/s")
                t0, tok_window = time.perf_counter(), 0
            if self.step % tr.eval_interval == 0 or self.step == self.total_steps:
                self._validate()
            if self.checkpoints.due(self.step):
                self.save()
                saved_at = self.step
        if saved_at != self.step:
            self.save()
        if not self.encoded["valid"] and self.step == self.total_steps:  # nothing to choose by: the last model
            self.save_best(float("nan"), {})
        self.metrics.close()
        return losses


@torch.no_grad()
def predict(best_dir: str | Path, task_file: str | Path, split: str = "test", output: str | Path | None = None,
            batch_size: int = 16) -> tuple[list, dict]:
    """Answers of the fine-tuned model in ``best_dir`` for a split of a task file (one process):
    (one row per example, metrics where the split has labels); rows go to ``output`` as JSONL."""
    from safetensors.torch import load_file

    from megagpt.inference import load

    best_dir = Path(best_dir)
    if not (best_dir / "finetune.json").is_file():
        raise FileNotFoundError(f"{best_dir}: no fine-tuned model here (finetune.json is missing).")
    info = json.loads((best_dir / "finetune.json").read_text())
    task = load_finetune_task(task_file)
    if task.type != info["type"] or (task.labels and task.labels != info["labels"]):
        raise ValueError(f"{task_file}: a {task.type} task with labels {task.labels}, but {best_dir} was fine-tuned "
                         f"on a {info['type']} task with labels {info['labels']}.")
    gpt, tok = load(best_dir / "model.safetensors")
    if tok is None:
        raise FileNotFoundError(f"{best_dir}: the tokenizer its model.json names is gone; it is needed to encode.")
    model = FinetuneGPT(gpt, task.type, task.n_outputs, clf_pdrop=0.0, regression=task.regression).eval()
    model.classifier.load_state_dict(load_file(str(best_dir / "classifier.safetensors")))
    examples = task.split(split)
    enc = Encoder(task, tok, info["max_length"])
    encoded = [enc.encode(e) for e in examples]
    rows, pred = [], []
    for b in range(0, len(encoded), batch_size):
        chunk = encoded[b:b + batch_size]
        _, _, _, scores = model(**collate(chunk, tok.eod_id, task.regression), lm_coef=0.0)
        pred += predictions(task, scores)
        rows += [{"scores": s.tolist() if s.dim() else float(s)} for s in scores]
    for row, ex, p in zip(rows, examples, pred):
        answer = task.labels[p] if task.labels and not task.regression else p
        row.update(line=ex.line, prediction=answer)
        if ex.label is not None:
            row["label"] = ex.label
    labelled = [(p, e.target) for p, e in zip(pred, encoded) if e.target is not None]
    metrics = task_metrics(task, *map(list, zip(*labelled))) if labelled else {}
    if output:
        with open(output, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows, metrics
