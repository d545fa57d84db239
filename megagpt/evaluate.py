"""Evaluate a model: perplexity of a corpus and zero/one/few-shot tasks (GPT-2's and GPT-3's protocols).

    python megagpt/evaluate.py --model demo/run/model.safetensors \\
        --tasks demo/eval/*.jsonl --shots 0,1,8 --perplexity demo/eval/lee_heldout.jsonl
    deepspeed --num_gpus 8 megagpt/evaluate.py --model checkpoints/run --tp 2 --tasks ... \\
        --output results.json --tensorboard-dir runs/tb --decontam-report data/out/*/deduped

``--model`` takes an export, a Hugging Face GPT-2 directory or a training checkpoint (any layout).
Under a launcher the world is split into tensor-parallel groups of ``--tp`` ranks (default: all);
requests are dealt out over the data-parallel groups and gathered, and rank 0 prints the table and
writes ``--output`` (one JSON: a row per task, k and metric, with a bootstrap standard error).
Task files and their schema: ``megagpt/eval/__init__.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from megagpt.inference import add_model_args
from megagpt.inference.distributed import finish, setup_parallel


def parse_shots(text: str) -> list[int | str]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part == "max":
            out.append("max")
        elif part.isdigit():
            out.append(int(part))
        else:
            raise ValueError(f"--shots: expected integers or 'max' separated by commas, got {part!r}.")
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Evaluate a megagpt model on task files and corpora.")
    add_model_args(ap)
    ap.add_argument("--tasks", nargs="*", default=[], help="task files (JSONL, see megagpt/eval)")
    ap.add_argument("--shots", default="0,1,8", help="k values, e.g. 0,1,8 or 0,max (as many as fit)")
    ap.add_argument("--seed", type=int, default=1234, help="draws the conditioning examples")
    ap.add_argument("--limit", type=int, default=None, help="only the first N test items of each task")
    ap.add_argument("--perplexity", action="append", default=[],
                    help="a corpus: .jsonl ('text' per line), .txt (one document), or a Megatron shard "
                         "prefix (.bin/.idx); repeatable")
    ap.add_argument("--stride", type=int, default=None, help="perplexity window stride (default n_positions)")
    ap.add_argument("--max-docs", type=int, default=None, help="perplexity: the first N documents of each corpus")
    ap.add_argument("--decontam-report", nargs="+", default=None, metavar="TRAIN_TEXT",
                    help="training text (build_source's deduped/ directories, .jsonl or .txt): report "
                         "clean and dirty items separately")
    ap.add_argument("--output", help="write the results as one JSON file")
    ap.add_argument("--tensorboard-dir", help="add eval/<task>/<metric> scalars at the model's step to the run "
                    "the model was trained in, <dir>/<train.run_name> (the training run's tensorboard_dir)")
    ap.add_argument("--dump-prompts", metavar="DIR", help="write each task's prompts and scores as JSONL")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def read_corpus(path: str, tok, max_docs: int | None):
    """(token ids, text) per document."""
    from megagpt.data.indexed import IndexedDataset

    prefix = path[:-4] if path.endswith((".bin", ".idx")) else path
    if os.path.isfile(prefix + ".idx"):
        ds = IndexedDataset(prefix)
        for i in range(len(ds) if max_docs is None else min(max_docs, len(ds))):
            ids = [int(t) for t in ds[i]]
            while ids and ids[-1] == tok.eod_id:  # documents end with EOD in the shards
                ids.pop()
            yield ids, tok.decode(ids)
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such corpus (.jsonl, .txt, or a shard prefix with .idx/.bin).")
    if path.endswith(".jsonl"):
        from megagpt import jsonl

        for n_docs, text in enumerate(jsonl.texts(path), 1):
            yield tok.encode(text), text
            if max_docs is not None and n_docs >= max_docs:
                return
    else:
        text = open(path, encoding="utf-8").read()
        yield tok.encode(text), text


def main(argv=None) -> int:
    args = parse_args(argv)
    from megagpt.eval.runner import Evaluator, run_suite
    from megagpt.eval.tasks import TaskError, load_task
    from megagpt.inference import WeightsError, load_for_text

    t0 = time.time()
    ps, rc = None, 0
    try:
        shots = parse_shots(args.shots)
        if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
            raise ValueError(f"--output {args.output}: its directory does not exist.")
        tasks = [load_task(p) for p in args.tasks]
        if not tasks and not args.perplexity:
            raise ValueError("nothing to evaluate: give --tasks and/or --perplexity.")
        ps, device = setup_parallel(args.tp)
        loaded = load_for_text(args.model, tokenizer=args.tokenizer, ps=ps, tag=args.tag, dtype=args.dtype,
                               device=device)
        model, tok = loaded
        ev = Evaluator(model, tok, ps, batch_size=args.batch_size)
        meta = {"model": str(args.model), "step": loaded.meta.get("step")}
        args.run_name = loaded.meta.get("run_name") or Path(args.model).stem  # its TensorBoard run
        contamination = None
        if args.decontam_report:
            from megagpt.eval.contamination import TrainingNgrams

            contamination = TrainingNgrams(args.decontam_report)
        kept: list = []
        rows = run_suite(ev, tasks, shots, seed=args.seed, limit=args.limit, contamination=contamination,
                         meta=meta, keep=kept)
        ppl = {}
        for path in args.perplexity:
            ppl[path] = dict(ev.perplexity(read_corpus(path, tok, args.max_docs), args.stride), **meta)
        if ps is None or ps.rank == 0:
            write_results(args, rows, ppl, kept, meta, shots, ps, time.time() - t0)
    except (ValueError, FileNotFoundError, WeightsError, TaskError, OSError) as e:
        # inputs are checked alike on every rank; only rank 0 writes, and says so once
        if ps is None or ps.rank == 0:
            print(f"error: {e}", file=sys.stderr)
        rc = 2
    finally:
        finish(ps)
    return rc


def write_results(args, rows, ppl, kept, meta, shots, ps, seconds) -> None:
    from megagpt.atomic import write_atomic
    from megagpt.eval.runner import format_table, tensorboard_scalars

    if rows:
        print(format_table(rows), flush=True)
    for path, r in ppl.items():
        print(f"perplexity {path}: {r['docs']} docs, {r['tokens']} tokens | token ppl {r['token_ppl']:.3f} | "
              f"bits/byte {r['bits_per_byte']:.4f} | word ppl {r['word_ppl']:.3f} (stride {r['stride']})", flush=True)
    result = {"model": str(args.model), "step": meta["step"], "seed": args.seed, "shots": shots,
              "tp": ps.tp_size if ps else 1, "dp": ps.dp_size if ps else 1, "seconds": round(seconds, 2),
              "tasks": rows, "perplexity": ppl}
    if args.output:
        write_atomic(args.output, json.dumps(result, indent=1, ensure_ascii=False), unique=False)
    if args.dump_prompts:
        os.makedirs(args.dump_prompts, exist_ok=True)
        for res in kept:
            with open(os.path.join(args.dump_prompts, f"{res.task.name}.k{res.k}.jsonl"), "w", encoding="utf-8") as f:
                for p, rec in zip(res.prompts, res.records):
                    f.write(json.dumps(dict(rec, prompt=p.text), ensure_ascii=False) + "\n")
    if args.tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        scalars = tensorboard_scalars(rows)
        for path, r in ppl.items():
            name = os.path.basename(path).split(".")[0]
            scalars.update({f"eval/{name}/token_ppl": r["token_ppl"], f"eval/{name}/bits_per_byte": r["bits_per_byte"],
                            f"eval/{name}/word_ppl": r["word_ppl"]})
        run_dir = os.path.join(args.tensorboard_dir, args.run_name)  # the run the model was trained in
        print(f"TensorBoard: eval scalars at step {meta['step'] or 0} in {run_dir}", flush=True)
        with SummaryWriter(run_dir) as tb:
            for key, value in scalars.items():
                tb.add_scalar(key, value, meta["step"] or 0)


if __name__ == "__main__":
    sys.exit(main())
