"""The layout planner's search: every candidate layout of a problem on a cluster, evaluated,
ranked, grouped and explained."""
from __future__ import annotations

from dataclasses import asdict

from megagpt.config import ConfigError
from megagpt.planner.model import GIB, Cluster, Layout, Plan, Problem, evaluate
from megagpt.train.autotune import HEADROOM


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
                         (la.zero != lb.zero, "the lower ZeRO stage"),
                         (la.micro != lb.micro, "the larger micro-batch")):
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
