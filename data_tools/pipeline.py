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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_tools import dedup as dd
from data_tools.classifier import ClassifierFilter, QualityClassifier
from data_tools.clean import Clean, CleanConfig
from data_tools.decontam import DecontamConfig, Decontaminate
from data_tools.document import Document, ErrorLog, Stats, Step, concat
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
from megagpt.atomic import replacing, write_atomic
from megagpt.config import from_dict

# the filters by name, in the fixed (cheap-first) order they run in; each takes its config section
FILTERS = {"url": UrlFilter, "language": LanguageFilter, "gopher_quality": GopherQuality,
           "gopher_repetition": GopherRepetition, "c4": C4Filter, "fineweb": FineWebFilter}
ALL_FILTERS = tuple(FILTERS)
REF_BASE = 1 << 20            # file numbers of reference sources start here (never removed)


@dataclass
class PipelineConfig:
    """Everything a run needs; each component gets only its own part. Built from a config file's
    mapping with ``megagpt.config.from_dict(PipelineConfig, d)``: sections given as mappings are
    built here the same way, so an unknown key or a bad value is named with its section."""
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
        for f in dataclasses.fields(self):
            section, value = f.default_factory, getattr(self, f.name)
            if dataclasses.is_dataclass(section) and not isinstance(value, section):
                setattr(self, f.name, from_dict(section, value, f.name))
        bad = [f for f in self.filters if f not in ALL_FILTERS]
        if bad:
            raise ValueError(f"unknown filter(s) {bad}; choose from {', '.join(ALL_FILTERS)} or 'none'.")


_STEPS: tuple[str, list[Step]] | None = None


def build_steps(cfg: PipelineConfig) -> list[Step]:
    """The per-document steps, built once per process for a given config (the classifier and
    the evaluation n-gram set are loaded once, not once per input file). Steps keep no state
    between documents."""
    global _STEPS
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    if _STEPS is None or _STEPS[0] != key:
        _STEPS = (key, _build_steps(cfg))
    return _STEPS[1]


def _build_steps(cfg: PipelineConfig) -> list[Step]:
    steps: list[Step] = [Clean(cfg.clean)]
    steps += [make(getattr(cfg, name)) for name, make in FILTERS.items() if name in cfg.filters]
    if cfg.classifier:
        steps.append(ClassifierFilter(QualityClassifier.load(cfg.classifier)))
    if cfg.decontam.eval_files:
        steps.append(Decontaminate(cfg.decontam))
    return steps


# ------------------------------------------------------------------------- ids and paths
ID_BITS = 32  # a document's id: its file's number << ID_BITS | its position in the file's stage-1 output


def first_id(fno: int) -> np.int64:
    """The id of file ``fno``'s first document (sorted ids sort by file, then position)."""
    return np.int64(fno) << np.int64(ID_BITS)


def doc_ids(fno: int, n: int) -> np.ndarray:
    """The ids of the first ``n`` documents of file ``fno``."""
    return first_id(fno) + np.arange(n, dtype=np.int64)


def split_id(gid):
    """(file number, position) of an id, or of each id of an array."""
    return gid >> ID_BITS, gid & ((1 << ID_BITS) - 1)


def positions_in(sorted_ids: np.ndarray, fno: int) -> set[int]:
    """The positions of file ``fno``'s documents among ``sorted_ids``."""
    lo, hi = np.searchsorted(sorted_ids, first_id(fno)), np.searchsorted(sorted_ids, first_id(fno + 1))
    return set(split_id(sorted_ids[lo:hi])[1].tolist())


def filtered_base(work: str | Path, index: int) -> Path:
    """Stage-1 outputs of input ``index``, less their suffixes (``.jsonl``, ``.sig.npy``, ...)."""
    return Path(work) / "filtered" / f"{index:05d}"


def filter_marker(work: str | Path, index: int) -> Path:
    """Written last by ``filter_file``: the file's stats and bad-input log."""
    return Path(f"{filtered_base(work, index)}.stats.json")


def write_marker(work: str | Path, index: int) -> Path:
    """Written last by ``write_file``: the file's dedup counts."""
    return Path(work) / "deduped" / f"{index:05d}.stats.json"


def deduped_jsonl(work: str | Path, index: int) -> Path:
    """``<out>/<source>/deduped/NNNNN.jsonl`` for the work dir ``<out>/work/<source>``."""
    work = Path(work)
    return work.parents[1] / work.name / "deduped" / f"{index:05d}.jsonl"


def reference_files(refs: list[str], rank: int = 0, size: int = 1) -> dict[int, Path]:
    """This rank's share of the stage-1 outputs of finished sources (their work dirs) whose
    documents are removed from this one: file ``k`` of the ``j``-th is ``REF_BASE + j * 65536 + k``."""
    files = {}
    for j, ref in enumerate(refs):
        n = len(json.loads((Path(ref) / "inputs.json").read_text()))
        files.update({REF_BASE + j * 65536 + k: filtered_base(ref, k) for k in range(n) if k % size == rank})
    return files


def save_array(path: Path, arr: np.ndarray) -> None:
    with replacing(path, ".npy") as tmp:  # np.save adds .npy to a name without it
        np.save(tmp, arr)


# ------------------------------------------------------------------------- stage: filter
@dataclass(frozen=True)
class FilterJob:
    """Stage 1 for input ``index`` (``path``) of the source whose work dir is ``work``."""
    index: int
    path: str
    cfg: PipelineConfig
    work: str


_END = object()


def _timed(name: str, it: Iterator, stats: Stats) -> Iterator:
    """Inclusive time spent producing items of ``it`` (self time = minus the upstream's)."""
    it = iter(it)
    while True:
        with stats.timer(name):
            item = next(it, _END)
        if item is _END:
            return
        yield item


def _count_input(docs: Iterator[Document], stats: Stats) -> Iterator[Document]:
    for doc in docs:
        stats.count("read", "documents")
        stats.count("read", "bytes", len(doc.text.encode("utf-8", "surrogatepass")))
        yield doc


def _write_jsonl(docs: Iterator[Document], path: Path) -> np.ndarray:
    """The documents as JSON lines (the file appears when whole; --strict stops inside and leaves
    no partial file behind); returns each line's byte offset."""
    offsets, pos = [], 0
    with replacing(path) as tmp, open(tmp, "wb") as f:
        for doc in docs:
            line = (json.dumps(doc.to_json(), ensure_ascii=False) + "\n").encode()
            offsets.append(pos)
            f.write(line)
            pos += len(line)
    return np.asarray(offsets, dtype=np.int64)


def filter_file(job: FilterJob) -> str:
    """Stage 1 for one input file: writes ``NNNNN.jsonl`` (kept documents), ``.sig.npy``
    (exact hash + band hashes), ``.off.npy`` (byte offset of each line) and, last, the marker
    ``.stats.json``. Returns the marker path."""
    cfg, base, marker = job.cfg, filtered_base(job.work, job.index), filter_marker(job.work, job.index)
    if marker.is_file():
        return str(marker)
    stats, errors = Stats(), ErrorLog(strict=cfg.strict)
    sig = dd.SignatureStep(cfg.dedup)
    docs = _timed("read", _count_input(read_file(job.path, cfg.source, errors, cfg.format, cfg.text_key), stats), stats)
    order = ["read"]
    for step in build_steps(cfg) + [sig]:
        docs = _timed(step.name, step(docs, stats), stats)
        order.append(step.name)
    offsets = _write_jsonl(docs, Path(f"{base}.jsonl"))
    # inclusive generator times -> self time per step
    incl = [stats.times.pop(n, 0.0) for n in order]
    for i, n in enumerate(order):
        stats.times[f"filter/{n}"] = max(0.0, incl[i] - (incl[i - 1] if i else 0.0))
    save_array(Path(f"{base}.sig.npy"), sig.table)
    save_array(Path(f"{base}.off.npy"), offsets)
    write_atomic(marker, json.dumps({"input": str(job.path), "stats": stats.to_json(), "errors": errors.to_json()}))
    return str(marker)


# ------------------------------------------------------------------------- stage: dedup
class TextStore:
    """Random access to the kept documents of finished stage-1 files, for exact verification."""

    def __init__(self, files: dict[int, Path], ngram: int, cache: int = 20_000):
        self.files, self.ngram, self.cache_size = files, ngram, cache
        self._off: dict[int, np.ndarray] = {}
        self._cache: dict[int, np.ndarray] = {}

    def text(self, gid: int) -> str:
        fno, dno = split_id(gid)
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


def dedup_stage(files: dict[int, Path], cfg: dd.DedupConfig, comm=None) -> dict:
    """Finds duplicates among ``files`` (file number -> stage-1 base path; numbers >= REF_BASE
    are reference sources). Each rank passes its own files; returns the removal summary (same
    on every rank)."""
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    tables = {fno: np.load(str(base) + ".sig.npy", mmap_mode="r") for fno, base in sorted(files.items())}
    gids_all = concat([doc_ids(fno, len(t)) for fno, t in tables.items()], np.int64)
    # one band at a time: peak memory is ~16 bytes per document, not the whole signature table
    exact_parts, lsh_parts = [], []
    for b in ([-1] if cfg.exact else []) + (list(range(cfg.bands)) if cfg.minhash else []):
        keys = concat([np.asarray(t[:, 1 + b]) for t in tables.values()], np.uint64)  # b=-1: column 0, exact hash
        gids = gids_all
        if comm is not None and size > 1:
            # bucket exchange: (key, gid) goes to rank key % size, so equal keys meet on one rank
            dest = (keys % np.uint64(size)).astype(np.int64)
            recv = comm.alltoall([(keys[dest == r], gids[dest == r]) for r in range(size)])
            keys = concat([r[0] for r in recv], np.uint64)
            gids = concat([r[1] for r in recv], np.int64)
        e = dd.bucket_edges(keys, gids, np.full(len(keys), b, dtype=np.int64))
        (exact_parts if b == -1 else lsh_parts).append(e)
    exact_edges = dd.unique_edges(exact_parts)
    edges = dd.unique_edges(exact_parts + lsh_parts)
    if comm is not None and size > 1:
        # one pair can meet in buckets on two ranks: pool the candidates, then split the
        # verification by pair so each is checked once and the summary equals a 1-process run
        exact_edges = dd.unique_edges(comm.allgather(exact_edges))
        edges = dd.unique_edges(comm.allgather(edges))
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
            fno, dno = split_id(g)
            sig_cache[g] = np.load(str(all_files[fno]) + ".sig.npy", mmap_mode="r")[dno, 1:]
        return sig_cache[g]

    confirmed = dd.verify_edges(edges, exact_pairs, cfg, store.shingles, sig_of)
    if comm is not None and size > 1:
        confirmed = dd.unique_edges(comm.allgather(confirmed))
    groups = dd.clusters(confirmed)
    remove, cross, sizes = dd.removals(groups, lambda g: split_id(g)[0] >= REF_BASE)
    return {"removed_ids": np.sort(remove), "cross_ids": np.sort(cross),
            "summary": {"clusters": len(groups), "removed": int(len(remove)),
                        "removed_cross_source": int(len(cross)),
                        "largest_cluster": int(max(sizes, default=0)),
                        "candidate_edges": int(n_cand), "confirmed_edges": int(len(confirmed)),
                        "exact_duplicate_edges": int(n_exact)}}


# ------------------------------------------------------------------------- stage: write
@dataclass(frozen=True)
class WriteJob:
    """Stage 3 for input ``index`` of the source whose work dir is ``work``."""
    index: int
    work: str


def write_file(job: WriteJob) -> str:
    """Deduped JSONL for one file: stage-1 output minus removed documents; marker = stats json."""
    work = Path(job.work)
    out = deduped_jsonl(work, job.index)
    marker = write_marker(work, job.index)
    if marker.is_file() and out.is_file():
        return str(marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    # the removal lists are read (memory-mapped) here rather than pickled into every job
    rm, cr = (positions_in(np.load(work / "dedup" / name, mmap_mode="r"), job.index)
              for name in ("removed.npy", "cross.npy"))
    stats = Stats()
    with replacing(out) as tmp, open(f"{filtered_base(work, job.index)}.jsonl", "rb") as f, open(tmp, "wb") as g:
        for dno, line in enumerate(f):
            if dno in cr:
                stats.count("dedup", "dropped:cross_source_duplicate")
            elif dno in rm:
                stats.count("dedup", "dropped:duplicate")
            else:
                stats.count("dedup", "kept")
                g.write(line)
    write_atomic(marker, json.dumps({"stats": stats.to_json()}))
    return str(marker)


def interrupt_hook(stage: str, done: int) -> None:
    """Test hook: DATA_TOOLS_KILL_AFTER=stage:n SIGKILLs this process group after n files of
    ``stage`` have finished, to prove that a killed run resumes exactly."""
    spec = os.environ.get("DATA_TOOLS_KILL_AFTER", "")
    if spec and spec == f"{stage}:{done}":
        os.killpg(os.getpgid(0), signal.SIGKILL)
