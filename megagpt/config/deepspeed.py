"""The DeepSpeed JSON checked like megagpt's own keys, before any process group exists.

DeepSpeed reads its config on every rank inside ``deepspeed.initialize``: a string where a number
belongs reaches torch's Adam as ``'<=' not supported between 'float' and 'str'`` (a traceback per
rank), and a misspelt top-level section (``zero_optimisation``) is silently ignored. Here every key
megagpt reads or DeepSpeed trains with gets a type and range check, with one sentence naming where
the value came from (the file, or the ``deepspeed.<key>=...`` override) and the key; the ZeRO,
fp16 and bf16 sections go through DeepSpeed's own pydantic models (their keys and types), and a
top-level key DeepSpeed does not know is named, with the closest known key."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from megagpt.config.checks import ConfigError

# DeepSpeed 0.16-0.19's top-level sections and keys (runtime/config.py and the sections it hands
# to other modules: precision, ZeRO, monitors, profilers, compression, pipeline, checkpointing...)
KNOWN_KEYS = frozenset("""
train_batch_size train_micro_batch_size_per_gpu gradient_accumulation_steps gradient_clipping
steps_per_print wall_clock_breakdown memory_breakdown dump_state prescale_gradients
gradient_predivide_factor gradient_allreduce_op sparse_gradients disable_allgather
dataloader_drop_last disable_python_gc log_level managed_gradient_accumulation
zero_allow_untested_optimizer zero_force_ds_cpu_optimizer optimizer scheduler fp16 float16 bf16
bfloat16 amp torch_autocast zero_optimization activation_checkpointing flops_profiler tensorboard
wandb csv_monitor comet comms_logger monitor_config autotuning elasticity data_efficiency
curriculum_learning compression_training aio sparse_attention eigenvalue progressive_layer_drop
quantize_training weight_quantization nebula compile timers communication_data_type
seq_parallel_communication_data_type pipeline hybrid_engine tensor_parallel checkpoint data_types
expert_parallel use_data_before_expert_parallelism graph_harvesting use_node_local_storage
zenflow vocabulary_size
""".split())


class _Where:
    """Names the source of a dotted key: the override that set it (or a section above it), else the file."""

    def __init__(self, name: str, overridden: Mapping[str, str]):
        self.name, self.overridden = name, overridden

    def __call__(self, key: str) -> str:
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            text = self.overridden.get(".".join(parts[:i]))
            if text is not None:
                return f"override deepspeed.{text}"
        return self.name


def _kind(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "mapping":
        return isinstance(value, Mapping)
    raise ValueError(kind)


_WORDS = {"bool": "true or false", "int": "an integer", "number": "a number", "str": "a string",
          "mapping": "a mapping of keys to values"}

# key: (kind, lower bound or None, bound is exclusive)
_SCALARS = {
    "train_batch_size": ("int", 1, False), "train_micro_batch_size_per_gpu": ("int", 1, False),
    "gradient_accumulation_steps": ("int", 1, False), "gradient_clipping": ("number", 0, False),
    "steps_per_print": ("int", 1, False), "gradient_predivide_factor": ("number", 0, True),
    "wall_clock_breakdown": ("bool", None, False), "memory_breakdown": ("bool", None, False),
    "prescale_gradients": ("bool", None, False), "sparse_gradients": ("bool", None, False),
    "zero_allow_untested_optimizer": ("bool", None, False), "zero_force_ds_cpu_optimizer": ("bool", None, False),
    "dump_state": ("bool", None, False), "optimizer": ("mapping", None, False), "scheduler": ("mapping", None, False),
    "zero_optimization": ("mapping", None, False), "fp16": ("mapping", None, False), "bf16": ("mapping", None, False),
    "optimizer.type": ("str", None, False), "optimizer.params": ("mapping", None, False),
    "optimizer.params.lr": ("number", 0, True), "optimizer.params.eps": ("number", 0, True),
    "optimizer.params.weight_decay": ("number", 0, False), "optimizer.params.torch_adam": ("bool", None, False),
    "optimizer.params.fused": ("bool", None, False), "optimizer.params.adam_w_mode": ("bool", None, False),
    "optimizer.params.amsgrad": ("bool", None, False),
    "scheduler.type": ("str", None, False), "scheduler.params": ("mapping", None, False),
}


def _get(tree: Mapping, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _check_scalar(key: str, value, kind: str, low, exclusive: bool, where) -> None:
    if not _kind(value, kind):
        raise ConfigError(f"{where(key)}: {key} must be {_WORDS[kind]}, got {value!r}.")
    if low is not None and (value <= low if exclusive else value < low):
        bound = f"greater than {low}" if exclusive else f"at least {low}"
        raise ConfigError(f"{where(key)}: {key} must be {bound}, got {value!r}.")


def _pydantic_section(key: str, section: Mapping, model, where) -> None:
    """A section through DeepSpeed's own model of it: unknown keys and wrong types named."""
    from pydantic import ValidationError

    try:
        model(**section)
    except ValidationError as e:
        err = e.errors()[0]
        sub = ".".join(str(x) for x in err["loc"])
        full = f"{key}.{sub}" if sub else key
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(sub.split(".")[-1], list(model.model_fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where(full)}: {full} is not a DeepSpeed {key} key{hint}.") from None
        raise ConfigError(f"{where(full)}: {full}: {err['msg'].lower()}, got {err.get('input')!r}.") from None


def check_deepspeed(ds: Mapping[str, Any], name: str, overridden: Mapping[str, str] = {}) -> None:
    """Raise ``ConfigError`` for the first bad value of DeepSpeed config ``ds`` (read from ``name``;
    ``overridden`` maps a dotted key to the override text that set it)."""
    where = _Where(name, overridden)
    for key in ds:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where(key)}: '{key}' is not a DeepSpeed key (DeepSpeed would ignore it){hint}")
    for key, (kind, low, exclusive) in _SCALARS.items():
        value = _get(ds, key)
        if value is not _MISSING:
            _check_scalar(key, value, kind, low, exclusive, where)
    betas = _get(ds, "optimizer.params.betas")
    if betas is not _MISSING and not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(
            _kind(b, "number") and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"{where('optimizer.params.betas')}: optimizer.params.betas must be two numbers in "
                          f"[0, 1), got {betas!r}.")
    for pkey, pvalue in (_get(ds, "scheduler.params") or {}).items() if isinstance(
            _get(ds, "scheduler.params"), Mapping) else ():
        if pkey.endswith(("_lr", "_steps", "_rate")) and not _kind(pvalue, "number"):
            raise ConfigError(f"{where('scheduler.params.' + pkey)}: scheduler.params.{pkey} must be a number, "
                              f"got {pvalue!r}.")
    _precision_and_zero(ds, where)


def _precision_and_zero(ds: Mapping, where) -> None:
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for key, model in (("fp16", DeepSpeedFP16Config), ("float16", DeepSpeedFP16Config),
                       ("bf16", DeepSpeedBF16Config), ("bfloat16", DeepSpeedBF16Config)):
        if isinstance(ds.get(key), Mapping):
            _pydantic_section(key, ds[key], model, where)
    zero = ds.get("zero_optimization")
    if isinstance(zero, Mapping):
        # "auto" values are megagpt's to choose (train/autotune.py) and are checked once chosen
        _pydantic_section("zero_optimization", {k: v for k, v in zero.items() if v != "auto"},
                          DeepSpeedZeroConfig, where)
