"""The GPT model: GPT-1 (post-LN), GPT-2 and GPT-3 (pre-LN, GPT-3 with alternating dense and
locally banded attention).

Tensor parallelism enters only through the layers the blocks are built with; with
``ParallelState.single()`` this is an ordinary single-device GPT. The pieces (``Embedding``,
``Block``, ``FinalNorm``, ``LMHead``) are separate modules so the pipeline layout can cut the same
model into stages.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from megagpt.config import ModelConfig
from megagpt.parallel.cross_entropy import vocab_parallel_cross_entropy
from megagpt.parallel.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from megagpt.parallel.mappings import copy_to_tp, gather_from_tp
from megagpt.parallel.state import ParallelState

if TYPE_CHECKING:
    from megagpt.model.cache import DecodeState


def band_mask(T: int, window: int, device=None) -> torch.Tensor:
    """(T, T) boolean mask, True where query i may attend key j: i - window < j <= i."""
    i = torch.arange(T, device=device).unsqueeze(1)
    j = torch.arange(T, device=device).unsqueeze(0)
    return (j <= i) & (j > i - window)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, ps: ParallelState, layer_idx: int):
        super().__init__()
        self.ps = ps
        self.n_head = cfg.n_head // ps.tp_size  # heads on this rank
        self.head_dim = cfg.head_dim
        self.layer_idx = layer_idx
        self.banded = cfg.is_banded(layer_idx)
        self.window = cfg.local_window
        self.attn_pdrop = cfg.attn_pdrop
        proj_std = cfg.initializer_range / math.sqrt(2 * cfg.n_layer)
        # fused [q; k; v]; stride 3 gives each rank its own heads of all three
        self.c_attn = ColumnParallelLinear(cfg.n_embd, 3 * cfg.n_embd, ps, stride=3,
                                           init_std=cfg.initializer_range)
        self.c_proj = RowParallelLinear(cfg.n_embd, cfg.n_embd, ps, init_std=proj_std)
        self._mask_cache: torch.Tensor | None = None  # the band, built once for the longest T

    def _mask(self, T: int, device, state: DecodeState | None) -> torch.Tensor | None:
        """The attention mask, None for plain causal attention (SDPA's own, the fastest kernel).
        Inference takes its padding-aware mask from the ``DecodeState``."""
        if state is not None:
            return state.mask(self.banded, T)
        if not (self.banded and T > self.window):
            return None
        m = self._mask_cache
        if m is None or m.size(0) < T or m.device != device:
            m = self._mask_cache = band_mask(T, self.window, device)
        return m[:T, :T]

    def forward(self, x, state: DecodeState | None = None):
        B, T, _ = x.shape
        qkv = self.c_attn(x)  # (B, T, 3 * nh * hs), nh = heads on this rank
        q, k, v = qkv.split(self.n_head * self.head_dim, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if state is not None and state.caches is not None:  # this layer's key/value cache
            k, v = state.caches[self.layer_idx].update(k, v, state.start)
        mask = self._mask(T, x.device, state)
        p = self.attn_pdrop if self.training else 0.0
        # this rank's heads: independent dropout per TP rank (without dropout no random numbers
        # are drawn, and leaving the fork out spares torch.compile a graph break)
        with self.ps.rng.fork() if p > 0 else contextlib.nullcontext():
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, ps: ParallelState):
        super().__init__()
        self.c_fc = ColumnParallelLinear(cfg.n_embd, cfg.ffn_dim, ps, init_std=cfg.initializer_range)
        self.c_proj = RowParallelLinear(cfg.ffn_dim, cfg.n_embd, ps,
                                        init_std=cfg.initializer_range / math.sqrt(2 * cfg.n_layer))

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """One transformer layer. Pre-LN (GPT-2/3): x + f(LN(x)); post-LN (GPT-1): LN(x + f(x)).
    Training and inference take the same path (dropout is the identity in eval mode)."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState, layer_idx: int):
        super().__init__()
        self.pre_ln = cfg.ln_position == "pre"
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = Attention(cfg, ps, layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg, ps)
        self.drop = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x, state: DecodeState | None = None):
        if self.pre_ln:
            x = x + self.drop(self.attn(self.ln_1(x), state))
            return x + self.drop(self.mlp(self.ln_2(x)))
        x = self.ln_1(x + self.drop(self.attn(x, state)))
        return self.ln_2(x + self.drop(self.mlp(x)))


class PositionEmbedding(nn.Module):
    """Learned positions. The weight is drawn before it becomes a Parameter: under ZeRO-3's
    ``zero.Init`` a module's parameters are partitioned as soon as its constructor returns, so
    re-initialising an ``nn.Embedding`` afterwards would silently do nothing."""

    def __init__(self, n_positions: int, n_embd: int, std: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_positions, n_embd).normal_(0.0, std))

    def forward(self, pos):
        return F.embedding(pos, self.weight)


class Embedding(nn.Module):
    """Token embedding (vocab-parallel, tied with the output head) plus learned positions."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState):
        super().__init__()
        self.wte = VocabParallelEmbedding(cfg.padded_vocab_size(ps.tp_size), cfg.n_embd, ps,
                                          init_std=cfg.initializer_range, num_valid=cfg.vocab_size)
        self.wpe = PositionEmbedding(cfg.n_positions, cfg.n_embd, cfg.initializer_range)
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.n_positions = cfg.n_positions

    def forward(self, idx, pos=None):
        """``pos``: (B, T) positions when they are not 0..T-1 (left padding, cached decoding)."""
        if pos is None:
            T = idx.size(1)
            if T > self.n_positions:
                raise ValueError(f"sequence length {T} exceeds model.n_positions={self.n_positions}")
            pos = torch.arange(T, device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos))


class FinalNorm(nn.LayerNorm):
    """GPT-2/3's LayerNorm after the last block (GPT-1 has none)."""


class LMHead(nn.Module):
    """Logits h W_e^T against this rank's slice of the (tied) token embedding.

    Padded vocabulary rows are left out of the product, so padding is never predicted and costs
    nothing: the rank holding the end of the vocabulary returns fewer columns than its shard.
    """

    def __init__(self, cfg: ModelConfig, ps: ParallelState, embedding: VocabParallelEmbedding):
        super().__init__()
        self.ps = ps
        self.vocab_size = cfg.vocab_size
        self.embedding = [embedding]  # a list, so the tied weight is not registered twice

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding[0].weight

    @property
    def valid_rows(self) -> int:
        """Rows of this rank's slice that are real vocabulary (the rest is padding)."""
        emb = self.embedding[0]
        return max(0, min(emb.vocab_end - emb.vocab_start, self.vocab_size - emb.vocab_start))

    def forward(self, h):
        emb = self.embedding[0]
        valid = self.valid_rows
        w = emb.weight if valid == emb.weight.size(0) else emb.weight[:valid]
        # matmul, not F.linear: ZeRO-3 swaps F.linear for a version that fails on a rank whose
        # slice is all padding (zero columns)
        return torch.matmul(copy_to_tp(h, self.ps.tp_group), w.t())  # (B, T, V_local)

    def loss(self, logits, targets, ignore_index=-100):
        return vocab_parallel_cross_entropy(logits, targets, vocab_start=self.embedding[0].vocab_start,
                                            group=self.ps.tp_group, ignore_index=ignore_index)

    def gather(self, logits):
        """Full-vocabulary logits (B, T, vocab_size) on every TP rank."""
        if self.ps.tp_size == 1:
            return logits
        emb = self.embedding[0]
        per_rank = emb.vocab_end - emb.vocab_start
        if logits.size(-1) < per_rank:  # all_gather needs equal shapes: pad, then cut
            logits = F.pad(logits, (0, per_rank - logits.size(-1)), value=float("-inf"))
        return gather_from_tp(logits, self.ps.tp_group)[..., : self.vocab_size]


class GPT(nn.Module):
    """The whole model. With ``init_seed`` each piece is initialised right after
    ``torch.manual_seed(init_seed + i)``, i = its position (embedding 0, blocks 1..n_layer), as
    DeepSpeed's pipeline seeds its layers: one seed gives the same weights in every layout."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState | None = None, *,
                 checkpoint_activations: bool = False, init_seed: int | None = None):
        super().__init__()
        ps = ps or ParallelState.single()
        cfg.validate(ps.tp_size)
        self.cfg, self.ps = cfg, ps
        self.checkpoint_activations = checkpoint_activations

        def seed(i):
            if init_seed is not None:
                torch.manual_seed(init_seed + i)

        seed(0)
        self.embed = Embedding(cfg, ps)
        blocks = []
        for i in range(cfg.n_layer):
            seed(1 + i)
            blocks.append(Block(cfg, ps, i))
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = FinalNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon) if cfg.ln_position == "pre" else None
        self.head = LMHead(cfg, ps, self.embed.wte)

    def hidden_states(self, idx, state: DecodeState | None = None):
        """Final hidden states (B, T, n_embd). With a ``DecodeState`` (inference): positions and
        attention masks come from it, and its key/value caches, if any, are read and extended."""
        x = self.embed(idx, None if state is None else state.positions(idx.size(1)))
        recompute = self.checkpoint_activations and self.training
        for block in self.blocks:
            if recompute:  # activation checkpointing: backward runs the block again
                x = checkpoint(block, x, state, use_reentrant=False, context_fn=self.ps.rng.checkpoint_contexts)
            else:
                x = block(x, state)
        return self.ln_f(x) if self.ln_f is not None else x

    def forward(self, idx):
        """Logits for this rank's slice of the real vocabulary (B, T, <= V_padded/tp)."""
        return self.head(self.hidden_states(idx))

    def token_losses(self, logits, targets):
        """Per-token cross-entropy (B, T), float32, 0 where ``targets == -100``, of ``forward``'s
        logits (vocab-parallel: no rank gathers the whole vocabulary). A method of its own, not a
        ``targets`` argument of ``forward``, so the DeepSpeed engine's forward returns logits too."""
        return self.head.loss(logits, targets)

    def next_token_logits(self, idx, state: DecodeState) -> torch.Tensor:
        """Full-vocabulary logits (B, vocab_size) of the last input position (inference: only that
        position goes through the output head)."""
        h = self.hidden_states(idx, state)[:, -1:]
        return self.head.gather(self.head(h))[:, 0]

    def gathered_logits(self, idx):
        """Full-vocabulary logits (B, T, vocab_size) on every TP rank (for generation, tests)."""
        return self.head.gather(self.forward(idx))


def build_empty(cfg, ps=None):
    """A ``GPT`` with uninitialised storage (nothing drawn): weights come from a file next."""
    with torch.device("meta"):
        model = GPT(cfg, ps)
    marks = {name: dict(p.__dict__) for name, p in model.named_parameters()}
    model.to_empty(device="cpu")  # new Parameter objects: the TP marks are copied over
    for name, p in model.named_parameters():
        p.__dict__.update(marks[name])
    return model
