"""Fine-tuning throughput (input tokens/s, one process): megagpt's fine-tuning step through the
DeepSpeed engine (ZeRO stage 3 as shipped, and stage 0) next to a plain torch loop (torch AdamW
with the same hyperparameters, clipping 1.0) on the same model, the same weights and the same
batches. Dropout is off everywhere so the three do the same arithmetic; the losses are printed to
show it.

    python -m benchmarks.finetune_throughput                # the demo model and newsgroups task
    python -m benchmarks.finetune_throughput --steps 10 --micro 8 --max-length 128
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks._common import median

ROOT = Path(__file__).resolve().parents[1]


def _run(args, stage: int, tmp: Path):
    from megagpt.finetune import load_finetune_run

    over = [f"train.init_from={args.model}", f"finetune.task_file={args.task}", "finetune.lm_coef=0.5",
            f"finetune.max_length={args.max_length}", "finetune.clf_pdrop=0.0", "model.embd_pdrop=0.0",
            "model.attn_pdrop=0.0", "model.resid_pdrop=0.0", f"deepspeed.train_micro_batch_size_per_gpu={args.micro}",
            "deepspeed.gradient_accumulation_steps=1", f"deepspeed.zero_optimization.stage={stage}",
            f"train.checkpoint_dir={tmp / f'ckpt{stage}'}", f"train.tensorboard_dir={tmp / f'tb{stage}'}",
            "train.eval_interval=100000", "train.log_interval=100000"]
    return load_finetune_run(ROOT / "configs" / "finetune_demo.yaml", over, 1)


def engine_steps(args, stage: int, tmp: Path):
    from megagpt.finetuning.trainer import FinetuneTrainer

    run, meta = _run(args, stage, tmp)
    tr = FinetuneTrainer(run, weights_meta=meta)
    times, losses, tokens = [], [], []
    for _ in range(args.steps + 1):
        t0 = time.perf_counter()
        loss, _, _, n = tr.train_step()
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        tokens.append(n)
    return times[1:], losses, tokens[1:], tr


def plain_steps(args, tr):
    """The same model, weights and batches as ``tr``'s first steps, in a plain loop."""
    import megagpt
    from megagpt.finetuning.data import collate, epoch_order
    from megagpt.finetuning.model import FinetuneGPT

    gpt, _ = megagpt.load(args.model)
    gpt = replace_dropout(gpt)
    torch.manual_seed(tr.run.train.seed)
    model = FinetuneGPT(gpt, tr.task.type, tr.task.n_outputs, clf_pdrop=0.0, regression=tr.task.regression,
                        init_seed=tr.run.train.seed).train().requires_grad_(True)
    p = tr.run.deepspeed["optimizer"]["params"]
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=p["lr"],
                            betas=tuple(p["betas"]), eps=p["eps"], weight_decay=p["weight_decay"])
    order = epoch_order(len(tr.encoded["train"]), tr.run.train.seed, 0)
    times, losses, tokens = [], [], []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        rows = [tr.encoded["train"][i] for i in order[step * args.micro:(step + 1) * args.micro]]
        batch = collate(rows, tr.tok.eod_id, tr.task.regression)
        loss = model(**batch, lm_coef=0.5)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
        tokens.append(int((batch["lm_targets"] != -100).sum()))
    return times[1:], losses, tokens[1:]


def replace_dropout(gpt):
    for m in gpt.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return gpt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "demo/run/model.safetensors"))
    ap.add_argument("--task", default=str(ROOT / "demo/finetune/newsgroups.jsonl"))
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after one warm-up step)")
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    for path in (args.model, args.task):
        if not Path(path).is_file():
            raise SystemExit(f"error: {path}: not found (run scripts/demo.sh first, or pass --model/--task).")
    torch.set_num_threads(args.threads)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29631"))
    import tempfile

    import deepspeed
    from deepspeed.utils import logger

    logger.setLevel("WARNING")
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    tmp = Path(tempfile.mkdtemp(prefix="ft_bench_"))
    rows = []
    trainers = {}
    for stage in (3, 0):
        t, losses, tokens, tr = engine_steps(args, stage, tmp)
        trainers[stage] = tr
        rows.append((f"DeepSpeed engine, ZeRO stage {stage}", median(t), sum(tokens) / sum(t), losses[:3]))
    t, losses, tokens = plain_steps(args, trainers[0])
    rows.append(("plain torch loop (AdamW, clip 1.0)", median(t), sum(tokens) / sum(t), losses[:3]))
    cfg = trainers[0].run.model
    print(f"model {cfg.n_layer} x {cfg.n_embd}, vocab {cfg.vocab_size}; task {trainers[0].task.name}; micro-batch "
          f"{args.micro} x {args.max_length} tokens max; {args.threads} threads; median of {args.steps} steps")
    base = rows[-1][2]
    print(f"{'path':<36} {'step s':>7} {'tokens/s':>9} {'vs plain':>8}  first losses")
    for name, step, tps, first in rows:
        print(f"{name:<36} {step:>7.3f} {tps:>9.0f} {tps / base:>7.2f}x  " + " ".join(f"{x:.4f}" for x in first))


if __name__ == "__main__":
    main()
