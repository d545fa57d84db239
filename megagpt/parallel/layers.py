"""Megatron-style tensor-parallel layers.

Weights are initialised whole from the default generator and then sliced, so one seed gives the
same model at every tp_size. Sharded parameters carry ``tensor_model_parallel`` (and DeepSpeed's
``model_parallel``) plus ``partition_dim`` / ``partition_stride``, which is everything
``shard_tensor`` / ``gather_tensor`` need to move between whole and sharded weights.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from megagpt.parallel.mappings import copy_to_tp, gather_from_tp, reduce_from_tp, scatter_to_tp
from megagpt.parallel.state import ParallelState


def shard_tensor(full: torch.Tensor, dim: int, stride: int, rank: int, size: int) -> torch.Tensor:
    """This rank's part of ``full``: split into ``stride`` blocks along ``dim``, and each block
    into ``size`` pieces; rank r keeps piece r of every block (stride 3 splits a fused [q; k; v]
    so each rank gets its own heads of q, k and v)."""
    if size == 1:
        return full
    blocks = full.chunk(stride, dim=dim)
    return torch.cat([b.chunk(size, dim=dim)[rank] for b in blocks], dim=dim).contiguous()


def unshard_tensors(parts: list[torch.Tensor], dim: int, stride: int) -> torch.Tensor:
    """Inverse of ``shard_tensor`` given every rank's part, in rank order."""
    if len(parts) == 1:
        return parts[0]
    split = [p.chunk(stride, dim=dim) for p in parts]
    return torch.cat([split[r][s] for s in range(stride) for r in range(len(parts))], dim=dim)


def gather_tensor(local: torch.Tensor, ps: ParallelState, dim: int, stride: int) -> torch.Tensor:
    """All-gather the TP shards of a parameter into the whole tensor (collective)."""
    if ps.tp_size == 1:
        return local.detach().clone()
    parts = [torch.empty_like(local) for _ in range(ps.tp_size)]
    dist.all_gather(parts, local.detach().contiguous(), group=ps.tp_group)
    return unshard_tensors(parts, dim, stride)


def _mark(param: nn.Parameter, dim: int, stride: int = 1) -> None:
    param.tensor_model_parallel = True
    param.model_parallel = True  # read by DeepSpeed's global grad norm
    param.partition_dim = dim
    param.partition_stride = stride


def _init_sharded(shape, dim, stride, std, ps: ParallelState, valid_rows=None) -> torch.Tensor:
    full = torch.zeros(shape)
    # Only the first ``valid_rows`` rows are drawn (padding rows stay 0), so the draw does not
    # depend on how much padding tp_size asks for.
    nn.init.normal_(full[:valid_rows], mean=0.0, std=std)
    return shard_tensor(full, dim, stride, ps.tp_rank, ps.tp_size)


class ColumnParallelLinear(nn.Module):
    """Y = XA + b with A split along its columns: rank r computes Y_r = X A_r + b_r.

    The input is whole on every rank (gradient all-reduced in backward); the output stays split
    unless ``gather_output``.
    """

    def __init__(self, in_features: int, out_features: int, ps: ParallelState, *, bias=True,
                 gather_output=False, stride=1, init_std=0.02):
        super().__init__()
        if out_features % ps.tp_size:
            raise ValueError(f"out_features={out_features} is not divisible by tp_size={ps.tp_size}")
        self.ps, self.gather_output = ps, gather_output
        self.weight = nn.Parameter(_init_sharded((out_features, in_features), 0, stride, init_std, ps))
        _mark(self.weight, 0, stride)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features // ps.tp_size))
            _mark(self.bias, 0, stride)
        else:
            self.register_parameter("bias", None)

    def local(self, x):
        """This rank's product X A_r + b_r (int8 decoding swaps it: megagpt/inference/int8.py)."""
        return F.linear(x, self.weight, self.bias)

    def forward(self, x):
        y = self.local(copy_to_tp(x, self.ps.tp_group))
        return gather_from_tp(y, self.ps.tp_group) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """Y = XA + b with A split along its rows and X along its columns: Y = sum_r X_r A_r + b.

    The partial products are all-reduced over the TP group; b is whole and added once, after.
    """

    def __init__(self, in_features: int, out_features: int, ps: ParallelState, *, bias=True,
                 input_is_parallel=True, init_std=0.02):
        super().__init__()
        if in_features % ps.tp_size:
            raise ValueError(f"in_features={in_features} is not divisible by tp_size={ps.tp_size}")
        self.ps, self.input_is_parallel = ps, input_is_parallel
        self.weight = nn.Parameter(_init_sharded((out_features, in_features), 1, 1, init_std, ps))
        _mark(self.weight, 1)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def local(self, x):
        """This rank's partial product X_r A_r, before the all-reduce and the bias."""
        return F.linear(x, self.weight)

    def forward(self, x):
        if not self.input_is_parallel:
            x = scatter_to_tp(x, self.ps.tp_group)
        y = reduce_from_tp(self.local(x), self.ps.tp_group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """E[ids] with the table split along the vocabulary: rank r holds rows [r*V/tp, (r+1)*V/tp).

    Each rank looks up the ids it owns (zeros elsewhere) and the results are all-reduced.
    Rows from ``num_valid`` on are vocabulary padding and start at zero.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, ps: ParallelState, init_std=0.02,
                 num_valid: int | None = None):
        super().__init__()
        if num_embeddings % ps.tp_size:
            raise ValueError(f"num_embeddings={num_embeddings} is not divisible by tp_size={ps.tp_size}")
        self.ps = ps
        self.num_embeddings = num_embeddings
        per_rank = num_embeddings // ps.tp_size
        self.vocab_start = ps.tp_rank * per_rank
        self.vocab_end = self.vocab_start + per_rank
        self.weight = nn.Parameter(_init_sharded((num_embeddings, embedding_dim), 0, 1, init_std, ps,
                                                 valid_rows=num_valid))
        _mark(self.weight, 0)

    def lookup(self, local_ids):
        """Rows of this rank's table (int8 decoding swaps it: megagpt/inference/int8.py)."""
        return F.embedding(local_ids, self.weight)

    def forward(self, ids):
        if self.ps.tp_size == 1:
            return self.lookup(ids)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        out = self.lookup(local).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(out, self.ps.tp_group)
