"""Inspect and verify training checkpoints (no process group, no DeepSpeed engine).

    python megagpt/checkpoint.py list checkpoints/run          # tags, step, tokens, layout, whole or why not
    python megagpt/checkpoint.py verify checkpoints/run        # the tag a resume would take
    python megagpt/checkpoint.py verify checkpoints/run global_step400 --level size

Exit status: 0 when the listed directory still holds a whole checkpoint (``verify``: when the
tag checked is whole), 1 otherwise, 2 for usage errors.
"""
import argparse
import json
import sys
from pathlib import Path

from megagpt.formats.manifest import MANIFEST, VERIFY_LEVELS, CheckpointError, choose_tag, latest_tag, tags, verify


def _describe(tag_dir: Path) -> str:
    try:
        m = json.loads((tag_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return "-"
    return (f"step {m.get('step')}, {m.get('tokens')} tokens, {m.get('layout')} tp={m.get('tp')} "
            f"pp={m.get('pp')} dp={m.get('dp')} zero={m.get('zero_stage')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="List and verify megagpt training checkpoints.")
    ap.add_argument("command", choices=["list", "verify"])
    ap.add_argument("dir", help="train.checkpoint_dir")
    ap.add_argument("tag", nargs="?", help="verify: this tag (default: the one a resume would take)")
    ap.add_argument("--level", choices=VERIFY_LEVELS, default="full", help="sizes and hashes, sizes, or nothing")
    args = ap.parse_args(argv)
    ckpt = Path(args.dir)
    if not ckpt.is_dir():
        print(f"error: {ckpt}: no such directory.", file=sys.stderr)
        return 2
    if args.command == "list":
        latest, whole, found = latest_tag(ckpt), 0, tags(ckpt)
        for tag in found:
            why = verify(ckpt / tag, args.level)
            whole += why is None
            mark = " (latest)" if tag == latest else ""
            print(f"{tag}{mark}: {_describe(ckpt / tag)}: {'whole' if why is None else 'BROKEN: ' + why}")
        if not found:
            print(f"{ckpt}: no checkpoints")
        return 0 if whole else 1
    if args.tag:
        why = verify(ckpt / args.tag, args.level)
        print(f"{args.tag}: whole" if why is None else f"{args.tag}: BROKEN: {why}")
        return 0 if why is None else 1
    try:
        tag, skipped = choose_tag(ckpt, args.level)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in skipped:
        print(line)
    if tag is None:
        print(f"{ckpt}: no 'latest' file: nothing to resume.")
        return 1
    print(f"a resume would load {tag}: whole ({_describe(ckpt / tag)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
