"""Shared bits for the benchmarks: timing, median, and the model shape arguments."""
from __future__ import annotations

import time

import torch


def timed(fn, *, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def add_shape_args(ap, *, steps_flag: str, steps_default: int) -> None:
    """The GPT-2-small-like shape both benchmarks measure, and how many timed steps."""
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument(steps_flag, type=int, default=steps_default)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
