"""Threaded conversations -> dialogue training sessions (DialoGPT's format) as Megatron shards.

    python data_tools/build_dialogues.py --mail posts/ --reddit RC_2019-01.jsonl \\
        --turns chatterbot/english/*.yml --tokenizer tok.model --out out/dialogue --name en
    python data_tools/build_dialogues.py --turns chatterbot/chinese/*.yml --language zh \\
        --tokenizer zh.model --out out/dialogue --name zh --reverse

Each session (a root-to-leaf path of a thread, filtered by ``data_tools/dialogues.py``) becomes
one document: turn_1 EOD turn_2 EOD ... turn_n EOD, in a seeded random order (so every source
reaches the held-out tail a training run validates on). Beside ``<name>_text_document.{bin,idx}`` goes
``<name>_mask_document.{bin,idx}``, the same sizes with 1 on every token the model learns (every
turn after the first, and its EOD) and 0 on the opening turn. ``--reverse`` writes the sessions
back to front, the data of DialoGPT's backward model P(source | target). ``--heldout N`` keeps
whole threads (sessions sharing an opening turn) out of the shards until at least N sessions are
set aside, and writes them, front to back, to ``<name>_heldout.jsonl`` (``{"turns": [...]}``); the
choice depends only on the opening turns' text, so a forward and a ``--reverse`` build of the
same input hold out the same sessions. ``<name>_report.json`` counts sessions in, kept, held out,
and dropped per reason.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from data_tools.dialogues import (
    DialogueFilter,
    build_forest,
    clean_session,
    read_mail,
    read_reddit,
    read_turn_lists,
    sessions,
)


def encode_session(turns: list[str], tok) -> tuple[list[int], list[int]]:
    """(tokens, mask): turns joined by EOD, mask 1 on the responses (all turns but the first)."""
    ids, mask = [], []
    for i, t in enumerate(turns):
        piece = tok.encode(t) + [tok.eod_id]
        ids += piece
        mask += [int(i > 0)] * len(piece)
    return ids, mask


def split_heldout(sessions_: list[list[str]], n: int) -> tuple[list[list[str]], list[list[str]]]:
    """(train, held out): whole threads, in the order of a hash of their opening turn, are held
    out until at least ``n`` sessions are."""
    if n <= 0:
        return sessions_, []
    def key(turn: str) -> str:
        return hashlib.sha256(turn.encode("utf-8")).hexdigest()
    roots: dict[str, int] = {}
    for s in sessions_:
        roots[s[0]] = roots.get(s[0], 0) + 1
    held_roots, count = set(), 0
    for root in sorted(roots, key=key):
        if count >= n:
            break
        held_roots.add(root)
        count += roots[root]
    return ([s for s in sessions_ if s[0] not in held_roots], [s for s in sessions_ if s[0] in held_roots])


def collect(args, counts: Counter) -> list[list[str]]:
    out = []
    for path in args.turns:
        for conv in read_turn_lists(Path(path), counts):
            out.append(conv)
    msgs = []
    for path in args.mail:
        p = Path(path)
        msgs += list(read_mail(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]))
    for path in args.reddit:
        msgs += list(read_reddit(Path(path), counts))
    if msgs:
        forest = build_forest(msgs)
        counts.update({f"thread_{k}": v for k, v in forest.counts.items()})
        out += [[m.text for m in s] for s in sessions(forest)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mail", nargs="*", default=[], help="message files, directories of them, or .mbox files")
    ap.add_argument("--reddit", nargs="*", default=[], help="Reddit-style JSONL (id, parent_id, body)")
    ap.add_argument("--turns", nargs="*", default=[], help="chatterbot-corpus YAML or JSONL {'turns': [...]}")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece .model")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--name", default="dialogue")
    ap.add_argument("--language", choices=["en", "zh"], default="en")
    ap.add_argument("--max-words", type=int, default=200)
    ap.add_argument("--offensive", help="a file with one offensive word per line")
    ap.add_argument("--reverse", action="store_true", help="sessions back to front (the backward model's data)")
    ap.add_argument("--seed", type=int, default=1,
                    help="the order of the sessions in the shards (the same forward and reverse)")
    ap.add_argument("--heldout", type=int, default=0, metavar="N",
                    help="hold out whole threads until N sessions are out of the shards; they go to "
                         "<name>_heldout.jsonl")
    args = ap.parse_args(argv)
    from megagpt.data.indexed import IndexedDatasetWriter, token_dtype
    from megagpt.data.tokenizer import Tokenizer

    try:
        tok = Tokenizer(args.tokenizer)
        offensive = (frozenset(w.strip() for w in open(args.offensive, encoding="utf-8"))
                     if args.offensive else frozenset())
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts: Counter = Counter()
    raw = collect(args, counts)
    filt = DialogueFilter(language=args.language, max_words=args.max_words, offensive=offensive)
    clean = [c for c in (clean_session(s, filt, counts) for s in raw) if c is not None]
    train, heldout = split_heldout(clean, args.heldout)
    random.Random(args.seed).shuffle(train)  # sources mixed through the shard (its tail is the validation split)
    kept = [s[::-1] for s in train] if args.reverse else train
    args.out.mkdir(parents=True, exist_ok=True)
    if args.heldout:
        from megagpt import jsonl
        jsonl.write(args.out / f"{args.name}_heldout.jsonl", ({"turns": s} for s in heldout))
    dtype = token_dtype(tok.vocab_size)
    tokens = responses = 0
    with IndexedDatasetWriter(args.out / f"{args.name}_text_document", dtype) as text, \
            IndexedDatasetWriter(args.out / f"{args.name}_mask_document", np.uint16) as mask:
        for s in kept:
            ids, m = encode_session(s, tok)
            text.add_document(ids)
            mask.add_document(m)
            tokens += len(ids)
            responses += sum(m)
    report = {"sessions_in": len(raw), "sessions_kept": len(kept), "sessions_heldout": len(heldout),
              "turns_kept": sum(map(len, kept)),
              "dropped_or_cut": dict(sorted(counts.items())), "tokens": tokens, "response_tokens": responses,
              "language": args.language, "reverse": args.reverse}
    (args.out / f"{args.name}_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{args.name}: {len(raw)} sessions in, {len(kept)} kept ({sum(map(len, kept))} turns, {tokens} tokens, "
          f"{responses} response tokens), {len(heldout)} held out; "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
