"""Hugging Face GPT-2 directories, both ways.

``write_hf_dir`` turns megagpt weights into what ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` read: ``config.json`` (a ``GPT2Config``), ``model.safetensors``
(``GPT2LMHeadModel`` names; the output head is tied to the token embedding, so it is not stored),
``generation_config.json`` and the tokenizer. The tokenizer is the sentencepiece model converted
to a ``tokenizers`` BPE with the model's own normalizer settings (transformers' SpmConverter), so
it encodes and decodes exactly as sentencepiece does; the original ``tokenizer.model`` is kept
beside it for megagpt. The special tokens keep their ids (``<|endoftext|>`` is EOS and, as in
GPT-2, also padding; the GPT-1 / DialoGPT control symbols are additional special tokens), and
``split_special_tokens`` is on: sentencepiece never turns a literal ``<|endoftext|>`` typed in text
into the EOD id, and neither does the converted tokenizer.

Only GPT-2's architecture fits ``GPT2LMHeadModel``: pre-LN blocks and dense attention. GPT-1
(post-LN) and GPT-3 banded models are refused.

``read_hf_dir`` reads a local GPT-2 directory back (``model.safetensors``, or a
``pytorch_model.bin`` that holds tensors only: it is loaded with ``weights_only=True``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from megagpt.config import ModelConfig
from megagpt.inference.weights import SafetensorsDict, WeightsError
from megagpt.model.convert import full_from_hf_gpt2, full_to_hf_gpt2

EOD = "<|endoftext|>"


def check_gpt2_architecture(cfg: ModelConfig) -> None:
    if cfg.ln_position != "pre":
        raise ValueError("a GPT-1 model (model.ln_position='post') cannot be written as GPT2LMHeadModel, "
                         "whose blocks are pre-LN with a final LayerNorm.")
    if cfg.attention != "dense":
        raise ValueError("a GPT-3 model with banded attention (model.attention='alternating') cannot be "
                         "written as GPT2LMHeadModel, which has dense attention in every layer.")


def _gpt2_config(cfg: ModelConfig, eod_id: int | None):
    from transformers import GPT2Config

    ids = {} if eod_id is None else dict(bos_token_id=eod_id, eos_token_id=eod_id, pad_token_id=eod_id)
    return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                      n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.n_inner,
                      activation_function="gelu_new", resid_pdrop=cfg.resid_pdrop, embd_pdrop=cfg.embd_pdrop,
                      attn_pdrop=cfg.attn_pdrop, layer_norm_epsilon=cfg.layer_norm_epsilon,
                      initializer_range=cfg.initializer_range, tie_word_embeddings=True,
                      architectures=["GPT2LMHeadModel"], **ids)


def convert_tokenizer(spm_model: str | Path, out_dir: str | Path):
    """Write the fast tokenizer files for ``spm_model`` into ``out_dir``; returns the tokenizer."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    if not hasattr(SpmConverter, "build_tokenizer_from_spm_proto"):
        raise RuntimeError("converting the tokenizer needs transformers >= 5 (SpmConverter.build_tokenizer_from_spm_proto).")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(spm_model).read_bytes())
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # legacy=True: the dummy prefix goes before the text exactly as sentencepiece puts it
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    control = [p.piece for p in proto.pieces if p.type == 3 and p.piece not in (EOD,)]  # CONTROL
    special = dict(unk_token=sp.id_to_piece(sp.unk_id()) if sp.unk_id() >= 0 else None,
                   eos_token=EOD if EOD in vocab else None, bos_token=EOD if EOD in vocab else None)
    special["pad_token"] = special["eos_token"]
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, additional_special_tokens=control,
                                  split_special_tokens=True, model_max_length=int(1e30),
                                  add_bos_token=False, add_eos_token=False,
                                  **{k: v for k, v in special.items() if v is not None})
    tok.save_pretrained(str(out_dir))
    shutil.copyfile(spm_model, Path(out_dir) / "tokenizer.model")
    return tok


def write_hf_dir(full: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: str | Path,
                 tokenizer_model: str | Path | None = None) -> Path:
    """Write a Hugging Face GPT-2 directory atomically (a temporary directory renamed at the end)."""
    from safetensors.torch import save_file

    check_gpt2_architecture(cfg)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: exists and is not empty; choose a new directory.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp", dir=out_dir.parent))
    try:
        eod_id = None
        if tokenizer_model is not None:
            tok = convert_tokenizer(tokenizer_model, tmp)
            eod_id = tok.eos_token_id
            if len(tok) > cfg.vocab_size:
                raise ValueError(f"{tokenizer_model} has {len(tok)} tokens but the model only "
                                 f"model.vocab_size={cfg.vocab_size}.")
        hf_cfg = _gpt2_config(cfg, eod_id)
        hf_cfg.save_pretrained(str(tmp))
        state = full_to_hf_gpt2(full)
        state.pop("lm_head.weight")  # tied to transformer.wte.weight
        save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        gen = {"do_sample": True, "top_k": 50, "top_p": 0.95, "temperature": 0.8, "max_new_tokens": 64}
        if eod_id is not None:
            gen.update(bos_token_id=eod_id, eos_token_id=eod_id, pad_token_id=eod_id)
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=1) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_hf_dir(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Path | None]:
    """(megagpt config, full state dict, ``tokenizer.model`` if present) of a local GPT-2 directory."""
    from megagpt.model.convert import config_from_hf

    path = Path(path)
    cfg_file = path / "config.json"
    try:
        raw = json.loads(cfg_file.read_text())
    except OSError:
        raise WeightsError(f"{cfg_file}: missing; a Hugging Face model directory has a config.json.") from None
    except ValueError as e:
        raise WeightsError(f"{cfg_file}: not valid JSON ({e}).") from None
    if raw.get("model_type") != "gpt2":
        raise WeightsError(f"{cfg_file}: model_type is {raw.get('model_type')!r}; megagpt reads GPT-2 "
                           f"models (model_type 'gpt2') only.")
    from transformers import GPT2Config

    try:
        cfg = config_from_hf(GPT2Config.from_dict(raw)).validate()
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{cfg_file}: {e}") from None
    if (path / "model.safetensors").is_file():
        tensors = SafetensorsDict(path / "model.safetensors")
        state = {k: tensors[k] for k in tensors}
    elif (path / "pytorch_model.bin").is_file():
        try:
            state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"{path / 'pytorch_model.bin'}: not loadable without unpickling code "
                               f"({str(e).splitlines()[0] if str(e) else type(e).__name__}).") from None
    else:
        raise WeightsError(f"{path}: no model.safetensors (or pytorch_model.bin) beside config.json.")
    state = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v
             for k, v in state.items()}  # GPT2Model checkpoints have no 'transformer.' prefix
    try:
        full = full_from_hf_gpt2(state)
    except KeyError as e:
        raise WeightsError(f"{path}: {e.args[0]}") from None
    tok = path / "tokenizer.model"
    return cfg, full, tok if tok.is_file() else None
