"""Parallel layers and mappings against plain torch layers holding the gathered weights."""
import torch
import torch.nn.functional as F

from megagpt.parallel import (
    ColumnParallelLinear,
    ParallelState,
    RowParallelLinear,
    VocabParallelEmbedding,
    gather_tensor,
    shard_tensor,
)
from megagpt.parallel.layers import unshard_tensors
from tests.helpers.dist import run_distributed


def _check_layers(rank, world_size):
    ps = ParallelState.build(tp_size=world_size)
    torch.manual_seed(0)  # same seed: each rank builds its shard of the same whole weights
    col = ColumnParallelLinear(8, 12, ps, gather_output=True)
    row = RowParallelLinear(12, 6, ps, input_is_parallel=False)
    emb = VocabParallelEmbedding(16, 8, ps)
    for p in (col.weight, row.weight, emb.weight):
        assert p.tensor_model_parallel and p.model_parallel
    assert not getattr(row.bias, "tensor_model_parallel", False)  # replicated, added once
    with torch.no_grad():
        row.bias.normal_()  # identical on every rank: same default stream
        col.bias.copy_(shard_tensor(torch.arange(12.0), 0, 1, ps.tp_rank, ps.tp_size))

    Wc = gather_tensor(col.weight, ps, 0, 1)
    bc = gather_tensor(col.bias, ps, 0, 1)
    Wr = gather_tensor(row.weight, ps, 1, 1)
    E = gather_tensor(emb.weight, ps, 0, 1)

    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    ids = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(2))
    out = row(col(x)) + emb(ids).sum(-1, keepdim=True)
    x_ref = x.detach().clone().requires_grad_()
    ref = F.linear(F.linear(x_ref, Wc, bc), Wr, row.bias) + F.embedding(ids, E).sum(-1, keepdim=True)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_parallel_layers_match_dense(tmp_path):
    run_distributed(_check_layers, 2)
    run_distributed(_check_layers, 4)


def test_shard_unshard_round_trip_with_stride():
    full = torch.arange(24.0).view(12, 2)  # fused [q; k; v], 4 rows each
    parts = [shard_tensor(full, 0, 3, r, 2) for r in range(2)]
    # rank 0 holds the first half of q, of k and of v
    assert parts[0][:, 0].tolist() == [0, 2, 8, 10, 16, 18]
    torch.testing.assert_close(unshard_tensors(parts, 0, 3), full)
