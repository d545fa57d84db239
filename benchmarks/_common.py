"""Shared bits for the benchmarks: timing and a measured CPU matmul peak for MFU on CPU."""
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


def cpu_matmul_peak_flops(n: int = 1024, dtype=torch.float32, iters: int = 10) -> float:
    """Achieved FLOP/s of a square matmul: the practical peak this CPU reaches."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = median(timed(lambda: a @ b, warmup=3, iters=iters))
    return 2 * n ** 3 / t
