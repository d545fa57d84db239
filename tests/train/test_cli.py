"""The real entry points: the deepspeed launcher with hostfiles/localhost, given the script's path
(`deepspeed ... megagpt/pretrain.py`) and the module (`deepspeed --module megagpt.pretrain`, the
startup errors); mpirun and plain python given the module (`python -m megagpt.pretrain`); refusals
before launch; TensorBoard scalars; the consolidated export."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.shards import write_pattern_shard

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "tests" / "helpers" / "run_tiny.yaml"
PRETRAIN = [sys.executable, "-m", "megagpt.pretrain"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def _overrides(tmp_path, shard, *extra):
    return [f"data.prefixes=[{shard}]", f"train.checkpoint_dir={tmp_path / 'ckpt'}",
            f"train.tensorboard_dir={tmp_path / 'tb'}", "train.train_iters=4", "train.eval_interval=2",
            f"train.deepspeed_config={ROOT / 'ds_configs' / 'zero3.json'}", *extra]


@pytest.fixture
def shard(tmp_path):
    return write_pattern_shard(tmp_path / "pattern_text_document")


def _run(cmd, timeout=300):
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_deepspeed_launcher_with_localhost_hostfile(tmp_path, shard):
    exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    port = str(29500 + os.getpid() % 1000)
    r = _run([exe, "--hostfile", str(ROOT / "hostfiles" / "localhost"), "--no_ssh_check",
              "--master_addr", "127.0.0.1", "--master_port", port,
              str(ROOT / "megagpt" / "pretrain.py"), "--config", str(RUN), *_overrides(tmp_path, shard)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "dp=2" in r.stdout and "done: 4 steps" in r.stdout
    # DeepSpeed's shared-memory allreduce segments (one per rank, named from the port) are gone
    # (tests/train/test_shm_segments.py: they exist until then, and work after)
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*"))


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun is not installed")
def test_mpirun(tmp_path, shard):
    r = _run(["mpirun", "-np", "2", "--oversubscribe", *PRETRAIN, "--config", str(RUN), *_overrides(tmp_path, shard)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "dp=2" in r.stdout and "done: 4 steps" in r.stdout


def test_plain_python_tensorboard_and_export(tmp_path, shard):
    export = tmp_path / "model.safetensors"
    r = _run([*PRETRAIN, "--config", str(RUN), *_overrides(tmp_path, shard, f"train.export_path={export}")])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # a named run under tensorboard_dir (train.run_name defaults to the run file's name), recorded
    # with the export so evaluate.py can add its scalars to the same run
    assert not list((tmp_path / "tb").glob("events.*"))
    assert json.loads(export.with_suffix(".json").read_text())["run_name"] == "run_tiny"
    acc = EventAccumulator(str(tmp_path / "tb" / "run_tiny"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ["train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/tokens_seen",
                "perf/tokens_per_sec", "perf/tflops_per_device", "perf/mfu", "perf/step_time",
                "perf/peak_memory_gb", "valid/loss", "valid/ppl"]:
        assert tag in tags, (tag, tags)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("valid/loss")] == [2, 4]
    assert acc.Scalars("train/tokens_seen")[-1].value == 4 * 4 * 32  # steps x batch x seq

    # the exported weights are a whole single-device model (safetensors + JSON, no pickle)
    import megagpt
    from megagpt.formats.weights import read_export

    assert export.with_suffix(".json").is_file()
    model = megagpt.load(export).model
    x = torch.randint(1, 96, (1, 16))
    assert model(x).shape == (1, 16, 96)

    # the engine path (same world size) and the offline reader give the same weights
    again, offline = tmp_path / "again.safetensors", tmp_path / "offline.safetensors"
    r = _run([sys.executable, "-m", "megagpt.export", "--config", str(RUN), "--out", str(again),
              *_overrides(tmp_path, shard)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = _run([sys.executable, "-m", "megagpt.export", "--model", str(tmp_path / "ckpt"), "--out", str(offline)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a = read_export(export)[1]
    for other in (again, offline):
        b = read_export(other)[1]
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _refusal(tmp_path, shard, *extra, world=None):
    cmd = [*PRETRAIN, "--config", str(RUN), *_overrides(tmp_path, shard, *extra)]
    env = _env()
    if world:
        env.update(WORLD_SIZE=str(world))  # as a launcher would set it; refused before joining
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_refusals_before_launch(tmp_path, shard):
    msg = _refusal(tmp_path, shard, "parallel.layout=3d", "parallel.pp_size=2", world=2)
    assert "cannot run with ZeRO stage 3" in msg and "layout 'zero3' with pp_size 1" in msg \
        and "ds_configs/3d.json" in msg
    msg = _refusal(tmp_path, shard, "parallel.pp_size=2")
    assert "parallel.pp_size=2 needs parallel.layout='3d'" in msg
    msg = _refusal(tmp_path, shard, "deepspeed.train_batch_size=10", world=2)
    assert "train_batch_size=10 is not train_micro_batch_size_per_gpu x gradient_accumulation_steps" \
        " x data-parallel size = 4 x 1 x 2 = 8" in msg
    msg = _refusal(tmp_path, shard, "parallel.tp_size=3")
    assert "model.n_head=4 must be divisible by parallel.tp_size=3" in msg or "world size 1" in msg
    msg = _refusal(tmp_path, shard, "model.n_layers=3")
    assert "unknown key 'n_layers'" in msg


def _launch_errors(tmp_path, shard, *extra):
    exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    port = str(29700 + os.getpid() % 1000)
    r = _run([exe, "--hostfile", str(ROOT / "hostfiles" / "localhost"), "--no_ssh_check",
              "--master_addr", "127.0.0.1", "--master_port", port,
              "--module", "megagpt.pretrain", "--config", str(RUN), *_overrides(tmp_path, shard, *extra)])
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    return [line for line in out.splitlines() if "error:" in line]


def test_startup_errors_under_the_launcher_are_one_line(tmp_path, shard):
    bin_path = Path(str(shard) + ".bin")
    data = bin_path.read_bytes()
    bin_path.write_bytes(data[: len(data) // 2])
    lines = _launch_errors(tmp_path, shard)
    assert len(lines) == 1 and f"{bin_path}: " in lines[0] and "bytes" in lines[0], lines
    lines = _launch_errors(tmp_path, shard, f"data.prefixes=[{tmp_path / 'nowhere'}]")
    assert len(lines) == 1 and "nowhere" in lines[0] and "not found" in lines[0], lines
