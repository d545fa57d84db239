"""The hang watchdog. Every rank runs a thread that publishes a heartbeat (a beat counter) and the
training thread its last completed step to the job's rendezvous store (the TCPStore at MASTER_ADDR:MASTER_PORT
that torch.distributed already uses: rank 0's under ``deepspeed``/``mpirun``, the agent's under
torchrun). When the training thread has made no progress for ``timeout_s``, the watchdog reads
every heartbeat twice: ranks whose beat did not move are stopped (a SIGSTOP, a dead node, a
swapped-out process), ranks whose beat moved are alive and waiting. It prints one line naming them
and the last step each completed, SIGKILLs stopped ranks on its own host (a stopped process
cannot act on the launcher's SIGTERM), and exits with status 3, which makes the launcher end the
job (or torchrun restart it). The process-group timeout (``collective_timeout_s``) stays as the
backstop: a collective never waits torch's default 30 minutes.

Why not ``dist.monitored_barrier``: it is a collective the training thread would have to enter, and
the training thread is the one stuck in another collective; the store is reachable from a thread."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

HANG_EXIT = 3


class Watchdog:
    def __init__(self, timeout_s: float, *, name: str = "train.hang_timeout_s", interval: float | None = None):
        self.timeout_s, self.name = timeout_s, name
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.interval = interval or max(0.2, min(5.0, timeout_s / 10))  # seconds between heartbeats
        self.step, self.last, self._paused = 0, time.monotonic(), 0
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.ns = f"megagpt/watchdog/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{restart}"
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.store = self.steps = None
        if self.world > 1 and "MASTER_ADDR" in os.environ:
            # clients of their own (the process group's may be blocked inside a collective): one
            # that reads (the watchdog thread), one that writes (the heartbeat thread and the
            # training thread's step numbers; a set is ~1 us)
            self.store, self.steps = (
                dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=max(2.0, 2 * self.interval)), wait_for_workers=False)
                for _ in range(2))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="megagpt-watchdog", daemon=True)
        # heartbeats from a thread of their own: a rank busy diagnosing still beats, so a peer
        # diagnosing at the same time does not take it for stopped
        self._beater = threading.Thread(target=self._beat_loop, name="megagpt-heartbeat", daemon=True)

    def start(self, step: int = 0) -> Watchdog:
        """Every rank calls this at the same point (a collective: who runs where), at ``step``."""
        self.peers = [None] * self.world
        dist.all_gather_object(self.peers, (self.host, self.pid))
        self.step = None
        self.progress(step)
        self._beat = 0
        self._publish()  # a rank that stops before its thread's first beat is still known
        self._beater.start()
        self._thread.start()
        return self

    def progress(self, step: int) -> None:
        """The training thread completed something (a step, an evaluation, a save)."""
        if self.steps is not None and step != self.step:
            try:
                self.steps.set(f"{self.ns}/step/{self.rank}", str(step))
            except Exception:
                pass
        self.step, self.last = step, time.monotonic()

    @contextlib.contextmanager
    def paused(self):
        """A phase the watchdog does not time (an evaluation, a save, a rewind); progress counts
        again from its end."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self.progress(self.step)

    def close(self) -> None:
        self._stop.set()
        for t in (self._thread, self._beater):
            if t.is_alive():
                t.join(timeout=2 * self.interval + 5)

    def _key(self, rank: int) -> str:
        return f"{self.ns}/beat/{rank}"

    def _publish(self) -> None:
        self._beat += 1
        if self.steps is not None:
            try:
                self.steps.set(self._key(self.rank), f"{self._beat} {self.step}")
            except Exception:  # rank 0's store stopped with rank 0: diagnosed below
                pass

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._publish()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if time.monotonic() - self.last > self.timeout_s and not self._paused and not self._stop.is_set():
                self._fire()

    def _beats(self) -> dict[int, tuple | None] | None:
        """Every rank's last heartbeat, or None when the store does not answer: a store whose host
        is stopped blocks its clients whatever their timeout, so the reads run in a thread of
        their own that is left behind after a few seconds."""
        box: dict = {}
        reader = threading.Thread(target=lambda: box.update(self._read_beats()), daemon=True)
        reader.start()
        reader.join(timeout=max(3.0, 2 * self.interval))
        return None if reader.is_alive() else box

    def _read_beats(self) -> dict[int, tuple | None]:
        out = {}
        for r in range(self.world):
            try:  # check first: a get waits for a key that was never set
                if not self.store.check([self._key(r)]):
                    out[r] = None
                    continue
                beat, step = self.store.get(self._key(r)).decode().split()
                if self.store.check([f"{self.ns}/step/{r}"]):
                    step = self.store.get(f"{self.ns}/step/{r}").decode()
                out[r] = (int(beat), int(step))
            except Exception:
                out[r] = None
        return out

    def diagnose(self) -> tuple[str, list[tuple[int, str, int]]]:
        """The line to print, and (rank, host, pid) of each stopped rank."""
        idle = time.monotonic() - self.last
        head = (f"hang: rank {self.rank} made no progress for {idle:.0f}s ({self.name}={self.timeout_s:g}) "
                f"after step {self.step}")
        if self.store is None:
            return head + ".", []
        first = self._beats()
        if first is not None:
            time.sleep(max(2.5 * self.interval, 1.0))
        second = self._beats() if first is not None else None
        others = [r for r in range(self.world) if r != self.rank]
        if second is None or all(second[r] is None for r in others):
            store = f"the rendezvous store at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
                return head + f"; {store} (torchrun's agent) does not answer: the agent's node stopped.", []
            return head + f"; stopped: rank 0 ({store}, which rank 0 hosts, does not answer).", [(0, *self.peers[0])]
        stopped = [r for r in others if second[r] is None or first[r] is None or second[r][0] == first[r][0]]
        alive = [r for r in range(self.world) if r not in stopped]

        def last_steps(ranks):
            return ", ".join(f"rank {r} step {'?' if (second[r] or first[r]) is None else (second[r] or first[r])[1]}"
                             if r != self.rank else f"rank {r} step {self.step}" for r in ranks)

        if stopped:
            line = (f"{head}; stopped: rank{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))} "
                    f"(last completed: {last_steps(stopped)}); alive and waiting: {last_steps(alive)}.")
        else:
            line = (f"{head}; every rank is alive but none progresses (a deadlock?); "
                    f"last completed: {last_steps(alive)}.")
        return line, [(r, *self.peers[r]) for r in stopped]

    def _fire(self) -> None:
        line, stopped = self.diagnose()
        print(line, file=sys.stderr, flush=True)
        for _, host, pid in stopped:
            if host == self.host:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        os._exit(HANG_EXIT)
