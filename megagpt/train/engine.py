"""DeepSpeed engines for the two layouts.

``zero3``: ``GPT`` built under ``deepspeed.zero.Init`` (parameters partitioned over the DP group
as they are made), our ParallelState passed as ``mpu``. ``3d``: the same layers as a
``PipelineModule``, TP groups taken from DeepSpeed's pipeline grid, ZeRO-1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import deepspeed
import torch
import torch.distributed as dist

from megagpt.config import RunConfig, arch_mismatch, zero_stage
from megagpt.model.gpt import GPT
from megagpt.model.naming import param_group_names
from megagpt.parallel.state import ParallelState
from megagpt.train.memory import precision_of
from megagpt.train.schedule import WarmupCosineLR

if TYPE_CHECKING:
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.pipe.engine import PipelineEngine


def _param_groups(named_params):
    """GPT-3 decays weight matrices only: biases and LayerNorm gains go in a no-decay group
    (ZeRO-3 partitioned parameters keep their shape in ``ds_shape``)."""
    named = dict(named_params)
    decay, no_decay = param_group_names(named.items())
    return [{"params": [named[n] for n in decay]}, {"params": [named[n] for n in no_decay], "weight_decay": 0.0}]


def load_initial_weights(named_params, run: RunConfig, ps: ParallelState, name_map=None) -> None:
    """Copy ``train.init_from``'s weights into a freshly built (possibly ZeRO-3-partitioned or
    pipelined) model, before ``deepspeed.initialize`` makes its fp32 master copies from it."""
    from megagpt.config import ConfigError
    from megagpt.formats import read_weights
    from megagpt.model.convert import local_shard

    cfg, full, _ = read_weights(run.train.init_from)
    problem = arch_mismatch(cfg, run.model)
    if problem:
        raise ConfigError(f"train.init_from={run.train.init_from} has {problem}; make the run's model match "
                          f"the weights.")
    with torch.no_grad():
        for name, p in named_params:
            key = name_map(name) if name_map else name
            if key is None:  # the pipeline head's unused copy of the position table
                continue
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0, enabled=hasattr(p, "ds_id")):
                p.data.copy_(local_shard(key, full[key], p, run.model, ps))


def starts_fresh(run: RunConfig) -> bool:
    """Whether the run starts from its initial weights (no checkpoint to resume from)."""
    from megagpt.formats.manifest import latest_tag

    tr = run.train
    return not (tr.resume and ((tr.checkpoint_dir and latest_tag(tr.checkpoint_dir) is not None) or tr.resume_from))


@dataclass
class Built:
    """A built engine and what a step needs with it: the parallel groups, and whether the engine
    is the 3d layout's pipeline engine (which owns its step) or the zero3 layout's."""
    engine: DeepSpeedEngine | PipelineEngine
    ps: ParallelState
    pipeline: bool


def build_engine(run: RunConfig, total_tokens: int) -> Built:
    """The pretraining engine for ``run``'s layout, its LR schedule over ``total_tokens`` (the
    warm-up and decay default to 1% and all of them), with the flags the step guard needs."""
    built = _build_pretraining(run, total_tokens)
    if run.train.guard.enabled:
        check_grad_overflow(built.engine, precision_of(run.deepspeed))
    return built


def check_grad_overflow(engine, precision: str) -> None:
    """ZeRO 1/2 skips a non-finite gradient norm by itself, except in bf16 (or without a norm),
    where its overflow check (one more flag all-reduce) has to be on for the guard."""
    opt = engine.optimizer
    if hasattr(opt, "check_grad_overflow") and (precision == "bf16" or not getattr(opt, "compute_grad_norm", True)):
        opt.check_grad_overflow = True


def _build_pretraining(run: RunConfig, total_tokens: int) -> Built:
    cfg, par, tr = run.model, run.parallel, run.train
    init_weights = bool(tr.init_from) and starts_fresh(run)  # a resume brings its own weights
    warmup = tr.lr_warmup_tokens if tr.lr_warmup_tokens is not None else total_tokens // 100
    decay = tr.lr_decay_tokens if tr.lr_decay_tokens is not None else total_tokens

    def scheduler(optimizer):
        return WarmupCosineLR(optimizer, warmup_tokens=warmup, decay_tokens=max(decay, warmup + 1),
                              min_ratio=tr.min_lr_ratio)

    if par.layout == "3d":
        from megagpt.model.naming import pipeline_param_name
        from megagpt.train.pipeline import build_pipeline

        return build_3d(run, lambda ps, topo: build_pipeline(cfg, ps, topo, init_seed=tr.seed,
                                                             checkpoint_activations=tr.activation_checkpointing),
                        scheduler, init_weights, name_map=lambda n: pipeline_param_name(n, cfg.n_layer))

    return build_zero3(run, lambda ps: GPT(cfg, ps, checkpoint_activations=tr.activation_checkpointing,
                                           init_seed=tr.seed), scheduler, init_weights)


def build_3d(run: RunConfig, make_pipeline, scheduler, init_weights: bool, name_map) -> Built:
    """The 3d layout's pipeline engine around ``make_pipeline(ps, topology)``; ``name_map`` turns
    its parameter names into the full state dict's (None: not from the pretrained weights)."""
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid, PipeModelDataParallelTopology

    par, tr = run.parallel, run.train
    dp = par.dp_size(dist.get_world_size())
    topo = PipeModelDataParallelTopology(num_pp=par.pp_size, num_mp=par.tp_size, num_dp=dp)
    grid = PipelineParallelGrid(topology=topo)
    ps = ParallelState(tp_size=par.tp_size, pp_size=par.pp_size, dp_size=dp, rank=dist.get_rank(),
                       tp_group=grid.get_slice_parallel_group(), pp_group=grid.get_pipe_parallel_group(),
                       dp_group=grid.get_data_parallel_group())
    model = make_pipeline(ps, topo)
    if init_weights:
        load_initial_weights(model.named_parameters(), run, ps, name_map=name_map)
    ps.seed(tr.seed)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=_param_groups(model.named_parameters()),
                                      config=run.deepspeed, lr_scheduler=scheduler)
    if zero_stage(run.deepspeed) == 0:
        keep_grad_norm(engine)
    if tr.compile:
        engine.compile(backend=tr.compile_backend)  # the pipeline module compiles each of its layers
    return Built(engine, ps, pipeline=True)


def keep_grad_norm(engine) -> None:
    """Without ZeRO and in fp32, DeepSpeed clips the gradients but drops the norm it measured,
    so ``get_global_grad_norm()`` (``train/grad_norm``) would stay None: keep it. A non-finite
    norm skips the update."""
    from deepspeed.runtime.utils import clip_grad_norm_

    def clip():
        norm = clip_grad_norm_(parameters=engine.module.parameters(), max_norm=engine.gradient_clipping(),
                               mpu=engine.mpu)
        engine._global_grad_norm = norm
        if not math.isfinite(float(norm)):
            # a NaN/inf gradient would turn every weight NaN: drop the gradients (the bare torch
            # optimizer then changes nothing) and keep the LR schedule where it is, as DeepSpeed's
            # own optimizers do on overflow
            engine.zero_grad()
            engine.lr_scheduler.pending_tokens = 0

    engine.clip_fp32_gradients = clip


def share_fp32_master(optimizer) -> int:
    """fp32 training under ZeRO-3: let each sub-group's "fp32 master" partition be the parameter
    partition itself, as DeepSpeed means to when the two have one dtype and device. Its check
    compares a torch.device with a device name, which is never equal, so every rank would keep a
    second fp32 copy of its partition (a quarter of fp32 model-state memory). The optimizer updates
    the shared storage in place and DeepSpeed's copy back is a copy onto itself. Returns the bytes
    freed."""
    freed = 0
    low = getattr(optimizer, "fp16_partitioned_groups_flat", None) or []
    master = getattr(optimizer, "fp32_partitioned_groups_flat", None) or []
    for lp, hp in zip(low, master):
        if (lp.dtype == hp.dtype and lp.device == hp.device and lp.shape == hp.shape
                and lp.untyped_storage().data_ptr() != hp.untyped_storage().data_ptr()):
            freed += hp.numel() * hp.element_size()
            hp.data = lp.data
    return freed


def build_zero3(run: RunConfig, make_model, scheduler, init_weights: bool, gpt_of=lambda m: m) -> Built:
    """The zero3 layout's engine around ``make_model(ps)`` (built inside ``zero.Init`` when the
    DeepSpeed config asks for stage 3); ``gpt_of(model)`` is its GPT, which ``train.init_from``
    fills (fine-tuning wraps the GPT with a head)."""
    ds, tr = run.deepspeed, run.train
    ps = ParallelState.build(tp_size=run.parallel.tp_size)
    stage = zero_stage(ds)
    # zero.Init ignores mpu for its group: without data_parallel_group it would partition (and
    # broadcast rank 0's TP shard) over the whole world
    with deepspeed.zero.Init(config_dict_or_path=ds, mpu=ps, data_parallel_group=ps.dp_group,
                             enabled=stage == 3):
        model = make_model(ps)
    gpt = gpt_of(model)
    if stage == 3:
        # the head reads the embedding's weight outside the embedding module
        deepspeed.zero.register_external_parameter(gpt.head, gpt.embed.wte.weight)
    if init_weights:
        load_initial_weights(gpt.named_parameters(), run, ps)
    ps.seed(tr.seed)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=_param_groups(model.named_parameters()),
                                      config=ds, mpu=ps, lr_scheduler=scheduler)
    if stage == 3:
        share_fp32_master(engine.optimizer)
    if stage == 0:
        keep_grad_norm(engine)
    if stage == 0 and ps.dp_size == 1:
        # one data-parallel rank: DeepSpeed would still flatten every gradient and all-reduce it
        # over a group of one after each backward
        engine.enable_backward_allreduce = False
    if tr.compile:
        engine.compile(backend=tr.compile_backend)
    return Built(engine, ps, pipeline=False)
