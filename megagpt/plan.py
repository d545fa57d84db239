"""What fits where: the layouts (tp, pp, dp, ZeRO stage, micro-batch, activation checkpointing, CPU
offload of the optimizer) a model can train with on a cluster, their memory per GPU, their
communication per step, and a ranked recommendation with its reason.

    python megagpt/plan.py --model gpt3-1.3b --gpus-per-node 8 --nodes 2 --gpu-memory 80 \\
        --seq 2048 --global-batch 512 [--top 10] [--json]
    python megagpt/plan.py --config configs/gpt3_1.3b.yaml --nodes 2          # model/seq/batch from a run file
    python megagpt/plan.py --model gpt3-1.3b ... --layout tp=2,pp=1,dp=8,zero=3   # one layout: why not?
    python megagpt/plan.py --gpt3-table                                       # GPT-3 Table 2.1 on 8 x 80 GiB nodes

The model, the search and the report live in ``megagpt.planner`` (its modules say how memory,
communication and time are predicted).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from megagpt.config import PRESETS, ConfigError, load_run_config, model_config
from megagpt.model.flops import param_count
from megagpt.planner.model import (
    GPT3_BATCH_SEQUENCES,
    GPT3_BATCH_TOKENS,
    Cluster,
    Layout,
    Problem,
    accumulation,
    communication,
    evaluate,
    rank_params,
)
from megagpt.planner.report import _examples, check_one, gpt3_table, header, refused_summary, report
from megagpt.planner.search import TIE, candidates, explain, families, parse_layout, plan_all
from megagpt.train.autotune import HEADROOM
from megagpt.train.memory import precision_of
from megagpt.train.setup import setup_run

# the planner's names as ``plan.<name>`` for scripts and tests that drive it from Python
__all__ = ["main", "Cluster", "Problem", "Layout", "GPT3_BATCH_SEQUENCES", "TIE", "accumulation", "communication",
           "evaluate", "rank_params", "candidates", "plan_all", "families", "explain", "refused_summary"]


def problem_from_args(args) -> tuple[Problem, dict | None, str | None]:
    """(the problem, the run file's own layout spec if --config, validate_run's sentence for the run
    file as it is, if it refuses it)."""
    own = None
    if args.config:
        run = load_run_config(args.config, args.override or [])
        world = args.gpus_per_node * args.nodes
        try:
            setup_run(load_run_config(args.config, args.override or []), world)
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
    batch = args.global_batch
    if batch is None:
        if args.model not in GPT3_BATCH_SEQUENCES:
            raise ConfigError(f"give --global-batch (sequences per optimizer step); only the GPT-3 presets carry "
                              f"a batch of their own (Table 2.1), '{args.model}' does not.")
        batch = GPT3_BATCH_SEQUENCES[args.model]
        print(f"note: --global-batch not given: {batch} sequences, GPT-3 Table 2.1's batch for {args.model} "
              f"({GPT3_BATCH_TOKENS[args.model] / 1e6:g}M tokens at context 2048)", file=sys.stderr, flush=True)
    return Problem(name=args.model, model=cfg, seq=args.seq or cfg.n_positions, global_batch=batch,
                   precision=args.precision or "bf16"), own, None


# --- output --------------------------------------------------------------------------------------
def parse_args(argv=None):
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
    ap.add_argument("--global-batch", type=int, help="sequences per optimizer step (default for a GPT-3 preset: "
                    "its Table 2.1 batch)")
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
    return ap.parse_args(argv)


def print_gpt3_table(args, cluster: Cluster) -> int:
    """--gpt3-table: every GPT-3 size on the fewest nodes it fits."""
    lines, data = gpt3_table(cluster, args.precision or "bf16")
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(f"GPT-3 Table 2.1 sizes, seq 2048, {args.precision or 'bf16'}, nodes of {cluster.gpus_per_node} x "
              f"{cluster.gpu_memory_gib:g} GiB: the fewest nodes (1, 2, 4, ...) on which a layout fits without "
              f"CPU offload, and the recommended layout there")
        print("\n".join(lines))
    return 0


def print_layout_check(args, problem: Problem, cluster: Cluster, spec: dict) -> int:
    """--layout: does this one layout fit, and its variants that do; exit 1 if none fits."""
    lines, ok, fit, refused = check_one(problem, cluster, spec, args.top)
    if args.json:
        print(json.dumps({"layout": spec, "fits": ok, "answer": lines[0],
                          "plans": [p.as_dict() for p in fit[:args.top or None]],
                          "refused": [p.as_dict() for p in refused]}, indent=1))
    else:
        print("\n".join(header(problem, cluster) + [""] + lines))
    return 0 if ok else 1


def plans_as_json(args, problem: Problem, cluster: Cluster, fit: list, refused: list, own: dict | None,
                  verdict: str | None) -> dict:
    """The ranked plans, the refusals counted by who refused, and the run file's own layout."""
    out = {"problem": {"model": problem.name, "params": param_count(problem.model), "seq": problem.seq,
                       "global_batch": problem.global_batch, "precision": problem.precision},
           "cluster": asdict(cluster), "headroom": HEADROOM,
           "recommended": fit[0].as_dict() if fit else None,
           "plans": [p.as_dict() for p in (fit if args.variants else families(fit))[:args.top or None]],
           "refused": {"count": len(refused),
                       "by": {k: sum(p.refused_by == k for p in refused) for k in ("validate", "planner", "memory")},
                       "examples": [p.as_dict() for p in _examples(refused)]}}
    if own is not None:
        lines, ok, own_fit, _ = check_one(problem, cluster, own, 1)
        out["run_file_layout"] = {"layout": own, "fits": ok, "answer": lines[0],
                                  "best": own_fit[0].as_dict() if own_fit else None,
                                  "validate_run": verdict or "accepted"}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    cluster = Cluster(gpus_per_node=args.gpus_per_node, nodes=args.nodes, gpu_memory_gib=args.gpu_memory,
                      host_memory_gib=args.host_memory, peak_tflops=args.peak_tflops, efficiency=args.efficiency,
                      nvlink_gbs=args.nvlink_gbs, network_gbs=args.network_gbs)
    if min(cluster.gpus_per_node, cluster.nodes) < 1 or cluster.gpu_memory_gib <= 0:
        print("error: --gpus-per-node and --nodes must be >= 1 and --gpu-memory > 0.", file=sys.stderr)
        return 2
    if args.gpt3_table:
        return print_gpt3_table(args, cluster)
    try:
        problem, own, verdict = problem_from_args(args)
        if problem.seq < 1 or problem.global_batch < 1:
            raise ConfigError("--seq and --global-batch must be >= 1.")
        spec = parse_layout(args.layout) if args.layout else None
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if spec is not None:
        return print_layout_check(args, problem, cluster, spec)
    fit, refused = plan_all(problem, cluster)
    if args.json:
        print(json.dumps(plans_as_json(args, problem, cluster, fit, refused, own, verdict), indent=1))
        return 0 if fit else 1
    lines = report(problem, cluster, fit, refused, args.top, args.variants)
    if own is not None:
        lines += ["", f"the run file as it is: validate_run {'refuses it: ' + verdict if verdict else 'accepts it'}",
                  "the run file's own layout:"] + check_one(problem, cluster, own, 3)[0]
    print("\n".join(lines))
    return 0 if fit else 1


if __name__ == "__main__":
    sys.exit(main())
