"""A real two-host launch on one machine: `deepspeed --hostfile` over pdsh/ssh and `--launcher openmpi`
over ssh, each rank reached through its own sshd (scripts/loopback_cluster.py: 127.0.0.2 and
127.0.0.3, one slot each). Each run must equal the single-host two-rank run: the same losses at every
step (TensorBoard event files) and a byte-identical final checkpoint (model and optimizer partitions;
the unseeded global numpy/python RNG states differ between any two runs and are left out). Every
launch names the entry point as a module (`deepspeed --module megagpt.pretrain`). The
sessions are checked to have gone through sshd on both addresses, and every rank's environment (read
from /proc while it runs) to hold what `.deepspeed_env` exported."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.shards import write_pattern_shard

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "tests" / "helpers" / "run_tiny.yaml"
PRETRAIN = ["--module", "megagpt.pretrain"]  # how each launch below names the entry point
STEPS = 4

_spec = importlib.util.spec_from_file_location("loopback_cluster", ROOT / "scripts" / "loopback_cluster.py")
loopback = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loopback)

_missing = loopback.missing_tools(pdsh=False)
if _missing:
    pytest.skip("not installed: " + ", ".join(_missing) + " (scripts/install.sh installs it)",
                allow_module_level=True)


def _deepspeed():
    return shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def _deepspeed_env(cwd: Path) -> dict:
    """`.deepspeed_env` in the launch directory: DeepSpeed reads it there (and in $HOME) and exports
    every NAME=value to the remote ranks (`export` in the pdsh command, `-x` for mpirun). Remote
    ssh sessions start with a clean environment, so the ranks get thread counts, the JIT extension
    cache and a PATH with this virtual environment first (else torch's JIT build picks another
    ninja from the system PATH and rebuilds the shared extension cache) from here; PYTHON* vars
    (PYTHONPATH, which DeepSpeed starts with the launch directory) it exports by itself."""
    env = _env()
    path = [Path(sys.executable).parent.as_posix()] + [
        p for p in env["PATH"].split(os.pathsep) if p and "loopback" not in p]
    values = {"PATH": os.pathsep.join(dict.fromkeys(path)), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
              "GLOO_SOCKET_IFNAME": "lo"}  # the loopback "hosts" have no resolvable host names
    if env.get("TORCH_EXTENSIONS_DIR"):
        values["TORCH_EXTENSIONS_DIR"] = env["TORCH_EXTENSIONS_DIR"]
    cwd.mkdir(parents=True, exist_ok=True)
    # one NAME=value per line; DeepSpeed splits each line at the first '=' (no blank lines)
    (cwd / ".deepspeed_env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return values


class RankWatch:
    """Every megagpt.pretrain process of one run (found by its checkpoint path on the command line):
    its environment as it started, read from /proc while the run goes on. A process whose environment
    names no rank (a launcher, or a rank caught between fork and exec, still with its launcher's
    command line and environment) is read again at the next look."""

    def __init__(self, marker: str):
        self.marker = marker.encode()
        self.ranks: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) in self.ranks:
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if b"megagpt.pretrain" not in cmd or self.marker not in cmd:
                        continue
                    raw = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
                env = dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
                if "RANK" in env or "OMPI_COMM_WORLD_RANK" in env:
                    self.ranks[int(pid)] = env
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def by_rank(self) -> dict[int, dict]:
        out = {}
        for env in self.ranks.values():
            rank = env.get("RANK", env.get("OMPI_COMM_WORLD_RANK"))
            if rank is not None:
                out[int(rank)] = env
        return out


def _overrides(out: Path, shard: str):
    return [f"data.prefixes=[{shard}]", f"train.checkpoint_dir={out / 'ckpt'}",
            f"train.tensorboard_dir={out / 'tb'}", f"train.train_iters={STEPS}", "train.eval_interval=2",
            f"train.deepspeed_config={ROOT / 'ds_configs' / 'zero3.json'}"]


def _launch(cmd, out: Path, env, cwd: Path, timeout=300):
    """Run a launch with its ranks watched; return (completed process, rank environments)."""
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with RankWatch(str(out / "ckpt")) as watch:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    text = r.stdout + r.stderr
    (out / "launch.log").write_text(text)
    print(f"--- {' '.join(map(str, cmd[:8]))} ... ({time.time() - t:.1f} s, exit {r.returncode})")
    print("\n".join(l for l in text.splitlines()
                    if "launch.py" in l or "Running on" in l or "done:" in l or "training zero3" in l
                    or "step " in l and "/" in l)[-6000:])
    assert r.returncode == 0, text[-5000:]
    assert f"done: {STEPS} steps" in text, text[-3000:]
    return r, watch.by_rank()


def _scalars(out: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb" / "run_tiny"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in ("train/loss", "valid/loss")}


def _checkpoint(out: Path) -> dict:
    """The final tag's files: (size, hash) of the model and optimizer partitions and megagpt.json from
    its manifest; the RNG files by their seeded megagpt streams."""
    tag = (out / "ckpt" / "latest").read_text().strip()
    assert tag == f"global_step{STEPS}"
    d = out / "ckpt" / tag
    files = json.loads((d / "manifest.json").read_text())["files"]
    digest = {name: (f["size"], f.get("xxh3_64")) for name, f in files.items() if not name.startswith("rng_")}
    rng = {name: torch.load(d / name, weights_only=False)["megagpt"] for name in files if name.startswith("rng_")}
    return {"files": digest, "rng": rng}


def _same_rng(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, dict):
            if not isinstance(y, dict) or not _same_rng(x, y):
                return False
        elif x != y:
            return False
    return True


def _assert_same_run(ref: Path, out: Path):
    a, b = _scalars(ref), _scalars(out)
    assert [s for s, _ in a["train/loss"]] == list(range(1, STEPS + 1))
    assert a == b, (a, b)
    ca, cb = _checkpoint(ref), _checkpoint(out)
    assert sorted(ca["files"]) == sorted(cb["files"])
    assert any("optim_states" in n for n in ca["files"]) and any("model_states" in n for n in ca["files"])
    assert ca["files"] == cb["files"], (ca["files"], cb["files"])
    assert ca["rng"].keys() == cb["rng"].keys() == {"rng_rank0.pt", "rng_rank1.pt"}
    assert all(_same_rng(ca["rng"][k], cb["rng"][k]) for k in ca["rng"])


def _assert_ranks_came_through_sshd(ranks: dict, cluster, exported: dict):
    assert sorted(ranks) == [0, 1], ranks.keys()
    for rank, host in enumerate(cluster.hosts):
        env = ranks[rank]
        print(f"rank {rank}: SSH_CONNECTION={env.get('SSH_CONNECTION')} OMP_NUM_THREADS={env.get('OMP_NUM_THREADS')} "
              f"TORCH_EXTENSIONS_DIR={env.get('TORCH_EXTENSIONS_DIR')}")
        server, port = env.get("SSH_CONNECTION", "- - - -").split()[2:4]
        assert (server, int(port)) == (host, cluster.port), (rank, env.get("SSH_CONNECTION"))
        for k, v in exported.items():
            assert env.get(k) == v, (rank, k, env.get(k), v)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("multihost")


@pytest.fixture(scope="module")
def shard(work):
    return write_pattern_shard(work / "pattern_text_document")


@pytest.fixture(scope="module")
def reference(work, shard):
    """The single-host two-rank run (DeepSpeed's local launcher, hostfiles/localhost)."""
    from megagpt.parallel.launch import free_port

    out = work / "single"
    _, ranks = _launch([_deepspeed(), "--hostfile", str(ROOT / "hostfiles" / "localhost"), "--no_ssh_check",
                        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                        *PRETRAIN, "--config", str(RUN), *_overrides(out, shard)],
                       out, _env(), ROOT)
    assert sorted(ranks) == [0, 1]
    return out


@pytest.fixture(scope="module")
def cluster(work):
    with loopback.LoopbackCluster(workdir=work / "cluster") as c:
        for a in c.actions:
            print("loopback-cluster:", a)
        yield c


def _sessions_running(cluster, needle: str, since: int) -> dict[str, str]:
    """Address -> command of the ssh sessions after the first ``since`` whose command holds ``needle``."""
    return {s["server"]: s["command"] for s in cluster.sessions()[since:] if needle in s["command"]}


@pytest.mark.skipif(shutil.which("pdsh") is None, reason="pdsh is not installed (scripts/install.sh installs it)")
def test_pdsh_over_ssh_equals_single_host(work, shard, reference, cluster):
    from megagpt.parallel.launch import free_port

    out, cwd = work / "pdsh", work / "pdsh_cwd"
    exported = _deepspeed_env(cwd)
    before, sessions = set(cluster.accepted()), len(cluster.sessions())
    r, ranks = _launch([_deepspeed(), "--hostfile", str(cluster.hostfile), "--ssh_port", str(cluster.port),
                        "--master_addr", cluster.hosts[0], "--master_port", str(free_port()),
                        *PRETRAIN, "--config", str(RUN), *_overrides(out, shard)],
                       out, cluster.env(_env()), cwd)
    text = r.stdout + r.stderr
    assert f"Running on the following workers: {','.join(cluster.hosts)}" in text
    lines = text.splitlines()
    for node_rank, host in enumerate(cluster.hosts):  # pdsh prefixes each remote line with its host
        assert any(l.startswith(f"{host}: ") and f"node_rank={node_rank}" in l for l in lines), text[-3000:]
    # through sshd: one launcher session per address, with our exports and pdsh's node rank
    launches = _sessions_running(cluster, "deepspeed.launcher.launch", sessions)
    assert sorted(launches) == sorted(cluster.hosts), cluster.sessions()
    for node_rank, host in enumerate(cluster.hosts):
        cmd = launches[host]
        assert f"--node_rank={node_rank}" in cmd and f"cd {cwd};" in cmd, cmd
        assert "export PYTHONPATH=" in cmd and "export OMP_NUM_THREADS=1;" in cmd, cmd
    new = [line for line in cluster.accepted() if line not in before]  # each names its client port
    print("\n".join(new))
    assert {l.split("]")[0].lstrip("[") for l in new} == set(cluster.hosts), new
    _assert_ranks_came_through_sshd(ranks, cluster, exported)
    _assert_same_run(reference, out)


@pytest.mark.skipif(shutil.which("mpirun") is None or shutil.which("ompi_info") is None,
                    reason="OpenMPI (mpirun, ompi_info) is not installed (scripts/install.sh installs it)")
def test_openmpi_over_ssh_equals_single_host(work, shard, reference, cluster):
    if not cluster.uts:
        pytest.skip("unshare --uts is not allowed here: both loopback hosts share one host name, and "
                    "DeepSpeed's MPI discovery then counts the rank on 127.0.0.3 as local rank 1")
    out, cwd = work / "openmpi", work / "openmpi_cwd"
    exported = _deepspeed_env(cwd)
    before, sessions = set(cluster.accepted()), len(cluster.sessions())
    # mpirun starts an orted on each host with the `ssh` first on PATH (the wrapper); DeepSpeed's
    # OpenMPI runner restricts the TCP BTL to eth0 unless told otherwise
    r, ranks = _launch([_deepspeed(), "--launcher", "openmpi", "--launcher_args", "--mca btl_tcp_if_include lo",
                        "--hostfile", str(cluster.hostfile), "--master_addr", cluster.hosts[0],
                        *PRETRAIN, "--config", str(RUN), *_overrides(out, shard)],
                       out, cluster.env(_env()), cwd)
    text = r.stdout + r.stderr
    assert "cmd = mpirun -n 2 -hostfile" in text and "-x OMP_NUM_THREADS=1" in text
    orteds = _sessions_running(cluster, "orted", sessions)
    assert sorted(orteds) == sorted(cluster.hosts), cluster.sessions()
    new = [line for line in cluster.accepted() if line not in before]  # each names its client port
    print("\n".join(new))
    assert {l.split("]")[0].lstrip("[") for l in new} == set(cluster.hosts), new
    _assert_ranks_came_through_sshd(ranks, cluster, exported)
    for rank, env in ranks.items():
        assert env["OMPI_COMM_WORLD_RANK"] == str(rank) and env["OMPI_COMM_WORLD_LOCAL_RANK"] == "0"
    _assert_same_run(reference, out)
