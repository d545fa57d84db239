"""Sample text from an exported model (``train.export_path``) with a sentencepiece tokenizer.

    python megagpt/generate.py --model checkpoints/run/model.pt --tokenizer out/tokenizer.model \\
        --prompt "The history of" --max-new-tokens 60 --temperature 0.8 --top-k 50 --top-p 0.95
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from megagpt._entry import fix_path

    fix_path(__file__)

import torch  # noqa: E402


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens and the smallest set whose probability reaches
    ``top_p`` (nucleus); the rest get -inf. ``logits``: (B, V)."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # tokens entirely beyond the nucleus
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample(model, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, eod: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Autoregressive sampling (greedy when ``temperature == 0``); stops early at ``eod``."""
    model.eval()
    ctx = model.cfg.n_positions
    for _ in range(max_new_tokens):
        logits = model.gathered_logits(idx[:, -ctx:])[:, -1, :]
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        idx = torch.cat([idx, nxt], dim=1)
        if eod is not None and bool((nxt == eod).all()):
            break
    return idx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Sample continuations from an exported megagpt model.")
    ap.add_argument("--model", required=True, help="exported weights (train.export_path)")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece .model used to build the shards")
    ap.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import sentencepiece as spm

    from megagpt.train.export import load_exported

    model = load_exported(args.model)
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    eod = sp.piece_to_id("<|endoftext|>")
    g = torch.Generator().manual_seed(args.seed)
    for prompt in args.prompt:
        ids = torch.tensor([sp.encode(prompt)])
        out = sample(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, eod=eod, generator=g)
        text = sp.decode([t for t in out[0].tolist() if t != eod])  # whole, so spacing survives
        print(f"--- {prompt!r} ->\n{text}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
