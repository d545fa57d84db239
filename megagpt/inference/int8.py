"""Int8 decoding on CPU.

``quantize_int8(model)`` turns a loaded inference GPT into one whose every linear layer and tied
output head holds int8 weights with one fp32 scale per output row (symmetric, absmax / 127), run
as PyTorch's FBGEMM dynamically quantized matmul: activations are quantized per call, per tensor,
and the int32 products are rescaled to fp32. Layer norms, attention and the key/value cache stay
fp32. A decode step reads a quarter of the weight bytes, which is what batch-1 decoding is bound by.

The kernel is PyTorch's own (``torch.ops.quantized.linear_dynamic``; FBGEMM on x86, QNNPACK on
ARM). torchao's int8 configs were measured slower than fp32 on this project's CPU (a 384 x 50257
head at batch 1: 20.7 ms weight-only, 1.22 ms dynamic, against 1.58 ms fp32 and 0.54 ms here), so
what is written here is only the glue torchao would have given: per-row scales, the swap of
megagpt's tensor-parallel layers (each rank quantizes its own shard, so tensor parallelism works
unchanged) and the tied head, whose table the embedding lookup shares.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from megagpt.model.gpt import GPT, LMHead
from megagpt.parallel.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from megagpt.parallel.mappings import copy_to_tp, gather_from_tp, reduce_from_tp, scatter_to_tp


def _rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q int8 (out, in), scale fp32 (out,)) with weight ~= q * scale."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def _pack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    zero = torch.zeros(q.size(0), dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.13 deprecates creating quantized tensors (in favour of torchao); the packed
        # FBGEMM kernel below still needs one, once, at load time
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())


def _matmul(x: torch.Tensor, packed) -> torch.Tensor:
    # reduce_range: 7-bit activations, so the int16 pair sums of AVX2 kernels cannot saturate
    return torch.ops.quantized.linear_dynamic(x.float(), packed, True)


class Int8Linear(nn.Module):
    """A ``ColumnParallelLinear`` or ``RowParallelLinear`` with this rank's shard in int8; the
    tensor-parallel communication around the matmul is the layer's own."""

    def __init__(self, layer: ColumnParallelLinear | RowParallelLinear):
        super().__init__()
        self.ps = layer.ps
        self.row = isinstance(layer, RowParallelLinear)
        self.input_is_parallel = getattr(layer, "input_is_parallel", True)
        self.gather_output = getattr(layer, "gather_output", False)
        self.out_features, self.in_features = layer.weight.shape
        q, scale = _rows_int8(layer.weight)
        # a row-parallel layer adds its whole bias once, after the all-reduce
        self._packed = _pack(q, scale, None if self.row else layer.bias)
        self.bias = nn.Parameter(layer.bias.detach().float(), requires_grad=False) \
            if self.row and layer.bias is not None else None

    def forward(self, x):
        if self.row:
            if not self.input_is_parallel:
                x = scatter_to_tp(x, self.ps.tp_group)
            y = reduce_from_tp(_matmul(x, self._packed), self.ps.tp_group)
            return y + self.bias if self.bias is not None else y
        y = _matmul(copy_to_tp(x, self.ps.tp_group), self._packed)
        return gather_from_tp(y, self.ps.tp_group) if self.gather_output else y

    def extra_repr(self) -> str:
        kind = "row" if self.row else "column"
        return f"{self.in_features} -> {self.out_features} (this rank), int8, {kind}-parallel"


class Int8Embedding(nn.Module):
    """The vocabulary-parallel token table in int8 (per-row scales), shared by the lookup (rows
    dequantized on the fly) and the tied head (``packed``, valid rows only)."""

    def __init__(self, emb: VocabParallelEmbedding, vocab_size: int):
        super().__init__()
        self.ps = emb.ps
        self.num_embeddings, self.vocab_start, self.vocab_end = emb.num_embeddings, emb.vocab_start, emb.vocab_end
        self.rows = emb.weight.size(0)  # this rank's rows, padding included
        q, scale = _rows_int8(emb.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        valid = max(0, min(self.rows, vocab_size - self.vocab_start))  # padding is never predicted
        self.valid = valid
        self._packed = _pack(q[:valid], scale[:valid], None) if valid else None

    def _lookup(self, ids):
        return F.embedding(ids, self.qweight).float() * F.embedding(ids, self.scale.unsqueeze(1))

    def forward(self, ids):
        if self.ps.tp_size == 1:
            return self._lookup(ids)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        out = self._lookup(local).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(out, self.ps.tp_group)


class Int8LMHead(LMHead):
    """The tied output head over the int8 table."""

    def forward(self, h):
        emb = self.embedding[0]
        h = copy_to_tp(h, self.ps.tp_group)
        if emb._packed is None:  # every row of this rank's slice is padding
            return h.new_zeros(*h.shape[:-1], 0, dtype=torch.float32)
        return _matmul(h, emb._packed)

    def gather(self, logits):
        if self.ps.tp_size == 1:
            return logits
        per_rank = self.embedding[0].rows
        if logits.size(-1) < per_rank:
            logits = F.pad(logits, (0, per_rank - logits.size(-1)), value=float("-inf"))
        return gather_from_tp(logits, self.ps.tp_group)[..., : self.vocab_size]


def check_int8(device=None) -> None:
    """A ValueError when int8 decoding cannot run here (it runs on CPU only)."""
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"--dtype int8 runs on CPU (PyTorch's FBGEMM/QNNPACK kernels); got device "
                         f"{device}. On a GPU use --dtype bf16.")
    if torch.backends.quantized.engine in ("none", None):
        raise ValueError(f"--dtype int8: this PyTorch build has no quantized CPU engine "
                         f"(supported: {torch.backends.quantized.supported_engines}).")


@torch.no_grad()
def quantize_int8(model: GPT) -> GPT:
    """Swap ``model``'s linear layers, token table and output head for int8 ones, in place (an
    fp32 inference GPT on CPU; each TP rank quantizes its own shard). Returns ``model``."""
    check_int8(next(model.parameters()).device)
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("int8 quantization starts from fp32 weights; load without another --dtype.")
    for block in model.blocks:
        for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"),
                             (block.mlp, "c_proj")):
            setattr(parent, name, Int8Linear(getattr(parent, name)))
    wte = Int8Embedding(model.embed.wte, model.cfg.vocab_size)
    model.embed.wte = wte
    model.head = Int8LMHead(model.cfg, model.head.ps, wte)
    model.quantized = "int8"
    return model.requires_grad_(False)


def is_int8(model) -> bool:
    return getattr(model, "quantized", None) == "int8"
