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
import contextlib
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from data_tools import pipeline as pl
from data_tools import report
from data_tools.document import InputError, Stats
from data_tools.readers import list_inputs


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
    from megagpt.config import from_dict, load_file  # load_file names the file and line of a syntax error

    d = load_file(a.config) if a.config else {}
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
        return from_dict(pl.PipelineConfig, d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{a.config or 'command line'}: {e}") from None


def _comm():
    if not any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")):
        return None
    from mpi4py import MPI
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def _map(fn, jobs, workers, stage):
    """Runs ``fn`` over jobs in ``workers`` processes (in-process for 1); results in job order."""
    import multiprocessing as mp

    parallel = workers > 1 and len(jobs) > 1
    out = []
    with (mp.get_context("fork").Pool(workers) if parallel else contextlib.nullcontext()) as pool:
        for r in pool.imap(fn, jobs) if parallel else map(fn, jobs):
            out.append(r)
            pl.interrupt_hook(stage, len(out))
    return out


@dataclass
class _Run:
    """One rank's view of a build: its arguments, config, paths, inputs and MPI communicator, and
    ``walls``, the wall time of each stage (``walls.timer(stage)``) for the report."""
    a: argparse.Namespace
    cfg: pl.PipelineConfig
    comm: object | None
    inputs: list[str]
    walls: Stats = field(default_factory=Stats)

    def __post_init__(self):
        self.rank, self.size = (self.comm.Get_rank(), self.comm.Get_size()) if self.comm else (0, 1)
        self.out = Path(self.a.out)
        self.work = self.out / "work" / self.cfg.source
        self.mine = [i for i in range(len(self.inputs)) if i % self.size == self.rank]
        self.deduped = [pl.deduped_jsonl(self.work, i) for i in range(len(self.inputs))]

    def barrier(self) -> None:
        if self.comm:
            self.comm.Barrier()


@dataclass(frozen=True)
class TokenizeJob:
    """Stage 5 for one deduped JSONL: its shard ``prefix``; ``position`` is its progress bar's row."""
    jsonl: str
    model: str
    prefix: str
    position: int
    progress: bool


def _tokenize_job(job: TokenizeJob):
    from data_tools.shards import tokenize_file
    return tokenize_file(Path(job.jsonl), Path(job.model), Path(job.prefix), position=job.position,
                         progress=job.progress)


def _report(r: _Run, summary: dict, tok: dict) -> dict:
    """Merges the per-file stats and writes ``<out>/<source>_report.{json,txt}``; returns errors."""
    stats, errors = Stats(), {"counts": {}, "entries": []}
    for i in range(len(r.inputs)):
        rec = json.loads(pl.filter_marker(r.work, i).read_text())
        stats.merge(rec["stats"])
        for k, v in rec["errors"]["counts"].items():
            errors["counts"][k] = errors["counts"].get(k, 0) + v
        errors["entries"] += rec["errors"]["entries"]
        stats.merge(json.loads(pl.write_marker(r.work, i).read_text())["stats"])
    rep = report.build(r.cfg.source, stats.to_json(), errors, summary, tok, dict(r.walls.times))
    report.write(rep, r.out / f"{r.cfg.source}_report")
    print(report.table(rep))
    return errors


def _start(a) -> _Run:
    """The run's inputs; rank 0 makes the work dirs and checks that a resumed run is the same run."""
    from megagpt.atomic import write_atomic

    cfg = make_config(a)
    comm = _comm()
    inputs = [str(p) for p in list_inputs(a.inputs, exclude=Path(a.out))]
    if not inputs:
        raise SystemExit(f"no input files found in {a.inputs}; pass files or directories of a known format.")
    r = _Run(a, cfg, comm, inputs)
    if r.rank == 0:
        for d in ("filtered", "deduped", "dedup"):
            (r.work / d).mkdir(parents=True, exist_ok=True)
        # a resumed run must be the same run: same inputs, same configuration
        run_desc = {"inputs": inputs, "dedup_against": a.dedup_against,
                    "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "strict"}}
        run_desc = json.loads(json.dumps(run_desc))
        listing = r.work / "run.json"
        if listing.is_file() and json.loads(listing.read_text()) != run_desc:
            raise SystemExit(f"error: {listing}: inputs or options differ from the run being resumed; "
                             f"rerun with the same ones or use a fresh --out.")
        write_atomic(listing, json.dumps(run_desc, indent=1))
        write_atomic(r.work / "inputs.json", json.dumps(inputs))
    r.barrier()
    return r


def _filter(r: _Run) -> None:
    """Stage 1: read, clean, filter, decontaminate, sign -- per file."""
    with r.walls.timer("filter"):
        if "language" in r.cfg.filters and r.a.workers > 1:
            from data_tools.filters.lang import identifier
            identifier()  # load once before the workers fork, not once per worker
        _map(pl.filter_file, [pl.FilterJob(i, r.inputs[i], r.cfg, str(r.work)) for i in r.mine], r.a.workers, "filter")
        r.barrier()


def _dedup(r: _Run) -> dict:
    """Stage 2: dedup (global; buckets exchanged across ranks); returns the summary."""
    from megagpt.atomic import write_atomic

    with r.walls.timer("dedup"):
        summary_path = r.work / "dedup" / "summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
        else:
            files = {i: pl.filtered_base(r.work, i) for i in r.mine}
            files.update(pl.reference_files(r.a.dedup_against, r.rank, r.size))
            res = pl.dedup_stage(files, r.cfg.dedup, r.comm)
            summary = res["summary"]
            if r.rank == 0:  # sorted id lists; the summary is written last and marks the stage done
                pl.save_array(r.work / "dedup" / "removed.npy", res["removed_ids"])
                pl.save_array(r.work / "dedup" / "cross.npy", res["cross_ids"])
                write_atomic(summary_path, json.dumps(summary))
        r.barrier()
    return summary


def _tokenizer(r: _Run, summary: dict) -> Path | None:
    """Stage 4: the tokenizer (``--tokenizer``, or trained on rank 0); None when no text is left
    (after saying so, with the report written)."""
    with r.walls.timer("tokenizer"):
        model = Path(r.a.tokenizer) if r.a.tokenizer else r.out / "tokenizer.model"
        if r.a.tokenizer and not model.is_file():
            raise ValueError(f"--tokenizer {model}: file not found; pass a sentencepiece .model or omit it "
                             f"to train one.")
        total = sum(p.stat().st_size for p in r.deduped)
        if total == 0 and not model.is_file():
            # nothing survived: say so plainly (and keep the report) instead of a trainer error
            if r.rank == 0:
                _report(r, summary, {})
                print(f"error: no documents left after filtering and dedup (see {r.out / r.cfg.source}_report.txt); "
                      f"nothing to train a tokenizer on. Check --filters/--config, or pass --tokenizer.",
                      file=sys.stderr)
            return None
        if r.rank == 0 and not model.is_file():
            from data_tools.tokenizer import train
            train((json.loads(line)["text"] for p in r.deduped for line in open(p, "rb")),
                  model, r.cfg.tokenizer, total_bytes=total)
        r.barrier()
    return model


def _tokenize(r: _Run, model: Path) -> dict:
    """Stage 5: shards per file, merged on rank 0 unless ``--shard-per-file``; returns the counts
    (rank 0)."""
    tok = {}
    with r.walls.timer("tokenize"):
        shard_dir = r.out / "shards" if r.a.shard_per_file else r.work / "shards"
        prefixes = [shard_dir / f"{r.cfg.source}_{i:05d}_text_document" for i in range(len(r.inputs))]
        jobs = [TokenizeJob(str(r.deduped[i]), str(model), str(prefixes[i]), k, not r.a.no_progress)
                for k, i in enumerate(r.mine)]
        _map(_tokenize_job, jobs, r.a.workers, "tokenize")
        r.barrier()
        if r.rank == 0:
            from data_tools.shards import merge
            from megagpt.data.indexed import IndexedDataset
            final = r.out / f"{r.cfg.source}_text_document"
            if not r.a.shard_per_file and not Path(str(final) + ".idx").is_file():
                merge(prefixes, final)
            tok = {"documents": 0, "tokens": 0, "bytes": sum(p.stat().st_size for p in r.deduped)}
            for p in prefixes:
                ds = IndexedDataset(p)
                tok["documents"] += len(ds)
                tok["tokens"] += ds.num_tokens
    return tok


def run(a) -> int:
    r = _start(a)
    _filter(r)
    summary = _dedup(r)
    with r.walls.timer("write"):  # stage 3: deduped JSONL per file
        _map(pl.write_file, [pl.WriteJob(i, str(r.work)) for i in r.mine], r.a.workers, "write")
        r.barrier()
    if a.no_tokenize:
        if r.rank == 0:
            _report(r, summary, {})
        return 0
    model = _tokenizer(r, summary)
    if model is None:
        return 1
    tok = _tokenize(r, model)
    if r.rank != 0:
        return 0
    errors = _report(r, summary, tok)
    return 1 if errors["counts"] and r.cfg.strict else 0


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
