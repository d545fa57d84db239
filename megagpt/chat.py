"""Chat with a dialogue model in the terminal (DialoGPT style), optionally with MMI reranking.

    python megagpt/chat.py --model fwd.safetensors
    python megagpt/chat.py --model fwd.safetensors --backward bwd.safetensors --n 16    # MMI
    python megagpt/chat.py --model fwd.safetensors --input questions.txt               # no terminal
    python megagpt/chat.py --model fwd.safetensors --backward bwd.safetensors \
        --heldout en_heldout.jsonl --report mmi.json      # MMI's effect on held-out sessions

Each line you type is a turn; the model answers after ``bot>``. The history keeps the last
``--turns`` turns and whatever of them fits the context. Commands: ``/reset`` forgets the
history, ``/history`` shows it, ``/quit`` (or end of input) leaves. Input is read as bytes and
decoded as UTF-8 with replacement, so Chinese input works and broken bytes cannot stop the chat.

``--heldout`` answers the history of each held-out session (every turn but the last, as
``build_dialogues.py --heldout`` writes them) with a plain sample and, given ``--backward``, with
the MMI choice among ``--n`` samples (the plain sample is the first of them), and prints
distinct-1, distinct-2 and the average length of each next to the human responses.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Chat with a megagpt dialogue model.")
    ap.add_argument("--model", required=True, help="the forward model (an export or a Hugging Face directory)")
    ap.add_argument("--backward", help="the backward model P(source | response): turns MMI reranking on")
    ap.add_argument("--no-mmi", action="store_true", help="sample without reranking even with --backward")
    ap.add_argument("--n", type=int, default=16, help="MMI: candidates sampled per reply")
    ap.add_argument("--mmi-weight", type=float, default=0.0, help="MMI: weight of the forward log-probability")
    ap.add_argument("--tokenizer", help="sentencepiece .model (default: the one the model names)")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16", "int8"), default="fp32",
                    help="int8: int8 weights on CPU for both models (megagpt/inference/int8.py)")
    ap.add_argument("--turns", type=int, default=6, help="turns of history kept")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", help="read the turns from this file (one per line) instead of the terminal")
    ap.add_argument("--heldout", help="held-out sessions (JSONL {'turns': [...]}): measure sampling vs MMI on them")
    ap.add_argument("--limit", type=int, default=100, help="--heldout: sessions used")
    ap.add_argument("--report", help="--heldout: write every reply and the figures to this JSON file")
    return ap.parse_args(argv)


def lines(stream):
    """Input lines as text: UTF-8 with replacement characters for broken bytes."""
    raw = getattr(stream, "buffer", stream)
    while True:
        line = raw.readline()
        if not line:
            return
        yield (line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line).rstrip("\r\n")


def heldout_report(args, fwd, bwd, tok, params) -> int:
    import json

    from megagpt import jsonl
    from megagpt.dialogue.mmi import diversity, reply

    sessions = []
    for _, where, obj in jsonl.objects(args.heldout):
        turns = obj.get("turns")
        if not (isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, str) for t in turns)):
            raise ValueError(f"{where}: expected {{\"turns\": [two or more strings]}}.")
        sessions.append(turns)
        if len(sessions) == args.limit:
            break
    if not sessions:
        raise ValueError(f"{args.heldout}: no sessions.")
    rows = []
    for i, turns in enumerate(sessions):
        history = turns[:-1][-args.turns:]
        best, cands = reply(fwd, tok, history, replace(params, seed=args.seed + i), backward=bwd, n=args.n,
                            weight=args.mmi_weight)
        rows.append({"history": history, "reference": turns[-1], "sampling": cands[0].text,
                     **({"mmi": best.text} if bwd is not None else {})})
    systems = ["reference", "sampling"] + (["mmi"] if bwd is not None else [])
    figures = {k: diversity([r[k] for r in rows]) for k in systems}
    print(f"{len(rows)} held-out sessions from {args.heldout}" + (f", MMI over {args.n} samples" if bwd else ""))
    print(f"{'':<10} {'distinct-1':>10} {'distinct-2':>10} {'avg len':>8}")
    for k in systems:
        f = figures[k]
        print(f"{k:<10} {f['distinct_1']:>10.3f} {f['distinct_2']:>10.3f} {f['avg_len']:>8.1f}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump({"sessions": len(rows), "n": args.n, "figures": figures, "replies": rows}, f,
                      ensure_ascii=False, indent=1)
    return 0


def history_command(text: str, history: list[str]) -> bool:
    """/reset and /history act on the history; True when ``text`` was one of them."""
    if text == "/reset":
        history.clear()
        print("(history cleared)", flush=True)
        return True
    if text == "/history":
        print("\n".join(f"  {i + 1}. {t}" for i, t in enumerate(history)) or "(empty)", flush=True)
        return True
    return False


def converse(args, fwd, bwd, tok, params, source, interactive: bool) -> None:
    """The conversation: a turn per line of ``source`` (echoed when it is not a terminal), an answer
    after ``bot>``, until /quit or the end of the input."""
    from megagpt.dialogue.mmi import reply

    history: list[str] = []
    mode = f"MMI over {args.n} samples" if bwd is not None else "sampling"
    print(f"chat ({mode}); /reset forgets, /history shows, /quit leaves", flush=True)
    turn = 0
    while True:
        sys.stdout.write("you> ")
        sys.stdout.flush()
        try:
            text = next(lines(source))
        except StopIteration:
            if not interactive:
                print(flush=True)  # end the last prompt's line
            return
        if not interactive:
            print(text, flush=True)
        text = text.strip()
        if text == "/quit":
            return
        if not text or history_command(text, history):
            continue
        history.append(text)
        history[:] = history[-args.turns:]
        best, _ = reply(fwd, tok, history, replace(params, seed=args.seed + turn),
                        backward=bwd, n=args.n, weight=args.mmi_weight)
        answer = best.text or "..."
        print(f"bot> {answer}", flush=True)
        history.append(answer)
        history[:] = history[-args.turns:]
        turn += 1


def main(argv=None) -> int:
    args = parse_args(argv)
    from megagpt.inference import SamplingParams, WeightsError, load, load_for_text

    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed).validate()
        fwd, tok = load_for_text(args.model, tokenizer=args.tokenizer, dtype=args.dtype)
        bwd = None if (args.no_mmi or not args.backward) else load(args.backward, with_tokenizer=False,
                                                                  dtype=args.dtype).model
        if args.n < 1 or args.turns < 1:
            raise ValueError("--n and --turns must be at least 1.")
    except (ValueError, FileNotFoundError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.heldout:
        try:
            return heldout_report(args, fwd, bwd, tok, params)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.input:
        with open(args.input, "rb") as source:
            converse(args, fwd, bwd, tok, params, source, interactive=False)
    else:
        converse(args, fwd, bwd, tok, params, sys.stdin, interactive=sys.stdin.isatty())
    return 0


if __name__ == "__main__":
    sys.exit(main())
