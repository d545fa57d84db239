"""Joining and leaving the job: the world size a launcher asked for, the process group
(``deepspeed``, torchrun, ``mpirun``, srun or plain ``python``), DeepSpeed's console noise and its
shared-memory segments on a CPU host, and the data-parallel mean every trainer logs."""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from megagpt.parallel.state import ParallelState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_world_size() -> int:
    """The world size the launcher asked for, known before any process group exists."""
    for var in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if var in os.environ:
            return int(os.environ[var])
    if "SLURM_PROCID" in os.environ:  # a task started by srun (salloc alone runs one process)
        return int(os.environ["SLURM_NTASKS"])
    return 1


def init_distributed(timeout_s: float | None = None) -> None:
    """Join the job: ``deepspeed``/torchrun set RANK etc.; ``mpirun`` is discovered through
    mpi4py; plain ``python`` becomes a world of one. ``timeout_s``: how long a collective waits
    for a peer before it fails (torch's default is 30 minutes)."""
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    launched_by_mpi = "OMPI_COMM_WORLD_RANK" in os.environ or "PMI_RANK" in os.environ
    if "RANK" not in os.environ and not launched_by_mpi and "SLURM_PROCID" in os.environ:
        # srun: one task per rank; MASTER_ADDR/MASTER_PORT come from the job script
        os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                          LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError("under srun, export MASTER_ADDR (the first node) and MASTER_PORT.")
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ \
            and "PMI_RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    extra = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        _join_torchrun_attempt(backend, extra.get("timeout", timedelta(minutes=30)))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=True, verbose=False, **extra)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        unlink_shm_allreduce_segment()


def _join_torchrun_attempt(backend: str, timeout: timedelta) -> None:
    """Under torchrun the workers share the agent's rendezvous store, and its keys outlive a
    restart: a restarted worker could read a dead peer's gloo address and fail to connect
    ("connectFullMesh failed ... Connection refused"), using up the restarts. Each attempt gets
    keys of its own (DeepSpeed then takes the group as it finds it)."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    prefix = f"megagpt/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}"
    dist.init_process_group(backend, store=dist.PrefixStore(prefix, store), rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)


def shm_allreduce_segment() -> Path | None:
    """This rank's segment of DeepSpeed's shared-memory allreduce, which DeepSpeed's CPU backend
    sets up when every rank is on one host (the launcher's LOCAL_SIZE equals the world size):
    ~66 MB in /dev/shm per rank, named from the uid, MASTER_ADDR, MASTER_PORT and rank. None
    where there is none."""
    try:
        local = int(os.environ.get("LOCAL_SIZE", "0"))  # as DeepSpeed reads it (std::stoi)
    except ValueError:
        return None
    if torch.cuda.is_available() or local != dist.get_world_size():
        return None
    return Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
                               f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")


def unlink_shm_allreduce_segment() -> None:
    """DeepSpeed never unlinks its shared-memory allreduce segments, so every run on a CPU host
    left world_size x 66 MB of RAM in /dev/shm until reboot (19 GB on this project's machine, and
    an out-of-memory kill). Each rank maps every peer's segment inside init_distributed; after a
    barrier each rank unlinks its own name: the mappings stay valid until the processes exit,
    and then the memory is freed."""
    segment = shm_allreduce_segment()
    if segment is None:  # the same answer on every rank: all take the barrier or none
        return
    dist.barrier()
    segment.unlink(missing_ok=True)


def dp_mean(value: torch.Tensor, ps: ParallelState, device) -> torch.Tensor:
    """``value`` averaged over the data-parallel group (on ``device``: NCCL groups have no CPU
    backend), returned as float32 on the CPU."""
    value = value.detach().float().to(device)
    if ps.dp_size > 1:
        dist.all_reduce(value, group=ps.dp_group)
        value /= ps.dp_size
    return value.cpu()


def quiet_deepspeed() -> None:
    """Training entry points: DeepSpeed's info lines and torch.distributed's deprecation warnings
    off the console, so the run's own lines stay readable."""
    import logging
    import warnings

    from deepspeed.utils import logger as ds_logger

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    ds_logger.setLevel(logging.WARNING)


def close_distributed() -> None:
    """Tear the process group down before the interpreter exits, so no communication thread is
    still alive while Python unloads (an abort, "terminate called without an active exception")."""
    if dist.is_initialized():
        dist.destroy_process_group()
