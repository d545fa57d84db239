"""``train.eval_tasks``: task files scored during pretraining. ``check_tasks`` runs at startup
(called by ``pretrain.py``), so a bad task cannot stop a run midway; ``TaskEvaluation`` is the
trainer's eval hook: at every ``eval_interval`` the current weights are gathered like an export
(every rank takes part), scored on global rank 0 and returned as ``eval/<task>/<metric>``."""
from __future__ import annotations

import torch.distributed as dist

from megagpt.config import ConfigError, RunConfig
from megagpt.data.tokenizer import Tokenizer
from megagpt.eval.runner import Evaluator, run_suite, tensorboard_scalars
from megagpt.eval.tasks import TaskError, load_task
from megagpt.formats.weights import load_weights
from megagpt.model.gpt import build_empty
from megagpt.train.consolidate import consolidated_state_dict


def check_tasks(tasks, tokenizer: str | None, n_positions: int, path) -> None:
    """A list of task files that load, and every test item's zero-shot prompt fits the context
    (examples are dropped until a prompt fits, so more shots cannot fail where none fit)."""
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ConfigError(f"train.eval_tasks must be a list of task file paths, got {tasks!r}.")
    if not tokenizer:
        raise ConfigError(f"{path}: train.eval_tasks needs data.tokenizer (the sentencepiece model of the shards).")
    try:
        tok = Tokenizer(tokenizer)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.tokenizer: {e}") from None
    ev = Evaluator(None, tok, n_positions=n_positions)
    for i, task in enumerate(tasks):
        try:
            ev.prompts(load_task(task), 0, seed=0)
        except TaskError as e:
            raise ConfigError(f"train.eval_tasks[{i}]: {e}") from None


class TaskEvaluation:
    """The pretraining eval hook for ``train.eval_tasks``."""

    name = "tasks"

    def __init__(self, run: RunConfig):
        self.run = run
        self.tasks = [load_task(p) for p in run.train.eval_tasks]

    def __call__(self, built, step: int) -> dict[str, float]:
        tr = self.run.train
        full = consolidated_state_dict(built, self.run.model)
        out: dict[str, float] = {}
        if full is not None:
            model = build_empty(self.run.model)
            load_weights(model, full, "the running model")
            model.to(built.engine.device).eval().requires_grad_(False)
            ev = Evaluator(model, Tokenizer(self.run.data.tokenizer))
            out = tensorboard_scalars(run_suite(ev, self.tasks, tr.eval_task_shots, seed=tr.seed,
                                                limit=tr.eval_task_limit or None))
            del model, full
        dist.barrier()
        return out


def pretraining_hooks(run: RunConfig) -> list:
    """The eval hooks a pretraining run's file asks for."""
    return [TaskEvaluation(run)] if run.train.eval_tasks else []
