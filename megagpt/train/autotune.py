"""DeepSpeed values left to megagpt: ``"auto"`` in the JSON's ``zero_optimization``.

``stage: "auto"`` takes the lowest ZeRO stage whose model states and activations fit 80% of a
rank's memory (the GPU's, or the host's divided among the local ranks), because every stage above
0 adds communication or bookkeeping a model that fits does not need: with one data-parallel rank
it is 0, as nothing can be sharded. The 3d layout's pipeline engine allows stages 0 and 1 only.
Bucket sizes set to ``"auto"`` follow the rule of the Hugging Face DeepSpeed integration, from the
hidden size h: reduce bucket h^2, ZeRO-3 prefetch bucket 0.9 h^2, persistence threshold 10 h
(with floors, so a tiny model does not split its gradients into thousands of collectives). A
number in the JSON always wins. Each choice is returned as a sentence for the run's log.

The memory per rank is ``megagpt.train.memory.predict``, the model the layout planner uses and
tests/train/test_plan.py checks against measured runs: the real per-rank parameter shapes, what
DeepSpeed allocates at each stage (fp32 masters and moments, a bf16 run's fp32 gradient copy at
stage 0, partition padding, persistent parameters, buckets), the activations this code saves and
the transient buffers at the peak.
"""
from __future__ import annotations

import os

from megagpt.config import ConfigError
from megagpt.train.memory import device_type, persistence_threshold, precision_of, predict, reduce_bucket

AUTO_BUCKETS = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
                "allgather_bucket_size")
HEADROOM = 0.8  # the share of a rank's memory a choice may plan to use


def rank_memory(local_ranks: int) -> tuple[float, str]:
    """(bytes one rank may use, where the figure comes from)."""
    import torch

    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        return float(total), f"{torch.cuda.get_device_name(0)}, {total / 2 ** 30:.0f} GiB"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / max(1, local_ranks), f"host memory {total / 2 ** 30:.0f} GiB / {local_ranks} local ranks"


def _local_ranks(world_size: int) -> int:
    for var in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return world_size


def resolve(run, world_size: int, *, memory: tuple[float, str] | None = None) -> list[str]:
    """Replace every ``"auto"`` in ``run.deepspeed["zero_optimization"]`` by a value; returns one
    sentence per choice."""
    ds = run.deepspeed
    zero = ds.get("zero_optimization")
    notes: list[str] = []
    if not isinstance(zero, dict):
        return notes
    name = run.train.deepspeed_config
    par, cfg = run.parallel, run.model
    h = cfg.n_embd
    rules = {"reduce_bucket_size": reduce_bucket(cfg), "allgather_bucket_size": reduce_bucket(cfg),
             "stage3_prefetch_bucket_size": max(int(0.9 * h * h), 450_000),
             "stage3_param_persistence_threshold": persistence_threshold(cfg)}
    sized = {k: rules[k] for k in AUTO_BUCKETS if zero.get(k) == "auto"}
    zero.update(sized)
    if sized:
        notes.append(f"ZeRO buckets from n_embd={h}: " + ", ".join(f"{k}={v}" for k, v in sized.items()))
    for key, value in zero.items():
        if value == "auto":
            if key != "stage":
                raise ConfigError(f"{name}: zero_optimization.{key} cannot be 'auto'; megagpt sizes "
                                  f"{', '.join(AUTO_BUCKETS)} and the stage.")
    if zero.get("stage") != "auto":
        return notes
    dp = par.dp_size(world_size)
    micro = ds.get("train_micro_batch_size_per_gpu") or 1
    allowed = (0, 1) if par.layout == "3d" else (0, 1, 2, 3)
    budget, where = memory or rank_memory(_local_ranks(world_size))
    chosen, why = None, ""
    if dp == 1:
        chosen, why = 0, "one data-parallel rank: nothing to shard"
    else:
        for stage in allowed:  # after the loop, need is the last (highest) stage's
            need = predict(cfg, seq=run.seq_length, micro_batch=micro, tp=par.tp_size, pp=par.pp_size, dp=dp,
                           zero=stage, micro_batches=ds.get("gradient_accumulation_steps") or 1,
                           precision=precision_of(ds), checkpointing=run.train.activation_checkpointing,
                           device=device_type())
            if need.total <= HEADROOM * budget:
                chosen = stage
                states = need.params + need.grads + need.optimizer
                why = (f"{need.total / 2 ** 30:.2f} GiB per rank predicted (model states {states / 2 ** 30:.2f}, "
                       f"activations {need.activations / 2 ** 30:.2f}, buffers {need.buffers / 2 ** 30:.2f}) "
                       f"fits {HEADROOM:.0%} of {where}")
                break
        if chosen is None:
            chosen = allowed[-1]
            why = (f"even stage {chosen} needs {need.total / 2 ** 30:.2f} GiB per rank, over {HEADROOM:.0%} of "
                   f"{where}: expect to run out of memory (more data-parallel ranks, tp, activation "
                   f"checkpointing, or a ZeRO offload config)")
    zero["stage"] = chosen
    notes.append(f"ZeRO stage {chosen} ({name}: stage 'auto'; dp={dp}): {why}")
    return notes
