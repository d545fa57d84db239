"""Failures under the real launchers, each given the entry point as a module (`deepspeed --module
megagpt.pretrain`, `torchrun -m megagpt.pretrain`): a rank stopped with SIGSTOP under `deepspeed` ends the job
within hang_timeout_s + 30 s with a line naming it; a rank killed with SIGKILL under
`torchrun --max-restarts` is restarted by the agent, the run resumes from its newest whole
checkpoint and its losses equal an uninterrupted run's."""
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from megagpt.parallel.launch import free_port
from tests.helpers.shards import write_pattern_shard

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "tests" / "helpers" / "run_tiny.yaml"
HANG_TIMEOUT = 10


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MEGAGPT_ALLOW_FAULTS="1")


def _exe(name):
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def _overrides(tmp_path, shard, tag, *extra):
    return ["--config", str(RUN), f"data.prefixes=[{shard}]", f"train.checkpoint_dir={tmp_path / tag / 'ckpt'}",
            f"train.tensorboard_dir={tmp_path / tag / 'tb'}",
            f"train.deepspeed_config={ROOT / 'ds_configs' / 'zero3.json'}", "train.eval_interval=100", *extra]


@pytest.fixture
def shard(tmp_path):
    return write_pattern_shard(tmp_path / "pattern_text_document")


def _run_timed(cmd, marker: str, timeout=240):
    """Run ``cmd``; its output, exit status, and seconds from the first line containing
    ``marker`` to the exit (None if no such line)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, seen = [], []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if marker in line and not seen:
                seen.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    end = time.monotonic()
    reader.join(5)
    return "".join(lines), rc, (end - seen[0]) if seen else None


def _losses(tb: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb / "run_tiny"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}  # a restarted attempt's value wins


def test_sigstop_of_one_rank_under_deepspeed_ends_the_job_naming_it(tmp_path, shard):
    cmd = [_exe("deepspeed"), "--hostfile", str(ROOT / "hostfiles" / "localhost"), "--no_ssh_check",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "--module", "megagpt.pretrain",
           *_overrides(tmp_path, shard, "stop", "train.train_iters=30", f"train.hang_timeout_s={HANG_TIMEOUT}",
                       "train.fault.kind=stop", "train.fault.step=4", "train.fault.rank=1")]
    out, rc, after_stop = _run_timed(cmd, "fault: rank 1 stops")
    assert rc != 0, out[-3000:]
    assert after_stop is not None and after_stop <= HANG_TIMEOUT + 30, (after_stop, out[-3000:])
    hang = [line for line in out.splitlines() if line.startswith("hang: ")]
    assert hang and "stopped: rank 1 (last completed: rank 1 step 3)" in hang[0], out[-3000:]
    assert "alive and waiting: rank 0 step 3" in hang[0]
    assert "step      3/30" in out and "step      4/30" not in out


def test_torchrun_restarts_a_killed_rank_and_the_run_resumes_exactly(tmp_path, shard):
    victim = 1
    def torchrun(tag, *extra):
        cmd = [_exe("torchrun"), "--standalone", "--nproc-per-node", "2", "--max-restarts", "2",
               "-m", "megagpt.pretrain",
               *_overrides(tmp_path, shard, tag, "train.train_iters=8", "train.save_interval=2", *extra)]
        return _run_timed(cmd, "fault:")

    out, rc, _ = torchrun("killed", "train.fault.kind=crash", "train.fault.step=6", f"train.fault.rank={victim}")
    assert rc == 0, out[-4000:]
    assert f"fault: rank {victim} crashes (SIGKILL) before step 6" in out
    assert "exitcode: -9" in out  # the agent saw the kill ...
    assert "resumed from" in out and "at step 4 (32 samples" in out  # ... restarted, resumed at step 4
    whole, rc, _ = torchrun("whole")
    assert rc == 0, whole[-4000:]
    killed, uninterrupted = _losses(tmp_path / "killed" / "tb"), _losses(tmp_path / "whole" / "tb")
    assert sorted(killed) == list(range(1, 9))
    assert killed == uninterrupted
