"""Forward+backward throughput of the tp=1 megagpt model vs Hugging Face GPT2LMHeadModel of the
same shape, in the same run, on CPU.

    python -m benchmarks.model_throughput [--n-layer 6 --n-embd 384 --n-head 6 --seq 256 --batch 8]
"""
from __future__ import annotations

import argparse

import torch

from benchmarks._common import add_shape_args, median, same_weights_models, timed
from megagpt.model import model_flops_per_token
from megagpt.train.metrics import measured_cpu_peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(ap, steps_flag="--iters", steps_default=8)
    ap.add_argument("--rounds", type=int, default=2, help="alternate the two models this often")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    hf, ours = same_weights_models(args, args.seq)
    hf.train(), ours.train()
    cfg = ours.cfg

    idx = torch.randint(0, args.vocab, (args.batch, args.seq))
    tgt = torch.randint(0, args.vocab, (args.batch, args.seq))

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours.token_losses(ours(idx), tgt).mean().backward()

    def step_hf():
        hf.zero_grad(set_to_none=True)
        # same targets as ours: HF shifts labels itself, so give it [_, tgt] shifted by one
        labels = torch.cat([idx[:, :1], tgt[:, :-1]], dim=1)
        hf(idx, labels=labels).loss.backward()

    times = {"megagpt": [], "hf-gpt2": []}
    for _ in range(args.rounds):
        times["megagpt"] += timed(step_ours, warmup=1, iters=args.iters)
        times["hf-gpt2"] += timed(step_hf, warmup=1, iters=args.iters)

    tokens = args.batch * args.seq
    flops = model_flops_per_token(cfg, args.seq) * tokens
    peak = measured_cpu_peak(n=1024, seconds=1.0)
    print(f"shape: {args.n_layer} layers, n_embd {args.n_embd}, {args.n_head} heads, ctx {args.seq}, "
          f"vocab {args.vocab}, batch {args.batch}, threads {args.threads}")
    print(f"model FLOPs per step (fwd+bwd): {flops / 1e9:.1f} GFLOP; measured fp32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s")
    print(f"{'model':<10} {'step ms':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>6}")
    for name, ts in times.items():
        t = median(ts)
        print(f"{name:<10} {t * 1e3:9.1f} {tokens / t:10.0f} {flops / t / 1e9:9.1f} {flops / t / peak:6.1%}")
    speedup = median(times["hf-gpt2"]) / median(times["megagpt"])
    print(f"megagpt / hf-gpt2 speed: {speedup:.2f}x")


if __name__ == "__main__":
    main()
