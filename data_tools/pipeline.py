"""One source end to end, resumable: read -> clean -> filter -> decontaminate -> signatures
(stage ``filter``, per input file) -> ``dedup`` (global) -> ``write`` deduped JSONL (per file) ->
``tokenizer`` (trained unless given) -> ``tokenize`` shards (per file) -> merge -> report.

Every per-file output is written under a temporary name and renamed when whole; the last file of
a unit of work is its marker, so a killed run resumes where it stopped without missing or
repeating a document. Files split over worker processes and, under ``mpirun``, over ranks (file
``i`` goes to rank ``i % size``); ranks exchange MinHash buckets so duplicates across ranks meet.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_tools import dedup as dd
from data_tools.classifier import ClassifierFilter, QualityClassifier
from data_tools.clean import CleanConfig, clean
from data_tools.decontam import DecontamConfig, Decontaminate
from data_tools.document import Document, ErrorLog, Stats
from data_tools.filters import (
    C4Config,
    C4Filter,
    FineWebConfig,
    FineWebFilter,
    GopherQuality,
    GopherQualityConfig,
    GopherRepetition,
    GopherRepetitionConfig,
    LanguageConfig,
    LanguageFilter,
    UrlConfig,
    UrlFilter,
)
from data_tools.readers import read_file
from data_tools.tokenizer import TokenizerConfig
from megagpt.config import check_value

ALL_FILTERS = ("url", "language", "gopher_quality", "gopher_repetition", "c4", "fineweb")
REF_BASE = 1 << 20            # file numbers of reference sources start here (never removed)


@dataclass
class PipelineConfig:
    """Everything a run needs; each component gets only its own part."""
    source: str = "source"
    format: str | None = None
    text_key: str = "text"
    filters: tuple[str, ...] = ALL_FILTERS
    classifier: str | None = None             # trained quality_classifier .npz to apply
    strict: bool = False
    clean: CleanConfig = field(default_factory=CleanConfig)
    url: UrlConfig = field(default_factory=UrlConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    c4: C4Config = field(default_factory=C4Config)
    fineweb: FineWebConfig = field(default_factory=FineWebConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    dedup: dd.DedupConfig = field(default_factory=dd.DedupConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self):
        bad = [f for f in self.filters if f not in ALL_FILTERS]
        if bad:
            raise ValueError(f"unknown filter(s) {bad}; choose from {', '.join(ALL_FILTERS)} or 'none'.")


def from_dict(cls, d: dict):
    """Dataclass from a nested dict; unknown keys are rejected with the allowed ones named."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}.")
    kw = {}
    for k, v in d.items():
        default = names[k].default_factory() if names[k].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(v, dict):
            kw[k] = from_dict(type(default), v)
        else:
            check_value(f"{cls.__name__}.{k}", v, names[k].type, error=ValueError)
            kw[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


_STEPS: tuple[str, list] | None = None


def build_steps(cfg: PipelineConfig) -> list:
    """The per-document steps, built once per process for a given config (the classifier and
    the evaluation n-gram set are loaded once, not once per input file). Steps keep no state
    between documents."""
    global _STEPS
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    if _STEPS is None or _STEPS[0] != key:
        _STEPS = (key, _build_steps(cfg))
    return _STEPS[1]


def _build_steps(cfg: PipelineConfig) -> list:
    steps = [lambda docs, stats: clean(docs, stats, cfg.clean)]
    make = {"url": lambda: UrlFilter(cfg.url), "language": lambda: LanguageFilter(cfg.language),
            "gopher_quality": lambda: GopherQuality(cfg.gopher_quality),
            "gopher_repetition": lambda: GopherRepetition(cfg.gopher_repetition),
            "c4": lambda: C4Filter(cfg.c4), "fineweb": lambda: FineWebFilter(cfg.fineweb)}
    steps += [make[name]() for name in ALL_FILTERS if name in cfg.filters]  # fixed, cheap-first order
    if cfg.classifier:
        steps.append(ClassifierFilter(QualityClassifier.load(cfg.classifier)))
    if cfg.decontam.eval_files:
        steps.append(Decontaminate(cfg.decontam))
    return steps


def _timed(name: str, it: Iterator, stats: Stats) -> Iterator:
    """Inclusive time spent producing items of ``it`` (self time = minus the upstream's)."""
    it = iter(it)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            stats.times[name] += time.perf_counter() - t0
            return
        stats.times[name] += time.perf_counter() - t0
        yield item


def _count_input(docs: Iterator[Document], stats: Stats) -> Iterator[Document]:
    for doc in docs:
        stats.count("read", "documents")
        stats.count("read", "bytes", len(doc.text.encode("utf-8", "surrogatepass")))
        yield doc


def _atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


# ------------------------------------------------------------------------- stage: filter
def filter_file(job) -> str:
    """Stage 1 for one input file: writes ``NNNNN.jsonl`` (kept documents), ``.sig.npy``
    (exact hash + band hashes), ``.off.npy`` (byte offset of each line) and, last, the marker
    ``.stats.json``. Returns the marker path."""
    index, path, cfg, work = job
    out = Path(work) / "filtered"
    marker = out / f"{index:05d}.stats.json"
    if marker.is_file():
        return str(marker)
    stats, errors = Stats(), ErrorLog(strict=cfg.strict)
    sig = dd.SignatureStep(cfg.dedup)
    docs = _timed("read", _count_input(read_file(path, cfg.source, errors, cfg.format, cfg.text_key), stats), stats)
    order = ["read"]
    for step in build_steps(cfg) + [sig]:
        name = getattr(step, "name", "clean")
        docs = _timed(name, step(docs, stats), stats)
        order.append(name)
    jsonl = out / f"{index:05d}.jsonl"
    tmp = jsonl.with_name(jsonl.name + f".tmp{os.getpid()}")
    offsets, pos = [], 0
    try:
        with open(tmp, "wb") as f:
            for doc in docs:
                line = (json.dumps(doc.to_json(), ensure_ascii=False) + "\n").encode()
                offsets.append(pos)
                f.write(line)
                pos += len(line)
    except BaseException:
        tmp.unlink(missing_ok=True)  # --strict stops here; leave no partial file behind
        raise
    # inclusive generator times -> self time per step
    incl = [stats.times.pop(n, 0.0) for n in order]
    for i, n in enumerate(order):
        stats.times[f"filter/{n}"] = max(0.0, incl[i] - (incl[i - 1] if i else 0.0))
    os.replace(tmp, jsonl)
    _atomic_save(out / f"{index:05d}.sig.npy", sig.table)
    _atomic_save(out / f"{index:05d}.off.npy", np.asarray(offsets, dtype=np.int64))
    _atomic_write(marker, json.dumps({"input": str(path), "stats": stats.to_json(),
                                      "errors": errors.to_json()}))
    return str(marker)


# ------------------------------------------------------------------------- stage: dedup
class TextStore:
    """Random access to the kept documents of finished stage-1 files, for exact verification."""

    def __init__(self, files: dict[int, Path], ngram: int, cache: int = 20_000):
        self.files, self.ngram, self.cache_size = files, ngram, cache
        self._off: dict[int, np.ndarray] = {}
        self._cache: dict[int, np.ndarray] = {}

    def text(self, gid: int) -> str:
        fno, dno = gid >> 32, gid & 0xFFFFFFFF
        base = self.files[fno]
        if fno not in self._off:
            self._off[fno] = np.load(str(base) + ".off.npy")
        with open(str(base) + ".jsonl", "rb") as f:
            f.seek(int(self._off[fno][dno]))
            return json.loads(f.readline())["text"]

    def shingles(self, gid: int) -> np.ndarray:
        if gid not in self._cache:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()  # bounded memory; verification order keeps hits local
            self._cache[gid] = dd.shingle_hashes(self.text(gid), self.ngram)
        return self._cache[gid]


def _gids(fno: int, n: int) -> np.ndarray:
    return (np.int64(fno) << np.int64(32)) + np.arange(n, dtype=np.int64)


def dedup_stage(files: dict[int, Path], cfg: dd.DedupConfig, comm=None) -> dict:
    """Finds duplicates among ``files`` (file number -> stage-1 base path; numbers >= REF_BASE
    are reference sources). Each rank passes its own files; returns the removal summary (same
    on every rank)."""
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
    tables = {fno: np.load(str(base) + ".sig.npy", mmap_mode="r") for fno, base in sorted(files.items())}
    gids_all = cat([_gids(fno, len(t)) for fno, t in tables.items()], np.int64)
    # one band at a time: peak memory is ~16 bytes per document, not the whole signature table
    exact_parts, lsh_parts = [], []
    for b in ([-1] if cfg.exact else []) + (list(range(cfg.bands)) if cfg.minhash else []):
        keys = cat([np.asarray(t[:, 1 + b]) for t in tables.values()], np.uint64)  # b=-1: column 0, exact hash
        gids = gids_all
        if comm is not None and size > 1:
            # bucket exchange: (key, gid) goes to rank key % size, so equal keys meet on one rank
            dest = (keys % np.uint64(size)).astype(np.int64)
            recv = comm.alltoall([(keys[dest == r], gids[dest == r]) for r in range(size)])
            keys = cat([r[0] for r in recv], np.uint64)
            gids = cat([r[1] for r in recv], np.int64)
        e = dd.bucket_edges(keys, gids, np.full(len(keys), b, dtype=np.int64))
        (exact_parts if b == -1 else lsh_parts).append(e)
    uniq = lambda xs: np.unique(np.concatenate(xs), axis=0) if xs and sum(map(len, xs)) else np.zeros((0, 2), np.int64)  # noqa: E731
    exact_edges = uniq(exact_parts)
    edges = uniq(exact_parts + lsh_parts)
    if comm is not None and size > 1:
        # one pair can meet in buckets on two ranks: pool the candidates, then split the
        # verification by pair so each is checked once and the summary equals a 1-process run
        exact_edges = uniq(comm.allgather(exact_edges))
        edges = uniq(comm.allgather(edges))
    n_cand, n_exact = len(edges), len(exact_edges)
    if comm is not None and size > 1:
        edges = edges[((edges[:, 0] ^ edges[:, 1]) % size) == rank]
    exact_pairs = set(map(tuple, exact_edges.tolist()))
    if comm is not None and size > 1:
        all_files = {k: v for d in comm.allgather(files) for k, v in d.items()}
    else:
        all_files = files
    store = TextStore(all_files, cfg.ngram)
    sig_cache: dict[int, np.ndarray] = {}

    def sig_of(g):
        if g not in sig_cache:
            fno, dno = g >> 32, g & 0xFFFFFFFF
            sig_cache[g] = np.load(str(all_files[fno]) + ".sig.npy", mmap_mode="r")[dno, 1:]
        return sig_cache[g]

    confirmed = dd.verify_edges(edges, exact_pairs, cfg, store.shingles, sig_of)
    if comm is not None and size > 1:
        confirmed = uniq(comm.allgather(confirmed))
    groups = dd.clusters(confirmed)
    remove, cross, sizes = dd.removals(groups, lambda g: (g >> 32) >= REF_BASE)
    return {"removed_ids": np.sort(remove), "cross_ids": np.sort(cross),
            "summary": {"clusters": len(groups), "removed": int(len(remove)),
                        "removed_cross_source": int(len(cross)),
                        "largest_cluster": int(max(sizes, default=0)),
                        "candidate_edges": int(n_cand), "confirmed_edges": int(len(confirmed)),
                        "exact_duplicate_edges": int(n_exact)}}


# ------------------------------------------------------------------------- stage: write
def write_file(job) -> str:
    """Deduped JSONL for one file: stage-1 output minus removed documents; marker = stats json."""
    index, work = job
    # the removal lists are read (memory-mapped) here rather than pickled into every job
    removed = np.load(Path(work) / "dedup" / "removed.npy", mmap_mode="r")
    cross = np.load(Path(work) / "dedup" / "cross.npy", mmap_mode="r")
    base = Path(work) / "filtered" / f"{index:05d}"
    out = Path(work).parents[1] / Path(work).name / "deduped" / f"{index:05d}.jsonl"  # <out>/<source>/deduped
    marker = Path(work) / "deduped" / f"{index:05d}.stats.json"
    if marker.is_file() and out.is_file():
        return str(marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    lo, hi = np.int64(index) << np.int64(32), np.int64(index + 1) << np.int64(32)
    rm = set((removed[np.searchsorted(removed, lo):np.searchsorted(removed, hi)] & 0xFFFFFFFF).tolist())
    cr = set((cross[np.searchsorted(cross, lo):np.searchsorted(cross, hi)] & 0xFFFFFFFF).tolist())
    stats = Stats()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    with open(str(base) + ".jsonl", "rb") as f, open(tmp, "wb") as g:
        for dno, line in enumerate(f):
            if dno in cr:
                stats.count("dedup", "dropped:cross_source_duplicate")
            elif dno in rm:
                stats.count("dedup", "dropped:duplicate")
            else:
                stats.count("dedup", "kept")
                g.write(line)
    os.replace(tmp, out)
    _atomic_write(marker, json.dumps({"stats": stats.to_json()}))
    return str(marker)


def interrupt_hook(stage: str, done: int) -> None:
    """Test hook: DATA_TOOLS_KILL_AFTER=stage:n SIGKILLs this process group after n files of
    ``stage`` have finished, to prove that a killed run resumes exactly."""
    spec = os.environ.get("DATA_TOOLS_KILL_AFTER", "")
    if spec and spec == f"{stage}:{done}":
        os.killpg(os.getpgid(0), signal.SIGKILL)
