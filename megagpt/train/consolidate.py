"""Consolidate a running engine (fresh or loaded from a checkpoint) into one fp32 state dict.

Each parameter's fp32 master copy is gathered over the DP group (ZeRO), then over the TP group
(``partition_dim``/``partition_stride``), then the pipeline stages are collected on rank 0. The
result is megagpt's tp-independent full state dict, written as safetensors
(``megagpt.formats.weights``) and loadable at any tp with ``megagpt.load``.
"""
from __future__ import annotations

from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param

from megagpt.model.convert import whole_tensor


def _full_fp32(p) -> torch.Tensor:
    t = safe_get_full_fp32_param(p)
    if t is None:  # no ZeRO optimizer holds a master copy: the parameter is it
        with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
            t = p.detach().clone()
    return t.float().cpu()


def consolidated_state_dict(built, cfg, named=None) -> dict[str, torch.Tensor] | None:
    """Collective over all ranks; the full state dict on global rank 0, None elsewhere. ``named``:
    the GPT's (name, parameter) pairs when the engine's module wraps it (fine-tuning)."""
    module, ps = built.engine.module, built.ps
    if named is not None:
        named = list(named)
    elif built.pipeline:
        from megagpt.model.naming import pipeline_param_name

        named = [(pipeline_param_name(n, cfg.n_layer), p) for n, p in module.named_parameters()]
    else:
        named = list(module.named_parameters())
    # every rank takes part in the DP and TP gathers (collectives); only the ranks with
    # dp_rank == tp_rank == 0 keep the result, and the pipeline stages send theirs to rank 0
    keep = ps.dp_rank == 0 and ps.tp_rank == 0
    device = built.engine.device  # NCCL groups have no CPU backend
    local = {}
    for name, p in named:
        t = whole_tensor(name, p, _full_fp32(p), ps, cfg.vocab_size, device)
        if keep and name is not None and name not in local:
            local[name] = t
    if built.pipeline and ps.pp_size > 1 and keep:
        parts = [None] * ps.pp_size if ps.pp_rank == 0 else None
        dist.gather_object(local, parts, dst=dist.get_rank() - ps.pp_rank * ps.dp_size * ps.tp_size,
                           group=ps.pp_group)
        local = {}
        for part in parts or []:
            for k, v in part.items():
                local.setdefault(k, v)
    return local if dist.get_rank() == 0 else None


def replicated_fp32(params) -> list[torch.Tensor]:
    """Whole fp32 copies of parameters every TP rank holds in full (collective over DP)."""
    return [_full_fp32(p) for p in params]


def export(built, cfg, path: str | Path, *, tokenizer: str | None = None, step: int | None = None,
           run_name: str | None = None) -> None:
    """Write the consolidated weights as ``path`` (.safetensors) plus its JSON (rank 0)."""
    from megagpt.formats.weights import save_export

    full = consolidated_state_dict(built, cfg)
    if full is not None:
        save_export(full, cfg, path, tokenizer=tokenizer, step=step, run_name=run_name)
    dist.barrier()

