"""One loading path and one forward path for everything after pretraining.

``load(path)`` takes an exported model (``*.safetensors`` with its JSON), a Hugging Face GPT-2
directory, or a training checkpoint directory (any layout and tp/pp/dp it was saved with), and
returns the model (sharded over ``ps`` when given, an ordinary single-device GPT otherwise) and its
tokenizer::

    import megagpt
    model, tok = megagpt.load("demo/run/model.safetensors")
    print(megagpt.load("demo/run/model.safetensors").complete("In the beginning", max_new_tokens=30))
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megagpt.data.tokenizer import Tokenizer
from megagpt.formats import read_weights
from megagpt.formats.weights import WeightsError
from megagpt.inference.generation import Completion, SamplingParams, generate
from megagpt.inference.int8 import check_int8, quantize_int8
from megagpt.inference.scoring import Score, loglikelihood
from megagpt.model.gpt import build_empty

__all__ = ["load", "load_for_text", "add_model_args", "DTYPES", "PRECISIONS", "quantize_int8", "Loaded", "read_weights",
           "generate", "SamplingParams", "Completion", "loglikelihood", "Score", "Tokenizer", "WeightsError"]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = (*DTYPES, "int8")  # int8: fp32 weights quantized after loading (megagpt.inference.int8)


def add_model_args(ap) -> None:
    """The options every inference command names and places its model with: --model, --tokenizer,
    --tag, --tp, --dtype."""
    ap.add_argument("--model", required=True,
                    help="exported *.safetensors, a Hugging Face GPT-2 directory, or a checkpoint directory")
    ap.add_argument("--tokenizer", help="sentencepiece .model (default: the one the model names)")
    ap.add_argument("--tag", help="checkpoint tag (default: the one in 'latest')")
    ap.add_argument("--tp", type=int, default=None, help="tensor-parallel size (default: world size)")
    ap.add_argument("--dtype", choices=PRECISIONS, default="fp32",
                    help="int8: int8 weights and fp32 activations on CPU (every linear layer and the head)")


def load_for_text(path, *, tokenizer=None, hint: str = "--tokenizer", dtype: str | None = None, **kw) -> Loaded:
    """``load`` for commands that read and write text: a ValueError when no tokenizer is found
    (``hint`` says how to give one) or when it has more tokens than the model."""
    loaded = load(path, tokenizer=tokenizer, dtype=dtype, **kw)
    model, tok = loaded
    if tok is None:
        raise ValueError(f"{path}: no tokenizer recorded or found beside it; pass {hint}.")
    if tok.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"{tok.path} has {tok.vocab_size} tokens but the model only {model.cfg.vocab_size}.")
    return loaded


@dataclass
class Loaded:
    """A loaded model and its tokenizer (unpacks as ``model, tokenizer``)."""

    model: torch.nn.Module
    tokenizer: Tokenizer | None
    source: str
    meta: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.model, self.tokenizer))

    def complete(self, prompts: str | list[str], **sampling) -> str | list[str]:
        """Text continuations of one prompt or a list (``sampling``: ``SamplingParams`` fields)."""
        if self.tokenizer is None:
            raise ValueError(f"{self.source}: no tokenizer found; pass tokenizer=... to load().")
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        tok = self.tokenizer
        ids = [tok.encode(t) or [tok.eod_id] for t in texts]
        out = generate(self.model, ids, SamplingParams(**sampling), eod_id=tok.eod_id, decode=tok.decode)
        result = [c.text for c in out]
        return result[0] if single and len(result) == 1 else result


def load(path: str | Path, *, tokenizer: str | Path | None = None, ps=None, dtype=None,
         device=None, tag: str | None = None, model_cfg=None, with_tokenizer: bool = True) -> Loaded:
    """Load a model for inference (eval mode, no grad) from ``path``.

    ``ps``: a ``ParallelState`` to shard over (each rank reads only what it keeps, one tensor at a
    time); ``dtype``: e.g. ``torch.bfloat16`` or a name in ``PRECISIONS`` ('int8' quantizes every
    linear layer and the head, on CPU); ``tag``: a checkpoint tag other than ``latest``;
    ``model_cfg``: the model config of an old checkpoint without ``megagpt.json``."""
    from megagpt.formats.weights import load_weights

    int8 = dtype == "int8"
    if isinstance(dtype, str):
        if dtype not in PRECISIONS:
            raise ValueError(f"dtype must be one of {', '.join(PRECISIONS)} or a torch dtype, got {dtype!r}.")
        dtype = None if int8 else DTYPES[dtype]
    if int8:
        check_int8(device)
    cfg, full, meta = read_weights(path, tag=tag, model_cfg=model_cfg)
    model = build_empty(cfg, ps)
    load_weights(model, full, path)
    model.eval().requires_grad_(False)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    if int8:
        quantize_int8(model)
    tok = None
    if with_tokenizer:
        base = Path(path) if Path(path).is_dir() else Path(path).parent
        found = [c for c in (meta.get("tokenizer"), base / "tokenizer.model") if c and Path(c).is_file()]
        tok = Tokenizer(tokenizer) if tokenizer else Tokenizer(found[0]) if found else None
    return Loaded(model, tok, str(path), dict(meta) if isinstance(meta, Mapping) else {})
