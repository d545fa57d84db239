"""Typed configuration: one small dataclass per component, loaded from YAML/JSON files.

Every component receives only its own section. Unknown keys are rejected, and ``validate()``
turns a bad value into one sentence naming the key, the allowed values and the way out, before
any process group exists.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration value a user has to fix; the message names the key."""


_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
          "list": "a list", "dict": "a mapping"}


def check_value(where: str, value, annotation: str, *, error=None) -> None:
    """Check ``value`` against a dataclass field's annotation (``int``, ``float | None``, ...):
    booleans are not integers, numbers are finite and not negative (no size, count, rate or seed
    here can be), strings are not numbers. Raises ``error`` (default ConfigError) naming ``where``."""
    error = error or ConfigError
    kinds = [t.strip() for t in str(annotation).split("|")]
    if value is None:
        if "None" in kinds:
            return
        raise error(f"{where} must be set, got null.")
    kinds = [k.split("[")[0] for k in kinds if k != "None"]
    known = [k for k in kinds if k in _KINDS or k in ("tuple", "Any")]
    if not known or "Any" in known:
        return
    ok = False
    for k in known:
        if k == "bool":
            ok |= isinstance(value, bool)
        elif k == "int":
            ok |= isinstance(value, int) and not isinstance(value, bool)
        elif k == "float":
            ok |= isinstance(value, (int, float)) and not isinstance(value, bool)
        elif k == "str":
            ok |= isinstance(value, str)
        elif k in ("list", "tuple"):
            ok |= isinstance(value, (list, tuple)) or ("str" not in known and isinstance(value, str))
        elif k == "dict":
            ok |= isinstance(value, Mapping)
    want = " or ".join(_KINDS.get(k, "a list") for k in known)
    if not ok:
        raise error(f"{where} must be {want}, got {value!r}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise error(f"{where} must be a finite number, got {value!r}.")
        if value < 0:
            raise error(f"{where} must not be negative, got {value!r}.")


def _from_dict(cls, data: Mapping[str, Any], where: str):
    """Build dataclass ``cls`` from ``data``, rejecting keys it does not declare and values of the
    wrong type (see ``check_value``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}.")
    allowed = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}'; allowed keys are {', '.join(sorted(allowed))}."
        )
    for key, value in data.items():
        check_value(f"{where}.{key}", value, allowed[key].type)
    return cls(**data)


def _positive(where: str, **values) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}.{key} must be a positive integer, got {value!r}.")


def _probability(where: str, **values) -> None:
    for key, value in values.items():
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{where}.{key} must be a probability in [0, 1), got {value!r}.")


@dataclass
class ModelConfig:
    """GPT architecture, GPT-2 field names. ``ln_position='post'`` is GPT-1, 'pre' is GPT-2/3."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_positions: int = 1024
    vocab_size: int = 50257
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    ln_position: str = "pre"  # 'pre' (GPT-2/3, with a final LayerNorm) or 'post' (GPT-1)
    # 'dense' everywhere, or GPT-3's 'alternating' dense / locally banded layers (banded = odd layers)
    attention: str = "dense"
    local_window: int = 256  # tokens a banded layer sees, itself included
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    make_vocab_size_divisible_by: int = 128  # the padded vocab is a multiple of this times tp_size

    @property
    def ffn_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def padded_vocab_size(self, tp_size: int = 1) -> int:
        multiple = self.make_vocab_size_divisible_by * tp_size
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def is_banded(self, layer_idx: int) -> bool:
        return self.attention == "alternating" and layer_idx % 2 == 1

    def validate(self, tp_size: int = 1) -> "ModelConfig":
        w = "model"
        _positive(w, n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                  n_positions=self.n_positions, vocab_size=self.vocab_size,
                  local_window=self.local_window,
                  make_vocab_size_divisible_by=self.make_vocab_size_divisible_by)
        if self.n_inner is not None:
            _positive(w, n_inner=self.n_inner)
        _probability(w, embd_pdrop=self.embd_pdrop, attn_pdrop=self.attn_pdrop,
                     resid_pdrop=self.resid_pdrop)
        if self.ln_position not in ("pre", "post"):
            raise ConfigError(f"model.ln_position must be 'pre' (GPT-2/3) or 'post' (GPT-1), got {self.ln_position!r}.")
        if self.attention not in ("dense", "alternating"):
            raise ConfigError(f"model.attention must be 'dense' or 'alternating', got {self.attention!r}.")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}; "
                f"choose n_head among the divisors of n_embd.")
        if self.n_head % tp_size:
            raise ConfigError(
                f"model.n_head={self.n_head} must be divisible by parallel.tp_size={tp_size}; "
                f"use a tp_size that divides {self.n_head}.")
        if self.ffn_dim % tp_size:
            raise ConfigError(
                f"model.n_inner={self.ffn_dim} must be divisible by parallel.tp_size={tp_size}.")
        if not (self.layer_norm_epsilon > 0 and self.initializer_range > 0):
            raise ConfigError("model.layer_norm_epsilon and model.initializer_range must be positive.")
        return self


LAYOUTS = ("zero3", "3d")


@dataclass
class ParallelConfig:
    """Parallel degrees. The data-parallel degree is whatever the world size leaves over."""

    tp_size: int = 1
    pp_size: int = 1
    layout: str = "zero3"  # 'zero3' (TP x DP, ZeRO-3) or '3d' (TP x PP x DP, ZeRO-1)

    def dp_size(self, world_size: int) -> int:
        return world_size // (self.tp_size * self.pp_size)

    def validate(self, world_size: int | None = None) -> "ParallelConfig":
        _positive("parallel", tp_size=self.tp_size, pp_size=self.pp_size)
        if self.layout not in LAYOUTS:
            raise ConfigError(f"parallel.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}.")
        if self.layout == "zero3" and self.pp_size != 1:
            raise ConfigError(
                f"parallel.pp_size={self.pp_size} needs parallel.layout='3d'; layout 'zero3' has no "
                f"pipeline stages (set pp_size: 1 or layout: 3d).")
        if world_size is not None and world_size % (self.tp_size * self.pp_size):
            raise ConfigError(
                f"world size {world_size} is not divisible by parallel.tp_size x parallel.pp_size = "
                f"{self.tp_size} x {self.pp_size}; launch a multiple of {self.tp_size * self.pp_size} processes.")
        return self


# Presets. GPT-1: Radford et al. 2018. GPT-2: Radford et al. 2019 (the paper's 117M/345M/762M/1542M
# are 124M/355M/774M/1558M when counted with the tied embedding). GPT-3: Brown et al. 2020,
# Table 2.1. Two rows of that table are not self-consistent (1.3B: 24 heads x 128 != 2048;
# 13B: d_model 5140 is not 40 x 128); like GPT-NeoX we keep d_head = 128 (16 heads, 5120 wide).
_GPT2 = dict(n_positions=1024, vocab_size=50257, ln_position="pre")
_GPT3 = dict(n_positions=2048, vocab_size=50257, ln_position="pre", attention="alternating",
             local_window=256)

PRESETS: dict[str, dict[str, Any]] = {
    "gpt1": dict(n_layer=12, n_head=12, n_embd=768, n_positions=512, vocab_size=40478,
                 ln_position="post"),
    "gpt2-117m": dict(n_layer=12, n_head=12, n_embd=768, **_GPT2),
    "gpt2-345m": dict(n_layer=24, n_head=16, n_embd=1024, **_GPT2),
    "gpt2-762m": dict(n_layer=36, n_head=20, n_embd=1280, **_GPT2),
    "gpt2-1542m": dict(n_layer=48, n_head=25, n_embd=1600, **_GPT2),
    "gpt3-125m": dict(n_layer=12, n_head=12, n_embd=768, **_GPT3),
    "gpt3-350m": dict(n_layer=24, n_head=16, n_embd=1024, **_GPT3),
    "gpt3-760m": dict(n_layer=24, n_head=16, n_embd=1536, **_GPT3),
    "gpt3-1.3b": dict(n_layer=24, n_head=16, n_embd=2048, **_GPT3),
    "gpt3-2.7b": dict(n_layer=32, n_head=32, n_embd=2560, **_GPT3),
    "gpt3-6.7b": dict(n_layer=32, n_head=32, n_embd=4096, **_GPT3),
    "gpt3-13b": dict(n_layer=40, n_head=40, n_embd=5120, **_GPT3),
    "gpt3-175b": dict(n_layer=96, n_head=96, n_embd=12288, **_GPT3),
    # Small shapes for laptops, tests and the demo.
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=512),
    "small-cpu": dict(n_layer=6, n_head=6, n_embd=384, n_positions=256, **{
        k: v for k, v in _GPT2.items() if k != "n_positions"}),
}


@dataclass
class DataConfig:
    """Where training text comes from: Megatron shard prefixes of one source, or a mixture spec."""

    prefixes: list = dataclasses.field(default_factory=list)  # shard prefixes (no .bin/.idx)
    mixture: str | None = None  # a build_mixture.py spec; replaces ``prefixes``
    valid_prefixes: list = dataclasses.field(default_factory=list)  # held-out shards, if any
    valid_fraction: float = 0.01  # else: this tail fraction of each shard's documents
    seq_length: int | None = None  # default: model.n_positions
    seed: int = 1234
    tokenizer: str | None = None  # the sentencepiece model that made the shards; exports record it
    # learn only the tokens marked 1 in each shard's <name>_mask_document sidecar (dialogue
    # responses, data_tools/build_dialogues.py); the loss is averaged over those tokens
    loss_mask: bool = False

    def validate(self) -> "DataConfig":
        for key in ("prefixes", "valid_prefixes"):
            value = getattr(self, key)
            if isinstance(value, str):
                setattr(self, key, [value])
            elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"data.{key} must be a list of shard prefixes, got {value!r}.")
        if not self.prefixes and not self.mixture:
            raise ConfigError("data: give data.prefixes (shard prefixes) or data.mixture (a mixture spec).")
        if self.mixture and (self.prefixes or self.valid_prefixes):
            raise ConfigError("data.mixture brings its own shards and held-out split; remove "
                              "data.prefixes and data.valid_prefixes.")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError(f"data.valid_fraction must be in [0, 1), got {self.valid_fraction!r}.")
        if self.seq_length is not None:
            _positive("data", seq_length=self.seq_length)
        return self


@dataclass
class TrainConfig:
    """The run: schedule, logging, checkpoints. Optimizer, batch and precision live in the
    DeepSpeed JSON named by ``deepspeed_config``."""

    deepspeed_config: str = "ds_configs/auto.json"
    train_iters: int = 100  # optimizer steps
    exit_after_iters: int | None = None  # stop (with a checkpoint) early; the schedule is unchanged
    seed: int = 1234
    lr_warmup_tokens: int | None = None  # default: 1% of the run's tokens
    lr_decay_tokens: int | None = None  # default: all of the run's tokens
    min_lr_ratio: float = 0.1  # GPT-3: cosine decay to 10% of peak
    rampup_start_batch: int = 0  # samples; 0 turns GPT-3's batch-size ramp-up off
    rampup_tokens: int = 0
    activation_checkpointing: bool = False
    log_interval: int = 10
    eval_interval: int = 100
    eval_iters: int = 10
    save_interval: int = 0  # 0: only at the end
    keep_last: int = 3
    checkpoint_dir: str | None = "checkpoints/run"
    tensorboard_dir: str | None = "runs/run"
    resume: bool = True
    verify_checkpoint: str = "full"  # before resuming: 'full' (sizes and hashes), 'size', 'none'
    resume_fallback: bool = True  # a broken newest checkpoint: resume from the newest whole one
    save_failure: str = "stop"  # a save that fails (disk full): 'stop' with one line, or 'warn' and go on
    export_path: str | None = None  # consolidated fp32 weights (*.safetensors) written at the end
    # start from these weights (an export, a Hugging Face GPT-2 directory, another run's
    # checkpoint) when checkpoint_dir has nothing to resume: fine-tuning, continued pretraining
    init_from: str | None = None
    # resume from this checkpoint (a universal one, a run's checkpoint directory or one tag, saved
    # in any layout) when checkpoint_dir has nothing to resume: weights, optimizer, step, data position
    resume_from: str | None = None
    # zero/few-shot task files (megagpt/eval) scored every eval_interval on the consolidated weights
    eval_tasks: list = field(default_factory=list)
    eval_task_shots: list = field(default_factory=lambda: [0])  # k values; "max": as many as fit
    eval_task_limit: int = 0  # test items per task (0: all of them)

    def validate(self) -> "TrainConfig":
        _positive("train", train_iters=self.train_iters, log_interval=self.log_interval,
                  eval_interval=self.eval_interval, eval_iters=self.eval_iters,
                  keep_last=self.keep_last)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}.")
        if self.verify_checkpoint not in ("full", "size", "none"):
            raise ConfigError(f"train.verify_checkpoint must be 'full', 'size' or 'none', got "
                              f"{self.verify_checkpoint!r}.")
        if self.save_failure not in ("stop", "warn"):
            raise ConfigError(f"train.save_failure must be 'stop' or 'warn', got {self.save_failure!r}.")
        if not isinstance(self.resume_fallback, bool):
            raise ConfigError(f"train.resume_fallback must be true or false, got {self.resume_fallback!r}.")
        if self.init_from and self.resume_from:
            raise ConfigError("train.init_from (weights only, a fresh run) and train.resume_from (a run "
                              "continued) exclude each other; set one.")
        if self.export_path is not None and not str(self.export_path).endswith(".safetensors"):
            raise ConfigError(f"train.export_path={self.export_path!r} must name a .safetensors file "
                              f"(the weights; their config goes to a .json beside it).")
        if not self.eval_task_shots or any(k != "max" and (not isinstance(k, int) or isinstance(k, bool) or k < 0)
                                           for k in self.eval_task_shots):
            raise ConfigError(f"train.eval_task_shots must be a list of k values (integers >= 0 or 'max'), got "
                              f"{self.eval_task_shots!r}.")
        if self.save_interval < 0 or self.rampup_start_batch < 0 or self.rampup_tokens < 0:
            raise ConfigError("train.save_interval, train.rampup_start_batch and train.rampup_tokens "
                              "must be >= 0.")
        return self


@dataclass
class FinetuneConfig:
    """GPT-1's second stage (``megagpt/finetune.py``): a task file, L = L_task + lm_coef * L_lm, and
    the paper's recipe (lr 6.25e-5 and batch 32 live in ds_configs/finetune.json)."""

    task_file: str | None = None  # JSONL, megagpt/finetuning/__init__.py gives the schema
    lm_coef: float = 0.5  # lambda of the auxiliary language-modelling loss; 0 turns it off
    epochs: int = 3
    clf_pdrop: float = 0.1  # dropout before the linear head W_y
    warmup_fraction: float = 0.002  # of all steps, then linear decay to 0
    max_length: int | None = None  # tokens per input sequence (default: model.n_positions)
    best_dir: str | None = None  # where the best model by validation metric goes (default: <checkpoint_dir>/best)

    def validate(self) -> "FinetuneConfig":
        if not self.task_file:
            raise ConfigError("finetune.task_file must name the task's JSONL file.")
        _positive("finetune", epochs=self.epochs)
        if not 0.0 <= self.clf_pdrop < 1.0:
            raise ConfigError(f"finetune.clf_pdrop must be in [0, 1), got {self.clf_pdrop!r}.")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"finetune.warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}.")
        if self.max_length is not None:
            _positive("finetune", max_length=self.max_length)
        return self


def model_config(preset: str | None = None, **overrides) -> ModelConfig:
    """A ModelConfig from a preset name plus field overrides (or from fields alone)."""
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"model.preset '{preset}' is unknown; known presets: {', '.join(PRESETS)}.")
        base = dict(PRESETS[preset])
    base.update(overrides)
    return _from_dict(ModelConfig, base, "model")


def model_config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    data = dict(data)
    preset = data.pop("preset", None)
    return model_config(preset, **data)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with the file named in any error."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror}).") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{path}:{getattr(e, 'lineno', '?')}: not valid JSON ({getattr(e, 'msg', e)}).") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:  # first line: the file and line, then what the parser saw
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else "?"
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{path}:{line}: not valid YAML ({what}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level.")
    return data


__all__ = [
    "ConfigError", "ModelConfig", "ParallelConfig", "PRESETS", "model_config",
    "model_config_from_dict", "load_file",
]


@dataclass
class RunConfig:
    """A whole run file: one section per component, plus the DeepSpeed JSON it points at."""

    model: ModelConfig
    parallel: ParallelConfig
    data: DataConfig
    train: TrainConfig
    deepspeed: dict  # the loaded ds_configs/*.json, with any ``deepspeed.*`` overrides applied
    finetune: FinetuneConfig | None = None  # only in fine-tuning run files
    model_keys: tuple = ()  # the model keys the run file (or an override) set explicitly
    notes: list = field(default_factory=list)  # choices validate_run made ("auto" DeepSpeed values), for the log

    @property
    def seq_length(self) -> int:
        return self.data.seq_length or self.model.n_positions


def _set_dotted(tree: dict, dotted: str, value, where: str) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: '{dotted}' goes through '{key}', which is not a section.")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``train.train_iters=50`` -> ('train.train_iters', 50); values parse as YAML scalars."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value.")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a run YAML, apply dotted overrides (``model.n_layer=4``, ``deepspeed.bf16.enabled=true``),
    load the DeepSpeed JSON it names, and build the typed sections."""
    raw = load_file(path)
    sections = ("model", "parallel", "data", "train", "finetune")
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"{path}: unknown section '{unknown[0]}'; allowed sections are {', '.join(sections)}.")
    ds_overrides = []
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("deepspeed."):
            ds_overrides.append((key[len("deepspeed."):], value))
        elif key.split(".")[0] in sections:
            _set_dotted(raw, key, value, "override")
        else:
            raise ConfigError(f"override '{text}': the key must start with one of "
                              f"{', '.join(sections)} or deepspeed.")
    try:
        train = _from_dict(TrainConfig, raw.get("train") or {}, "train")
        sections_built = (model_config_from_dict(raw.get("model") or {}),
                          _from_dict(ParallelConfig, raw.get("parallel") or {}, "parallel"),
                          _from_dict(DataConfig, raw.get("data") or {}, "data"))
        finetune = _from_dict(FinetuneConfig, raw["finetune"] or {}, "finetune") if "finetune" in raw else None
    except ConfigError as e:  # name the file (overrides are applied to it)
        raise ConfigError(f"{path}: {e}") from None
    ds_path = Path(train.deepspeed_config)
    if not ds_path.is_absolute() and not ds_path.exists():
        ds_path = Path(path).parent / ds_path  # relative to the run file
    ds = load_file(ds_path)
    for key, value in ds_overrides:
        _set_dotted(ds, key, value, f"override deepspeed.{key}")
    model, parallel, data = sections_built
    if train.eval_tasks:
        check_tasks(train.eval_tasks, data.tokenizer, model.n_positions, path)
    return RunConfig(model=model, parallel=parallel, data=data, train=train, deepspeed=ds, finetune=finetune,
                     model_keys=tuple(raw.get("model") or {}))


def zero_stage(ds_config: Mapping[str, Any]) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when it has no ``zero_optimization``)."""
    return int((ds_config.get("zero_optimization") or {}).get("stage", 0))


def check_tasks(tasks, tokenizer: str | None, n_positions: int, path) -> None:
    """``train.eval_tasks`` at startup, so a bad task cannot stop a run midway: a list of task
    files that load, and every test item's zero-shot prompt fits the context (examples are
    dropped until a prompt fits, so more shots cannot fail where none fit)."""
    from megagpt.eval.runner import Evaluator
    from megagpt.eval.tasks import TaskError, load_task
    from megagpt.inference.tokenizer import Tokenizer

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


def validate_run(run: RunConfig, world_size: int) -> RunConfig:
    """Every check that can fail before a process group exists, with one sentence each."""
    par = run.parallel.validate(world_size)
    run.model.validate(par.tp_size)
    if run.finetune is None:
        run.data.validate()
    else:  # fine-tuning reads its task file, not shards
        run.finetune.validate()
    run.train.validate()
    if run.seq_length > run.model.n_positions:
        raise ConfigError(f"data.seq_length={run.seq_length} exceeds model.n_positions={run.model.n_positions}.")
    ds, name = run.deepspeed, run.train.deepspeed_config
    from megagpt.train.autotune import resolve

    run.notes = resolve(run, world_size)
    stage = zero_stage(ds)
    if par.pp_size > 1 and stage > 1:
        raise ConfigError(
            f"pipeline stages (parallel.pp_size={par.pp_size}) cannot run with ZeRO stage {stage} "
            f"({name}: zero_optimization.stage); either use layout 'zero3' with pp_size 1, or a "
            f"ZeRO stage 0/1 config such as ds_configs/3d.json.")
    if par.layout == "3d" and stage > 1:
        raise ConfigError(
            f"layout '3d' runs DeepSpeed's pipeline engine, which cannot use ZeRO stage {stage} "
            f"({name}: zero_optimization.stage); point train.deepspeed_config at ds_configs/3d.json "
            f"(ZeRO-1) or choose layout 'zero3'.")
    dp = par.dp_size(world_size)
    micro = ds.get("train_micro_batch_size_per_gpu")
    gas = ds.get("gradient_accumulation_steps", 1)
    total = ds.get("train_batch_size")
    if micro is None:
        raise ConfigError(f"{name}: set train_micro_batch_size_per_gpu (samples per rank per micro-step).")
    if total is not None and total != micro * gas * dp:
        raise ConfigError(
            f"{name}: train_batch_size={total} is not train_micro_batch_size_per_gpu x "
            f"gradient_accumulation_steps x data-parallel size = {micro} x {gas} x {dp} = "
            f"{micro * gas * dp}; drop train_batch_size (it is derived) or fix one of the three.")
    tr = run.train
    if tr.rampup_start_batch and tr.rampup_start_batch % (micro * dp):
        raise ConfigError(f"train.rampup_start_batch={tr.rampup_start_batch} must be a multiple of "
                          f"micro-batch x data-parallel size = {micro * dp}.")
    return run
