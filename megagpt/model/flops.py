"""Parameter count and model FLOPs per token, from the config alone (nothing is allocated).

FLOPs follow the convention used for MFU in the PaLM paper (Appendix B) and nanoGPT: matmuls
only, 2 FLOPs per multiply-add, backward = 2 x forward, attention counted over every key a query
may see without the causal discount (T keys in a dense layer, the window in a banded one).
"""
from __future__ import annotations

from megagpt.config import ModelConfig


def param_count(cfg: ModelConfig, *, include_embeddings: bool = True) -> int:
    """Trainable parameters with the tied output head counted once and the real (unpadded)
    vocabulary, as papers report them."""
    d, f = cfg.n_embd, cfg.ffn_dim
    attn = d * 3 * d + 3 * d + d * d + d
    mlp = d * f + f + f * d + d
    norms = 4 * d
    total = cfg.n_layer * (attn + mlp + norms)
    if cfg.ln_position == "pre":
        total += 2 * d
    if include_embeddings:
        total += cfg.vocab_size * d + cfg.n_positions * d
    return total


def attended_keys(cfg: ModelConfig, layer_idx: int, seq_len: int) -> int:
    return min(seq_len, cfg.local_window) if cfg.is_banded(layer_idx) else seq_len


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    d, f = cfg.n_embd, cfg.ffn_dim
    dense = 2 * (3 * d * d + d * d + 2 * d * f)  # qkv, out projection, MLP
    total = 0
    for i in range(cfg.n_layer):
        total += dense + 2 * 2 * attended_keys(cfg, i, seq_len) * d  # QK^T and AV
    return total + 2 * d * cfg.vocab_size  # logits


def model_flops_per_token(cfg: ModelConfig, seq_len: int, *, training: bool = True) -> int:
    """FLOPs the model needs per token (forward + backward when ``training``), for MFU.
    Activation recomputation is not counted: it is overhead, not model work."""
    fwd = forward_flops_per_token(cfg, seq_len)
    return 3 * fwd if training else fwd
