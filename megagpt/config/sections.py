"""One dataclass per section of a run file (model, parallel, data, train, finetune), each with
``validate()``, and the model presets (GPT-1, GPT-2, GPT-3)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megagpt.config.checks import ConfigError, _positive, _probability, from_dict
from megagpt.config.guard import FaultConfig, GuardConfig, section, skip_windows


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

    def validate(self, tp_size: int = 1) -> ModelConfig:
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

    def validate(self, world_size: int | None = None) -> ParallelConfig:
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

    def validate(self) -> DataConfig:
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
    compile: bool = False  # torch.compile the model through DeepSpeed's engine.compile()
    compile_backend: str = "inductor"  # torch.compile's backend ('aot_eager': capture only, no code generation)
    log_interval: int = 10
    eval_interval: int = 100
    eval_iters: int = 10
    save_interval: int = 0  # 0: only at the end
    keep_last: int = 3
    checkpoint_dir: str | None = "checkpoints/run"
    tensorboard_dir: str | None = "runs"  # the parent of every run's folder: point TensorBoard here
    run_name: str | None = None  # this run's folder under tensorboard_dir (default: the run file's name)
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
    # failure handling (README "When a run fails"): the loss-spike / non-finite guard, the hang
    # watchdog, the collective timeout, sample ranges of the stream to leave out, injected faults
    guard: GuardConfig = field(default_factory=GuardConfig)
    hang_timeout_s: float = 300.0  # a rank without progress this long ends the job, naming the stopped ranks
    collective_timeout_s: float = 1800.0  # the process groups' timeout; rank-0-only phases (hashing a checkpoint) fit
    skip_data: list = field(default_factory=list)  # [[start, end], ...] samples of the stream to leave out
    fault: FaultConfig | None = None  # tests only (MEGAGPT_ALLOW_FAULTS=1)

    def __post_init__(self):
        self.guard = section(GuardConfig, self.guard, "train.guard")
        self.fault = section(FaultConfig, self.fault, "train.fault")
        self.skip_data = skip_windows(self.skip_data)

    @property
    def tensorboard_run(self) -> str | None:
        """Where this run's event files go: ``<tensorboard_dir>/<run_name>``."""
        if not self.tensorboard_dir:
            return None
        return str(Path(self.tensorboard_dir) / (self.run_name or "run"))

    def validate(self) -> TrainConfig:
        if self.run_name is not None and (not self.run_name or "/" in self.run_name or self.run_name in (".", "..")):
            raise ConfigError(f"train.run_name must be a folder name (no '/'), got {self.run_name!r}.")
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
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ConfigError(f"train.compile_backend must name a torch.compile backend, got {self.compile_backend!r}.")
        for key in ("resume_fallback", "compile", "activation_checkpointing"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"train.{key} must be true or false, got {getattr(self, key)!r}.")
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
        for key in ("hang_timeout_s", "collective_timeout_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"train.{key} must be > 0 seconds, got {getattr(self, key)!r}.")
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

    def validate(self) -> FinetuneConfig:
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


_ARCH = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "ffn_dim", "ln_position",
         "attention", "local_window", "layer_norm_epsilon")


def arch_mismatch(saved, model) -> str | None:
    """The first architecture field where weights made for model config ``saved`` do not fit
    ``model``, as "key=X but model.key=Y" (None when they fit)."""
    for key in _ARCH:
        if key == "local_window" and saved.attention != "alternating":
            continue
        if getattr(saved, key) != getattr(model, key):
            return f"{key}={getattr(saved, key)!r} but model.{key}={getattr(model, key)!r}"
    return None


def model_config(preset: str | None = None, **overrides) -> ModelConfig:
    """A ModelConfig from a preset name plus field overrides (or from fields alone)."""
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"model.preset '{preset}' is unknown; known presets: {', '.join(PRESETS)}.")
        base = dict(PRESETS[preset])
    base.update(overrides)
    return from_dict(ModelConfig, base, "model")


def model_config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    data = dict(data)
    preset = data.pop("preset", None)
    return model_config(preset, **data)
