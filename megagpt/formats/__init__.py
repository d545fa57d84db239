"""Checkpoint and weights I/O: files in, tensors out, no engine.

``read_weights(path)`` reads any supported source as (model config, full state dict, metadata):
an export (``weights``), a Hugging Face GPT-2 directory (``hf``), a layout-free checkpoint
(``universal``) or a DeepSpeed training checkpoint of any layout (``checkpoint_reader``); the
manifests that say a checkpoint is whole live in ``manifest``.
"""
from __future__ import annotations

from pathlib import Path

from megagpt.formats.weights import WeightsError

__all__ = ["read_weights", "WeightsError"]


def _is_checkpoint_dir(p: Path) -> bool:
    return (p / "latest").is_file() or any(d.name.startswith("global_step") for d in p.iterdir())


def read_weights(path: str | Path, *, tag: str | None = None, model_cfg=None):
    """(config, full state dict (a mapping), metadata) from any supported source."""
    p = Path(path)
    if p.is_file():
        from megagpt.formats.weights import read_export

        return read_export(p)
    if not p.is_dir():
        raise WeightsError(f"{p}: no such file or directory.")
    if (p / "config.json").is_file():
        from megagpt.formats.hf import read_hf_dir

        cfg, full, tok = read_hf_dir(p)
        return cfg, full, {"tokenizer": str(tok) if tok else None, "format": "hf"}
    if (p / "universal.json").is_file():  # a layout-free training checkpoint: its fp32 weights
        from megagpt.formats.universal import read_weights as read_universal

        return read_universal(p)
    if (p / "megagpt.json").is_file() or _is_checkpoint_dir(p):
        from megagpt.formats.checkpoint_reader import read_checkpoint

        if (p / "megagpt.json").is_file() and not _is_checkpoint_dir(p):  # a tag directory
            p, tag = p.parent, p.name
        cfg, full, meta = read_checkpoint(p, tag, model_cfg=model_cfg)
        return cfg, full, dict(meta, format="checkpoint")
    if (p / "model.safetensors").is_file():
        from megagpt.formats.weights import read_export

        return read_export(p / "model.safetensors")
    raise WeightsError(f"{p}: not a megagpt export, a Hugging Face GPT-2 directory (config.json), a "
                       f"training checkpoint directory (latest / global_step*) or a universal one (universal.json).")
