"""TP-aware RNG: replicated activations get one dropout mask, split ones get one per rank."""
import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from megagpt.parallel import ParallelState
from tests.helpers.dist import run_distributed


def _masks(rank, world_size):
    ps = ParallelState.build(tp_size=world_size)
    ps.seed(42)
    ones = torch.ones(1000)
    replicated = torch.nn.functional.dropout(ones, 0.5)
    with ps.rng.fork():
        split = torch.nn.functional.dropout(ones, 0.5)
    gathered = [torch.empty_like(ones) for _ in range(world_size)]
    dist.all_gather(gathered, replicated)
    assert all(torch.equal(g, gathered[0]) for g in gathered)
    dist.all_gather(gathered, split)
    assert not torch.equal(gathered[0], gathered[1])


def test_dropout_streams_across_tp_ranks():
    run_distributed(_masks, 2)


def test_checkpoint_recompute_replays_forked_stream():
    ps = ParallelState.single()
    ps.rng.seed(3)

    def f(x):
        with ps.rng.fork():
            return torch.nn.functional.dropout(x, 0.5) * 2

    x = torch.ones(256, requires_grad=True)
    y = checkpoint(f, x, use_reentrant=False, context_fn=ps.rng.checkpoint_contexts)
    y.sum().backward()
    # the recomputed mask equals the forward one: gradient is nonzero exactly where y is
    assert torch.equal(x.grad != 0, y.detach() != 0)
    # and the stream moved on: the next draw is a fresh mask
    with ps.rng.fork():
        nxt = torch.nn.functional.dropout(torch.ones(256), 0.5)
    assert not torch.equal(nxt != 0, y.detach() != 0)
