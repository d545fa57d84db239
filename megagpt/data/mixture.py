"""Weighted mixtures of sources (GPT-3 Table 2.2) and the blended sample index.

A spec names sources (shard prefixes and a weight, or a target number of epochs), the training
tokens, sequence length, seed and held-out split. ``build`` checks every shard, counts tokens,
draws the blended order with Megatron's rule -- each next sample comes from the source with the
largest ``w_i * n - count_i`` -- and caches it under a hash of the spec and the shards' identities,
so a changed weight or shard never reuses a stale index. ``BlendedDataset`` serves it at runtime;
every sample knows its source.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megagpt.atomic import replacing, write_atomic
from megagpt.config import ConfigError, check_value, load_file
from megagpt.data.gpt_dataset import GPTDataset, range_tokens, split_documents
from megagpt.data.indexed import IndexedDataset, ShardError, open_shard, paths

INDEX_VERSION = 1


@dataclass
class Source:
    name: str
    prefixes: list[str]
    weight: float | None = None
    epochs: float | None = None


@dataclass
class MixtureSpec:
    path: Path
    sources: list[Source]
    total_tokens: int
    seq_length: int
    seed: int = 1234
    valid_fraction: float = 0.01
    max_epochs: float = 4.0  # warn when a source is repeated more often than this
    cache_dir: Path | None = None
    raw: dict = field(default_factory=dict)
    loss_mask: bool = False  # the run's data.loss_mask: open every shard with its mask sidecar


_SPEC_KEYS = {"sources", "total_tokens", "seq_length", "seed", "valid_fraction", "max_epochs",
              "cache_dir", "name", "description"}
_SOURCE_KEYS = {"prefixes", "weight", "epochs"}


def _number(value, where: str) -> float:
    check_value(where, value, "float")
    return float(value)


def load_spec(path: str | Path) -> MixtureSpec:
    """Parse and check a mixture spec; every error names the file and the source."""
    path = Path(path)
    raw = load_file(path)
    unknown = sorted(set(raw) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}'; allowed keys are {', '.join(sorted(_SPEC_KEYS))}.")
    for key in ("sources", "total_tokens", "seq_length"):
        if key not in raw:
            raise ConfigError(f"{path}: missing key '{key}'.")
    if not isinstance(raw["sources"], dict) or not raw["sources"]:
        raise ConfigError(f"{path}: 'sources' must map source names to {{prefixes, weight}}.")
    sources = []
    for name, s in raw["sources"].items():
        where = f"{path}: source '{name}'"
        if not isinstance(s, dict):
            raise ConfigError(f"{where} must be a mapping with prefixes and weight (or epochs).")
        bad = sorted(set(s) - _SOURCE_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key '{bad[0]}'; allowed keys are prefixes, weight, epochs.")
        prefixes = s.get("prefixes") or []
        if isinstance(prefixes, str):
            prefixes = [prefixes]
        if not prefixes:
            raise ConfigError(f"{where} has no shards; list its shard prefixes under 'prefixes'.")
        if ("weight" in s) == ("epochs" in s):
            raise ConfigError(f"{where}: give exactly one of 'weight' or 'epochs'.")
        weight = _number(s["weight"], f"{where}: weight") if "weight" in s else None
        epochs = _number(s["epochs"], f"{where}: epochs") if "epochs" in s else None
        if (weight is not None and weight <= 0) or (epochs is not None and epochs <= 0):
            raise ConfigError(f"{where}: weight/epochs must be > 0, got {weight if weight is not None else epochs}.")
        base = path.parent
        prefixes = [str(p if os.path.isabs(p) else base / p) for p in prefixes]
        sources.append(Source(name, prefixes, weight, epochs))
    if len({s.weight is None for s in sources}) > 1:
        raise ConfigError(f"{path}: give every source a weight, or every source a number of epochs.")
    total = raw["total_tokens"]
    seq = raw["seq_length"]
    seed = raw.get("seed", 1234)
    max_epochs = raw.get("max_epochs", 4.0)
    for key, value, kind in (("total_tokens", total, "int"), ("seq_length", seq, "int"), ("seed", seed, "int"),
                             ("max_epochs", max_epochs, "float")):
        check_value(f"{path}: {key}", value, kind)
    if total <= 0 or seq <= 0 or max_epochs <= 0:
        raise ConfigError(f"{path}: total_tokens, seq_length and max_epochs must be > 0.")
    valid_fraction = raw.get("valid_fraction", 0.01)
    check_value(f"{path}: valid_fraction", valid_fraction, "float")
    if not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"{path}: valid_fraction must be a number in [0, 1), got {valid_fraction!r}.")
    cache = raw.get("cache_dir")
    return MixtureSpec(path=path, sources=sources, total_tokens=total, seq_length=seq,
                       seed=seed, valid_fraction=float(valid_fraction), max_epochs=float(max_epochs),
                       cache_dir=Path(cache) if cache else path.parent / ".mixture_cache", raw=raw)


def _open_shards(spec: MixtureSpec) -> dict[str, list[IndexedDataset]]:
    out = {}
    for s in spec.sources:
        shards = []
        for prefix in s.prefixes:
            try:
                shards.append(open_shard(prefix, spec.loss_mask))
            except ShardError as e:
                raise ConfigError(f"{spec.path}: source '{s.name}': {e}") from None
        out[s.name] = shards
    return out


def _shard_identity(prefix: str) -> list:
    bin_path, idx_path = paths(prefix)
    return [str(prefix), bin_path.stat().st_size, hashlib.sha256(idx_path.read_bytes()).hexdigest()]


def cache_key(spec: MixtureSpec) -> str:
    desc = {"version": INDEX_VERSION, "total_tokens": spec.total_tokens, "seq_length": spec.seq_length,
            "seed": spec.seed, "valid_fraction": spec.valid_fraction,
            "sources": [[s.name, s.weight, s.epochs, [_shard_identity(p) for p in s.prefixes]]
                        for s in spec.sources]}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def blend_order(weights: np.ndarray, n: int) -> np.ndarray:
    """Megatron's rule: sample k comes from argmax_i(w_i * max(k, 1) - count_i), ties to the first."""
    w = [float(x) for x in weights]
    counts = [0.0] * len(w)
    out = np.empty(n, dtype=np.uint8)
    rng = range(len(w))
    for k in range(n):
        kk = k if k > 1 else 1
        best, best_err = 0, w[0] * kk - counts[0]
        for i in rng:
            err = w[i] * kk - counts[i]
            if err > best_err:
                best, best_err = i, err
        out[k] = best
        counts[best] += 1
    return out


def build(spec: MixtureSpec) -> dict:
    """Check shards, blend, cache; returns the report (also written next to the cached index)."""
    shards = _open_shards(spec)
    key = cache_key(spec)
    spec.cache_dir.mkdir(parents=True, exist_ok=True)
    index_path = spec.cache_dir / f"{key}.npz"
    report_path = spec.cache_dir / f"{key}.report.json"
    if index_path.is_file() and report_path.is_file():
        report = json.loads(report_path.read_text())
        report["cached"] = True
        return report
    t0 = time.time()
    train_tokens = {}
    for s in spec.sources:
        train, _ = split_documents(shards[s.name], spec.valid_fraction)
        train_tokens[s.name] = range_tokens(train)
        if train_tokens[s.name] <= spec.seq_length:
            raise ConfigError(f"{spec.path}: source '{s.name}' has {train_tokens[s.name]} training tokens, "
                              f"too few for one sample of {spec.seq_length + 1}.")
    if spec.sources[0].weight is not None:
        raw_w = np.array([s.weight for s in spec.sources])
    else:  # target epochs -> weights proportional to the tokens they imply
        raw_w = np.array([s.epochs * train_tokens[s.name] for s in spec.sources], dtype=np.float64)
    weights = raw_w / raw_w.sum()
    n = spec.total_tokens // spec.seq_length
    order = blend_order(weights, n)
    counts = np.bincount(order, minlength=len(spec.sources))
    # position of each sample within its own source's stream
    within = np.empty(n, dtype=np.int64)
    for i in range(len(spec.sources)):
        sel = order == i
        within[sel] = np.arange(int(sel.sum()))
    with replacing(index_path, ".npz") as tmp:
        np.savez(tmp, dataset_index=order, dataset_sample_index=within, counts=counts, weights=weights)
    rows = []
    for i, s in enumerate(spec.sources):
        used = int(counts[i]) * spec.seq_length
        rows.append({"source": s.name, "tokens": train_tokens[s.name], "weight": float(weights[i]),
                     "samples": int(counts[i]), "tokens_trained": used,
                     "epochs": used / train_tokens[s.name]})
    report = {"spec": str(spec.path), "key": key, "samples": n, "seq_length": spec.seq_length,
              "total_tokens": n * spec.seq_length, "sources": rows, "build_seconds": time.time() - t0,
              "warnings": [f"source '{r['source']}' is repeated {r['epochs']:.2f} epochs (> max_epochs "
                           f"{spec.max_epochs})" for r in rows if r["epochs"] > spec.max_epochs],
              "cached": False}
    write_atomic(report_path, json.dumps(report, indent=2))
    return report


def format_report(report: dict) -> str:
    lines = [f"mixture {report['spec']} ({report['key']}): {report['samples']} samples x "
             f"{report['seq_length']} = {report['total_tokens']:,} tokens"
             + (" [cached]" if report.get("cached") else ""),
             f"{'source':<16} {'tokens':>16} {'weight':>8} {'samples':>12} {'epochs':>8}"]
    for r in report["sources"]:
        lines.append(f"{r['source']:<16} {r['tokens']:>16,} {r['weight']:>8.2%} {r['samples']:>12,} "
                     f"{r['epochs']:>8.2f}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


class BlendedDataset:
    """Samples of several sources in the cached blended order; ``source_of(i)`` names the origin."""

    def __init__(self, spec: MixtureSpec, datasets: list[GPTDataset], index: dict):
        self.names = [s.name for s in spec.sources]
        self.datasets = datasets
        self.dataset_index = index["dataset_index"]
        self.dataset_sample_index = index["dataset_sample_index"]
        self.counts = index["counts"]  # samples drawn from each source over the whole run

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]

    def source_of(self, i: int) -> int:
        return int(self.dataset_index[i])


def load(spec: MixtureSpec, report: dict | None = None) -> tuple[BlendedDataset, dict[str, GPTDataset | None]]:
    """The blended training dataset and each source's held-out set. Pass the report of a
    ``build`` already done (its key names the cached index) to skip checking and hashing the
    shards again; without one the index is built if missing."""
    report = report or build(spec)
    index = np.load(spec.cache_dir / f"{report['key']}.npz")
    shards = _open_shards(spec)
    train_sets, valid_sets = [], {}
    for i, s in enumerate(spec.sources):
        train, valid = split_documents(shards[s.name], spec.valid_fraction)
        n_i = max(1, int(index["counts"][i]))
        train_sets.append(GPTDataset(train, spec.seq_length, n_i, spec.seed + 1000 * i, name=s.name))
        valid_tokens = range_tokens(valid)
        valid_sets[s.name] = (GPTDataset(valid, spec.seq_length, max(1, valid_tokens // spec.seq_length - 1),
                                         spec.seed + 1000 * i + 1, name=f"{s.name}/valid")
                              if valid_tokens > spec.seq_length + 1 else None)
    return BlendedDataset(spec, train_sets, index), valid_sets
