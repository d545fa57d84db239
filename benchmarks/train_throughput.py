"""Pretraining throughput through the DeepSpeed engine vs a plain torch loop over Hugging Face
GPT-2, and model-state memory per rank with and without ZeRO-3 at dp=2. CPU by default.

    python benchmarks/train_throughput.py [--steps 6 --n-layer 6 --n-embd 384 --seq 256 --batch 8]
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import add_shape_args, median  # noqa: E402


def _run_config(args, precision: str, stage: int):
    from megagpt.config import (DataConfig, ParallelConfig, RunConfig, TrainConfig, load_file,
                                model_config)

    ds = load_file(ROOT / "ds_configs" / "zero3.json")
    ds["train_micro_batch_size_per_gpu"] = args.batch
    ds["bf16"] = {"enabled": precision == "bf16"}
    ds["zero_optimization"]["stage"] = stage
    # buckets sized to this small model (the shipped 50M-element buckets would dwarf it)
    ds["zero_optimization"].update(reduce_bucket_size=2_000_000, stage3_prefetch_bucket_size=2_000_000)
    model = model_config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                         n_positions=args.seq, vocab_size=args.vocab)
    return RunConfig(model=model, parallel=ParallelConfig(), data=DataConfig(prefixes=["unused"]),
                     train=TrainConfig(train_iters=args.steps, checkpoint_dir=None, tensorboard_dir=None),
                     deepspeed=ds)


def _live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive in this process (params, grads, optimizer
    states, ZeRO partitions and buffers)."""
    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                st = obj.untyped_storage()
                if st.data_ptr() and st.data_ptr() not in seen:
                    seen.add(st.data_ptr())
                    total += st.nbytes()
        except Exception:
            continue
    return total


def _megagpt_steps(args, precision, stage=3):
    from megagpt.train.engine import build_engine

    run = _run_config(args, precision, stage)
    built = build_engine(run, total_tokens=10 ** 9)
    eng = built.engine
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps + 1):
        x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
        y = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
        eng.lr_scheduler.pending_tokens = args.batch * args.seq
        t0 = time.perf_counter()
        loss = eng(x, y).mean()
        eng.backward(loss)
        eng.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    del loss
    gc.collect()
    return times, _live_tensor_bytes(), run.model


def _hf_steps(args, precision):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                       n_positions=args.seq, vocab_size=args.vocab)).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=6e-4, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps + 1):
        x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def _memory_worker(rank, world_size, args, stage):
    times, live, _ = _megagpt_steps(args, "fp32", stage)
    return live


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(ap, steps_flag="--steps", steps_default=5)
    ap.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29611"))
    import logging

    import deepspeed
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    from megagpt.model.flops import model_flops_per_token
    from megagpt.train.metrics import measured_cpu_peak

    tokens = args.batch * args.seq
    rows = []
    for precision in ([] if args.memory_only else args.precisions.split(",")):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        peak = measured_cpu_peak(dtype, seconds=1.0)
        ours, _, cfg = _megagpt_steps(args, precision)
        hf = _hf_steps(args, precision)
        flops = model_flops_per_token(cfg, args.seq) * tokens
        for name, ts in ((f"megagpt+DeepSpeed ZeRO-3 {precision}", ours), (f"HF GPT-2 + AdamW {precision}", hf)):
            t = median(ts)
            rows.append((name, t, tokens / t, flops / t / 1e12, flops / t / peak))
    if rows:
        print(f"shape: {args.n_layer} layers, n_embd {args.n_embd}, ctx {args.seq}, vocab {args.vocab}, "
              f"batch {args.batch}, threads {args.threads}, {args.steps} timed steps (median)")
        print(f"{'run':<36} {'step s':>7} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6}")
    for name, t, tps, tf, mfu in rows:
        print(f"{name:<36} {t:7.2f} {tps:9.0f} {tf:8.4f} {mfu:6.1%}")

    if not args.skip_memory:
        from dist_harness import run_distributed

        mem = {}
        for stage in (0, 3):
            mem[stage] = run_distributed(_memory_worker, 2, args, stage, use_deepspeed=True)
        print("live tensor memory per rank after one step at dp=2 (params, grads, optimizer states):")
        for stage, label in ((0, "no ZeRO (stage 0)"), (3, "ZeRO-3")):
            print(f"  {label:<18} " + "  ".join(f"rank {r}: {b / 2 ** 20:8.1f} MiB" for r, b in enumerate(mem[stage])))
        print(f"  ZeRO-3 / no ZeRO: {mem[3][0] / mem[0][0]:.2f}x")


if __name__ == "__main__":
    main()
