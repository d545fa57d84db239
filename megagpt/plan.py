"""What fits where: the layouts (tp, pp, dp, ZeRO stage, micro-batch, activation checkpointing, CPU
offload of the optimizer) a model can train with on a cluster, their memory per GPU, their
communication per step, and a ranked recommendation with its reason.

    python megagpt/plan.py --model gpt3-1.3b --gpus-per-node 8 --nodes 2 --gpu-memory 80 \\
        --seq 2048 --global-batch 512 [--top 10] [--json]
    python megagpt/plan.py --config configs/gpt3_1.3b.yaml --nodes 2          # model/seq/batch from a run file
    python megagpt/plan.py --model gpt3-1.3b ... --layout tp=2,pp=1,dp=8,zero=3   # one layout: why not?
    python megagpt/plan.py --gpt3-table                                       # GPT-3 Table 2.1 on 8 x 80 GiB nodes

Refusals. Every candidate first goes through ``megagpt.config.validate_run`` as the run file it
would be (layout, parallel sizes, the DeepSpeed JSON it would use with its micro-batch, accumulation
and train_batch_size), so a layout ``validate`` would refuse is refused with validate's own sentence
(n_head divisible by tp, world size divisible by tp x pp, pipeline only with ZeRO stage <= 1, global
batch = micro-batch x accumulation x dp, ...). The planner adds its own rules after that: pipeline
stages of equal depth (n_layer divisible by pp), CPU offload only with ZeRO stage >= 1 and without
pipeline stages, no bf16/fp16 at ZeRO stage 0 with tp > 1 (DeepSpeed's grad norm is wrong there,
see DESIGN.md), the predicted peak within ``autotune.HEADROOM`` (80%) of the GPU's memory, and the
offloaded optimizer states within 80% of the host's.

Memory per GPU: ``megagpt.train.memory.predict`` (parameters, gradients, optimizer states,
activations, transient buffers; its docstring gives every term). It counts the real per-rank
shapes and what DeepSpeed allocates, and tests/train/test_plan.py checks it against live-tensor
bytes measured in real DeepSpeed runs.

Communication, bytes each GPU sends per optimizer step. e = bytes per element (2 in bf16/fp16,
4 in fp32); s, b, h: sequence, micro-batch, width; m = micro-batches per step on a rank (gradient
accumulation steps); L_k = layers on the busiest pipeline stage (n_layer / pp); Psi = parameters
on one rank (its TP shard of its stage); ring factors AR(n) = 2 (n-1)/n for an all-reduce of n
ranks, RS(n) = AG(n) = (n-1)/n for a reduce-scatter / all-gather:

  TP (tp = t > 1)   m [ L_k (4 + 2 c) AR(t) s b h e  +  2 AR(t) s b h e  +  3 AR(t) 4 s b ]
                    per layer two all-reduces forward (after the attention and MLP row-parallel
                    projections) and two backward (the gradients of the column-parallel inputs),
                    c = 1 with activation checkpointing (the recomputed forward repeats its two);
                    the vocab-parallel embedding's forward and the head's backward all-reduce, and
                    the cross-entropy's three (tokens,)-sized float32 all-reduces.
  PP (pp > 1)       m s b h e per neighbour: activations sent forward, their gradients backward (a
                    middle stage sends both: 2 m s b h e; DeepSpeed sends the whole tensor from every
                    TP rank), plus the tied embedding's gradient all-reduce between the first and last
                    stage, AR(2) V_pad/t h e.
  DP (dp = d > 1)   stage 0: AR(d) Psi e                      (gradient all-reduce at the step)
                    stage 1: RS(d) Psi e + AG(d) Psi e        (reduce-scatter, all-gather the update)
                    stage 2: m RS(d) Psi e + AG(d) Psi e      (gradients reduced every micro-batch)
                    stage 3: m (2 AG(d) + RS(d)) Psi e        (parameters gathered for forward and
                                                               again for backward, every micro-batch)
  host (offload)    2 Psi e / d over PCIe: gradient partitions down, updated parameters back.

Throughput estimate used for the ranking (stated assumptions, all flags): compute = model FLOPs per
step per GPU (megagpt.model.flops, x 4/3 with checkpointing) / (peak x efficiency), times the 1F1B
bubble (m + pp - 1) / m; communication at NVLink bandwidth inside a node and at the per-GPU network
bandwidth when a group spans nodes (TP ranks are innermost, then DP, then PP, as
megagpt.parallel.state and DeepSpeed's topology place them), not overlapped with compute; offload adds
PCIe time and CPU Adam time. Ranking: layouts that fit, by predicted step time, in tiers of 5%:
within a tier (times the model cannot tell apart) no offload, no checkpointing, fewer pipeline
stages, smaller tp, lower ZeRO stage, larger micro-batch, then the faster come first.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from megagpt._entry import fix_path

    fix_path(__file__)

from megagpt.config import (PRESETS, ConfigError, DataConfig, ModelConfig, ParallelConfig,  # noqa: E402
                            RunConfig, TrainConfig, load_run_config, model_config, validate_run)
from megagpt.model.flops import model_flops_per_token, param_count  # noqa: E402
from megagpt.train.autotune import HEADROOM  # noqa: E402
from megagpt.train.memory import Prediction, precision_of, predict, stage_params  # noqa: E402

GIB = 2 ** 30
# GPT-3 (Brown et al. 2020) Table 2.1: batch size in tokens, at context 2048 -> sequences
GPT3_BATCH_TOKENS = {"gpt3-125m": 0.5e6, "gpt3-350m": 0.5e6, "gpt3-760m": 0.5e6, "gpt3-1.3b": 1e6,
                     "gpt3-2.7b": 1e6, "gpt3-6.7b": 2e6, "gpt3-13b": 2e6, "gpt3-175b": 3.2e6}
# 0.5M = 2^19 tokens = 256 sequences of 2048, 1M = 512, 2M = 1024; 3.2M is the 1536 sequences
# (3.1M tokens) Megatron-LM and OPT-175B use for the 175B model
GPT3_BATCH_SEQUENCES = {"gpt3-125m": 256, "gpt3-350m": 256, "gpt3-760m": 256, "gpt3-1.3b": 512,
                        "gpt3-2.7b": 512, "gpt3-6.7b": 1024, "gpt3-13b": 1024, "gpt3-175b": 1536}


@dataclass(frozen=True)
class Cluster:
    gpus_per_node: int = 8
    nodes: int = 1
    gpu_memory_gib: float = 80.0
    host_memory_gib: float = 1024.0  # per node, for offloaded optimizer states
    peak_tflops: float = 312.0  # per GPU at the training precision (A100 bf16 dense)
    efficiency: float = 0.5  # share of the peak the model's matmuls reach
    nvlink_gbs: float = 200.0  # GB/s a GPU sends inside a node
    network_gbs: float = 25.0  # GB/s a GPU sends across nodes (one 200 Gb/s NIC per GPU)
    pcie_gbs: float = 25.0  # GB/s between a GPU and its host
    cpu_adam_params_per_s: float = 1e9  # parameters per second CPU Adam updates on one node

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass
class Problem:
    name: str
    model: ModelConfig = field(repr=False)
    seq: int
    global_batch: int  # sequences per optimizer step
    precision: str = "bf16"  # bf16 | fp16 | fp32
    ds_name: str | None = None  # a run file's DeepSpeed JSON, named in validate's sentences for its layout
    ds_layout: str | None = None  # ... which is this layout ('zero3' / '3d'); others name the shipped JSONs


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    zero: int
    micro: int
    checkpointing: bool = False
    offload: bool = False
    layout: str | None = None  # 'zero3' / '3d'; default: 3d when pp > 1

    @property
    def kind(self) -> str:
        return self.layout or ("3d" if self.pp > 1 else "zero3")

    def short(self) -> str:
        return (f"{self.kind} tp={self.tp} pp={self.pp} dp={self.dp} zero={self.zero} micro={self.micro}"
                f"{' ckpt' if self.checkpointing else ''}{' offload' if self.offload else ''}")


@dataclass
class Plan:
    layout: Layout
    gas: int  # micro-batches per step on a rank
    memory: Prediction | None = None
    comm: dict = field(default_factory=dict)  # bytes per GPU per step: tp, pp, dp, host
    time: dict = field(default_factory=dict)  # seconds per step: compute, tp, pp, dp, host, step
    refused: str | None = None  # the sentence why not
    refused_by: str | None = None  # 'validate', 'planner', 'memory'
    reason: str = ""  # why it ranks where it does (the recommended one)

    @property
    def fits(self) -> bool:
        return self.refused is None

    def as_dict(self) -> dict:
        d = {"layout": self.layout.kind, **{k: v for k, v in asdict(self.layout).items() if k != "layout"},
             "gradient_accumulation_steps": self.gas, "fits": self.fits}
        if self.memory is not None:
            m = self.memory
            d["memory_gib"] = {k: round(getattr(m, k) / GIB, 3) for k in
                               ("params", "grads", "optimizer", "activations", "buffers", "total", "host")}
            d["memory_gib"]["pipeline_stage"] = m.stage
            d["memory_gib"]["micro_batches_in_flight"] = m.in_flight
        if self.comm:
            d["comm_gb_per_gpu_per_step"] = {k: round(v / 1e9, 4) for k, v in self.comm.items()}
        if self.time:
            d["time_s"] = {k: round(v, 5) for k, v in self.time.items()}
            d["tokens_per_s"] = round(self.time.get("tokens_per_s", 0))
        if self.refused:
            d["refused"] = self.refused
            d["refused_by"] = self.refused_by
        if self.reason:
            d["reason"] = self.reason
        return d


# --- validation ----------------------------------------------------------------------------------
def ds_name(problem: Problem, layout: Layout) -> str:
    """The DeepSpeed JSON this layout's run file would name: the run file's own for its layout, else
    the shipped one for the layout."""
    if problem.ds_name and layout.kind == problem.ds_layout:
        return problem.ds_name
    if layout.kind == "3d":
        return "ds_configs/3d.json"
    if layout.offload:
        return "ds_configs/zero3_offload.json"
    return "ds_configs/zero3_bf16.json" if problem.precision != "fp32" else "ds_configs/zero3.json"


def run_config(problem: Problem, layout: Layout, gas: int) -> RunConfig:
    """The run file this layout would be (what validate_run checks)."""
    ds = {"train_micro_batch_size_per_gpu": layout.micro, "gradient_accumulation_steps": gas,
          "train_batch_size": problem.global_batch, "zero_optimization": {"stage": layout.zero},
          "bf16": {"enabled": problem.precision == "bf16"}, "fp16": {"enabled": problem.precision == "fp16"}}
    if layout.offload:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    return RunConfig(model=problem.model, parallel=ParallelConfig(tp_size=layout.tp, pp_size=layout.pp,
                                                                  layout=layout.kind),
                     data=DataConfig(prefixes=["<plan>"], seq_length=problem.seq),
                     train=TrainConfig(deepspeed_config=ds_name(problem, layout),
                                       activation_checkpointing=layout.checkpointing),
                     deepspeed=ds)


def accumulation(problem: Problem, layout: Layout) -> int:
    return max(1, problem.global_batch // (layout.micro * layout.dp))


_VALIDATED: dict = {}


def validate_sentence(problem: Problem, layout: Layout, world: int) -> str | None:
    """validate_run's sentence for this layout, or None when validate accepts it. What validate sees
    does not depend on dp (the world size fixes it) or checkpointing: one call for all of those."""
    key = (json.dumps(asdict(problem.model), sort_keys=True), problem.seq, problem.global_batch,
           problem.precision, problem.ds_name, problem.ds_layout, layout.tp, layout.pp, layout.kind, layout.zero,
           layout.micro, layout.offload, world)
    if key not in _VALIDATED:
        lay = Layout(layout.tp, layout.pp, max(1, world // (layout.tp * layout.pp)), layout.zero, layout.micro,
                     layout.checkpointing, layout.offload, layout.kind)
        try:
            validate_run(run_config(problem, lay, accumulation(problem, lay)), world)
            _VALIDATED[key] = None
        except ConfigError as e:
            _VALIDATED[key] = str(e)
    return _VALIDATED[key]


def planner_sentence(problem: Problem, layout: Layout, cluster: Cluster) -> str | None:
    """The planner's own rules, after validate's."""
    cfg, lay = problem.model, layout
    if lay.tp * lay.pp * lay.dp != cluster.world:
        return (f"tp x pp x dp = {lay.tp} x {lay.pp} x {lay.dp} = {lay.tp * lay.pp * lay.dp} is not the world "
                f"size {cluster.world} ({cluster.nodes} nodes x {cluster.gpus_per_node} GPUs); give dp = "
                f"{cluster.world // (lay.tp * lay.pp)} or change --nodes.")
    if cfg.n_layer % lay.pp:
        return (f"model.n_layer={cfg.n_layer} is not divisible by parallel.pp_size={lay.pp}: the planner only "
                f"plans pipeline stages of equal depth; use a pp that divides {cfg.n_layer}.")
    if lay.offload and lay.zero == 0:
        return ("CPU offload of the optimizer needs ZeRO stage 1, 2 or 3 (ZeRO stage 0 keeps no optimizer "
                "partition to move).")
    if lay.offload and lay.pp > 1:
        return ("CPU offload is only planned for layout 'zero3' (ds_configs/zero3_offload.json), not with "
                "pipeline stages.")
    if problem.precision != "fp32" and lay.zero == 0 and lay.tp > 1:
        return (f"{problem.precision} with ZeRO stage 0 and tp={lay.tp}: DeepSpeed's unfused optimizer computes a "
                f"wrong gradient norm (and clips wrongly) under tensor parallelism; use ZeRO stage 1.")
    return None


# --- communication and time ----------------------------------------------------------------------
def _ar(n: int) -> float:
    return 2 * (n - 1) / n


def _rs(n: int) -> float:
    return (n - 1) / n


def communication(problem: Problem, layout: Layout, gas: int) -> dict:
    """Bytes each GPU sends per optimizer step, by kind (the busiest rank of each kind)."""
    cfg, lay = problem.model, layout
    e = 4 if problem.precision == "fp32" else 2
    s, b, h, t, d, m = problem.seq, lay.micro, cfg.n_embd, lay.tp, lay.dp, gas
    sbh = s * b * h * e
    out = {"tp": 0.0, "pp": 0.0, "dp": 0.0, "host": 0.0}
    if t > 1:
        per_layer = (4 + 2 * lay.checkpointing) * _ar(t) * sbh
        ends = 2 * _ar(t) * sbh + 3 * _ar(t) * 4 * s * b if lay.pp == 1 else \
            _ar(t) * sbh + 3 * _ar(t) * 4 * s * b  # one end of the model on the busiest stage
        out["tp"] = m * (cfg.n_layer // lay.pp * per_layer + ends)
    if lay.pp > 1:
        out["pp"] = m * sbh * (2 if lay.pp > 2 else 1) + _ar(2) * cfg.padded_vocab_size(t) // t * h * e
    psi = rank_params(problem, lay)
    if d > 1:
        out["dp"] = {0: _ar(d) * psi * e, 1: 2 * _rs(d) * psi * e, 2: (m + 1) * _rs(d) * psi * e,
                     3: m * 3 * _rs(d) * psi * e}[lay.zero]
    if lay.offload:
        out["host"] = 2 * psi * e / d
    return out


def rank_params(problem: Problem, layout: Layout) -> int:
    """Parameters on the rank with the most (its TP shard of the first or last pipeline stage)."""
    return max(sum(n * c for n, _, _, c in stage_params(problem.model, layout.tp, layout.pp, k))
               for k in {0, layout.pp - 1})


def step_time(problem: Problem, layout: Layout, gas: int, comm: dict, cluster: Cluster) -> dict:
    cfg, lay = problem.model, layout
    tokens = problem.global_batch * problem.seq
    flops = model_flops_per_token(cfg, problem.seq) * tokens / cluster.world
    if lay.checkpointing:
        flops *= 4 / 3  # the forward again, in backward
    peak = cluster.peak_tflops * 1e12 * (0.5 if problem.precision == "fp32" else 1.0)  # fp32: TF32
    compute = flops / (peak * cluster.efficiency)
    bubble = (gas + lay.pp - 1) / gas
    gpn = cluster.gpus_per_node

    def bw(span: int) -> float:  # a group over `span` consecutive ranks
        return (cluster.nvlink_gbs if span <= gpn else cluster.network_gbs) * 1e9

    out = {"compute": compute * bubble, "bubble": compute * (bubble - 1),
           "tp": comm["tp"] / bw(lay.tp),
           "pp": comm["pp"] / bw(cluster.world if lay.pp > 1 else 1),
           "dp": comm["dp"] / bw(lay.tp * lay.dp),
           "host": 0.0}
    if lay.offload:
        adam = rank_params(problem, lay) / lay.dp / (cluster.cpu_adam_params_per_s / gpn)
        out["host"] = comm["host"] / (cluster.pcie_gbs * 1e9) + adam
    out["step"] = out["compute"] + out["tp"] + out["pp"] + out["dp"] + out["host"]
    out["tokens_per_s"] = tokens / out["step"]
    out["mfu"] = model_flops_per_token(cfg, problem.seq) * tokens / cluster.world / out["step"] / peak
    return out


# --- one layout ----------------------------------------------------------------------------------
def evaluate(problem: Problem, layout: Layout, cluster: Cluster) -> Plan:
    """Memory, communication and time of one layout, or the sentence why it cannot run."""
    world = cluster.world
    gas = accumulation(problem, layout)
    plan = Plan(layout=layout, gas=gas)
    lay = layout
    if world % (lay.tp * lay.pp) == 0 and lay.tp * lay.pp * lay.dp != world:  # the question's own premise
        plan.refused, plan.refused_by = planner_sentence(problem, layout, cluster), "planner"
        return plan
    why = validate_sentence(problem, layout, world)
    if why:
        plan.refused, plan.refused_by = why, "validate"
        return plan
    why = planner_sentence(problem, layout, cluster)
    if why:
        plan.refused, plan.refused_by = why, "planner"
        return plan
    mem = predict(problem.model, seq=problem.seq, micro_batch=layout.micro, tp=layout.tp, pp=layout.pp,
                  dp=layout.dp, zero=layout.zero, micro_batches=gas, precision=problem.precision,
                  checkpointing=layout.checkpointing, offload=layout.offload)
    plan.memory = mem
    plan.comm = communication(problem, layout, gas)
    plan.time = step_time(problem, layout, gas, plan.comm, cluster)
    budget = HEADROOM * cluster.gpu_memory_gib * GIB
    if mem.total > budget:
        plan.refused = (f"needs {mem.total / GIB:.1f} GiB per GPU (params {mem.params / GIB:.1f}, grads "
                        f"{mem.grads / GIB:.1f}, optimizer {mem.optimizer / GIB:.1f}, activations "
                        f"{mem.activations / GIB:.1f}, buffers {mem.buffers / GIB:.1f}), over {HEADROOM:.0%} of "
                        f"{cluster.gpu_memory_gib:g} GiB ({budget / GIB:.1f} GiB).")
        plan.refused_by = "memory"
    elif layout.offload and mem.host * cluster.gpus_per_node > HEADROOM * cluster.host_memory_gib * GIB:
        plan.refused = (f"offloaded optimizer states need {mem.host * cluster.gpus_per_node / GIB:.0f} GiB of host "
                        f"memory per node, over {HEADROOM:.0%} of {cluster.host_memory_gib:g} GiB.")
        plan.refused_by = "memory"
    return plan


# --- every layout --------------------------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def candidates(problem: Problem, cluster: Cluster, max_micro: int = 64) -> list[Layout]:
    """Every (tp, pp, dp) that multiplies to the world size, with ZeRO stages 0-3, the micro-batches
    that divide the global batch, checkpointing on/off and offload on/off."""
    out = []
    world = cluster.world
    for tp in _divisors(world):
        if tp > problem.model.n_head:
            continue
        for pp in _divisors(world // tp):
            if pp > problem.model.n_layer:
                continue
            dp = world // (tp * pp)
            per_rank = problem.global_batch // dp if problem.global_batch % dp == 0 else 0
            micros = [b for b in _divisors(per_rank) if b <= max_micro] if per_rank else [1]
            for zero in range(4):
                for micro in micros:
                    for ckpt in (False, True):
                        for offload in (False, True):
                            out.append(Layout(tp, pp, dp, zero, micro, ckpt, offload))
    return out


TIE = 0.05  # predicted step times this close are not trusted to tell two layouts apart


def preference(plan: Plan):
    """Among layouts of about the same predicted speed: no offload, no checkpointing, fewer pipeline
    stages, smaller tp, lower ZeRO stage, larger micro-batch (larger matmuls, which the time model does
    not price), then the faster."""
    lay = plan.layout
    return (lay.offload, lay.checkpointing, lay.pp, lay.tp, lay.zero, -lay.micro, plan.time["step"])


def rank(plans: list[Plan]) -> list[Plan]:
    """Fastest first, in tiers: every layout within TIE of the fastest left is one tier, ordered by
    ``preference``."""
    rest = sorted(plans, key=lambda p: (p.time["step"], preference(p)))
    out = []
    while rest:
        limit = rest[0].time["step"] * (1 + TIE)
        tier = [p for p in rest if p.time["step"] <= limit]
        rest = [p for p in rest if p.time["step"] > limit]
        out += sorted(tier, key=preference)
    return out


def plan_all(problem: Problem, cluster: Cluster, layouts: list[Layout] | None = None) -> tuple[list[Plan], list[Plan]]:
    """(the layouts that fit, best first; the refused ones)."""
    plans = [evaluate(problem, lay, cluster) for lay in (layouts if layouts is not None else
                                                          candidates(problem, cluster))]
    fit = rank([p for p in plans if p.fits])
    if fit:
        fit[0].reason = explain(fit, plans, cluster)
    return fit, [p for p in plans if not p.fits]


def families(fit: list[Plan]) -> list[Plan]:
    """The best variant (micro-batch, checkpointing, offload) of each (layout, tp, pp, dp, ZeRO stage),
    in rank order."""
    seen, out = set(), []
    for p in fit:
        key = (p.layout.kind, p.layout.tp, p.layout.pp, p.layout.dp, p.layout.zero)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _what_costs(a: Plan, b: Plan) -> str:
    """The time component by which b is slower than a."""
    names = {"compute": "compute (recomputation, pipeline bubble)", "tp": "tensor-parallel traffic",
             "pp": "pipeline traffic", "dp": "data-parallel / ZeRO traffic", "host": "CPU offload"}
    diffs = {k: b.time[k] - a.time[k] for k in names}
    k = max(diffs, key=diffs.get)
    return names[k] if diffs[k] > 0 else "tie-break"


def explain(fit: list[Plan], plans: list[Plan], cluster: Cluster) -> str:
    best = fit[0]
    lay, mem, t = best.layout, best.memory, best.time
    budget = HEADROOM * cluster.gpu_memory_gib
    parts = [f"fits: {mem.total / GIB:.1f} of {budget:.1f} GiB usable per GPU ({HEADROOM:.0%} of "
             f"{cluster.gpu_memory_gib:g})"]
    if lay.tp == 1:
        parts.append("tp=1: no tensor-parallel traffic")
    elif lay.tp <= cluster.gpus_per_node:
        parts.append(f"tp={lay.tp} stays inside a node (NVLink)")
    else:
        parts.append(f"tp={lay.tp} spans nodes (nothing smaller fits)")
    parts.append("no pipeline stages" if lay.pp == 1 else
                 f"pp={lay.pp} with {best.gas} micro-batches (bubble {t['bubble'] / t['step']:.0%} of the step)")
    same = [p for p in plans if p.memory is not None and p.layout.tp == lay.tp and p.layout.pp == lay.pp
            and p.layout.zero == lay.zero and not p.layout.offload]
    if not lay.checkpointing:
        parts.append("no activation checkpointing (no recomputation)")
    else:
        smallest = min((p.memory.total for p in same if not p.layout.checkpointing), default=None)
        parts.append("activation checkpointing" + (f" (without it the smallest micro-batch needs "
                                                   f"{smallest / GIB:.1f} GiB)" if smallest else ""))
    if lay.offload:
        parts.append("optimizer states offloaded to the host")
    same_shape = [p for p in plans if p.layout.tp == lay.tp and p.layout.pp == lay.pp and p.layout.zero < lay.zero]
    lower_fit = any(p.fits for p in same_shape)
    if lay.dp > 1:
        parts.append(f"dp={lay.dp} " + ("inside a node" if lay.tp * lay.dp <= cluster.gpus_per_node else
                                        "across nodes (gradient traffic at network speed)"))
    parts.append(f"ZeRO stage {lay.zero}" + (" (fits without sharding)" if lay.zero == 0 else
                                             "" if not same_shape else
                                             " (faster here than the lower stages that fit)" if lower_fit else
                                             " (the lowest stage that fits)"))
    comm = sum(t[k] for k in ("tp", "pp", "dp", "host"))
    parts.append(f"predicted step {t['step']:.3g} s, {t['tokens_per_s']:,.0f} tokens/s, "
                 f"{comm / t['step']:.0%} of it communication")
    others = families(fit)[1:]
    if others:
        nxt = others[0]
        slower = nxt.time["step"] / t["step"] - 1
        if slower > 1e-9 and nxt.time["step"] > t["step"] * (1 + TIE):
            parts.append(f"next: {nxt.layout.short()}, {slower:.1%} slower ({_what_costs(best, nxt)})")
        else:
            parts.append(f"next: {nxt.layout.short()}, {slower:+.1%} in predicted time (within the {TIE:.0%} the "
                         f"estimate cannot resolve), after this one for {_preferred_by(best, nxt)}")
    return "; ".join(parts)


def _preferred_by(a: Plan, b: Plan) -> str:
    """The first preference on which a beats b."""
    la, lb = a.layout, b.layout
    for differs, why in ((la.offload != lb.offload, "no offload"),
                         (la.checkpointing != lb.checkpointing, "no activation checkpointing"),
                         (la.pp != lb.pp, "fewer pipeline stages"), (la.tp != lb.tp, "smaller tp"),
                         (la.zero != lb.zero, "the lower ZeRO stage"), (la.micro != lb.micro, "the larger micro-batch")):
        if differs:
            return why
    return "its speed"


# --- problem from the command line ---------------------------------------------------------------
def parse_layout(text: str) -> dict:
    """``tp=2,pp=1,dp=8,zero=3[,micro=4,ckpt=1,offload=0,layout=3d]`` -> dict."""
    out = {}
    for item in text.split(","):
        if "=" not in item:
            raise ConfigError(f"--layout: '{item}' must look like key=value (keys tp, pp, dp, zero, micro, ckpt, "
                              f"offload, layout).")
        k, v = (x.strip() for x in item.split("=", 1))
        if k == "layout":
            out[k] = v
        elif k in ("tp", "pp", "dp", "zero", "micro", "ckpt", "offload"):
            try:
                out[k] = int(v)
            except ValueError:
                raise ConfigError(f"--layout: {k} must be an integer, got {v!r}.") from None
        else:
            raise ConfigError(f"--layout: unknown key '{k}'; keys are tp, pp, dp, zero, micro, ckpt, offload, layout.")
    return out


def layouts_for(spec: dict, problem: Problem, cluster: Cluster) -> list[Layout]:
    """The layouts matching a --layout spec (unspecified micro/ckpt/offload: every choice)."""
    tp, pp = spec.get("tp", 1), spec.get("pp", 1)
    dp = spec.get("dp", max(1, cluster.world // (tp * pp)))
    zero = spec.get("zero")
    per_rank = problem.global_batch // dp if dp and problem.global_batch % dp == 0 else 0
    micros = [spec["micro"]] if "micro" in spec else ([b for b in _divisors(per_rank) if b <= 64] or [1])
    out = []
    for z in ([zero] if zero is not None else range(4)):
        for micro in micros:
            for ckpt in ([bool(spec["ckpt"])] if "ckpt" in spec else (False, True)):
                for off in ([bool(spec["offload"])] if "offload" in spec else (False, True)):
                    out.append(Layout(tp, pp, dp, z, micro, ckpt, off, spec.get("layout")))
    return out


def problem_from_args(args) -> tuple[Problem, dict | None, str | None]:
    """(the problem, the run file's own layout spec if --config, validate_run's sentence for the run
    file as it is, if it refuses it)."""
    own = None
    if args.config:
        run = load_run_config(args.config, args.override or [])
        world = args.gpus_per_node * args.nodes
        try:
            validate_run(load_run_config(args.config, args.override or []), world)
            verdict = None
        except ConfigError as e:
            verdict = str(e)
        ds = run.deepspeed
        precision = precision_of(ds)
        dp = run.parallel.dp_size(world) or 1
        micro = ds.get("train_micro_batch_size_per_gpu", 1)
        batch = args.global_batch or ds.get("train_batch_size") or micro * ds.get("gradient_accumulation_steps", 1) * dp
        zero = ds.get("zero_optimization") or {}
        stage = zero.get("stage", 0)
        offload = (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
        own = {"tp": run.parallel.tp_size, "pp": run.parallel.pp_size, "dp": dp, "micro": micro,
               "ckpt": int(run.train.activation_checkpointing), "offload": int(offload), "layout": run.parallel.layout}
        if stage != "auto":
            own["zero"] = int(stage)
        problem = Problem(name=str(args.config), model=run.model, seq=args.seq or run.seq_length, global_batch=batch,
                          precision=args.precision or precision, ds_name=run.train.deepspeed_config,
                          ds_layout=run.parallel.layout)
        return problem, own, verdict
    if not args.model:
        raise ConfigError("give --model (a preset) or --config (a run file).")
    if args.model not in PRESETS:
        raise ConfigError(f"--model '{args.model}' is unknown; known presets: {', '.join(PRESETS)}.")
    cfg = model_config(args.model)
    if args.global_batch is None:
        raise ConfigError("give --global-batch (sequences per optimizer step).")
    return Problem(name=args.model, model=cfg, seq=args.seq or cfg.n_positions, global_batch=args.global_batch,
                   precision=args.precision or "bf16"), own, None


# --- output --------------------------------------------------------------------------------------
def header(problem: Problem, cluster: Cluster) -> list[str]:
    cfg = problem.model
    n = param_count(cfg)
    return [f"{problem.name}: {n / 1e9:.3g}B parameters ({cfg.n_layer} layers, {cfg.n_head} heads, d_model "
            f"{cfg.n_embd}), seq {problem.seq}, global batch {problem.global_batch} sequences "
            f"({problem.global_batch * problem.seq / 1e6:.3g}M tokens), {problem.precision}",
            f"{cluster.nodes} node(s) x {cluster.gpus_per_node} GPUs x {cluster.gpu_memory_gib:g} GiB = "
            f"{cluster.world} GPUs; a layout fits within {HEADROOM:.0%} of a GPU "
            f"({HEADROOM * cluster.gpu_memory_gib:.1f} GiB)",
            f"assumed: {cluster.peak_tflops:g} TFLOP/s peak x {cluster.efficiency:g}, NVLink {cluster.nvlink_gbs:g} "
            f"GB/s, network {cluster.network_gbs:g} GB/s per GPU, PCIe {cluster.pcie_gbs:g} GB/s, no overlap"]


COLS = ("#", "layout", "tp", "pp", "dp", "zero", "micro", "gas", "ckpt", "offl", "params", "grads", "optim",
        "acts", "buf", "total", "TP GB", "PP GB", "DP GB", "step s", "tok/s", "MFU")


def table(plans: list[Plan], start: int = 1) -> list[str]:
    rows = []
    for i, p in enumerate(plans, start):
        lay, m, c, t = p.layout, p.memory, p.comm, p.time
        rows.append([str(i), lay.kind, str(lay.tp), str(lay.pp), str(lay.dp), str(lay.zero), str(lay.micro),
                     str(p.gas), "yes" if lay.checkpointing else "no", "yes" if lay.offload else "no",
                     *(f"{getattr(m, k) / GIB:.2f}" for k in ("params", "grads", "optimizer", "activations",
                                                              "buffers", "total")),
                     *(f"{c[k] / 1e9:.3g}" for k in ("tp", "pp", "dp")),
                     f"{t['step']:.3g}", f"{t['tokens_per_s']:,.0f}", f"{t['mfu']:.0%}"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(COLS)] if rows else [len(h) for h in COLS]
    fmt = lambda r: "  ".join(x.rjust(w) for x, w in zip(r, widths))  # noqa: E731
    return [fmt(COLS)] + [fmt(r) for r in rows] + ["(memory in GiB per GPU: the busiest pipeline stage; "
                                                   "communication in GB sent per GPU per step)"]


def refused_summary(refused: list[Plan]) -> list[str]:
    by: dict[str, list[Plan]] = {}
    for p in refused:
        by.setdefault(p.refused_by, []).append(p)
    lines = [f"refused: {len(refused)} candidate layouts"]
    for kind in ("validate", "planner", "memory"):
        ps = by.get(kind, [])
        if ps:
            lines.append(f"  {len(ps)} by {kind}, e.g. {ps[0].layout.short()}: {ps[0].refused}")
    return lines


def report(problem: Problem, cluster: Cluster, fit: list[Plan], refused: list[Plan], top: int,
           variants: bool = False) -> list[str]:
    lines = header(problem, cluster) + [""]
    if not fit:
        lines.append("nothing fits.")
        best = min((p for p in refused if p.memory is not None), key=lambda p: p.memory.total, default=None)
        if best is not None:
            lines.append(f"closest: {best.layout.short()}: {best.refused}")
    else:
        rows = fit if variants else families(fit)
        lines.append(f"{len(fit)} layouts fit" + ("" if variants else
                                                  f"; the best micro-batch / checkpointing / offload of each of "
                                                  f"{len(rows)} (layout, tp, pp, dp, ZeRO stage), best first "
                                                  f"(--variants: all)") + ":")
        lines += table(rows[:top] if top else rows)
        lines += ["", f"recommended: {fit[0].layout.short()}", f"  why: {fit[0].reason}"]
    lines += [""] + refused_summary(refused)
    return lines


def check_one(problem: Problem, cluster: Cluster, spec: dict, top: int):
    """A --layout question: (lines of the answer, fits, fitting plans best first, refused plans)."""
    fit, refused = plan_all(problem, cluster, layouts_for(spec, problem, cluster))
    desc = ",".join(f"{k}={v}" for k, v in spec.items())
    lines = []
    if fit:
        lines.append(f"{desc}: fits ({len(fit)} of {len(fit) + len(refused)} variants); best first:")
        lines += table(fit[:top] if top else fit)
        lines += [f"  why the first: {fit[0].reason}"]
        return lines, True, fit, refused
    rules = [p for p in refused if p.refused_by != "memory"]
    if len(rules) == len(refused):  # refused for a rule, whatever the micro-batch and checkpointing
        msgs = list(dict.fromkeys(p.refused for p in refused))
        lines.append(f"{desc}: refused: {msgs[0]}")
        lines += [f"  also: {m}" for m in msgs[1:4]]
    else:
        best = min((p for p in refused if p.memory is not None), key=lambda p: p.memory.total)
        lines.append(f"{desc}: refused: even {best.layout.short()} {best.refused}")
    return lines, False, fit, refused


def smallest_cluster(problem: Problem, base: Cluster, offload: bool = False, max_nodes: int = 256):
    """The fewest nodes (powers of two) on which a layout fits, and its plans."""
    nodes = 1
    while nodes <= max_nodes:
        cluster = Cluster(**{**asdict(base), "nodes": nodes})
        layouts = [lay for lay in candidates(problem, cluster) if offload or not lay.offload]
        fit, refused = plan_all(problem, cluster, layouts)
        if fit:
            return cluster, fit, refused
        nodes *= 2
    return None, [], []


def gpt3_table(base: Cluster, precision: str = "bf16") -> tuple[list[str], list[dict]]:
    """Every GPT-3 size (Table 2.1: context 2048, its batch) on the fewest nodes of ``base`` on which
    it fits without CPU offload, and the recommended layout there."""
    rows, data = [], []
    head = ("model", "params", "batch tokens -> seqs", "nodes", "layout", "tp", "pp", "dp", "zero", "micro", "ckpt",
            "GiB/GPU", "TP/PP/DP GB per GPU", "step s", "tokens/s")
    for name, seqs in GPT3_BATCH_SEQUENCES.items():
        cfg = model_config(name)
        problem = Problem(name=name, model=cfg, seq=2048, global_batch=seqs, precision=precision)
        cluster, fit, _ = smallest_cluster(problem, base)
        if not fit:
            rows.append((name, f"{param_count(cfg) / 1e9:.3g}B", str(seqs), "-", "does not fit", *[""] * 10))
            continue
        b = fit[0]
        lay, m, c, t = b.layout, b.memory, b.comm, b.time
        rows.append((name, f"{param_count(cfg) / 1e9:.3g}B", f"{GPT3_BATCH_TOKENS[name] / 1e6:g}M -> {seqs}",
                     str(cluster.nodes), lay.kind, str(lay.tp), str(lay.pp), str(lay.dp), str(lay.zero),
                     str(lay.micro),
                     "yes" if lay.checkpointing else "no", f"{m.total / GIB:.1f}",
                     f"{c['tp'] / 1e9:.3g} / {c['pp'] / 1e9:.3g} / {c['dp'] / 1e9:.3g}",
                     f"{t['step']:.3g}", f"{t['tokens_per_s']:,.0f}"))
        data.append({"model": name, "nodes": cluster.nodes, **b.as_dict()})
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(x.ljust(w) for x, w in zip(r, widths)) + " |" for r in rows]
    return lines, data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Formulas: see the module docstring (python -c 'import megagpt.plan; "
                                        "help(megagpt.plan)').")
    ap.add_argument("--model", help=f"a preset: {', '.join(PRESETS)}")
    ap.add_argument("--config", help="a run YAML: model, seq length, batch, precision (and its own layout) from it")
    ap.add_argument("--override", nargs="*", help="dotted overrides for --config (as pretrain.py)")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpu-memory", type=float, default=80.0,
                    help="GiB per GPU (an '80 GB' A100 or H100 has 79-80 GiB)")
    ap.add_argument("--host-memory", type=float, default=1024.0, help="GiB of CPU memory per node (offload)")
    ap.add_argument("--seq", type=int, help="sequence length (default: the model's context)")
    ap.add_argument("--global-batch", type=int, help="sequences per optimizer step")
    ap.add_argument("--precision", choices=("bf16", "fp16", "fp32"), help="default bf16 (or the run file's)")
    ap.add_argument("--layout", help="check one layout: tp=2,pp=1,dp=8,zero=3[,micro=4,ckpt=1,offload=0,layout=3d]")
    ap.add_argument("--top", type=int, default=10, help="rows to print (0: all)")
    ap.add_argument("--variants", action="store_true",
                    help="list every micro-batch / checkpointing / offload variant, not only the best of each")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--gpt3-table", action="store_true", help="every GPT-3 size on the fewest nodes it fits")
    ap.add_argument("--peak-tflops", type=float, default=Cluster.peak_tflops)
    ap.add_argument("--efficiency", type=float, default=Cluster.efficiency)
    ap.add_argument("--nvlink-gbs", type=float, default=Cluster.nvlink_gbs)
    ap.add_argument("--network-gbs", type=float, default=Cluster.network_gbs)
    args = ap.parse_args(argv)
    cluster = Cluster(gpus_per_node=args.gpus_per_node, nodes=args.nodes, gpu_memory_gib=args.gpu_memory,
                      host_memory_gib=args.host_memory, peak_tflops=args.peak_tflops, efficiency=args.efficiency,
                      nvlink_gbs=args.nvlink_gbs, network_gbs=args.network_gbs)
    if min(cluster.gpus_per_node, cluster.nodes) < 1 or cluster.gpu_memory_gib <= 0:
        print("error: --gpus-per-node and --nodes must be >= 1 and --gpu-memory > 0.", file=sys.stderr)
        return 2
    if args.gpt3_table:
        lines, data = gpt3_table(cluster, args.precision or "bf16")
        if args.json:
            print(json.dumps(data, indent=1))
        else:
            print(f"GPT-3 Table 2.1 sizes, seq 2048, {args.precision or 'bf16'}, nodes of {cluster.gpus_per_node} x "
                  f"{cluster.gpu_memory_gib:g} GiB: the fewest nodes (1, 2, 4, ...) on which a layout fits without "
                  f"CPU offload, and the recommended layout there")
            print("\n".join(lines))
        return 0
    try:
        problem, own, verdict = problem_from_args(args)
        if problem.seq < 1 or problem.global_batch < 1:
            raise ConfigError("--seq and --global-batch must be >= 1.")
        spec = parse_layout(args.layout) if args.layout else None
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if spec is not None:
        lines, ok, fit, refused = check_one(problem, cluster, spec, args.top)
        if args.json:
            print(json.dumps({"layout": spec, "fits": ok, "answer": lines[0],
                              "plans": [p.as_dict() for p in fit[:args.top or None]],
                              "refused": [p.as_dict() for p in refused]}, indent=1))
        else:
            print("\n".join(header(problem, cluster) + [""] + lines))
        return 0 if ok else 1
    fit, refused = plan_all(problem, cluster)
    if args.json:
        out = {"problem": {"model": problem.name, "params": param_count(problem.model), "seq": problem.seq,
                           "global_batch": problem.global_batch, "precision": problem.precision},
               "cluster": asdict(cluster), "headroom": HEADROOM,
               "recommended": fit[0].as_dict() if fit else None,
               "plans": [p.as_dict() for p in (fit if args.variants else families(fit))[:args.top or None]],
               "refused": {"count": len(refused),
                           "by": {k: sum(p.refused_by == k for p in refused)
                                  for k in ("validate", "planner", "memory")},
                           "examples": [p.as_dict() for p in _examples(refused)]}}
        if own is not None:
            lines, ok, own_fit, _ = check_one(problem, cluster, own, 1)
            out["run_file_layout"] = {"layout": own, "fits": ok, "answer": lines[0],
                                      "best": own_fit[0].as_dict() if own_fit else None,
                                      "validate_run": verdict or "accepted"}
        print(json.dumps(out, indent=1))
        return 0 if fit else 1
    lines = report(problem, cluster, fit, refused, args.top, args.variants)
    if own is not None:
        lines += ["", f"the run file as it is: validate_run {'refuses it: ' + verdict if verdict else 'accepts it'}",
                  "the run file's own layout:"] + check_one(problem, cluster, own, 3)[0]
    print("\n".join(lines))
    return 0 if fit else 1


def _examples(refused: list[Plan], per_kind: int = 5) -> list[Plan]:
    out, seen = [], {}
    for p in refused:
        if seen.get(p.refused_by, 0) < per_kind and p.refused not in {q.refused for q in out}:
            out.append(p)
            seen[p.refused_by] = seen.get(p.refused_by, 0) + 1
    return out


if __name__ == "__main__":
    sys.exit(main())
