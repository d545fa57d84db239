"""Time to recover from each injected fault, on the tiny test run with two CPU ranks under the real
launchers: a NaN loss and a 3-step loss spike (`deepspeed`), a stopped rank (`deepspeed`,
hang_timeout_s=10) and a killed rank (`torchrun --max-restarts 2`). Prints, per fault, the seconds
from the job's start at which each marker line appeared, and the exit status.

    python -m benchmarks.fault_recovery [nan spike stop crash]
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from megagpt.parallel.launch import free_port
from tests.helpers.shards import write_pattern_shard

ROOT = Path(__file__).resolve().parents[1]

GUARD = ["train.guard.window=5", "train.guard.min_history=2", "train.guard.zscore=3", "train.guard.min_ratio=1.2",
         "train.guard.rewind_min_steps=2"]
CASES = {  # kind -> (launcher, overrides, marker lines)
    "nan": ("deepspeed", ["train.train_iters=8", "train.fault.kind=nan", "train.fault.step=4", "train.fault.rank=1"],
            ["step      3/", "guard:", "step      4/", "done:"]),
    "spike": ("deepspeed", ["train.train_iters=10", "train.save_interval=2", *GUARD, "train.fault.kind=spike",
                            "train.fault.step=7", "train.fault.count=3", "train.fault.rank=1"],
              ["guard: loss spike", "rewound", "done:"]),
    "stop": ("deepspeed", ["train.train_iters=30", "train.hang_timeout_s=10", "train.fault.kind=stop",
                           "train.fault.step=4", "train.fault.rank=1"], ["fault:", "hang:"]),
    "crash": ("torchrun", ["train.train_iters=8", "train.save_interval=2", "train.fault.kind=crash",
                           "train.fault.step=6", "train.fault.rank=1"],
              ["fault:", "exitcode", "resumed from", "step      6/", "done:"]),
}


def run(kind: str, tmp: Path, shard: str) -> None:
    launcher, overrides, marks = CASES[kind]
    exe = shutil.which(launcher) or str(Path(sys.executable).parent / launcher)
    if launcher == "deepspeed":
        cmd = [exe, "--hostfile", str(ROOT / "hostfiles" / "localhost"), "--no_ssh_check", "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "--module", "megagpt.pretrain"]
    else:
        cmd = [exe, "--standalone", "--nproc-per-node", "2", "--max-restarts", "2", "-m", "megagpt.pretrain"]
    cmd += ["--config", str(ROOT / "tests" / "train" / "run_tiny.yaml"),
            f"data.prefixes=[{shard}]", f"train.deepspeed_config={ROOT / 'ds_configs' / 'zero3.json'}",
            "train.eval_interval=100", f"train.checkpoint_dir={tmp / kind / 'ckpt'}",
            f"train.tensorboard_dir={tmp / kind / 'tb'}", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MEGAGPT_ALLOW_FAULTS="1")
    print(f"\n== {kind} ({launcher})")
    t0, seen = time.monotonic(), set()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        for m in marks:
            if m in line and m not in seen:
                seen.add(m)
                print(f"{time.monotonic() - t0:7.2f}s  {line.strip()[:170]}")
    proc.wait()
    print(f"{time.monotonic() - t0:7.2f}s  exit status {proc.returncode}")


def main() -> None:
    kinds = sys.argv[1:] or list(CASES)
    with tempfile.TemporaryDirectory(prefix="megagpt_faults_") as tmp:
        shard = write_pattern_shard(Path(tmp) / "pattern_text_document")
        for kind in kinds:
            run(kind, Path(tmp), shard)


if __name__ == "__main__":
    main()
