"""Generate text from an exported model, a Hugging Face GPT-2 directory or a training checkpoint.

    python megagpt/generate.py --model demo/run/model.safetensors --prompt "The history of"
    deepspeed --num_gpus 2 megagpt/generate.py --model checkpoints/run --tokenizer tok.model \\
        --prompt-file prompts.txt --max-new-tokens 200 --top-p 0.9 --output out.jsonl
    mpirun -np 4 python megagpt/generate.py --model ... --tp 2      # tp 2 x dp 2

Under a launcher the world is split into tensor-parallel groups of ``--tp`` ranks (default: the
whole world): each rank holds its shard of the weights, the prompts are dealt out over the
data-parallel groups, and rank 0 prints (and writes ``--output``) in the prompts' order. A
training checkpoint loads whatever tp/pp/dp it was saved with.
"""
from __future__ import annotations

import argparse
import json
import sys

from megagpt.inference import add_model_args
from megagpt.inference.distributed import dp_share, finish, gather_dp, setup_parallel
from megagpt.inference.generation import SamplingParams, generate


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Generate continuations with a megagpt model.")
    add_model_args(ap)
    ap.add_argument("--prompt", action="append", default=[], help="repeat for several prompts")
    ap.add_argument("--prompt-file", help="one prompt per line (.txt) or {'prompt': ...} per line (.jsonl)")
    ap.add_argument("--output", help="write {'prompt', 'completion', 'finish_reason'} per line (JSONL)")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--num-return-sequences", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cache", action="store_true", help="recompute the whole prefix at every step")
    ap.add_argument("--compile", action="store_true",
                    help="decode with a torch.compile'd one-token step over a static cache (tp 1; fp32/bf16/fp16)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if args.prompt_file.endswith(".jsonl"):
                    try:
                        prompts.append(json.loads(line)["prompt"])
                    except (ValueError, KeyError, TypeError):
                        raise ValueError(f"{args.prompt_file}:{n}: expected a JSON object with a "
                                         f"'prompt' string.") from None
                else:
                    prompts.append(line.rstrip("\n"))
    if not prompts:
        raise ValueError("give at least one --prompt or a --prompt-file.")
    return prompts


def main(argv=None) -> int:
    args = parse_args(argv)
    from megagpt.inference import WeightsError, load_for_text

    try:
        prompts = read_prompts(args)
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                                stop=tuple(args.stop), num_return_sequences=args.num_return_sequences,
                                seed=args.seed).validate()
        ps, device = setup_parallel(args.tp)
        model, tok = load_for_text(args.model, tokenizer=args.tokenizer, ps=ps, tag=args.tag, dtype=args.dtype,
                                   device=device)
        if args.compile:
            from megagpt.inference.compiled import check_compilable

            if args.no_cache:
                raise ValueError("--compile decodes over a cache; drop --no-cache.")
            check_compilable(model)
    except (ValueError, FileNotFoundError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mine = dp_share(len(prompts), ps)  # this data-parallel group's prompts
    results = {}
    for b in range(0, len(mine), args.batch_size):
        chunk = mine[b:b + args.batch_size]
        ids = [tok.encode(prompts[i]) or [tok.eod_id] for i in chunk]
        for c in generate(model, ids, params, eod_id=tok.eod_id, decode=tok.decode, use_cache=not args.no_cache,
                          compile=args.compile):
            results.setdefault(chunk[c.prompt_index], []).append((c.text, c.finish_reason))
    results = gather_dp(results, ps)
    if ps is None or ps.rank == 0:
        out = open(args.output, "w", encoding="utf-8") if args.output else None
        for i, prompt in enumerate(prompts):
            for text, reason in results[i]:
                print(f"--- {prompt!r} ->\n{prompt}{text}\n", flush=True)
                if out:
                    out.write(json.dumps({"prompt": prompt, "completion": text, "finish_reason": reason},
                                         ensure_ascii=False) + "\n")
        if out:
            out.close()
    finish(ps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
