"""Checkpoint policy of a training run: where a run starts (the newest whole checkpoint of
``train.checkpoint_dir``, falling back past broken ones; one saved in another layout through its
universal form; or ``train.resume_from``), how it saves (``train.save_failure``), and where the
guard rewinds to (the newest whole checkpoint at least N steps back; the data window it leaves out
is written to ``<checkpoint_dir>/guard.json`` before ``latest`` moves back, so a resume after a
kill leaves it out too). Fine-tuning uses it without the universal form: its checkpoints resume in
the layout they were saved in."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from megagpt.config import ConfigError, RunConfig
from megagpt.formats.manifest import TAG, latest_tag, layout_of, write_atomic
from megagpt.formats.universal import is_universal
from megagpt.model.naming import param_group_names
from megagpt.train import engine_checkpoint
from megagpt.train.metrics import MetricsWriter
from megagpt.train.reshard import ensure_universal, load_into

if TYPE_CHECKING:
    from megagpt.train.engine import Built


class CheckpointPolicy:
    def __init__(self, run: RunConfig, built: Built, metrics: MetricsWriter, *, universal: bool = True):
        """``universal``: the checkpoints carry what their universal form needs (``megagpt.json``,
        the parameter names), so they resume in another layout; without it (fine-tuning, whose
        head the universal form does not hold) they resume only in the layout that saved them."""
        self.run, self.built, self.metrics, self.universal = run, built, metrics, universal

    def resume(self) -> dict | None:
        """The client state (step; pretraining's consumed_samples and tokens) of the checkpoint
        this run continues from, loaded into the engine; None when it starts fresh."""
        tr = self.run.train
        if not tr.resume:
            return None
        state, source = None, tr.checkpoint_dir
        if tr.checkpoint_dir:
            state = engine_checkpoint.load(self.built.engine, tr.checkpoint_dir, self.built.ps,
                                    verify_level=tr.verify_checkpoint, fallback=tr.resume_fallback,
                                    log=self._fallback_note, **self._layout())
        if state is None and tr.resume_from:
            state, source = self._resume_from(tr.resume_from), tr.resume_from
        if state is not None:
            position = (f" ({state['consumed_samples']} samples, {state['tokens']} tokens)"
                        if "consumed_samples" in state else "")
            self.metrics.console(f"resumed from {source} at step {state['step']}{position}")
            if tr.checkpoint_dir:
                state["skip_data"] = state.get("skip_data", []) + self.recorded_windows()
        return state

    def _layout(self) -> dict:
        """``engine_checkpoint.load``'s layout check: a checkpoint of another layout through its universal
        form (none without it)."""
        return {"layout": layout_of(self.run, self.built.ps), "reshard": self._reshard} if self.universal else {}

    def _guard_file(self) -> Path:
        return Path(self.run.train.checkpoint_dir) / "guard.json"

    def recorded_windows(self) -> list:
        """The data windows earlier rewinds of this run left out (``guard.json``)."""
        path = self._guard_file()
        return json.loads(path.read_text())["skip_data"] if path.is_file() else []

    def rewind(self, max_step: int) -> dict | None:
        """Load the newest whole checkpoint at or before ``max_step``; its client state, or None
        when there is none."""
        tr = self.run.train
        if not tr.checkpoint_dir:
            return None
        return engine_checkpoint.load(self.built.engine, tr.checkpoint_dir, self.built.ps,
                                      verify_level=tr.verify_checkpoint, fallback=True, log=self._fallback_note,
                                      max_step=max_step, **self._layout())

    def record_rewind(self, step: int, windows: list) -> None:
        """Make the rewind durable: the windows to leave out, then ``latest`` back to ``step``'s tag
        (newer tags become saves a resume passes over; later saves replace them)."""
        if dist.get_rank() == 0:
            write_atomic(self._guard_file(), json.dumps({"skip_data": windows}) + "\n")
            write_atomic(Path(self.run.train.checkpoint_dir) / "latest", TAG.format(step))
        dist.barrier()

    def _reshard(self, tag: str) -> dict:
        """A checkpoint of ``checkpoint_dir`` saved in another layout: through its universal form."""
        root = ensure_universal(self.run.train.checkpoint_dir, tag)
        return load_into(self.built, self.run, root, log=self.metrics.console)

    def _resume_from(self, source: str) -> dict:
        """``train.resume_from``: a universal checkpoint, a run's checkpoint directory (its
        ``latest``) or one tag of it, in any layout."""
        path = Path(source)
        if not is_universal(path):
            latest = latest_tag(path)
            if latest is not None:
                path = path / latest
            if not (path / "megagpt.json").is_file():
                raise ConfigError(f"train.resume_from={source}: not a universal checkpoint, a checkpoint "
                                  f"directory with 'latest', or a checkpoint tag.")
            path = ensure_universal(path.parent, path.name, verify_level=self.run.train.verify_checkpoint)
        return load_into(self.built, self.run, path, log=self.metrics.console)

    def _fallback_note(self, line: str) -> None:
        """A broken checkpoint passed over: on the console and in TensorBoard's text tab."""
        self.metrics.console(f"warning: {line}")
        if self.metrics.tb is not None:
            self.metrics.tb.add_text("checkpoint/fallback", line)

    def due(self, step: int) -> bool:
        """Whether the run saves after ``step`` (every ``train.save_interval`` steps; the last step
        the run trains is saved by the trainer whatever the interval)."""
        interval = self.run.train.save_interval
        return bool(interval) and step % interval == 0

    def save(self, step: int, state: dict) -> None:
        """Checkpoint ``step`` with the trainer's client state ``state`` (pretraining: the data
        position, the tokens seen, the guard's history and the data windows left out; fine-tuning:
        the best metric) to ``train.checkpoint_dir``, if set. A failed save stops the run, or with
        ``train.save_failure: warn`` is reported and training goes on."""
        run, tr, ps = self.run, self.run.train, self.built.ps
        if not tr.checkpoint_dir:
            return
        engine = self.built.engine
        client, meta = {"step": step, **state}, None
        if self.universal:
            client["param_names"] = param_group_names(engine.module.named_parameters())
            meta = {"model": asdict(run.model), **layout_of(run, ps), "step": step,
                    "tokens": state["tokens"], "tokenizer": run.data.tokenizer, "run_name": tr.run_name}
        try:
            engine_checkpoint.save(engine, tr.checkpoint_dir, step, client, ps, tr.keep_last, meta=meta)
        except engine_checkpoint.SaveError as e:
            if tr.save_failure != "warn":
                raise
            self.metrics.console(f"warning: {e} Training goes on (train.save_failure=warn).")
            if self.metrics.tb is not None:
                self.metrics.tb.add_text("checkpoint/save_failure", str(e), step)
