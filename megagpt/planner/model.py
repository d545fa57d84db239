"""The layout planner's model: a cluster, a training problem, a layout, and what a layout costs
(memory per GPU, communication, step time) or why it is refused.

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

import json
from dataclasses import asdict, dataclass, field

from megagpt.config import ConfigError, DataConfig, ModelConfig, ParallelConfig, RunConfig, TrainConfig, validate_run
from megagpt.model.flops import model_flops_per_token
from megagpt.train.autotune import HEADROOM
from megagpt.train.memory import Prediction, predict, stage_params

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
