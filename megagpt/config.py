"""Typed configuration: one small dataclass per component, loaded from YAML/JSON files.

Every component receives only its own section. Unknown keys are rejected, and ``validate()``
turns a bad value into one sentence naming the key, the allowed values and the way out, before
any process group exists.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration value a user has to fix; the message names the key."""


def _from_dict(cls, data: Mapping[str, Any], where: str):
    """Build dataclass ``cls`` from ``data``, rejecting keys it does not declare."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}.")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}'; allowed keys are {', '.join(sorted(allowed))}."
        )
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
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # parse errors from either library
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level.")
    return data


def asdict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


__all__ = [
    "ConfigError", "ModelConfig", "ParallelConfig", "PRESETS", "model_config",
    "model_config_from_dict", "load_file", "asdict",
]
