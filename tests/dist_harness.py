"""Spawn a few CPU ranks over gloo and run a test function on each (no mocks: real groups)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, world_size, port, fn, args, outdir, use_deepspeed):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    if use_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(outdir) / f"{rank}.pt")
        dist.barrier()  # no rank tears its group down while a peer is still in a collective
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args, use_deepspeed: bool = False) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` processes; return each rank's result.
    An exception (a failed assert) on any rank fails the caller with that rank's traceback."""
    from megagpt.parallel.launch import free_port  # here, not at import: spawned ranks skip deepspeed

    with tempfile.TemporaryDirectory() as outdir:
        mp.spawn(_worker, args=(world_size, free_port(), fn, args, outdir, use_deepspeed),
                 nprocs=world_size, join=True)
        return [torch.load(Path(outdir) / f"{r}.pt", weights_only=False) for r in range(world_size)]
