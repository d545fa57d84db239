"""Run report: documents and bytes in, drops per reason per step, bad input, duplicate clusters,
tokens out, time and throughput per stage. Written as JSON and as a readable table."""
from __future__ import annotations

import json
from pathlib import Path

from megagpt.atomic import write_atomic


def build(source: str, stats: dict, errors: dict, dedup: dict, tokens: dict, walls: dict) -> dict:
    counters = stats["counters"]
    read = counters.get("read", {})
    steps = {k: v for k, v in counters.items() if k != "read"}
    stages = {}
    for stage, wall in walls.items():
        docs, nbytes = read.get("documents", 0), read.get("bytes", 0)
        if stage == "tokenize":
            docs, nbytes = tokens.get("documents", 0), tokens.get("bytes", 0)
        stages[stage] = {"wall_s": round(wall, 3), "docs_per_s": round(docs / wall, 1) if wall else None,
                         "MB_per_s": round(nbytes / 1e6 / wall, 3) if wall else None}
    return {"source": source,
            "documents_in": read.get("documents", 0), "bytes_in": read.get("bytes", 0),
            "steps": steps, "step_cpu_s": {k: round(v, 3) for k, v in stats["times"].items()},
            "errors": errors, "dedup": dedup, "tokens": tokens, "stages": stages}


def table(rep: dict) -> str:
    out = [f"source {rep['source']}: {rep['documents_in']} documents, {rep['bytes_in'] / 1e6:.2f} MB in"]
    out.append(f"{'step':<22}{'outcome':<34}{'count':>10}")
    for step, c in rep["steps"].items():
        for key in sorted(c):
            out.append(f"{step:<22}{key:<34}{c[key]:>10}")
    errs = rep["errors"]
    if errs.get("counts"):
        out.append("bad input: " + ", ".join(f"{k} {v}" for k, v in sorted(errs["counts"].items())))
        for e in errs["entries"][:20]:
            out.append(f"  {e['file']}: offset {e['offset']}: {e['kind']}: {e['message']}")
    d = rep["dedup"]
    if d:
        out.append(f"dedup: {d.get('clusters', 0)} clusters, {d.get('removed', 0)} removed "
                   f"({d.get('removed_cross_source', 0)} cross-source), "
                   f"{d.get('candidate_edges', 0)} candidate / {d.get('confirmed_edges', 0)} confirmed edges")
    t = rep["tokens"]
    if t:
        out.append(f"tokens out: {t.get('tokens', 0)} in {t.get('documents', 0)} documents")
    out.append(f"{'stage':<22}{'wall s':>10}{'docs/s':>12}{'MB/s':>10}")
    for s, v in rep["stages"].items():
        out.append(f"{s:<22}{v['wall_s']:>10}{str(v['docs_per_s']):>12}{str(v['MB_per_s']):>10}")
    out.append("step self-time (CPU s, summed over workers): " + ", ".join(
        f"{k} {v}" for k, v in rep["step_cpu_s"].items()))
    return "\n".join(out)


def write(rep: dict, prefix: Path) -> None:
    for suffix, text in ((".json", json.dumps(rep, indent=1)), (".txt", table(rep) + "\n")):
        write_atomic(str(prefix) + suffix, text)
