"""Generation throughput (new tokens/s), same weights, same run: Hugging Face
``GPT2LMHeadModel.generate`` with its cache; megagpt with its key/value cache in fp32, with the
compiled one-token step over a static cache (``--compile``'s path), and with int8 weights
(``--dtype int8``); and megagpt recomputing the whole prefix at every step (no cache). Greedy, so
the fp32 columns must produce HF's tokens; int8's agreement with them is printed. A decode step
reads every weight once, so at batch 1 the cached generators are bound by the bytes they stream:
the last column shows the weight bytes fp32 megagpt and HF stream per second, next to a measured
memory copy.

    python -m benchmarks.generate_throughput [--prompt 64 --new 128 --batches 1 8 --n-layer 6 ...]
"""
from __future__ import annotations

import argparse
import copy

import torch

from benchmarks._common import add_shape_args, median, same_weights_models, timed, token_agreement
from megagpt.inference.generation import SamplingParams, generate
from megagpt.inference.int8 import quantize_int8


def decoders(hf, ours, int8, prompt: torch.Tensor, params: SamplingParams) -> tuple[dict, dict]:
    """One batch's decoders by column, each a callable that decodes ``prompt`` and leaves its new
    tokens in ``out[column]``; returns (the decoders, out)."""
    rows, n_prompt, n_new = prompt.tolist(), prompt.shape[1], params.max_new_tokens
    out: dict = {}

    def megagpt_generate(name, model, **kw):
        def fn():
            out[name] = [c.tokens for c in generate(model, rows, params, **kw)]
        return fn

    def hf_generate():
        with torch.no_grad():
            res = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                              min_new_tokens=n_new, do_sample=False, use_cache=True,
                              pad_token_id=0, eos_token_id=None)
        out["hf"] = res[:, n_prompt:].tolist()

    return {"hf": hf_generate, "fp32": megagpt_generate("fp32", ours),
            "compiled": megagpt_generate("compiled", ours, compile=True), "int8": megagpt_generate("int8", int8),
            "nocache": megagpt_generate("nocache", ours, use_cache=False)}, out

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
    hf.eval(), ours.eval().requires_grad_(False)
    int8 = quantize_int8(copy.deepcopy(ours))

    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())  # lm_head is tied
    big = torch.empty(64 * 2**20)  # 256 MB
    copy_s = median(timed(lambda: big.clone(), warmup=1, iters=5))
    stream = 2 * big.numel() * 4 / copy_s  # bytes read + written per second
    print(f"weights {weight_bytes / 2**20:.0f} MiB fp32 read once per decode step; measured memory copy "
          f"bandwidth {stream / 1e9:.1f} GB/s (read + write)")
    print(f"shape: {args.n_layer} layers, n_embd {args.n_embd}, {args.n_head} heads, vocab {args.vocab}; "
          f"prompt {args.prompt}, {args.new} new tokens, greedy, {args.threads} threads, "
          f"transformers {transformers.__version__}, torch {torch.__version__}")
    cols = ["HF generate", "fp32", "compiled", "int8", "no cache"]
    print(f"{'batch':>5} " + " ".join(f"{c:>12}" for c in cols) + "   vs HF: fp32 compiled int8 | "
          "fp32 = compiled = HF tokens | int8 tokens = fp32 | weights GB/s fp32/HF")
    for batch in args.batches:
        prompt = torch.randint(0, args.vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
        params = SamplingParams(max_new_tokens=args.new, temperature=0, stop_at_eod=False)
        fns, out = decoders(hf, ours, int8, prompt, params)
        nocache = fns.pop("nocache")
        t: dict = {}
        for _ in range(2):  # interleaved, so drift in the machine's speed hits every column alike
            for name, fn in fns.items():
                t.setdefault(name, []).extend(timed(fn, warmup=1, iters=args.iters))
        if not args.skip_nocache:
            t["nocache"] = timed(nocache, warmup=0, iters=1)
        tok = batch * args.new
        rate = {k: tok / median(v) for k, v in t.items()}
        same = out["fp32"] == out["hf"] == out["compiled"] and out["fp32"] == out.get("nocache", out["fp32"])
        cells = [rate.get(k, float("nan")) for k in ("hf", "fp32", "compiled", "int8", "nocache")]
        print(f"{batch:5d} " + " ".join(f"{c:10.0f}/s" for c in cells) +
              f"   {rate['fp32'] / rate['hf']:4.2f}x {rate['compiled'] / rate['hf']:5.2f}x "
              f"{rate['int8'] / rate['hf']:5.2f}x | {'yes' if same else 'NO':>3} | "
              f"{token_agreement(out['fp32'], out['int8']):6.1%} | "
              f"{rate['fp32'] / batch * weight_bytes / 1e9:.1f} / {rate['hf'] / batch * weight_bytes / 1e9:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
