"""The layout-free ("universal") training checkpoint format: written from a DeepSpeed checkpoint
of any layout, read one whole parameter at a time (``megagpt.train.reshard`` loads it into an
engine of another layout).

A checkpoint saved at one tp/pp/dp and ZeRO stage continues at any other: the saved fp32 master
weights and both Adam moments are made whole (ZeRO partitions joined, TP shards concatenated along
each parameter's partition dimension, pipeline stages merged), written one parameter at a time,
and every rank of the new layout takes its slice by the rules that initialise a model
(``megagpt.model.convert.local_shard``: the token embedding padded to the new padded vocabulary
with zero rows, then TP-sliced), and hands it to whatever ZeRO stage now owns it.

On disk (``<tag>/universal/`` beside the DeepSpeed files it came from, or anywhere through
``python megagpt/export.py --model CKPT --universal OUT``)::

    universal.json                       model config, saved layout, training step, samples and
                                         tokens consumed, Adam's step, LR schedule, DeepSpeed counters
    params/<name>/fp32.safetensors       whole fp32 master weight (real vocabulary rows only)
    params/<name>/exp_avg.safetensors    Adam's first moment, same shape
    params/<name>/exp_avg_sq.safetensors Adam's second moment

The directory is written under a temporary name and renamed when complete, so a half-written one
is never read. What carries over exactly: weights, fp32 masters, moments, Adam's step, the LR
schedule's position, the step/sample/token counters and with them the data position. What does
not: the per-rank RNG files (dropout streams are re-seeded from (seed, step) every step, but their
split over TP/DP ranks follows the new layout, so dropout masks differ from the old layout's), and
an fp16 run's dynamic loss scale, which restarts. Both are said in the log.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from megagpt.config import ModelConfig, model_config_from_dict
from megagpt.formats.checkpoint_reader import OPTIMIZER_KEYS, SavedCheckpoint
from megagpt.formats.manifest import LAYOUT_KEYS
from megagpt.formats.weights import WeightsError

FORMAT = "megagpt-universal"
VERSION = 1
INFO = "universal.json"
KEYS = ("fp32",) + OPTIMIZER_KEYS
DS_COUNTERS = ("global_steps", "global_samples", "skipped_steps")


def is_universal(path: str | Path) -> bool:
    return (Path(path) / INFO).is_file()


def param_file(root: Path, name: str, key: str) -> Path:
    return root / "params" / name / f"{key}.safetensors"


def write_universal(ckpt_dir: str | Path, tag: str | None, out: str | Path, *,
                    model_cfg: ModelConfig | None = None) -> Path:
    """Write the layout-free form of training checkpoint ``tag`` (default: ``latest``) to ``out``.
    One tensor kind at a time is held whole in memory (4 bytes per parameter)."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    saved = SavedCheckpoint(ckpt_dir, tag, model_cfg=model_cfg)
    main = saved.main
    if main.get("step") is None:
        raise WeightsError(f"{saved.dir}: its model file holds no training step (not a megagpt pretraining "
                           f"checkpoint).")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for key in KEYS:
        tensors = saved.tensors(None if key == "fp32" else key)
        for name, t in tensors.items():
            f = param_file(tmp, name, key)
            f.parent.mkdir(parents=True, exist_ok=True)
            save_file({"t": t.contiguous()}, str(f))
        names = list(tensors)
        del tensors
    info = {"format": FORMAT, "version": VERSION, "source": str(saved.dir), "model": asdict(saved.cfg),
            "saved_layout": {k: saved.meta[k] for k in LAYOUT_KEYS},
            "step": main.get("step"), "consumed_samples": main.get("consumed_samples"), "tokens": main.get("tokens"),
            "optimizer_step": saved.optimizer_step(), "lr_scheduler": main.get("lr_scheduler"),
            "tokenizer": saved.meta.get("tokenizer"), "params": names,
            **{k: main.get(k) for k in DS_COUNTERS}}
    (tmp / INFO).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def read_info(path: str | Path) -> dict:
    f = Path(path) / INFO
    try:
        info = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{f}: cannot be read ({e}).") from None
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise WeightsError(f"{f}: not a {FORMAT} v{VERSION} checkpoint.")
    return info


def read_weights(root: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(model config, full fp32 state dict, meta): what ``megagpt.load`` needs from a universal
    checkpoint (the masters the optimizer held)."""
    root = Path(root)
    info = read_info(root)
    cfg = model_config_from_dict(info["model"]).validate()
    full = {name: read_param(root, name, "fp32") for name in info["params"]}
    return cfg, full, {"step": info["step"], "tokenizer": info.get("tokenizer"), "format": "universal",
                       **info["saved_layout"]}


def read_param(root: Path, name: str, key: str) -> torch.Tensor:
    from safetensors import safe_open

    f = param_file(root, name, key)
    if not f.is_file():
        raise WeightsError(f"{f}: missing (the universal checkpoint is incomplete).")
    with safe_open(str(f), framework="pt") as s:
        return s.get_tensor("t")
