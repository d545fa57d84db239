"""What int8 decoding (``--dtype int8``) costs in quality, against the same model in fp32: token
perplexity of a held-out corpus (GPT-2's sliding windows, ``evaluate.py --perplexity``'s code) and
greedy agreement (the first ``--new`` greedy tokens after each of ``--prompts`` held-out
prompts: consecutive windows of the documents), with the time each takes. Needs a trained model:
``scripts/demo.sh`` writes one.

    python -m benchmarks.int8_quality [--model demo/run/model.safetensors \
        --corpus demo/eval/corpora/lee_heldout.jsonl]
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import token_agreement
from megagpt.eval.runner import Evaluator
from megagpt.evaluate import read_corpus
from megagpt.inference import load_for_text
from megagpt.inference.generation import SamplingParams, generate


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo/run/model.safetensors")
    ap.add_argument("--corpus", default="demo/eval/corpora/lee_heldout.jsonl")
    ap.add_argument("--prompts", type=int, default=100, help="greedy prompts (windows of the held-out documents)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new", type=int, default=32, help="greedy tokens compared per prompt")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    fp32, tok = load_for_text(args.model)
    int8, _ = load_for_text(args.model, dtype="int8")
    docs = list(read_corpus(args.corpus, tok, None))
    # prompts: consecutive --prompt-tokens windows of the held-out documents, the first --prompts of them
    k = args.prompt_tokens
    openings = [ids[i:i + k] for ids, _ in docs for i in range(0, len(ids) - k + 1, k)][:args.prompts]
    greedy = SamplingParams(max_new_tokens=args.new, temperature=0, stop_at_eod=False)
    res = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        t0 = time.perf_counter()
        ppl = Evaluator(model, tok, batch_size=16).perplexity(docs)
        t1 = time.perf_counter()
        rows = [c.tokens for c in generate(model, openings, greedy)]
        res[name] = (ppl, rows, t1 - t0, time.perf_counter() - t1)
    (p32, g32, *_), (p8, g8, *_) = res["fp32"], res["int8"]
    same_rows = sum(a == b for a, b in zip(g32, g8))
    same_tokens = token_agreement(g32, g8)
    prefix = sum(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(g32, g8)) / len(g32)
    print(f"model {args.model}: {fp32.cfg.n_layer} x {fp32.cfg.n_embd}, vocab {fp32.cfg.vocab_size}; corpus "
          f"{args.corpus}: {p32['docs']} docs, {p32['tokens']} tokens; {len(openings)} prompts of "
          f"{args.prompt_tokens} tokens, {args.new} greedy tokens each; {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'':6} {'token ppl':>10} {'bits/byte':>10} {'ppl time':>9} {'greedy time':>12}")
    for name, (ppl, _, e, s) in res.items():
        print(f"{name:6} {ppl['token_ppl']:10.3f} {ppl['bits_per_byte']:10.4f} {e:8.1f}s {s:11.1f}s")
    print(f"int8 perplexity vs fp32: {p8['token_ppl'] / p32['token_ppl'] - 1:+.2%}; greedy: {same_rows}/{len(g32)} "
          f"continuations identical, {same_tokens:.1%} of tokens equal, first difference after "
          f"{prefix:.1f} tokens on average")


if __name__ == "__main__":
    main()
