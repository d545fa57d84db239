"""Resuming a run in another parallel layout: a universal checkpoint
(``megagpt.formats.universal``) loaded into a freshly built engine of any tp/pp/dp and ZeRO
stage. Every rank takes its slice by the rules that initialise a model
(``megagpt.model.convert.local_shard``) and hands it to whatever ZeRO stage now owns it.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from megagpt.config import ConfigError, ModelConfig, arch_mismatch, model_config_from_dict
from megagpt.formats.checkpoint_reader import OPTIMIZER_KEYS
from megagpt.formats.manifest import describe, layout_of, verify
from megagpt.formats.universal import (
    DS_COUNTERS,
    KEYS,
    is_universal,
    param_file,
    read_info,
    read_param,
    write_universal,
)
from megagpt.formats.weights import WeightsError
from megagpt.model.convert import local_shard, whole_tensor
from megagpt.model.naming import pipeline_param_name
from megagpt.train.memory import precision_of


def _torch_optimizer(opt):
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16) or the engine's own."""
    while not isinstance(opt, torch.optim.Optimizer):
        opt = opt.optimizer
    return opt


def _ensure_adam_state(opt) -> None:
    """Adam's state for every parameter the torch optimizer updates, created as its first step
    would (ZeRO-1/2 and stage 0 create it lazily), then linked to ZeRO's per-parameter views."""
    base = _torch_optimizer(opt)
    group = base.param_groups[0]
    on_device = group.get("fused") or group.get("capturable")
    # ZeRO-3 puts each sub-group's flat fp32 partition into the torch optimizer only while stepping it
    params = [p for g in base.param_groups for p in g["params"]]
    params += list(getattr(opt, "fp32_partitioned_groups_flat", []))
    for p in params:
        if not base.state.get(p):
            base.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu"),
                             "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    link = getattr(opt, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


def _set_param(engine, p, values: dict[str, torch.Tensor]) -> None:
    """Parameter ``p``'s weight, fp32 master and moments from whole (TP-local) tensors."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    fp32 = values["fp32"].to(p.device)
    with torch.no_grad():
        if hasattr(p, "ds_id"):  # ZeRO-3: the partitioned module weight, then the fp32 partition
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.data.copy_(fp32)
        else:
            p.data.copy_(fp32)
    if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
        safe_set_full_fp32_param(p, fp32)
        for key in OPTIMIZER_KEYS:
            safe_set_full_optimizer_state(p, values[key].to(p.device), key)
        return
    state = _torch_optimizer(engine.optimizer).state[p]  # no ZeRO: the parameter is its own master
    for key in OPTIMIZER_KEYS:
        state[key].copy_(values[key])


def _named_params(built, cfg: ModelConfig):
    """(full-state-dict name, parameter) of this rank's trainable parameters."""
    for n, p in built.engine.module.named_parameters():
        key = pipeline_param_name(n, cfg.n_layer) if built.pipeline else n
        if key is not None and p.requires_grad:
            yield key, p


def load_into(built, run, root: str | Path, log=None) -> dict:
    """Load universal checkpoint ``root`` into a freshly built engine of any layout; returns the
    trainer's client state (step, consumed_samples, tokens). Every rank reads its own slices."""
    root = Path(root)
    info = read_info(root)
    saved_cfg = model_config_from_dict(info["model"])
    problem = arch_mismatch(saved_cfg, run.model)
    if problem:
        raise ConfigError(f"{root}: the checkpoint's model has {problem}; resume with the model it was "
                          f"trained with.")
    engine, ps, cfg = built.engine, built.ps, run.model
    _ensure_adam_state(engine.optimizer)
    for name, p in _named_params(built, cfg):
        values = {key: local_shard(name, read_param(root, name, key), p, cfg, ps) for key in KEYS}
        shape = getattr(p, "ds_shape", p.shape)
        if values["fp32"].shape != shape:
            raise WeightsError(f"{param_file(root, name, 'fp32')}: shape {tuple(values['fp32'].shape)} here "
                               f"does not fit parameter {name} {tuple(shape)}.")
        _set_param(engine, p, values)
    step = info["optimizer_step"]
    for state in _torch_optimizer(engine.optimizer).state.values():
        if torch.is_tensor(state.get("step")):
            state["step"].fill_(step)
        elif "step" in state:
            state["step"] = step
    if info.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(info["lr_scheduler"])
    for k in DS_COUNTERS:
        if info.get(k) is not None:
            setattr(engine, k, info[k])
    if log is not None and dist.get_rank() == 0:
        log(f"resharded {root} (saved as {describe(info['saved_layout'])}) into {describe(layout_of(run, ps))}: "
            f"weights, fp32 "
            f"masters, Adam moments and step, LR schedule and data position carried over; per-rank RNG "
            f"streams were not restored, so dropout masks follow the new layout"
            + ("; fp16's dynamic loss scale restarts" if precision_of(run.deepspeed) == "fp16" else ""))
    return {"step": info["step"], "consumed_samples": info["consumed_samples"], "tokens": info["tokens"]}


def ensure_universal(ckpt_dir: str | Path, tag: str, verify_level: str = "none") -> Path:
    """``<tag>/universal``, written from the tag's DeepSpeed files by global rank 0 if not there yet,
    after checking them against the tag's manifest at ``verify_level`` (every rank calls this; the
    others wait). A failure on rank 0 reaches every rank."""
    out = Path(ckpt_dir) / tag / "universal"
    error = [None]
    if dist.get_rank() == 0 and not is_universal(out):
        try:
            why = verify(Path(ckpt_dir) / tag, verify_level)
            if why:
                raise WeightsError(why)
            write_universal(ckpt_dir, tag, out)
        except (ValueError, OSError) as e:
            error[0] = f"{Path(ckpt_dir) / tag}: cannot be converted for another layout ({e})"
    dist.broadcast_object_list(error, src=0)
    if error[0]:
        raise ConfigError(error[0])
    return out


def train_state(built, cfg: ModelConfig) -> dict[str, dict[str, torch.Tensor]]:
    """This rank's parameters as whole tensors ({name: {fp32, exp_avg, exp_avg_sq}}): ZeRO
    partitions gathered over DP and TP shards over TP (collective); a pipeline rank holds its
    stage's parameters only. The token embedding is cut to the real vocabulary."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    engine, ps = built.engine, built.ps
    base = _torch_optimizer(engine.optimizer)
    out = {}
    for name, p in _named_params(built, cfg):
        if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
            local = {"fp32": safe_get_full_fp32_param(p)}
            local.update({k: safe_get_full_optimizer_state(p, k) for k in OPTIMIZER_KEYS})
        else:
            state = base.state.get(p) or {}
            local = {"fp32": p.detach()}
            local.update({k: state[k] if k in state else torch.zeros_like(p) for k in OPTIMIZER_KEYS})
        out[name] = {k: whole_tensor(name, p, v.detach().float().reshape(getattr(p, "ds_shape", p.shape)), ps,
                                     cfg.vocab_size, device=engine.device).cpu().clone()
                     for k, v in local.items()}
    return out
