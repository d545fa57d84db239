"""Moving weights between formats: the tp-independent "full" state dict, sharded models, and
Hugging Face GPT-2 checkpoints.

The full state dict uses megagpt's parameter names with every tensor whole and the token
embedding at the real vocabulary size (no padding rows), so it is the same for any tp_size.
"""
from __future__ import annotations

import re

import torch

from megagpt.config import ModelConfig, model_config
from megagpt.parallel.layers import gather_tensor, shard_tensor

WTE = "embed.wte.weight"


def local_shard(name: str, t: torch.Tensor, p, cfg: ModelConfig, ps) -> torch.Tensor:
    """This rank's part of whole tensor ``t`` for parameter ``p``: the token embedding padded to
    the padded vocabulary, then sliced when ``p`` is tensor-parallel."""
    if name == WTE:
        if t.size(0) != cfg.vocab_size:
            raise ValueError(f"{WTE} has {t.size(0)} rows, expected model.vocab_size={cfg.vocab_size}")
        pad = cfg.padded_vocab_size(ps.tp_size) - t.size(0)
        t = torch.cat([t, t.new_zeros(pad, t.size(1))])
    if getattr(p, "tensor_model_parallel", False):
        t = shard_tensor(t, p.partition_dim, p.partition_stride, ps.tp_rank, ps.tp_size)
    return t


def load_full_state_dict(model, full: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into a (possibly tensor-parallel) GPT: each rank takes its shard."""
    ps, cfg = model.ps, model.cfg
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(full))
    unexpected = sorted(set(full) - set(params))
    if missing or unexpected:
        raise KeyError(f"state dict does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            t = local_shard(name, full[name], p, cfg, ps)
            if t.shape != p.shape:
                raise ValueError(f"{name}: shape {tuple(t.shape)} does not fit parameter {tuple(p.shape)}")
            p.copy_(t)


def whole_tensor(name: str, p, t: torch.Tensor, ps, vocab_size: int, device=None) -> torch.Tensor:
    """This rank's copy ``t`` of parameter ``p`` made whole: all-gathered over the TP group when
    ``p`` is sharded (on ``device`` if given: NCCL has no CPU backend), padding rows dropped from
    the token embedding. Collective for sharded parameters."""
    if getattr(p, "tensor_model_parallel", False):
        t = gather_tensor(t if device is None else t.to(device), ps, p.partition_dim,
                          p.partition_stride).to(t.device)
    return t[:vocab_size] if name == WTE else t


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """Whole tensors from a tensor-parallel GPT (collective over the TP group)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.detach() if getattr(p, "tensor_model_parallel", False) else p.detach().clone()
        out[name] = whole_tensor(name, p, t, model.ps, model.cfg.vocab_size)
    return out


# --- Hugging Face GPT-2 -------------------------------------------------------------------------
# HF's Conv1D stores weights as (in, out); megagpt's linears as (out, in).
_HF_RENAMES = [
    (r"^transformer\.wte\.weight$", "embed.wte.weight", False),
    (r"^transformer\.wpe\.weight$", "embed.wpe.weight", False),
    (r"^transformer\.h\.(\d+)\.(ln_1|ln_2)\.(weight|bias)$", r"blocks.\1.\2.\3", False),
    (r"^transformer\.h\.(\d+)\.attn\.(c_attn|c_proj)\.weight$", r"blocks.\1.attn.\2.weight", True),
    (r"^transformer\.h\.(\d+)\.attn\.(c_attn|c_proj)\.bias$", r"blocks.\1.attn.\2.bias", False),
    (r"^transformer\.h\.(\d+)\.mlp\.(c_fc|c_proj)\.weight$", r"blocks.\1.mlp.\2.weight", True),
    (r"^transformer\.h\.(\d+)\.mlp\.(c_fc|c_proj)\.bias$", r"blocks.\1.mlp.\2.bias", False),
    (r"^transformer\.ln_f\.(weight|bias)$", r"ln_f.\1", False),
]


def config_from_hf(hf_config, **overrides) -> ModelConfig:
    """A megagpt ModelConfig with the architecture of a transformers ``GPT2Config``."""
    if hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"activation {hf_config.activation_function!r} is not GPT-2's tanh GELU")
    fields = dict(n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
                  n_positions=hf_config.n_positions, vocab_size=hf_config.vocab_size,
                  n_inner=hf_config.n_inner, layer_norm_epsilon=hf_config.layer_norm_epsilon,
                  embd_pdrop=hf_config.embd_pdrop, attn_pdrop=hf_config.attn_pdrop,
                  resid_pdrop=hf_config.resid_pdrop, initializer_range=hf_config.initializer_range,
                  ln_position="pre", attention="dense")
    fields.update(overrides)
    return model_config(**fields)


def full_from_hf_gpt2(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face GPT2LMHeadModel state dict as a megagpt full state dict."""
    out = {}
    for key, t in hf_state.items():
        if key == "lm_head.weight" or key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # tied to wte / causal-mask buffers of older transformers versions
        for pattern, repl, transpose in _HF_RENAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = t.t().contiguous() if transpose else t.clone()
                break
        else:
            raise KeyError(f"unexpected key in GPT-2 state dict: {key}")
    return out


def full_to_hf_gpt2(full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A megagpt full state dict (pre-LN, dense) as a GPT2LMHeadModel state dict."""
    out = {}
    for key, t in full.items():
        m = re.match(r"^blocks\.(\d+)\.(attn|mlp)\.(c_attn|c_proj|c_fc)\.(weight|bias)$", key)
        if m:
            i, part, lin, kind = m.groups()
            out[f"transformer.h.{i}.{part}.{lin}.{kind}"] = t.t().contiguous() if kind == "weight" else t
        elif (m := re.match(r"^blocks\.(\d+)\.(ln_1|ln_2)\.(weight|bias)$", key)):
            out[f"transformer.h.{m[1]}.{m[2]}.{m[3]}"] = t
        elif key.startswith("embed."):
            out["transformer." + key[len("embed."):]] = t
        elif key.startswith("ln_f."):
            out["transformer." + key] = t
        else:
            raise KeyError(f"no GPT-2 name for {key}")
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out
