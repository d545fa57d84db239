"""Fine-tune a pretrained GPT on a labelled task, GPT-1 style (megagpt/finetuning).

    python megagpt/finetune.py --config configs/finetune_demo.yaml
    deepspeed --num_gpus 8 megagpt/finetune.py --config ft.yaml parallel.tp_size=2 finetune.lm_coef=0
    mpirun -np 2 python megagpt/finetune.py --config ft.yaml
    python megagpt/finetune.py --config ft.yaml --predict --split test --output preds.jsonl

The run file has the pretraining sections (``parallel``, ``train``; ``model`` only for keys to
change, e.g. dropout: the architecture comes from ``train.init_from``) plus ``finetune``
(task file, lm_coef, epochs, ...). Overrides are dotted keys, as for pretraining.
"""
import argparse
import sys
from dataclasses import replace

from megagpt.config import ConfigError, load_run_config
from megagpt.train.setup import setup_run


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Fine-tune a GPT on a labelled task (GPT-1's second stage).")
    ap.add_argument("--config", required=True, help="run YAML (parallel, train, finetune; model keys to change)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. finetune.lm_coef=0")
    ap.add_argument("--predict", action="store_true", help="answer a split with the best fine-tuned model")
    ap.add_argument("--model", help="--predict: a fine-tuned model directory (default: finetune.best_dir)")
    ap.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ap.add_argument("--output", help="--predict: write one JSON line per example")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def load_finetune_run(path, overrides, world_size: int):
    from megagpt.finetuning.trainer import model_config_for

    run = load_run_config(path, overrides)
    if run.finetune is None:
        raise ConfigError(f"{path}: a fine-tuning run file needs a 'finetune' section (finetune.task_file at least).")
    run.finetune.validate()
    cfg, meta = model_config_for(run)
    return setup_run(replace(run, model=cfg), world_size), meta


def main(argv=None) -> int:
    args = parse_args(argv)
    from megagpt.finetuning.data import FinetuneDataError
    from megagpt.inference import WeightsError
    from megagpt.parallel.launch import close_distributed, init_distributed, launch_world_size, quiet_deepspeed

    quiet_deepspeed()

    try:
        if args.predict:  # the fine-tuned model carries its own config: no pretrained weights needed
            run = load_run_config(args.config, args.overrides)
            if run.finetune is None:
                raise ConfigError(f"{args.config}: a fine-tuning run file needs a 'finetune' section.")
            run.finetune.validate()
            from pathlib import Path

            from megagpt.finetuning.trainer import predict

            best = args.model or run.finetune.best_dir or str(Path(run.train.checkpoint_dir or ".") / "best")
            rows, metrics = predict(best, run.finetune.task_file, args.split, args.output)
            print(f"predicted {len(rows)} {args.split} examples with {best}"
                  + (f" -> {args.output}" if args.output else "")
                  + "".join(f" | {k} {v:.4f}" for k, v in metrics.items()), flush=True)
            return 0
        run, meta = load_finetune_run(args.config, args.overrides, launch_world_size())
    except (ConfigError, FinetuneDataError, WeightsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    init_distributed()
    import torch.distributed as dist

    from megagpt.formats.manifest import CheckpointError
    from megagpt.train.engine_checkpoint import SaveError

    try:
        from megagpt.finetuning.trainer import FinetuneTrainer

        trainer = FinetuneTrainer(run, weights_meta=meta)
        losses = trainer.train()
        if dist.get_rank() == 0 and losses:
            print(f"done: {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; best "
                  f"{trainer.best if trainer.best is not None else float('nan'):.4f} in {trainer.best_dir}", flush=True)
        dist.barrier()  # no rank tears the group down while a peer is still in a collective
        return 0
    except (ConfigError, FinetuneDataError, CheckpointError, SaveError) as e:
        if dist.get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        close_distributed()


if __name__ == "__main__":
    sys.exit(main())
