"""Hugging Face GPT-2 directories, both ways.

``write_hf_dir`` turns megagpt weights into what ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` read: ``config.json`` (a ``GPT2Config``), ``model.safetensors``
(``GPT2LMHeadModel`` names; the output head is tied to the token embedding, so it is not stored),
``generation_config.json`` and the tokenizer. The tokenizer is the sentencepiece model converted
to a ``tokenizers`` BPE with the model's own normalizer settings (transformers' SpmConverter), so
it encodes and decodes exactly as sentencepiece does; the original ``tokenizer.model`` is kept
beside it for megagpt. The special tokens keep their ids (``<|endoftext|>`` is EOS and, as in
GPT-2, also padding; the GPT-1 / DialoGPT control symbols are additional special tokens), and
``split_special_tokens`` is on: sentencepiece never turns a literal ``<|endoftext|>`` (or
``<|turn|>``...) typed in text into its id, and neither does the converted tokenizer, so a document
cannot inject one. To get the ids from strings on purpose, call the tokenizer with
``split_special_tokens=False`` (or append the ids). Decoding keeps special tokens as their strings
unless ``skip_special_tokens=True``, which gives what sentencepiece's ``decode`` gives.

Only GPT-2's architecture fits ``GPT2LMHeadModel``: pre-LN blocks and dense attention. GPT-1
(post-LN) and GPT-3 banded models are refused.

``read_hf_dir`` reads a local GPT-2 directory back: ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``), or a ``pytorch_model.bin`` that holds tensors only (it is loaded
with ``weights_only=True``, so nothing else is unpickled). Every tensor is checked against
``config.json`` first, and an untied output head or a ``GPT2Config`` switch that changes the
attention math is refused: megagpt's GPT could not reproduce the model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from megagpt.config import ModelConfig
from megagpt.data.tokenizer import tokenizer_file
from megagpt.formats.weights import SafetensorsDict, WeightsError
from megagpt.model.convert import full_from_hf_gpt2, full_to_hf_gpt2

EOD = "<|endoftext|>"


def check_gpt2_architecture(cfg: ModelConfig) -> None:
    """Raise unless ``cfg`` can be expressed as a ``GPT2LMHeadModel``."""
    if cfg.ln_position != "pre":
        raise ValueError("a GPT-1 model (model.ln_position='post') cannot be written as GPT2LMHeadModel, "
                         "whose blocks are pre-LN with a final LayerNorm.")
    if cfg.attention != "dense":
        raise ValueError("a GPT-3 model with banded attention (model.attention='alternating') cannot be "
                         "written as GPT2LMHeadModel, which has dense attention in every layer.")


def _gpt2_config(cfg: ModelConfig, eod_id: int | None):
    from transformers import GPT2Config

    # no tokenizer, no known special ids: not GPT2Config's default 50256, which may not even exist
    ids = dict(bos_token_id=eod_id, eos_token_id=eod_id, pad_token_id=eod_id)
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
        raise RuntimeError("converting the tokenizer needs transformers >= 5 "
                           "(SpmConverter.build_tokenizer_from_spm_proto).")
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
    try:
        state = full_to_hf_gpt2(full)
    except KeyError as e:
        raise ValueError(f"{e.args[0]}; GPT2LMHeadModel holds the language model only, so export task "
                         f"heads in megagpt's own format.") from None
    state.pop("lm_head.weight")  # tied to transformer.wte.weight
    shapes = gpt2_shapes(cfg.n_layer, cfg.n_embd, cfg.n_positions, cfg.vocab_size, cfg.n_inner)
    _check_shapes(state, shapes, "the weights to write (GPT-2 names and layout)",
                  f"the model config (n_embd={cfg.n_embd}, vocab_size={cfg.vocab_size})")
    if tokenizer_model is not None:
        tokenizer_file(tokenizer_model)
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


def gpt2_shapes(n_layer: int, n_embd: int, n_positions: int, vocab_size: int,
                n_inner: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor of a ``GPT2LMHeadModel`` state dict (tied head left out) and its shape."""
    E, F = n_embd, n_inner or 4 * n_embd
    shapes = {"transformer.wte.weight": (vocab_size, E), "transformer.wpe.weight": (n_positions, E),
              "transformer.ln_f.weight": (E,), "transformer.ln_f.bias": (E,)}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        shapes |= {h + "ln_1.weight": (E,), h + "ln_1.bias": (E,),
                   h + "ln_2.weight": (E,), h + "ln_2.bias": (E,),
                   h + "attn.c_attn.weight": (E, 3 * E), h + "attn.c_attn.bias": (3 * E,),
                   h + "attn.c_proj.weight": (E, E), h + "attn.c_proj.bias": (E,),
                   h + "mlp.c_fc.weight": (E, F), h + "mlp.c_fc.bias": (F,),
                   h + "mlp.c_proj.weight": (F, E), h + "mlp.c_proj.bias": (E,)}
    return shapes


def _check_shapes(state, expected: dict[str, tuple[int, ...]], where: str, why: str) -> None:
    """Raise (one sentence naming ``where`` and the tensor) unless ``state`` has exactly the
    tensors of ``expected``; causal-mask buffers of old checkpoints and the tied head are extra."""
    for key, shape in expected.items():
        if key not in state:
            raise WeightsError(f"{where}: tensor {key} is missing ({why} needs it).")
        got = tuple(state[key].shape)
        if got != shape:
            raise WeightsError(f"{where}: tensor {key} has shape {got} but {why} needs {shape}.")
    for key in state:
        extra = key == "lm_head.weight" or key.endswith((".attn.bias", ".attn.masked_bias"))
        if key not in expected and not extra:
            raise WeightsError(f"{where}: unexpected tensor {key} (not part of GPT2LMHeadModel).")


# GPT2Config switches that change the math; megagpt's GPT computes only GPT-2's defaults.
_UNSUPPORTED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "add_cross_attention": False}


def read_hf_dir(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Path | None]:
    """(megagpt config, full state dict, ``tokenizer.model`` if present) of a local GPT-2 directory.

    Every tensor is checked against ``config.json`` before conversion; any problem is one
    ``WeightsError`` naming the file."""
    from megagpt.model.convert import config_from_hf

    path = Path(path)
    cfg_file = path / "config.json"
    try:
        raw = json.loads(cfg_file.read_text())
    except OSError:
        raise WeightsError(f"{cfg_file}: missing; a Hugging Face model directory has a config.json.") from None
    except ValueError as e:
        raise WeightsError(f"{cfg_file}: not valid JSON ({e}).") from None
    if not isinstance(raw, dict) or raw.get("model_type") != "gpt2":
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        raise WeightsError(f"{cfg_file}: model_type is {kind!r}; megagpt reads GPT-2 models "
                           f"(model_type 'gpt2') only.")
    for key, default in _UNSUPPORTED.items():
        if raw.get(key, default) != default:
            raise WeightsError(f"{cfg_file}: {key}={raw[key]!r} changes GPT-2's attention, which megagpt's "
                               f"GPT does not implement; only {key}={default!r} can be read.")
    from transformers import GPT2Config

    try:
        hf_cfg = GPT2Config.from_dict(raw)
        cfg = config_from_hf(hf_cfg).validate()
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{cfg_file}: {e}") from None
    state, where = _read_hf_tensors(path)
    # GPT2Model checkpoints have no 'transformer.' prefix
    state = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v
             for k, v in state.items()}
    _check_shapes(state, gpt2_shapes(cfg.n_layer, cfg.n_embd, cfg.n_positions, cfg.vocab_size, cfg.n_inner),
                  where, f"config.json (n_layer={cfg.n_layer}, n_embd={cfg.n_embd}, "
                         f"n_positions={cfg.n_positions}, vocab_size={cfg.vocab_size})")
    if "lm_head.weight" in state:
        if not torch.equal(state["lm_head.weight"], state["transformer.wte.weight"]):
            raise WeightsError(f"{where}: lm_head.weight differs from transformer.wte.weight; megagpt ties "
                               f"the output head to the token embedding and cannot hold a separate one.")
    elif raw.get("tie_word_embeddings", True) is False:
        raise WeightsError(f"{cfg_file}: tie_word_embeddings is false but {where.name} has no "
                           f"lm_head.weight.")
    full = {}
    for key in list(state):  # one tensor at a time: never two copies of the whole model
        full |= full_from_hf_gpt2({key: state.pop(key)})
    tok = path / "tokenizer.model"
    return cfg, full, tok if tok.is_file() else None


def _read_hf_tensors(path: Path):
    """(name -> tensor mapping, the file it came from) of ``model.safetensors`` (whole or sharded
    by an index) or ``pytorch_model.bin`` (tensors only, nothing else is unpickled)."""
    if (path / "model.safetensors").is_file():
        return SafetensorsDict(path / "model.safetensors"), path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise WeightsError(f"{index}: not a valid safetensors index "
                               f"({type(e).__name__}: {e}).") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise WeightsError(f"{index}: names shard {missing[0]}, which is not in {path}.")
        shards = {name: SafetensorsDict(path / name) for name in names}
        state = {}
        for shard in shards.values():
            state |= {k: shard[k] for k in shard}
        return state, index
    bin_file = path / "pytorch_model.bin"
    if bin_file.is_file():
        try:
            state = torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsError(f"{bin_file}: not loadable without unpickling code ({msg}).") from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise WeightsError(f"{bin_file}: expected a state dict (tensor names to tensors).")
        return state, bin_file
    raise WeightsError(f"{path}: no model.safetensors (or pytorch_model.bin) beside config.json.")
