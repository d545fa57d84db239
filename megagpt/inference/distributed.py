"""Process groups for inference entry points (generation, evaluation): a world of one under plain
``python``, tensor-parallel groups of ``tp`` ranks and data-parallel groups across them under a
launcher, and the gather that puts each DP group's share of the work back together."""
from __future__ import annotations

import torch
import torch.distributed as dist


def setup_parallel(tp: int | None):
    """(ParallelState or None, device). ``tp`` defaults to the whole world."""
    from megagpt.parallel.launch import init_distributed, launch_world_size

    world = launch_world_size()
    if world == 1 and (tp or 1) == 1:
        return None, torch.device("cpu")
    from megagpt.parallel.state import ParallelState

    if world % (tp or world):
        raise ValueError(f"--tp {tp} does not divide the world size {world}.")
    init_distributed()
    ps = ParallelState.build(tp_size=tp or dist.get_world_size())
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return ps, device


def dp_share(n: int, ps) -> list[int]:
    """The indices of ``n`` work items this rank's data-parallel group handles (round robin)."""
    dp_rank, dp_size = (ps.dp_rank, ps.dp_size) if ps is not None else (0, 1)
    return list(range(dp_rank, n, dp_size))


def gather_dp(local: dict, ps) -> dict:
    """Every DP group's ``{index: result}`` merged, on every rank."""
    if ps is None or ps.dp_size == 1:
        return local
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


def finish(ps) -> None:
    """Wait for every rank, then tear the group down (see ``close_distributed``)."""
    if ps is not None:
        from megagpt.parallel.launch import close_distributed

        dist.barrier()
        close_distributed()
