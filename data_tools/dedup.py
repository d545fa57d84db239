"""Exact and MinHash-LSH near-duplicate detection, within a source and across sources.

The multi-pass work is split into steps that share one ``DedupConfig`` (datatrove's layout):

1. ``SignatureStep`` (streaming, per input file): for each document an exact hash of its
   normalised text and the LSH band hashes of its MinHash signature over word 5-gram shingles.
2. ``bucket_edges``: documents sharing a band hash (or an exact hash) become candidate edges.
   Under MPI each rank sends every (band, hash, id) to rank ``hash % size`` first, so documents on
   different ranks meet in one bucket.
3. ``verify_edges``: LSH proposes, the exact Jaccard of the two shingle sets confirms (or the
   signature estimate, or nothing, as configured).
4. ``removals``: union-find over confirmed edges; one document per cluster is kept (the first in
   input order), and a cluster that holds a reference document (another source, e.g. WebText
   when deduplicating Common Crawl) loses all of its own documents.

MinHash is vectorised: shingles of a batch of documents are hashed in one (perm x shingle) numpy
product with multiply-shift hashing, and reduced per document with ``np.minimum.reduceat``.
"""
from __future__ import annotations

import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import xxhash

from data_tools import native
from data_tools.document import Document, Stats, concat
from megagpt.data.ngrams import MIX as _MIX
from megagpt.data.ngrams import WIDE_PUNCT as _WIDE_PUNCT
from megagpt.data.ngrams import word_hashes


@dataclass
class DedupConfig:
    exact: bool = True
    minhash: bool = True
    ngram: int = 5               # word 5-gram shingles
    bands: int = 20
    rows: int = 6                # bands x rows permutations; S-curve threshold (1/b)^(1/r) ~ 0.61
    threshold: float = 0.8       # Jaccard at or above which two documents are duplicates
    verify: str = "exact"        # "exact" shingle-set Jaccard, "signature" estimate, or "none"
    seed: int = 1
    batch_docs: int = 256        # documents hashed together in one numpy product
    max_block: int = 4096        # shingles per numpy product: perms x block x 8 bytes stays in cache

    def __post_init__(self):
        if self.verify not in ("exact", "signature", "none"):
            raise ValueError(f"dedup verify '{self.verify}' is not one of exact, signature, none.")
        if self.bands < 1 or self.rows < 1 or self.ngram < 1:
            raise ValueError("dedup bands, rows and ngram must be positive integers.")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


# the same on UTF-8 bytes: ASCII punctuation through a table, the rest as byte sequences (UTF-8
# is self-synchronising: a character's bytes never match across a character boundary)
_WIDE_PUNCT_UTF8 = tuple(c.encode() for c in _WIDE_PUNCT)


_PUNCT_ASCII = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))


def words(text: str) -> list[str]:
    """Lowercased words with punctuation removed (the unit of shingles and exact hashes)."""
    if text.isascii():  # the same, through bytes: a 256-entry table instead of a dict per character
        return text.encode().lower().translate(_PUNCT_ASCII).decode().split()
    b = text.lower().encode().translate(_PUNCT_ASCII)
    for seq in _WIDE_PUNCT_UTF8:
        if seq in b:
            b = b.replace(seq, b" ")
    return b.decode().split()


def normalize(text: str) -> str:
    """Lowercased words joined by single spaces: whitespace/punctuation-only edits hash equal."""
    return " ".join(words(text))


def exact_hash(text: str) -> int:
    return xxhash.xxh64_intdigest(normalize(text).encode())


def _native_minhash_input(text: str, n: int) -> tuple[int, np.ndarray] | None:
    """The compiled kernel's (exact hash, shingle hashes with repeats), or None: not built, or a
    text it leaves to the Python path (no words, a lone surrogate)."""
    if native.kernels is None:
        return None
    got = native.kernels.minhash_input(text, n, string.punctuation, _WIDE_PUNCT)
    # a writable array, as the Python path's
    return None if got is None else (got[0], np.frombuffer(got[1], dtype=np.uint64).copy())


def minhash_input(text: str, n: int = 5) -> tuple[int, np.ndarray]:
    """(exact hash, shingle hashes with repeats) of ``text``: what SignatureStep records, through
    the compiled kernel when it is built (one pass, no word objects)."""
    got = _native_minhash_input(text, n)
    if got is not None:
        return got
    ws = words(text)  # also for a text without words: its shingle is the hash of the text itself
    return xxhash.xxh64_intdigest(" ".join(ws).encode()), shingle_hashes(text, n, unique=False, ws=ws)


def shingle_hashes(text: str, n: int = 5, unique: bool = True, ws: list[str] | None = None) -> np.ndarray:
    """uint64 hashes of the word n-grams of ``text`` (sorted and unique unless ``unique=False``:
    MinHash does not need it and the sort is a third of the cost). ``ws``: its words if known."""
    got = _native_minhash_input(text, n) if ws is None else None
    if got is not None:
        return np.unique(got[1]) if unique else got[1]
    ws = words(text) if ws is None else ws
    if not ws:
        return np.array([xxhash.xxh64_intdigest(text.encode())], dtype=np.uint64)
    wh = word_hashes(ws)
    k = min(n, len(wh))
    m = len(wh) - k + 1
    # polynomial combination of the k word hashes (wraps mod 2^64): order-sensitive, cheap
    h = wh[:m].copy()
    with np.errstate(over="ignore"):
        for j in range(1, k):
            h = h * _MIX + wh[j:j + m]
    return np.unique(h) if unique else h


class MinHasher:
    """MinHash signatures (uint32) with multiply-shift hashing h_i(x) = (a_i * x mod 2^64) >> 32,
    a_i odd (Dietzfelbinger et al.'s universal family: one multiply per permutation and shingle)."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.a = (rng.integers(0, 2**63, cfg.num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.band_mult = (rng.integers(0, 2**63, (cfg.rows,), dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self._a = self.a[:, None]

    def _hash_block(self, flat: np.ndarray) -> np.ndarray:
        """(num_perm, len(flat)) uint32 view: the high words of a_i * x."""
        buf = np.empty((len(self.a), len(flat)), dtype=np.uint64)
        np.multiply(self._a, flat[None, :], out=buf)
        # little-endian: the high 32 bits of each uint64 are the odd uint32 words; viewing them
        # saves a shift pass over the block
        return buf.view(np.uint32)[:, 1::2]

    def signatures(self, shingle_sets: list[np.ndarray]) -> np.ndarray:
        """(len(shingle_sets), num_perm) uint32 signatures. Documents are hashed together in
        blocks of about ``max_block`` shingles, small enough to stay in cache."""
        out = np.empty((len(shingle_sets), self.cfg.num_perm), dtype=np.uint32)
        block = self.cfg.max_block
        i = 0
        while i < len(shingle_sets):
            if len(shingle_sets[i]) > block:  # a big document alone, in chunks
                s = shingle_sets[i]
                m = self._hash_block(s[:block]).min(axis=1)
                for k in range(block, len(s), block):
                    np.minimum(m, self._hash_block(s[k:k + block]).min(axis=1), out=m)
                out[i] = m
                i += 1
                continue
            j, total = i, 0
            while j < len(shingle_sets) and total + len(shingle_sets[j]) <= block:
                total += len(shingle_sets[j])
                j += 1
            flat = np.concatenate(shingle_sets[i:j])
            starts = np.zeros(j - i, dtype=np.int64)
            np.cumsum([len(x) for x in shingle_sets[i:j - 1]], out=starts[1:])
            out[i:j] = np.minimum.reduceat(self._hash_block(flat), starts, axis=1).T
            i = j
        return out

    def band_hashes(self, sigs: np.ndarray) -> np.ndarray:
        """(N, bands) uint64: each band's ``rows`` values folded into one 64-bit key."""
        r = sigs.reshape(len(sigs), self.cfg.bands, self.cfg.rows).astype(np.uint64)
        with np.errstate(over="ignore"):
            return (r * self.band_mult).sum(axis=2, dtype=np.uint64) ^ np.arange(
                self.cfg.bands, dtype=np.uint64)


class SignatureStep:
    """Step: passes documents through unchanged and records, per document, its exact hash and
    band hashes (``self.table``: (n, 1 + bands) uint64, column 0 the exact hash)."""
    name = "minhash_signatures"

    def __init__(self, cfg: DedupConfig, hasher: MinHasher | None = None):
        self.cfg = cfg
        self.hasher = hasher or MinHasher(cfg)
        self.rows: list[np.ndarray] = []

    def __call__(self, docs: Iterator[Document], stats: Stats) -> Iterator[Document]:
        pending: list[Document] = []
        for doc in docs:
            pending.append(doc)
            if len(pending) >= self.cfg.batch_docs:
                yield from self._flush(pending, stats)
                pending = []
        yield from self._flush(pending, stats)

    def _flush(self, docs, stats):
        if not docs:
            return
        ex, shingles = zip(*(minhash_input(d.text, self.cfg.ngram) for d in docs))
        ex = np.array(ex, dtype=np.uint64)
        sig = self.hasher.band_hashes(self.hasher.signatures(list(shingles)))
        self.rows.append(np.concatenate([ex[:, None], sig], axis=1))
        stats.count(self.name, "documents", len(docs))
        yield from docs

    @property
    def table(self) -> np.ndarray:
        if not self.rows:
            return np.zeros((0, 1 + self.cfg.bands), dtype=np.uint64)
        return np.concatenate(self.rows)


# ----------------------------------------------------------------------------- buckets
def bucket_edges(keys: np.ndarray, gids: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """Candidate edges (M, 2) int64 [first, other] from documents that share (band, key).

    Each member of a bucket is linked to the bucket's smallest id, so a bucket of k documents
    costs k-1 edges (not k^2) and the result does not depend on input order or rank count.
    """
    if len(keys) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.lexsort((gids, keys, bands))
    k, g, b = keys[order], gids[order], bands[order]
    new = np.ones(len(k), dtype=bool)
    new[1:] = (k[1:] != k[:-1]) | (b[1:] != b[:-1])
    head = np.maximum.accumulate(np.where(new, np.arange(len(k)), 0))
    mask = ~new & (g != g[head])
    edges = np.stack([g[head][mask], g[mask]], axis=1)
    return np.unique(edges, axis=0) if len(edges) else edges.reshape(0, 2).astype(np.int64)


def table_keys(table: np.ndarray, gids: np.ndarray, cfg: DedupConfig):
    """Flatten a signature table into (band, key, gid) triples; band -1 is the exact hash."""
    cols = []
    if cfg.exact:
        cols.append((-1, table[:, 0]))
    if cfg.minhash:
        cols.extend((b, table[:, 1 + b]) for b in range(cfg.bands))
    if not cols:
        return (np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64))
    bands = np.concatenate([np.full(len(c), b, dtype=np.int64) for b, c in cols])
    keys = np.concatenate([c for _, c in cols])
    return bands, keys, np.tile(gids, len(cols))


def verify_edges(edges: np.ndarray, exact_pairs: set, cfg: DedupConfig,
                 shingles_of: Callable[[int], np.ndarray] | None = None,
                 sig_of: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
    """Keep the candidate edges whose Jaccard reaches ``cfg.threshold`` (exact-hash pairs always)."""
    if cfg.verify == "none" or len(edges) == 0:
        return edges
    keep = np.zeros(len(edges), dtype=bool)
    for i, (u, v) in enumerate(edges.tolist()):
        if (u, v) in exact_pairs:
            keep[i] = True
        elif cfg.verify == "exact":
            a, b = shingles_of(u), shingles_of(v)
            inter = len(np.intersect1d(a, b, assume_unique=True))
            keep[i] = inter / (len(a) + len(b) - inter) >= cfg.threshold
        else:
            keep[i] = np.mean(sig_of(u) == sig_of(v)) >= cfg.threshold
    return edges[keep]


# ----------------------------------------------------------------------------- clusters
def clusters(edges: np.ndarray) -> list[np.ndarray]:
    """Connected components (union-find, path halving) of the confirmed edges, sorted ids each."""
    if len(edges) == 0:
        return []
    ids, inv = np.unique(edges, return_inverse=True)
    inv = inv.reshape(-1, 2)
    parent = np.arange(len(ids))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in inv.tolist():
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    roots = np.array([find(x) for x in range(len(ids))])
    order = np.argsort(roots, kind="stable")
    groups = np.split(ids[order], np.flatnonzero(np.diff(roots[order])) + 1)
    return [g for g in groups if len(g) > 1]


def removals(groups: list[np.ndarray], is_reference: Callable[[np.ndarray], np.ndarray]):
    """(ids to remove, ids removed because a reference source holds them, cluster sizes)."""
    remove, cross, sizes = [], [], []
    for g in groups:
        ref = is_reference(g)
        sizes.append(len(g))
        if ref.any():
            cross.append(g[~ref])
        else:
            remove.append(g[1:])  # g is sorted: the first document in input order survives
    return concat(remove + cross, np.int64), concat(cross, np.int64), sizes


def unique_edges(parts: list[np.ndarray]) -> np.ndarray:
    """The distinct (M, 2) edges of all parts together, sorted."""
    if not parts or not sum(map(len, parts)):
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(parts), axis=0)


def dedup_texts(texts: list[str], cfg: DedupConfig, references: list[str] = ()) -> dict:
    """All passes in memory for a list of texts (tests, benchmarks, small sources): returns
    removed indices into ``texts``, the clusters (indices; references numbered after texts)
    and edge counts. The pipeline runs the same functions over files instead."""
    allt = list(texts) + list(references)
    step = SignatureStep(cfg)
    list(step((Document(t, str(i)) for i, t in enumerate(allt)), Stats()))
    table, gids = step.table, np.arange(len(allt), dtype=np.int64)
    bands, keys, g = table_keys(table, gids, cfg)
    ex = bands == -1
    exact_pairs = set(map(tuple, bucket_edges(keys[ex], g[ex], bands[ex]).tolist()))
    edges = bucket_edges(keys, g, bands)
    sh: dict[int, np.ndarray] = {}

    def shingles_of(i):
        if i not in sh:
            sh[i] = shingle_hashes(allt[i], cfg.ngram)
        return sh[i]

    sigs = step.hasher.signatures([shingle_hashes(t, cfg.ngram) for t in allt]) if cfg.verify == "signature" else None
    confirmed = verify_edges(edges, exact_pairs, cfg, shingles_of, (lambda i: sigs[i]) if sigs is not None else None)
    groups = clusters(confirmed)
    remove, cross, _ = removals(groups, lambda grp: grp >= len(texts))
    return {"removed": np.sort(remove), "cross": np.sort(cross), "clusters": groups,
            "candidate_edges": len(edges), "confirmed_edges": len(confirmed), "edges": confirmed}
