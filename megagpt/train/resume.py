"""Checkpoint policy of a pretraining run: where a run starts (the newest whole checkpoint of
``train.checkpoint_dir``, falling back past broken ones; one saved in another layout through its
universal form; or ``train.resume_from``) and how it saves (``train.save_failure``)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from megagpt.config import ConfigError, RunConfig
from megagpt.formats.manifest import latest_tag, layout_of
from megagpt.formats.universal import is_universal
from megagpt.model.naming import param_group_names
from megagpt.train import checkpoint
from megagpt.train.reshard import ensure_universal, load_into


class CheckpointPolicy:
    def __init__(self, run: RunConfig, built, metrics):
        self.run, self.built, self.metrics = run, built, metrics

    def resume(self) -> dict | None:
        """The client state (step, consumed_samples, tokens) of the checkpoint this run continues
        from, loaded into the engine; None when it starts fresh."""
        tr = self.run.train
        if not tr.resume:
            return None
        state, source = None, tr.checkpoint_dir
        if tr.checkpoint_dir:
            state = checkpoint.load(self.built.engine, tr.checkpoint_dir, self.built.ps,
                                    verify_level=tr.verify_checkpoint, fallback=tr.resume_fallback,
                                    log=self._fallback_note, layout=layout_of(self.run, self.built.ps),
                                    reshard=self._reshard)
        if state is None and tr.resume_from:
            state, source = self._resume_from(tr.resume_from), tr.resume_from
        if state is not None:
            self.metrics.console(f"resumed from {source} at step {state['step']} "
                                 f"({state['consumed_samples']} samples, {state['tokens']} tokens)")
        return state

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

    def save(self, step: int, consumed: int, tokens: int) -> None:
        """Checkpoint ``step`` (with the data position) to ``train.checkpoint_dir``, if set. A failed
        save stops the run, or with ``train.save_failure: warn`` is reported and training goes on."""
        run, tr, ps = self.run, self.run.train, self.built.ps
        if not tr.checkpoint_dir:
            return
        engine = self.built.engine
        meta = {"model": asdict(run.model), **layout_of(run, ps), "step": step,
                "tokens": tokens, "tokenizer": run.data.tokenizer, "run_name": tr.run_name}
        try:
            checkpoint.save(engine, tr.checkpoint_dir, step,
                            {"step": step, "consumed_samples": consumed, "tokens": tokens,
                             "param_names": param_group_names(engine.module.named_parameters())},
                            ps, tr.keep_last, meta=meta)
        except checkpoint.SaveError as e:
            if tr.save_failure != "warn":
                raise
            self.metrics.console(f"warning: {e} Training goes on (train.save_failure=warn).")
            if self.metrics.tb is not None:
                self.metrics.tb.add_text("checkpoint/save_failure", str(e), step)
