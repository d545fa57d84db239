"""A broken newest checkpoint (a file truncated, deleted or with one byte flipped) is named in one
line and the run resumes from the newest whole one, with the same later losses as an uninterrupted
run; with train.resume_fallback=false it is an error; `megagpt/checkpoint.py list|verify` say the
same with their exit status."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megagpt.formats.manifest import choose_tag, latest_tag, verify
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import layout_overrides, train_worker

ROOT = Path(__file__).resolve().parents[2]


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "megagpt" / "checkpoint.py"), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_broken_newest_checkpoint_falls_back_to_the_last_whole_one(tmp_path):
    shard = write_pattern_shard(tmp_path / "pattern_text_document")

    def overrides(tag, *extra):
        return layout_overrides("zero3", 1, 1, 2, 1, tmp_path, tag) + [
            f"data.prefixes=[{shard}]", "train.train_iters=8", "train.save_interval=4",
            "train.eval_interval=4", *extra]

    full = run_distributed(train_worker, 2, overrides("full"), use_deepspeed=True)[0]
    ckpt = tmp_path / "full" / "ckpt"
    assert latest_tag(ckpt) == "global_step8" and verify(ckpt / "global_step8") is None
    r = _cli("list", ckpt)
    assert r.returncode == 0 and "global_step8 (latest): step 8" in r.stdout and "whole" in r.stdout

    for fault, damage in [("truncate", _truncate), ("delete", Path.unlink), ("flip", _flip)]:
        run_ckpt = tmp_path / fault / "ckpt"
        shutil.copytree(ckpt, run_ckpt)
        victim = sorted((run_ckpt / "global_step8").glob("*optim_states.pt"))[-1]
        damage(victim)
        assert choose_tag(run_ckpt)[0] == "global_step4"
        r = _cli("verify", run_ckpt, "global_step8")
        assert r.returncode == 1 and victim.name in r.stdout, r.stdout
        rest = run_distributed(train_worker, 2, overrides(fault), use_deepspeed=True)[0]
        assert rest == full[4:], (fault, rest, full)
        assert latest_tag(run_ckpt) == "global_step8" and verify(run_ckpt / "global_step8") is None
        events = b"".join(p.read_bytes() for p in (tmp_path / fault / "tb" / "run_tiny").glob("events*"))
        assert b"checkpoint/fallback" in events and victim.name.encode() in events

    # fallback off: one sentence, on every rank, naming the tag and the file
    run_ckpt = tmp_path / "strict" / "ckpt"
    shutil.copytree(ckpt, run_ckpt)
    _truncate(sorted((run_ckpt / "global_step8").glob("*optim_states.pt"))[0])
    with pytest.raises(Exception, match="checkpoint global_step8 is broken: .*optim_states.pt: .* bytes, "
                                        "the manifest says"):
        run_distributed(train_worker, 2, overrides("strict", "train.resume_fallback=false"), use_deepspeed=True)

    # nothing whole left: the CLI says so with a non-zero status
    _truncate(sorted((run_ckpt / "global_step4").glob("*model_states.pt"))[0])
    r = _cli("list", run_ckpt)
    assert r.returncode == 1 and r.stdout.count("BROKEN") == 2
    r = _cli("verify", run_ckpt)
    assert r.returncode == 1 and "no whole checkpoint to resume from" in r.stderr


def _launch(tmp_path, ckpt, *extra):
    exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    shard = tmp_path / "pattern_text_document"
    ov = [f"data.prefixes=[{shard}]", f"train.checkpoint_dir={ckpt}", f"train.tensorboard_dir={tmp_path / 'tb'}",
          "train.eval_interval=2", "train.save_interval=2",
          f"train.deepspeed_config={ROOT / 'ds_configs' / 'zero3.json'}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([exe, "--hostfile", str(ROOT / "hostfiles" / "localhost"), "--no_ssh_check",
                           "--master_addr", "127.0.0.1", "--master_port", str(29800 + os.getpid() % 1000),
                           str(ROOT / "megagpt" / "pretrain.py"), "--config", str(ROOT / "tests/helpers/run_tiny.yaml"),
                           *ov], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_disk_full_during_a_save(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()})")
    try:
        write_pattern_shard(tmp_path / "pattern_text_document")
        ckpt = disk / "ckpt"
        r = _launch(tmp_path, ckpt, "train.train_iters=2")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        size = sum(f.stat().st_size for f in (ckpt / "global_step2").rglob("*") if f.is_file())
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - size // 2))  # room for half a checkpoint
        r = _launch(tmp_path, ckpt, "train.train_iters=4")
        out = r.stdout + r.stderr
        errors = [line for line in out.splitlines() if "error:" in line]
        assert r.returncode != 0 and "Traceback" not in out, out[-3000:]
        assert len(errors) == 1 and "saving checkpoint global_step4 failed" in errors[0], errors
        assert latest_tag(ckpt) == "global_step2" and not (ckpt / "global_step4").exists()
        assert verify(ckpt / "global_step2") is None
        r = _launch(tmp_path, ckpt, "train.train_iters=4", "train.save_failure=warn")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "warning: saving checkpoint global_step4 failed" in r.stdout and "done: 2 steps" in r.stdout
        assert latest_tag(ckpt) == "global_step2" and verify(ckpt / "global_step2") is None
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_kill_9_during_saves_always_resumes_from_a_whole_checkpoint(tmp_path):
    """A model whose save takes most of each step (save every step), killed with SIGKILL at spread
    moments; each rerun must resume from a checkpoint that verifies and take a step."""
    import signal
    import time

    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    ckpt = tmp_path / "ckpt"
    ov = [f"data.prefixes=[{shard}]", f"train.checkpoint_dir={ckpt}", f"train.tensorboard_dir={tmp_path / 'tb'}",
          f"train.deepspeed_config={ROOT / 'ds_configs' / 'zero3.json'}", "train.train_iters=500",
          "train.save_interval=1", "train.keep_last=2", "train.eval_interval=1000", "train.log_interval=1",
          "model.n_embd=256", "model.n_head=4", "model.vocab_size=4096"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "megagpt" / "pretrain.py"), "--config", str(ROOT / "tests/helpers/run_tiny.yaml")]
    mid_save = 0
    for trial, delay in enumerate([1.1, 2.1, 3.1]):
        log = tmp_path / f"run{trial}.log"
        with open(log, "w") as f:
            p = subprocess.Popen(cmd + ov, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            while "step " not in log.read_text() and p.poll() is None:  # training has started
                time.sleep(0.05)
            time.sleep(delay)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        latest = latest_tag(ckpt)
        newer = [d for d in ckpt.glob("global_step*") if latest and
                 int(d.name[11:]) > int(latest[11:])]
        mid_save += bool(newer)  # killed while a save was being written
        tag, _ = choose_tag(ckpt)
        assert tag is not None and verify(ckpt / tag) is None
        step = int(tag[11:])
        r = subprocess.run(cmd + ov + [f"train.exit_after_iters={step + 1}"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert f"resumed from {ckpt} at step {step} " in r.stdout, r.stdout[-2000:]
    print(f"{mid_save} of 3 kills landed during a save")
