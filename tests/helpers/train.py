"""Run pretraining in spawned ranks through the real Trainer and DeepSpeed engines."""
from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from megagpt.config import load_run_config
from megagpt.train.setup import setup_run

RUN_YAML = Path(__file__).parent / "run_tiny.yaml"


def no_dropout():
    return ["model.embd_pdrop=0.0", "model.attn_pdrop=0.0", "model.resid_pdrop=0.0"]


def train_worker(rank, world_size, overrides):
    from megagpt.eval.in_training import pretraining_hooks
    from megagpt.train.loop import Trainer

    run = setup_run(load_run_config(RUN_YAML, overrides), world_size)
    trainer = Trainer(run, eval_hooks=pretraining_hooks(run))
    losses = trainer.train()
    dist.barrier()
    return losses


def layout_overrides(layout, tp, pp, micro, gas, tmp: Path, tag: str):
    ds = "ds_configs/3d.json" if layout == "3d" else "ds_configs/zero3.json"
    return [f"parallel.layout={layout}", f"parallel.tp_size={tp}", f"parallel.pp_size={pp}",
            f"train.deepspeed_config={Path(__file__).parents[2] / ds}",
            f"deepspeed.train_micro_batch_size_per_gpu={micro}",
            f"deepspeed.gradient_accumulation_steps={gas}",
            f"train.checkpoint_dir={tmp / tag / 'ckpt'}", f"train.tensorboard_dir={tmp / tag / 'tb'}"]
