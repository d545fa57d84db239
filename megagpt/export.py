"""Export weights: a training checkpoint, an export or a Hugging Face GPT-2 directory, written as
a megagpt safetensors export and/or a Hugging Face directory.

    python megagpt/export.py --model checkpoints/run --out model.safetensors --tokenizer tok.model
    python megagpt/export.py --model model.safetensors --hf-dir gpt2-mine/      # transformers-ready
    python megagpt/export.py --from-hf gpt2-local/ --out gpt2.safetensors       # then train.init_from
    deepspeed --num_gpus 8 megagpt/export.py --config run.yaml --out model.safetensors   # via the engine
    python megagpt/export.py --model checkpoints/run --universal ckpt_universal/  # any layout resumes it

``--universal`` writes the layout-free training checkpoint (``megagpt.formats.universal``: fp32
weights and both Adam moments one file per tensor, step, schedule and data position) that
``train.resume_from`` continues in any tp/pp/dp and ZeRO stage.

``--model`` reads a checkpoint offline, whatever tp/pp/dp it was saved with (one process, no
launcher); ``--config`` instead rebuilds the training engine (same world size as training) and
gathers the live ZeRO partitions, TP shards and pipeline stages. A Hugging Face directory holds
``config.json``, ``model.safetensors``, ``generation_config.json`` and the tokenizer converted so
that ``AutoTokenizer`` encodes as sentencepiece does; only GPT-2-architecture models (pre-LN,
dense attention) can be expressed as ``GPT2LMHeadModel``.
"""
import argparse
import sys

from megagpt.config import ConfigError, load_run_config
from megagpt.train.setup import setup_run


def _from_engine(args) -> int:
    from megagpt.formats.manifest import latest_tag
    from megagpt.parallel.launch import close_distributed, init_distributed, launch_world_size
    from megagpt.train import engine_checkpoint
    from megagpt.train.consolidate import export
    from megagpt.train.engine import build_engine

    try:
        run = setup_run(load_run_config(args.config, args.overrides), launch_world_size())
        if not run.train.checkpoint_dir or latest_tag(run.train.checkpoint_dir) is None:
            raise ConfigError(f"train.checkpoint_dir={run.train.checkpoint_dir!r} holds no complete "
                              f"checkpoint (no 'latest' file).")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    init_distributed()
    built = build_engine(run, total_tokens=1)
    state = engine_checkpoint.load(built.engine, run.train.checkpoint_dir, built.ps)
    export(built, run.model, args.out, tokenizer=args.tokenizer or run.data.tokenizer, step=state["step"])
    if built.ps.rank == 0:
        print(f"exported step {state['step']} of {run.train.checkpoint_dir} to {args.out}", flush=True)
    close_distributed()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export megagpt weights (safetensors, Hugging Face GPT-2).")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a checkpoint directory, an exported *.safetensors or an HF directory")
    src.add_argument("--from-hf", help="a local Hugging Face GPT-2 directory (same as --model DIR)")
    src.add_argument("--config", help="the run file: rebuild the training engine and gather from it")
    ap.add_argument("--tag", help="checkpoint tag (default: 'latest')")
    ap.add_argument("--tokenizer", help="sentencepiece .model to record / convert (default: the source's)")
    ap.add_argument("--out", help="write a megagpt export (*.safetensors + .json)")
    ap.add_argument("--hf-dir", help="write a Hugging Face GPT-2 directory")
    ap.add_argument("--universal", help="write a layout-free training checkpoint (weights, optimizer, step) "
                                        "from a checkpoint directory (--model)")
    ap.add_argument("overrides", nargs="*", help="run-file overrides (with --config)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.universal:
        if not args.model or args.out or args.hf_dir:
            ap.error("--universal takes --model CHECKPOINT_DIR and no other output")
        from megagpt.formats.universal import write_universal

        try:
            out = write_universal(args.model, args.tag, args.universal)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote universal checkpoint {out}", flush=True)
        return 0
    if not (args.out or args.hf_dir):
        ap.error("give --out and/or --hf-dir (or --universal)")
    if args.config:
        if args.hf_dir:
            ap.error("--hf-dir reads a checkpoint offline: use --model CHECKPOINT_DIR instead of --config")
        return _from_engine(args)

    from pathlib import Path

    from megagpt.data.tokenizer import tokenizer_file
    from megagpt.formats import read_weights
    from megagpt.formats.weights import save_export

    source = args.model or args.from_hf
    try:
        cfg, full, meta = read_weights(source, tag=args.tag)
        tokenizer = args.tokenizer or meta.get("tokenizer")
        if tokenizer:
            tokenizer_file(tokenizer)
        full = {k: full[k] for k in full}  # read each tensor once for both outputs
        if args.hf_dir:
            from megagpt.formats.hf import write_hf_dir

            write_hf_dir(full, cfg, args.hf_dir, tokenizer_model=tokenizer)
            print(f"wrote Hugging Face GPT-2 directory {args.hf_dir}", flush=True)
        if args.out:
            save_export(full, cfg, args.out, tokenizer=tokenizer, step=meta.get("step"))
            print(f"wrote {args.out} and {Path(args.out).with_suffix('.json').name}", flush=True)
    except (ValueError, OSError) as e:  # WeightsError and ConfigError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
