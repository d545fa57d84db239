"""Generation throughput (new tokens/s), same weights, same run: megagpt with its key/value cache,
Hugging Face ``GPT2LMHeadModel.generate`` with its cache, and megagpt recomputing the whole
prefix at every step (no cache). Greedy, so the three must also produce the same tokens. A
decode step reads every weight once, so at batch 1 both cached generators are bound by memory
bandwidth: the last column shows the weight bytes each streams per second, next to a measured
memory copy.

    python benchmarks/generate_throughput.py [--prompt 64 --new 128 --batches 1 8 --n-layer 6 ...]
"""
from __future__ import annotations

import argparse

import torch
from _common import add_shape_args, median, same_weights_models, timed

from megagpt.inference.generation import SamplingParams, generate


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(ap, steps_flag="--iters", steps_default=3)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--skip-nocache", action="store_true", help="leave out the slow no-cache column")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    hf, ours = same_weights_models(args, max(args.seq, args.prompt + args.new), bos_token_id=0, eos_token_id=0)
    hf.eval(), ours.eval()

    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())  # lm_head is tied
    big = torch.empty(64 * 2**20)  # 256 MB, far beyond the caches
    copy = median(timed(lambda: big.clone(), warmup=1, iters=5))
    stream = 2 * big.numel() * 4 / copy  # bytes read + written per second
    print(f"weights {weight_bytes / 2**20:.0f} MiB read once per decode step; measured memory copy "
          f"bandwidth {stream / 1e9:.1f} GB/s (read + write)")
    print(f"shape: {args.n_layer} layers, n_embd {args.n_embd}, {args.n_head} heads, vocab {args.vocab}; "
          f"prompt {args.prompt}, {args.new} new tokens, greedy, fp32, {args.threads} threads, "
          f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"{'batch':>5} {'megagpt cache':>14} {'HF generate':>12} {'megagpt no cache':>17} "
          f"{'vs HF':>6} {'vs no cache':>11} {'same tokens':>11} {'weights GB/s ours/HF':>21}")
    for batch in args.batches:
        prompt = torch.randint(0, args.vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
        rows = prompt.tolist()
        params = SamplingParams(max_new_tokens=args.new, temperature=0, stop_at_eod=False)
        out = {}

        def ours_cached():
            out["ours"] = [c.tokens for c in generate(ours, rows, params)]

        def ours_nocache():
            out["nocache"] = [c.tokens for c in generate(ours, rows, params, use_cache=False)]

        def hf_generate():
            with torch.no_grad():
                res = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new,
                                  min_new_tokens=args.new, do_sample=False, use_cache=True,
                                  pad_token_id=0, eos_token_id=None)
            out["hf"] = res[:, args.prompt:].tolist()

        t = {}
        for _ in range(2):  # alternate, so drift in the machine's speed hits both
            t.setdefault("ours", []).extend(timed(ours_cached, warmup=1, iters=args.iters))
            t.setdefault("hf", []).extend(timed(hf_generate, warmup=1, iters=args.iters))
        if not args.skip_nocache:
            t["nocache"] = timed(ours_nocache, warmup=0, iters=1)
        tok = batch * args.new
        rate = {k: tok / median(v) for k, v in t.items()}
        same = out["ours"] == out["hf"] and out["ours"] == out.get("nocache", out["ours"])
        nc = rate.get("nocache", float("nan"))
        print(f"{batch:5d} {rate['ours']:12.0f}/s {rate['hf']:10.0f}/s {nc:15.0f}/s "
              f"{rate['ours'] / rate['hf']:5.2f}x {rate['ours'] / nc:10.2f}x {'yes' if same else 'NO':>11} "
              f"{rate['ours'] / batch * weight_bytes / 1e9:11.1f} / {rate['hf'] / batch * weight_bytes / 1e9:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
