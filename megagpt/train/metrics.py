"""Training metrics: TensorBoard scalars, one console line per interval, MFU.

Peak FLOP/s come from a table of known accelerators (dense bf16/fp16 tensor-core figures from
the vendors' data sheets); on a CPU a short matmul is timed instead and that is the "peak".
"""
from __future__ import annotations

import math
import resource
import sys
import time

import torch
import torch.distributed as dist

# dense (no sparsity) peak TFLOP/s for bf16/fp16 matmul, by a substring of the device name
GPU_PEAK_TFLOPS = [
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("A6000", 154.8), ("L40S", 362.0), ("L40", 181.0),
    ("A40", 149.7), ("L4", 121.0), ("A10", 125.0), ("V100", 125.0), ("T4", 65.0),
    ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("MI300X", 1307.0), ("MI250X", 383.0),
]


def measured_cpu_peak(dtype=torch.float32, n: int = 512, seconds: float = 0.3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def device_peak_flops(dtype=torch.float32) -> tuple[float, str]:
    """(peak FLOP/s of one device for ``dtype`` matmuls, where the figure came from)."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tflops in GPU_PEAK_TFLOPS:
            if key in name:
                # fp32 without TF32 runs far below the tensor-core figure; count TF32 as half
                scale = 1.0 if dtype in (torch.bfloat16, torch.float16) else 0.5
                return tflops * 1e12 * scale, f"table: {name}"
        return float("nan"), f"unknown GPU {name}"
    return measured_cpu_peak(dtype), "measured CPU matmul"


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class MetricsWriter:
    """Writes scalars to TensorBoard and a console line; a no-op on ranks that do not log."""

    def __init__(self, logdir: str | None, enabled: bool):
        self.enabled = enabled
        self.tb = None
        if enabled and logdir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(logdir)

    @classmethod
    def for_run(cls, run) -> MetricsWriter:
        """A training run's writer: TensorBoard in ``train.tensorboard_run``, the console, both on
        rank 0 only; the choices the run's setup made (``run.notes``) come first."""
        metrics = cls(run.train.tensorboard_run, dist.get_rank() == 0)
        for note in run.notes:
            metrics.console(note)
        return metrics

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for key, value in values.items():
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    self.tb.add_scalar(key, value, step)

    def console(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True, file=sys.stdout)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def format_line(step: int, total: int, m: dict[str, float]) -> str:
    parts = [f"step {step:>6}/{total}", f"loss {m['train/loss']:.4f}", f"ppl {m['train/ppl']:.2f}",
             f"lr {m['train/lr']:.3e}"]
    if m.get("train/grad_norm") is not None:
        parts.append(f"gnorm {m['train/grad_norm']:.3f}")
    if "train/loss_scale" in m:
        parts.append(f"scale {m['train/loss_scale']:.0f}")
    parts += [f"tok/s {m['perf/tokens_per_sec']:.0f}", f"TFLOP/s/dev {m['perf/tflops_per_device']:.3f}",
              f"MFU {m['perf/mfu']:.1%}", f"{m['perf/step_time'] * 1e3:.0f} ms/step",
              f"mem {m['perf/peak_memory_gb']:.2f} GB"]
    return " | ".join(parts)
