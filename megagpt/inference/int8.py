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
from megagpt.parallel.mappings import copy_to_tp


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


class Int8ColumnParallelLinear(ColumnParallelLinear):
    """``layer`` with this rank's shard (and bias) packed in int8; the tensor-parallel
    communication around the matmul is ColumnParallelLinear's own."""

    def __init__(self, layer: ColumnParallelLinear):
        nn.Module.__init__(self)  # not the parent's: it would allocate and draw a new weight
        self.ps, self.gather_output = layer.ps, layer.gather_output
        self._packed = _pack(*_rows_int8(layer.weight), layer.bias)
        self.bias = None  # packed with the weight
        self.shape = tuple(layer.weight.shape)

    def local(self, x):
        return _matmul(x, self._packed)

    def extra_repr(self) -> str:
        return f"{self.shape[1]} -> {self.shape[0]} (this rank), int8"


class Int8RowParallelLinear(RowParallelLinear):
    """``layer`` with this rank's shard packed in int8; its whole bias is added after the
    all-reduce, as RowParallelLinear does."""

    def __init__(self, layer: RowParallelLinear):
        nn.Module.__init__(self)
        self.ps, self.input_is_parallel = layer.ps, layer.input_is_parallel
        self._packed = _pack(*_rows_int8(layer.weight), None)
        self.bias = layer.bias
        self.shape = tuple(layer.weight.shape)

    def local(self, x):
        return _matmul(x, self._packed)

    def extra_repr(self) -> str:
        return f"{self.shape[1]} (this rank) -> {self.shape[0]}, int8"


class Int8Embedding(VocabParallelEmbedding):
    """The vocabulary-parallel token table in int8 (per-row scales): the lookup dequantizes the
    rows it reads, and the tied head (``Int8LMHead``) multiplies by the same int8 rows."""

    def __init__(self, emb: VocabParallelEmbedding):
        nn.Module.__init__(self)
        self.ps, self.num_embeddings = emb.ps, emb.num_embeddings
        self.vocab_start, self.vocab_end = emb.vocab_start, emb.vocab_end
        q, scale = _rows_int8(emb.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)

    def lookup(self, local_ids):
        return F.embedding(local_ids, self.qweight).float() * F.embedding(local_ids, self.scale.unsqueeze(1))


class Int8LMHead(LMHead):
    """The tied output head over the int8 table (its real-vocabulary rows, packed once)."""

    def __init__(self, cfg, ps, embedding: Int8Embedding):
        super().__init__(cfg, ps, embedding)
        valid = self.valid_rows
        self._packed = _pack(embedding.qweight[:valid], embedding.scale[:valid], None) if valid else None

    def forward(self, h):
        h = copy_to_tp(h, self.ps.tp_group)
        if self._packed is None:  # every row of this rank's slice is padding
            return h.new_zeros(*h.shape[:-1], 0, dtype=torch.float32)
        return _matmul(h, self._packed)


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
        block.attn.c_attn = Int8ColumnParallelLinear(block.attn.c_attn)
        block.attn.c_proj = Int8RowParallelLinear(block.attn.c_proj)
        block.mlp.c_fc = Int8ColumnParallelLinear(block.mlp.c_fc)
        block.mlp.c_proj = Int8RowParallelLinear(block.mlp.c_proj)
    model.embed.wte = Int8Embedding(model.embed.wte)
    model.head = Int8LMHead(model.cfg, model.head.ps, model.embed.wte)
    model.quantized = "int8"
    return model.requires_grad_(False)
