"""Pretrain a GPT.

    deepspeed --hostfile hostfiles/cluster megagpt/pretrain.py --config run.yaml [key=value ...]
    mpirun -np 4 python megagpt/pretrain.py --config run.yaml
    python megagpt/pretrain.py --config run.yaml train.train_iters=20

Overrides are dotted keys of the run file (``model.n_layer=4``, ``parallel.tp_size=2``) or of the
DeepSpeed JSON it names (``deepspeed.bf16.enabled=true``).
"""
import argparse
import sys

from megagpt.config import ConfigError, load_run_config
from megagpt.train.setup import setup_run


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Pretrain a GPT with DeepSpeed (layouts zero3 / 3d).")
    ap.add_argument("--config", required=True, help="run YAML (model, parallel, data, train)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.train_iters=50")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megagpt.eval.in_training import check_tasks
    from megagpt.parallel.launch import close_distributed, init_distributed, launch_world_size, quiet_deepspeed

    quiet_deepspeed()

    try:
        run = setup_run(load_run_config(args.config, args.overrides), launch_world_size())
        if run.train.eval_tasks:
            check_tasks(run.train.eval_tasks, run.data.tokenizer, run.model.n_positions, args.config)
    except ConfigError as e:  # before any process group: one sentence, non-zero exit
        print(f"error: {e}", file=sys.stderr)
        return 2
    init_distributed(run.train.collective_timeout_s)
    import torch.distributed as dist

    from megagpt.data.indexed import ShardError
    from megagpt.eval.in_training import pretraining_hooks
    from megagpt.formats.manifest import CheckpointError
    from megagpt.train.engine_checkpoint import SaveError
    from megagpt.train.loop import GuardError, Trainer

    try:
        trainer = Trainer(run, eval_hooks=pretraining_hooks(run))
        losses = trainer.train()
        if trainer.is_logger and losses:
            print(f"done: {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
        dist.barrier()  # no rank tears the group down while a peer is still in a collective
        return 0
    except (ConfigError, ShardError, CheckpointError, SaveError, GuardError) as e:
        # errors the user can fix (shards, mixture, checkpoint, a save on a full disk), seen by
        # every rank alike: rank 0 says it once, the others exit quietly
        if dist.get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        close_distributed()


if __name__ == "__main__":
    sys.exit(main())
