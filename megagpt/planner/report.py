"""The layout planner's report: the tables and sentences ``plan.py`` prints."""
from __future__ import annotations

from megagpt.config import model_config
from megagpt.model.flops import param_count
from megagpt.planner.model import GIB, GPT3_BATCH_SEQUENCES, GPT3_BATCH_TOKENS, Cluster, Plan, Problem
from megagpt.planner.search import families, layouts_for, plan_all, smallest_cluster
from megagpt.train.autotune import HEADROOM


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

    def fmt(row):
        return "  ".join(x.rjust(w) for x, w in zip(row, widths))

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


def _examples(refused: list[Plan], per_kind: int = 5) -> list[Plan]:
    out, seen = [], {}
    for p in refused:
        if seen.get(p.refused_by, 0) < per_kind and p.refused not in {q.refused for q in out}:
            out.append(p)
            seen[p.refused_by] = seen.get(p.refused_by, 0) + 1
    return out
