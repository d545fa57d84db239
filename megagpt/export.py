"""Consolidate a training checkpoint into one fp32 state dict (for inference and export).

    python megagpt/export.py --config run.yaml --out model.pt [overrides ...]
    deepspeed --num_gpus 8 megagpt/export.py --config run.yaml --out model.pt    # same layout as training

Run it with the run file (and world size) the checkpoint was written with: it builds the same
engine, loads ``train.checkpoint_dir``'s latest complete checkpoint, gathers ZeRO partitions, TP
shards and pipeline stages, and writes ``{'config', 'state_dict'}`` atomically. The result loads
with ``megagpt.train.export.load_exported`` and converts to Hugging Face GPT-2 with
``megagpt.model.convert.full_to_hf_gpt2``.
"""
import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from megagpt._entry import fix_path

    fix_path(__file__)

from megagpt.config import ConfigError, load_run_config, validate_run  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Consolidate a megagpt checkpoint into fp32 weights.")
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from megagpt.train import checkpoint
    from megagpt.train.engine import build_engine, init_distributed, launch_world_size
    from megagpt.train.export import export

    try:
        run = validate_run(load_run_config(args.config, args.overrides), launch_world_size())
        if not run.train.checkpoint_dir or checkpoint.latest_tag(run.train.checkpoint_dir) is None:
            raise ConfigError(f"train.checkpoint_dir={run.train.checkpoint_dir!r} holds no complete "
                              f"checkpoint (no 'latest' file).")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    init_distributed()
    built = build_engine(run, total_tokens=1)
    state = checkpoint.load(built.engine, run.train.checkpoint_dir, built.ps)
    export(built, run.model, args.out)
    if built.ps.rank == 0:
        print(f"exported step {state['step']} of {run.train.checkpoint_dir} to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
