"""generate.py under the same launchers as training: plain python (tp=1), the deepspeed launcher
(tp=2, each rank holding its shard) and mpirun (dp=2: prompts dealt out, printed in order) give
the same greedy continuations."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megagpt.config import model_config
from megagpt.formats.weights import save_export
from megagpt.model import GPT, full_state_dict

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["The history of", "Generation must stay inside", "Tensor parallel", "A"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, prose_tokenizer):
    """A tiny model with the sentencepiece tokenizer trained on the project's own prose."""
    torch.manual_seed(0)
    cfg = model_config("tiny", vocab_size=400, attention="alternating", local_window=8, n_positions=64)
    return save_export(full_state_dict(GPT(cfg)), cfg, tmp_path_factory.mktemp("gen") / "model.safetensors",
                       tokenizer=str(prose_tokenizer))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _generate(launcher, model, out, *extra):
    args = [str(ROOT / "megagpt" / "generate.py"), "--model", str(model), "--output", str(out),
            "--temperature", "0", "--max-new-tokens", "24", *extra]
    for p in PROMPTS:
        args += ["--prompt", p]
    r = subprocess.run(launcher + args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["prompt"] for row in rows] == PROMPTS
    return rows, r.stdout


@pytest.fixture(scope="module")
def plain(exported, tmp_path_factory):
    """Greedy continuations from plain python (tp=1), and what it printed."""
    return _generate([sys.executable], exported, tmp_path_factory.mktemp("plain") / "tp1.jsonl")


def test_launchers_agree_with_plain_python(exported, plain, tmp_path):
    ref, stdout = plain
    assert all(row["completion"] for row in ref) and "--- 'The history of' ->" in stdout
    exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    port = str(29600 + os.getpid() % 1000)
    tp2, _ = _generate([exe, "--hostfile", str(ROOT / "hostfiles" / "localhost"), "--no_ssh_check",
                        "--master_addr", "127.0.0.1", "--master_port", port],
                       exported, tmp_path / "tp2.jsonl")
    assert tp2 == ref
    if shutil.which("mpirun"):
        dp2, _ = _generate(["mpirun", "-np", "2", "--oversubscribe", sys.executable], exported,
                           tmp_path / "dp2.jsonl", "--tp", "1", "--batch-size", "1")
        assert dp2 == ref


def test_cli_errors_are_one_line(exported, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "megagpt" / "generate.py"), "--model", str(exported),
                        "--prompt", "x", "--top-p", "0"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == \
        "error: top_p must be in (0, 1], got 0.0."


def test_int8_flag_and_compile_refusal(exported, tmp_path):
    """--dtype int8 generates; --compile with it is refused (compiled decoding itself is tested in
    test_generation.py)."""
    int8, _ = _generate([sys.executable], exported, tmp_path / "int8.jsonl", "--dtype", "int8")
    assert all(row["finish_reason"] in ("length", "eod") for row in int8)
    r = subprocess.run([sys.executable, str(ROOT / "megagpt" / "generate.py"), "--model", str(exported),
                        "--prompt", "x", "--dtype", "int8", "--compile"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        "error: compiled decoding runs fp32/bf16/fp16 weights; int8 decodes eagerly")
