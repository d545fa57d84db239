"""Spawn a few CPU ranks over gloo and run a test function on each (no mocks: real groups)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, world_size, port, fn, args, outdir, use_deepspeed, environ):
    os.environ.clear()  # the caller's environment now, not the fork server's from its start
    os.environ.update(environ)
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


# what the ranks' code imports (torch, deepspeed and the rest come with these two): the fork server
# imports them when the first distributed test starts it
PRELOAD = ["megagpt.train.loop", "megagpt.inference"]


def run_distributed(fn, world_size: int, *args, use_deepspeed: bool = False, start_method: str = "forkserver") -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` processes; return each rank's result.
    An exception (a failed assert) on any rank fails the caller with that rank's traceback.

    The ranks fork from one server process that imported torch, deepspeed and megagpt once per
    session (instead of each rank importing them afresh: seconds per rank, minutes per suite) and
    get the caller's environment. Their stdout and stderr are the server's, from its start: a test
    that reads the ranks' output with ``capfd`` passes ``start_method="spawn"``."""
    from megagpt.parallel.launch import free_port  # here, not at import: spawned ranks skip deepspeed

    if start_method == "forkserver":
        mp.set_forkserver_preload(PRELOAD)  # no effect once the server runs: it is set before the first start
    with tempfile.TemporaryDirectory() as outdir:
        mp.start_processes(_worker, args=(world_size, free_port(), fn, args, outdir, use_deepspeed, dict(os.environ)),
                           nprocs=world_size, join=True, start_method=start_method)
        return [torch.load(Path(outdir) / f"{r}.pt", weights_only=False) for r in range(world_size)]
