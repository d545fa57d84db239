"""Exported models as safetensors: ``NAME.safetensors`` (megagpt's full state dict: whole fp32
tensors, tp-independent names) plus ``NAME.json`` beside it (model config, tokenizer path, step).

Loading never unpickles: safetensors is a JSON header and raw bytes, and tensors are read one at a
time (memory-mapped), so each tensor-parallel rank only ever holds one whole tensor besides its
shards. The model config also travels inside the safetensors header, so the weights file alone is
enough when the JSON is lost. A legacy ``.pt`` export is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch

from megagpt.atomic import replace, replacing, temp_path
from megagpt.config import ConfigError, ModelConfig, model_config_from_dict

FORMAT = "megagpt-export/1"


class WeightsError(ValueError):
    """A weights file that cannot be used: the message names the file and what is wrong."""


def sidecar(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save_export(full: dict[str, torch.Tensor], cfg: ModelConfig, path: str | Path, *,
                tokenizer: str | None = None, step: int | None = None, run_name: str | None = None) -> Path:
    """Write ``path`` (.safetensors) and its JSON atomically: temporary names, then renames, the
    weights last, so a half-written export is never found under the final name."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: exported weights are safetensors; name the file *.safetensors.")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "model": asdict(cfg), "step": step,
            "tokenizer": str(Path(tokenizer).resolve()) if tokenizer else None}
    if run_name:  # the TensorBoard run it was trained in: evaluate.py adds its scalars there
        meta["run_name"] = run_name
    tmp_json = temp_path(sidecar(path), unique=False)
    tmp_json.write_text(json.dumps(meta, indent=1) + "\n")
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in full.items()}
    with replacing(path, unique=False) as tmp:
        save_file(tensors, str(tmp), metadata={"megagpt": json.dumps(meta)})
        replace(tmp_json, sidecar(path))
    return path


class SafetensorsDict(Mapping):
    """A read-only mapping over a safetensors file that reads each tensor when it is asked for."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = Path(path)
        try:
            self._f = safe_open(str(self.path), framework="pt")
            self._keys = list(self._f.keys())
            self.metadata = self._f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise WeightsError(f"{self.path}: not a valid safetensors file ({_short(e)}).") from None

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        try:
            return self._f.get_tensor(key)
        except Exception as e:
            raise WeightsError(f"{self.path}: cannot read tensor {key!r} ({_short(e)}).") from None

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def read_export(path: str | Path) -> tuple[ModelConfig, Mapping[str, torch.Tensor], dict]:
    """(config, tensors, metadata) of an exported model; nothing is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file.")
    if path.suffix == ".pt":
        return _read_legacy(path)
    tensors = SafetensorsDict(path)
    meta = None
    if sidecar(path).is_file():
        try:
            meta = json.loads(sidecar(path).read_text())
        except ValueError as e:
            raise WeightsError(f"{sidecar(path)}: not valid JSON ({e}).") from None
    elif "megagpt" in tensors.metadata:
        meta = json.loads(tensors.metadata["megagpt"])
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise WeightsError(f"{path}: no model config (expected {sidecar(path).name} beside it with a "
                           f"'model' section, or megagpt metadata in the safetensors header).")
    try:
        cfg = model_config_from_dict(meta["model"]).validate()
    except (ConfigError, TypeError) as e:
        raise WeightsError(f"{sidecar(path)}: bad model config: {e}") from None
    tok = meta.get("tokenizer")
    if tok and not Path(tok).is_absolute():
        meta["tokenizer"] = str(path.parent / tok)
    return cfg, tensors, meta


def _read_legacy(path: Path):
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not a megagpt export readable without unpickling code "
                           f"({_short(e)}).") from None
    if not isinstance(blob, dict) or not {"config", "state_dict"} <= set(blob):
        raise WeightsError(f"{path}: expected a dict with 'config' and 'state_dict'.")
    return model_config_from_dict(blob["config"]).validate(), blob["state_dict"], {}


def load_weights(model, full: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """``load_full_state_dict`` with any mismatch reported as one sentence naming ``source``."""
    from megagpt.model.convert import load_full_state_dict

    try:
        load_full_state_dict(model, full)
    except WeightsError:
        raise
    except (KeyError, ValueError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise WeightsError(f"{source}: the tensors do not match the model config: {msg}") from None
