"""Chat with a dialogue model in the terminal (DialoGPT style), optionally with MMI reranking.

    python megagpt/chat.py --model fwd.safetensors
    python megagpt/chat.py --model fwd.safetensors --backward bwd.safetensors --n 16    # MMI
    python megagpt/chat.py --model fwd.safetensors --input questions.txt               # no terminal

Each line you type is a turn; the model answers after ``bot>``. The history keeps the last
``--turns`` turns and whatever of them fits the context. Commands: ``/reset`` forgets the
history, ``/history`` shows it, ``/quit`` (or end of input) leaves. Input is read as bytes and
decoded as UTF-8 with replacement, so Chinese input works and broken bytes cannot stop the chat.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from megagpt._entry import fix_path

    fix_path(__file__)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Chat with a megagpt dialogue model.")
    ap.add_argument("--model", required=True, help="the forward model (an export or a Hugging Face directory)")
    ap.add_argument("--backward", help="the backward model P(source | response): turns MMI reranking on")
    ap.add_argument("--no-mmi", action="store_true", help="sample without reranking even with --backward")
    ap.add_argument("--n", type=int, default=16, help="MMI: candidates sampled per reply")
    ap.add_argument("--mmi-weight", type=float, default=0.0, help="MMI: weight of the forward log-probability")
    ap.add_argument("--tokenizer", help="sentencepiece .model (default: the one the model names)")
    ap.add_argument("--turns", type=int, default=6, help="turns of history kept")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", help="read the turns from this file (one per line) instead of the terminal")
    return ap.parse_args(argv)


def lines(stream):
    """Input lines as text: UTF-8 with replacement characters for broken bytes."""
    raw = getattr(stream, "buffer", stream)
    while True:
        line = raw.readline()
        if not line:
            return
        yield (line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line).rstrip("\r\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    from megagpt.inference import SamplingParams, WeightsError, load, load_for_text
    from megagpt.inference.mmi import reply

    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed).validate()
        fwd, tok = load_for_text(args.model, tokenizer=args.tokenizer)
        bwd = None if (args.no_mmi or not args.backward) else load(args.backward, with_tokenizer=False).model
        if args.n < 1 or args.turns < 1:
            raise ValueError("--n and --turns must be at least 1.")
    except (ValueError, FileNotFoundError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    source = open(args.input, "rb") if args.input else sys.stdin
    interactive = args.input is None and sys.stdin.isatty()
    history: list[str] = []
    out = sys.stdout
    mode = f"MMI over {args.n} samples" if bwd is not None else "sampling"
    print(f"chat ({mode}); /reset forgets, /history shows, /quit leaves", flush=True)
    turn = 0
    while True:
        out.write("you> ")
        out.flush()
        try:
            text = next(lines(source))
        except StopIteration:
            break
        if not interactive:
            print(text, flush=True)
        text = text.strip()
        if not text:
            continue
        if text == "/quit":
            break
        if text == "/reset":
            history.clear()
            print("(history cleared)", flush=True)
            continue
        if text == "/history":
            print("\n".join(f"  {i + 1}. {t}" for i, t in enumerate(history)) or "(empty)", flush=True)
            continue
        history.append(text)
        history[:] = history[-args.turns:]
        best, _ = reply(fwd, tok, history, replace(params, seed=args.seed + turn),
                        backward=bwd, n=args.n, weight=args.mmi_weight)
        answer = best.text.strip() or "..."
        print(f"bot> {answer}", flush=True)
        history.append(answer)
        history[:] = history[-args.turns:]
        turn += 1
    if args.input:
        source.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
