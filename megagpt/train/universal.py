"""Layout-free ("universal") training checkpoints, and resuming a run in another parallel layout.

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
import torch.distributed as dist

from megagpt.config import ConfigError, ModelConfig, model_config_from_dict
from megagpt.inference.checkpoint_reader import OPTIMIZER_KEYS, SavedCheckpoint
from megagpt.inference.weights import WeightsError

FORMAT = "megagpt-universal"
VERSION = 1
INFO = "universal.json"
KEYS = ("fp32",) + OPTIMIZER_KEYS
_DS_COUNTERS = ("global_steps", "global_samples", "skipped_steps")


def is_universal(path: str | Path) -> bool:
    return (Path(path) / INFO).is_file()


def _param_file(root: Path, name: str, key: str) -> Path:
    return root / "params" / name / f"{key}.safetensors"


def write_universal(ckpt_dir: str | Path, tag: str | None, out: str | Path, *,
                    model_cfg: ModelConfig | None = None) -> Path:
    """Write the layout-free form of training checkpoint ``tag`` (default: ``latest``) to ``out``.
    One tensor kind at a time is held whole in memory (4 bytes per parameter)."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    from megagpt.train.checkpoint import LAYOUT_KEYS

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
            f = _param_file(tmp, name, key)
            f.parent.mkdir(parents=True, exist_ok=True)
            save_file({"t": t.contiguous()}, str(f))
        names = list(tensors)
        del tensors
    info = {"format": FORMAT, "version": VERSION, "source": str(saved.dir), "model": asdict(saved.cfg),
            "saved_layout": {k: saved.meta[k] for k in LAYOUT_KEYS},
            "step": main.get("step"), "consumed_samples": main.get("consumed_samples"), "tokens": main.get("tokens"),
            "optimizer_step": saved.optimizer_step(), "lr_scheduler": main.get("lr_scheduler"),
            "tokenizer": saved.meta.get("tokenizer"), "params": names,
            **{k: main.get(k) for k in _DS_COUNTERS}}
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
    full = {name: _read_param(root, name, "fp32") for name in info["params"]}
    return cfg, full, {"step": info["step"], "tokenizer": info.get("tokenizer"), "format": "universal",
                       **info["saved_layout"]}


def _read_param(root: Path, name: str, key: str) -> torch.Tensor:
    from safetensors import safe_open

    f = _param_file(root, name, key)
    if not f.is_file():
        raise WeightsError(f"{f}: missing (the universal checkpoint is incomplete).")
    with safe_open(str(f), framework="pt") as s:
        return s.get_tensor("t")


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
    params = [p for g in base.param_groups for p in g["params"]] + list(getattr(opt, "fp32_partitioned_groups_flat", []))
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
    names = None
    if built.pipeline:
        from megagpt.train.pipeline import pipeline_param_name

        names = lambda n: pipeline_param_name(n, cfg.n_layer)  # noqa: E731
    for n, p in built.engine.module.named_parameters():
        key = names(n) if names else n
        if key is not None and p.requires_grad:
            yield key, p


def describe(layout: dict) -> str:
    return (f"{layout['layout']} tp={layout['tp']} pp={layout['pp']} dp={layout['dp']} "
            f"ZeRO {layout['zero_stage']}")


def load_into(built, run, root: str | Path, log=None) -> dict:
    """Load universal checkpoint ``root`` into a freshly built engine of any layout; returns the
    trainer's client state (step, consumed_samples, tokens). Every rank reads its own slices."""
    from megagpt.model.convert import local_shard
    from megagpt.train.checkpoint import layout_of
    from megagpt.train.engine import arch_mismatch
    from megagpt.train.memory import precision_of

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
        values = {key: local_shard(name, _read_param(root, name, key), p, cfg, ps) for key in KEYS}
        shape = getattr(p, "ds_shape", p.shape)
        if values["fp32"].shape != shape:
            raise WeightsError(f"{_param_file(root, name, 'fp32')}: shape {tuple(values['fp32'].shape)} here "
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
    for k in _DS_COUNTERS:
        if info.get(k) is not None:
            setattr(engine, k, info[k])
    if log is not None and dist.get_rank() == 0:
        log(f"resharded {root} (saved as {describe(info['saved_layout'])}) into {describe(layout_of(run, ps))}: weights, fp32 "
            f"masters, Adam moments and step, LR schedule and data position carried over; per-rank RNG "
            f"streams were not restored, so dropout masks follow the new layout"
            + ("; fp16's dynamic loss scale restarts" if precision_of(run.deepspeed) == "fp16" else ""))
    return {"step": info["step"], "consumed_samples": info["consumed_samples"], "tokens": info["tokens"]}


def ensure_universal(ckpt_dir: str | Path, tag: str, verify_level: str = "none") -> Path:
    """``<tag>/universal``, written from the tag's DeepSpeed files by global rank 0 if not there yet,
    after checking them against the tag's manifest at ``verify_level`` (every rank calls this; the
    others wait). A failure on rank 0 reaches every rank."""
    from megagpt.train.checkpoint import verify

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

    from megagpt.model.convert import whole_tensor

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
