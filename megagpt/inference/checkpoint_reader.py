"""Read a training checkpoint offline, in one process, into megagpt's full state dict, whatever
layout and tp/pp/dp it was saved with.

What DeepSpeed writes under ``<dir>/<tag>/``:

* layout ``zero3`` with ZeRO-3: ``zero_pp_rank_D_mp_rank_TT_{model,optim}_states.pt``. The model
  files hold placeholders and each parameter's (TP-local) shape; the fp32 masters are in the
  optimizer files, one flat buffer per parameter group and DP rank. Each parameter was split
  into ``dp`` equal pieces (the last padded) and the pieces laid end to end, in the order of the
  shapes, so piece r of a parameter sits at the same offset of every rank's buffer.
* layout ``zero3`` with ZeRO 0-2: ``mp_rank_TT_model_states.pt`` with the (TP-local) weights.
* layout ``3d``: ``layer_LL-model_TT-model_states.pt``, one per pipeline layer and TP rank, with
  that layer's weights (the weights the model computes with: in a bf16 run they are bf16 and are
  upcast here).

TP shards are then joined along each parameter's ``partition_dim`` / ``partition_stride``, learned
from a model built at the saved tp on the meta device (no memory, no process group).

The files are pickles written by ``torch.save``. They are read with ``weights_only=True``: only
tensors, containers and the two small DeepSpeed classes listed below are accepted, so reading a
checkpoint never runs code from it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from megagpt.config import ConfigError, ModelConfig, model_config_from_dict
from megagpt.inference.weights import WeightsError
from megagpt.model.convert import WTE
from megagpt.parallel.layers import unshard_tensors


def _safe_globals():
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [ZeroStageEnum, LossScaler, DynamicLossScaler]


def _load(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"{path}: missing (the checkpoint is incomplete).")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: cannot be read as a checkpoint file ({first}).") from None


def latest(ckpt_dir: Path) -> str:
    p = ckpt_dir / "latest"
    if not p.is_file():
        raise WeightsError(f"{ckpt_dir}: no 'latest' file (no complete checkpoint); name a tag.")
    return p.read_text().strip()


def _model_config(tag_dir: Path, model_cfg) -> tuple[ModelConfig, dict]:
    meta_file = tag_dir / "megagpt.json"
    if model_cfg is not None:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        return model_cfg, meta
    if not meta_file.is_file():
        raise WeightsError(f"{tag_dir}: no megagpt.json (checkpoints written before it existed); pass "
                           f"the run's model config (load(..., model_cfg=...)).")
    try:
        meta = json.loads(meta_file.read_text())
        return model_config_from_dict(meta["model"]).validate(), meta
    except (ValueError, KeyError, TypeError, ConfigError) as e:
        raise WeightsError(f"{meta_file}: not a valid megagpt checkpoint description ({e}).") from None


def _partitions(cfg: ModelConfig, tp: int) -> dict[str, tuple[int, int]]:
    """{name: (partition_dim, partition_stride)} of the TP-sharded parameters at ``tp``."""
    from megagpt.model.gpt import GPT
    from megagpt.parallel.state import ParallelState

    with torch.device("meta"):
        model = GPT(cfg, ParallelState(tp_size=tp))
    return {n: (p.partition_dim, p.partition_stride) for n, p in model.named_parameters()
            if getattr(p, "tensor_model_parallel", False)}


def _zero3_rank(tag_dir: Path, t: int, dp: int) -> dict[str, torch.Tensor]:
    """TP rank ``t``'s parameters (TP-local shapes) from the ZeRO-3 fp32 partitions of ``dp`` ranks."""
    shapes = _load(tag_dir / f"zero_pp_rank_0_mp_rank_{t:02d}_model_states.pt")["param_shapes"]
    flats = []
    for d in range(dp):
        f = tag_dir / f"zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt"
        groups = _load(f)["optimizer_state_dict"]["fp32_flat_groups"]
        flats.append(torch.cat([g.reshape(-1).float() for g in groups]))
    out, offset = {}, 0
    for group in shapes:
        for name, shape in group.items():
            numel = int(torch.Size(shape).numel())
            piece = -(-numel // dp)  # ceil: every rank holds an equal piece, the last one padded
            if offset + piece > flats[0].numel():
                raise WeightsError(f"{tag_dir}: the optimizer files of mp_rank {t:02d} are shorter than the "
                                   f"parameters they should hold (a truncated or mismatched file).")
            whole = torch.cat([f[offset:offset + piece] for f in flats])[:numel]
            out[name] = whole.view(shape).clone()
            offset += piece
    return out


def _layers_rank(tag_dir: Path, t: int, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """TP rank ``t``'s parameters from the pipeline's per-layer files (layer 0: embedding, 1..n:
    blocks, n+1: final LayerNorm; the tied head's weight is the embedding's)."""
    out = {}
    for f in sorted(tag_dir.glob(f"layer_*-model_{t:02d}-model_states.pt")):
        i = int(re.match(r"layer_(\d+)-", f.name).group(1))
        prefix = "embed." if i == 0 else f"blocks.{i - 1}." if i <= cfg.n_layer else "ln_f."
        for k, v in _load(f).items():
            out[prefix + k] = v.float()
    return out


def read_checkpoint(ckpt_dir: str | Path, tag: str | None = None, *,
                    model_cfg: ModelConfig | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(model config, full state dict, metadata) of checkpoint ``tag`` (default: ``latest``)."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag or latest(ckpt_dir)
    tag_dir = ckpt_dir / tag
    if not tag_dir.is_dir():
        raise WeightsError(f"{tag_dir}: no such checkpoint.")
    cfg, meta = _model_config(tag_dir, model_cfg)
    if list(tag_dir.glob("layer_*-model_*-model_states.pt")):
        layout = "3d"
        tp = len(list(tag_dir.glob("layer_00-model_*-model_states.pt")))
        parts = [_layers_rank(tag_dir, t, cfg) for t in range(tp)]
    elif list(tag_dir.glob("zero_pp_rank_0_mp_rank_*_model_states.pt")):
        layout = "zero3"
        first = _load(tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt")
        tp, dp = first["mp_world_size"], first["dp_world_size"]
        parts = [_zero3_rank(tag_dir, t, dp) for t in range(tp)]
    elif list(tag_dir.glob("mp_rank_*_model_states.pt")):
        layout = "zero3"
        tp = len(list(tag_dir.glob("mp_rank_*_model_states.pt")))
        parts = [{k: v.float() for k, v in _load(tag_dir / f"mp_rank_{t:02d}_model_states.pt")["module"].items()}
                 for t in range(tp)]
    else:
        raise WeightsError(f"{tag_dir}: no DeepSpeed model files (mp_rank_*, zero_pp_rank_* or layer_*).")
    if cfg.n_head % tp:
        raise WeightsError(f"{tag_dir}: saved with tp={tp}, which does not divide model.n_head={cfg.n_head}.")
    sharded = _partitions(cfg, tp)
    full = {}
    for name in parts[0]:
        if any(name not in p for p in parts):
            raise WeightsError(f"{tag_dir}: {name} is missing from some tensor-parallel ranks' files.")
        if name in sharded:
            dim, stride = sharded[name]
            t = unshard_tensors([p[name] for p in parts], dim, stride)
        else:
            t = parts[0][name]
        full[name] = t[: cfg.vocab_size] if name == WTE else t
    info = {"tag": tag, "layout": layout, "tp": tp, "step": meta.get("step"),
            "tokenizer": meta.get("tokenizer"), "pp": meta.get("pp"), "dp": meta.get("dp"),
            "zero_stage": meta.get("zero_stage")}
    return cfg, full, info
