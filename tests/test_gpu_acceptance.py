"""python -m benchmarks.gpu_acceptance --dry-run: the GPU acceptance script runs its whole code on CPU
with tiny shapes (the Trainer under ZeRO-3 in each variant, compiled training, decoding and scoring
against transformers), so it cannot rot before the first GPU runs it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_checks_every_cpu_path(tmp_path):
    out = tmp_path / "acceptance.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_acceptance", "--dry-run", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all checks passed" in r.stdout
    res = json.loads(out.read_text())
    assert res["failures"] == []
    train = {row["variant"]: row for row in res["results"] if "variant" in row}
    assert set(train) == {"bf16 eager", "bf16 compiled", "bf16 act. ckpt", "bf16 ZeRO-3 CPU offload"}
    assert train["bf16 compiled"]["compiled"] and not train["bf16 eager"]["compiled"]
    for row in train.values():
        assert row["tokens_per_s"] > 0 and row["predicted_gib"] > 0 and len(row["losses"]) == 3
        # the dry run compiles with aot_eager (the same ops): every variant trains like bf16 eager
        assert row["losses"] == pytest.approx(train["bf16 eager"]["losses"], rel=1e-5), row["variant"]
    # the rows that need CUDA say so rather than fail
    assert r.stdout.count("needs CUDA: not run on CPU") == 2
    decode = [row for row in res["results"] if row.get("what", "").startswith("decode")]
    assert len(decode) == 2 and all(row["compiled_equal"] and row["agree_hf"] == 1.0 for row in decode)
    score = [row for row in res["results"] if row.get("what", "").startswith("score")]
    assert score and score[0]["max_logprob_diff"] < 1e-3
