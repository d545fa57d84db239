"""Train the sentencepiece BPE tokenizer on a sample of cleaned JSONL (build_source.py does this
itself when no --tokenizer is given).

    python data_tools/train_tokenizer.py --vocab-size 50257 --model out/tokenizer.model out/*/deduped/
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_tools.document import ErrorLog
from data_tools.readers import list_inputs, read_file
from data_tools.tokenizer import TokenizerConfig, train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="JSONL files or directories (cleaned text)")
    p.add_argument("--model", required=True, help="output .model path")
    p.add_argument("--vocab-size", type=int, default=TokenizerConfig.vocab_size)
    p.add_argument("--sample-bytes", type=int, default=TokenizerConfig.sample_bytes)
    a = p.parse_args(argv)
    files = list_inputs(a.inputs)
    errors = ErrorLog()
    texts = (d.text for f in files for d in read_file(f, "tok", errors))
    cfg = TokenizerConfig(vocab_size=a.vocab_size, sample_bytes=a.sample_bytes)
    model = train(texts, a.model, cfg, total_bytes=sum(f.stat().st_size for f in files))
    print(json.dumps(json.loads(Path(model).with_suffix(".json").read_text())["special_ids"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
