"""build_mixture.py and the blended training stream."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megagpt.data import mixture
from megagpt.data.gpt_dataset import micro_batches
from tests.helpers.shards import write_pattern_shard

ROOT = Path(__file__).resolve().parents[2]


def _spec(tmp_path, weights=(0.6, 0.3, 0.1), total_tokens=32 * 100_000, seed=1, name="mix.yaml",
          extra=""):
    names = ["cc", "web", "wiki"]
    for i, n in enumerate(names):
        if not Path(f"{tmp_path}/{n}_text_document.idx").exists():
            write_pattern_shard(tmp_path / f"{n}_text_document", n_docs=60 + 40 * i, seed=i)
    lines = [f"total_tokens: {total_tokens}", "seq_length: 32", f"seed: {seed}", "valid_fraction: 0.1",
             "sources:"]
    for n, w in zip(names, weights):
        lines.append(f"  {n}: {{prefixes: [{n}_text_document], weight: {w}}}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_realised_proportions_match_weights(tmp_path):
    spec = mixture.load_spec(_spec(tmp_path))
    report = mixture.build(spec)
    ds, _ = mixture.load(spec)
    assert len(ds) == 100_000
    share = np.bincount(ds.dataset_index, minlength=3) / len(ds)
    assert np.abs(share - [0.6, 0.3, 0.1]).max() < 0.01
    first = np.bincount(ds.dataset_index[:5000], minlength=3) / 5000  # every prefix is balanced
    assert np.abs(first - [0.6, 0.3, 0.1]).max() < 0.01
    # report epochs are the arithmetic: samples x seq_length / source tokens
    for row in report["sources"]:
        assert row["epochs"] == pytest.approx(row["samples"] * 32 / row["tokens"])
        assert row["weight"] == pytest.approx({"cc": 0.6, "web": 0.3, "wiki": 0.1}[row["source"]])
    assert any("repeated" in w for w in report["warnings"])  # tiny sources repeat many epochs


def test_megatron_rule_small_case():
    order = mixture.blend_order(np.array([0.5, 0.25, 0.25]), 8).tolist()
    assert order == [0, 1, 2, 0, 0, 1, 2, 0]


def test_same_seed_same_order_other_seed_other_order(tmp_path):
    def first_samples(seed, name):
        spec = mixture.load_spec(_spec(tmp_path, seed=seed, total_tokens=32 * 2000, name=name))
        ds, _ = mixture.load(spec)
        return np.stack([ds[i] for i in range(50)])

    a = first_samples(1, "a.yaml")
    assert np.array_equal(a, first_samples(1, "a2.yaml"))
    assert not np.array_equal(a, first_samples(2, "b.yaml"))


def test_cache_reused_and_invalidated(tmp_path):
    spec = mixture.load_spec(_spec(tmp_path, total_tokens=32 * 5000))
    r1 = mixture.build(spec)
    assert not r1["cached"]
    assert mixture.build(mixture.load_spec(spec.path))["cached"]
    changed = mixture.load_spec(_spec(tmp_path, weights=(0.5, 0.4, 0.1), total_tokens=32 * 5000))
    r2 = mixture.build(changed)
    assert r2["key"] != r1["key"] and not r2["cached"]
    write_pattern_shard(tmp_path / "wiki_text_document", n_docs=150, seed=9)  # a shard changes
    r3 = mixture.build(mixture.load_spec(_spec(tmp_path, weights=(0.5, 0.4, 0.1), total_tokens=32 * 5000)))
    assert r3["key"] not in (r1["key"], r2["key"]) and not r3["cached"]


def test_target_epochs_give_weights(tmp_path):
    _spec(tmp_path)  # writes the shards
    path = tmp_path / "ep.yaml"
    path.write_text("total_tokens: 320000\nseq_length: 32\nsources:\n"
                    "  cc: {prefixes: [cc_text_document], epochs: 1.0}\n"
                    "  wiki: {prefixes: [wiki_text_document], epochs: 2.0}\n")
    report = mixture.build(mixture.load_spec(path))
    rows = {r["source"]: r for r in report["sources"]}
    assert rows["wiki"]["epochs"] / rows["cc"]["epochs"] == pytest.approx(2.0, rel=0.01)


def test_resume_mid_epoch_continues_the_stream(tmp_path):
    ds, _ = mixture.load(mixture.load_spec(_spec(tmp_path, total_tokens=32 * 3000)))
    for dp_rank in range(2):
        full = micro_batches(ds, 0, 3, dp_rank, 2, with_source=True)
        seen = [next(full) for _ in range(10)]
        resumed = micro_batches(ds, 3 * 2 * 6, 3, dp_rank, 2, with_source=True)  # after 6 steps
        for a, b in zip(seen[6:], [next(resumed) for _ in range(4)]):
            assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("mutate,needle", [
    (lambda p: p.write_text(p.read_text().replace("weight: 0.3", "weight: 0")),
     "source 'web': weight/epochs must be > 0"),
    (lambda p: p.write_text(p.read_text().replace("weight: 0.3", "weight: lots")),
     "source 'web': weight must be a number"),
    (lambda p: p.write_text(p.read_text().replace("[web_text_document]", "[]")), "source 'web' has no shards"),
    (lambda p: p.write_text(p.read_text().replace("web_text_document", "nope_text_document")), "source 'web': "),
    (lambda p: open(p.parent / "web_text_document.bin", "r+b").truncate(100), "source 'web': "),
])
def test_bad_specs_fail_with_one_sentence(tmp_path, mutate, needle):
    path = _spec(tmp_path, total_tokens=32 * 1000)
    mutate(path)
    r = subprocess.run([sys.executable, str(ROOT / "data_tools" / "build_mixture.py"), str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and needle in err and str(path) in err, err
    if "nope" in path.read_text():
        assert "nope_text_document.bin: shard file not found" in err
    if "truncate" in repr(mutate):
        assert "truncated" in err


def test_cli_prints_table(tmp_path):
    path = _spec(tmp_path, total_tokens=32 * 1000)
    r = subprocess.run([sys.executable, str(ROOT / "data_tools" / "build_mixture.py"), str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "epochs" in r.stdout and "cc" in r.stdout and "wiki" in r.stdout
