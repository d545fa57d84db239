"""Build one source: raw inputs -> cleaned, filtered, deduplicated JSONL -> sentencepiece model
(trained on a sample unless ``--tokenizer`` is given) -> Megatron shards -> report.

    python data_tools/build_source.py --source cc --out out/ dumps/*.warc.wet.gz --workers 4
    mpirun -np 4 python data_tools/build_source.py --source cc --out out/ dumps/

Outputs under ``--out``: ``<source>/deduped/*.jsonl``, ``<source>_text_document.{bin,idx}``
(or ``shards/<source>_NNNNN_text_document.*`` with ``--shard-per-file``), ``tokenizer.model``,
``<source>_report.{json,txt}``. Rerunning the same command resumes a killed run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from data_tools import pipeline as pl  # noqa: E402
from data_tools import report  # noqa: E402
from data_tools.document import InputError, Stats  # noqa: E402
from data_tools.readers import list_inputs  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="input files or directories")
    p.add_argument("--source", required=True, help="source name, e.g. common_crawl, webtext2, books1")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", choices=("wet", "warc", "jsonl", "parquet", "txt", "wiki"),
                   help="input format (default: from file names)")
    p.add_argument("--config", help="JSON or YAML file with PipelineConfig fields (unknown keys rejected)")
    p.add_argument("--filters", help=f"comma list from {','.join(pl.ALL_FILTERS)}, or 'none'")
    p.add_argument("--classifier", help="quality_classifier.py model to apply (GPT-3 Pareto rule)")
    p.add_argument("--decontam", nargs="*", default=None, help="evaluation files for 13-gram decontamination")
    p.add_argument("--dedup-against", nargs="*", default=[],
                   help="work dirs (<out>/work/<source>) of finished sources whose documents are removed from this one")
    p.add_argument("--tokenizer", help="existing sentencepiece .model (default: train one)")
    p.add_argument("--vocab-size", type=int, help="vocabulary size of the trained tokenizer")
    p.add_argument("--shard-per-file", action="store_true", help="keep one shard per input file")
    p.add_argument("--no-tokenize", action="store_true",
                   help="stop after the deduplicated JSONL (to train one tokenizer over several sources "
                        "with train_tokenizer.py, then rerun with --tokenizer)")
    p.add_argument("--workers", type=int, default=1, help="processes per rank")
    p.add_argument("--strict", action="store_true", help="exit non-zero on the first bad input record")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def make_config(a) -> pl.PipelineConfig:
    d = {}
    if a.config:
        from megagpt.config import load_file  # names the file and line of a syntax error

        d = load_file(a.config)
    d["source"] = a.source
    if a.format:
        d["format"] = a.format
    if a.filters is not None:
        d["filters"] = [] if a.filters == "none" else [f for f in a.filters.split(",") if f]
    if a.classifier:
        d["classifier"] = a.classifier
    if a.strict:
        d["strict"] = True
    if a.decontam:
        d.setdefault("decontam", {})["eval_files"] = a.decontam
    if a.vocab_size:
        d.setdefault("tokenizer", {})["vocab_size"] = a.vocab_size
    try:
        return pl.from_dict(pl.PipelineConfig, d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{a.config or 'command line'}: {e}") from None


def _comm():
    if not any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")):
        return None
    from mpi4py import MPI
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def _map(fn, jobs, workers, stage):
    """Runs ``fn`` over jobs in ``workers`` processes (in-process for 1); results in job order."""
    done = 0
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for j in jobs:
            out.append(fn(j))
            done += 1
            pl.interrupt_hook(stage, done)
        return out
    import multiprocessing as mp
    with mp.get_context("fork").Pool(workers) as pool:
        out = []
        for r in pool.imap(fn, jobs):
            out.append(r)
            done += 1
            pl.interrupt_hook(stage, done)
        return out


def _tokenize_job(job):
    from data_tools.shards import tokenize_file
    jsonl, model, prefix, pos, progress = job
    return tokenize_file(Path(jsonl), Path(model), Path(prefix), position=pos, progress=progress)


def _report(cfg, work: Path, out: Path, n_inputs: int, summary: dict, tok: dict, walls: dict) -> dict:
    """Merges the per-file stats and writes ``<out>/<source>_report.{json,txt}``; returns errors."""
    stats, errors = Stats(), {"counts": {}, "entries": []}
    for i in range(n_inputs):
        rec = json.loads((work / "filtered" / f"{i:05d}.stats.json").read_text())
        stats.merge(rec["stats"])
        for k, v in rec["errors"]["counts"].items():
            errors["counts"][k] = errors["counts"].get(k, 0) + v
        errors["entries"] += rec["errors"]["entries"]
        stats.merge(json.loads((work / "deduped" / f"{i:05d}.stats.json").read_text())["stats"])
    rep = report.build(cfg.source, stats.to_json(), errors, summary, tok, walls)
    report.write(rep, out / f"{cfg.source}_report")
    print(report.table(rep))
    return errors


def run(a) -> int:
    cfg = make_config(a)
    comm = _comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm else (0, 1)
    barrier = comm.Barrier if comm else (lambda: None)
    out = Path(a.out)
    work = out / "work" / cfg.source
    inputs = [str(p) for p in list_inputs(a.inputs, exclude=out)]
    if not inputs:
        raise SystemExit(f"no input files found in {a.inputs}; pass files or directories of a known format.")
    if rank == 0:
        for d in ("filtered", "deduped", "dedup"):
            (work / d).mkdir(parents=True, exist_ok=True)
        # a resumed run must be the same run: same inputs, same configuration
        run_desc = {"inputs": inputs, "dedup_against": a.dedup_against,
                    "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "strict"}}
        run_desc = json.loads(json.dumps(run_desc))
        listing = work / "run.json"
        if listing.is_file() and json.loads(listing.read_text()) != run_desc:
            raise SystemExit(f"error: {listing}: inputs or options differ from the run being resumed; "
                             f"rerun with the same ones or use a fresh --out.")
        pl._atomic_write(listing, json.dumps(run_desc, indent=1))
        pl._atomic_write(work / "inputs.json", json.dumps(inputs))
    barrier()
    mine = [i for i in range(len(inputs)) if i % size == rank]
    walls = {}

    # stage 1: read, clean, filter, decontaminate, sign -- per file
    t0 = time.perf_counter()
    if "language" in cfg.filters and a.workers > 1:
        from data_tools.filters.lang import identifier
        identifier()  # load once before the workers fork, not once per worker
    _map(pl.filter_file, [(i, inputs[i], cfg, str(work)) for i in mine], a.workers, "filter")
    barrier()
    walls["filter"] = time.perf_counter() - t0

    # stage 2: dedup (global; buckets exchanged across ranks)
    t0 = time.perf_counter()
    summary_path = work / "dedup" / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    else:
        files = {i: work / "filtered" / f"{i:05d}" for i in mine}
        for j, ref in enumerate(a.dedup_against):
            ref_inputs = json.loads((Path(ref) / "inputs.json").read_text())
            files.update({pl.REF_BASE + j * 65536 + k: Path(ref) / "filtered" / f"{k:05d}"
                          for k in range(len(ref_inputs)) if k % size == rank})
        res = pl.dedup_stage(files, cfg.dedup, comm)
        summary = res["summary"]
        if rank == 0:  # sorted id lists; the summary is written last and marks the stage done
            pl._atomic_save(work / "dedup" / "removed.npy", res["removed_ids"])
            pl._atomic_save(work / "dedup" / "cross.npy", res["cross_ids"])
            pl._atomic_write(summary_path, json.dumps(summary))
    barrier()
    walls["dedup"] = time.perf_counter() - t0

    # stage 3: deduped JSONL per file
    t0 = time.perf_counter()
    _map(pl.write_file, [(i, str(work)) for i in mine], a.workers, "write")
    barrier()
    walls["write"] = time.perf_counter() - t0
    deduped = [out / cfg.source / "deduped" / f"{i:05d}.jsonl" for i in range(len(inputs))]
    if a.no_tokenize:
        if rank == 0:
            _report(cfg, work, out, len(inputs), summary, {}, walls)
        return 0

    # stage 4: tokenizer
    t0 = time.perf_counter()
    model = Path(a.tokenizer) if a.tokenizer else out / "tokenizer.model"
    if a.tokenizer and not model.is_file():
        raise ValueError(f"--tokenizer {model}: file not found; pass a sentencepiece .model or omit it to train one.")
    total = sum(p.stat().st_size for p in deduped)
    if total == 0 and not model.is_file():
        # nothing survived: say so plainly (and keep the report) instead of a trainer error
        if rank == 0:
            _report(cfg, work, out, len(inputs), summary, {}, walls)
            print(f"error: no documents left after filtering and dedup (see {out / cfg.source}_report.txt); "
                  f"nothing to train a tokenizer on. Check --filters/--config, or pass --tokenizer.",
                  file=sys.stderr)
        return 1
    if rank == 0 and not model.is_file():
        from data_tools.tokenizer import train
        train((json.loads(line)["text"] for p in deduped for line in open(p, "rb")),
              model, cfg.tokenizer, total_bytes=total)
    barrier()
    walls["tokenizer"] = time.perf_counter() - t0

    # stage 5: tokenize per file, then merge
    t0 = time.perf_counter()
    shard_dir = out / "shards" if a.shard_per_file else work / "shards"
    prefixes = [shard_dir / f"{cfg.source}_{i:05d}_text_document" for i in range(len(inputs))]
    jobs = [(str(deduped[i]), str(model), str(prefixes[i]), k, not a.no_progress)
            for k, i in enumerate(mine)]
    _map(_tokenize_job, jobs, a.workers, "tokenize")
    barrier()
    rc = 0
    if rank == 0:
        from data_tools.shards import merge
        from megagpt.data.indexed import IndexedDataset
        final = out / f"{cfg.source}_text_document"
        if not a.shard_per_file and not Path(str(final) + ".idx").is_file():
            merge(prefixes, final)
        tok = {"documents": 0, "tokens": 0, "bytes": sum(p.stat().st_size for p in deduped)}
        for p in prefixes:
            ds = IndexedDataset(p)
            tok["documents"] += len(ds)
            tok["tokens"] += ds.num_tokens
        walls["tokenize"] = time.perf_counter() - t0

        errors = _report(cfg, work, out, len(inputs), summary, tok, walls)
        if errors["counts"] and cfg.strict:
            rc = 1
    return rc


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        return run(a)
    except InputError as e:  # --strict: the first bad record ends the run with its location
        print(f"error: {e}", file=sys.stderr)
        comm = _comm()
        if comm is not None:  # the other ranks wait in a barrier: end them all
            comm.Abort(2)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
