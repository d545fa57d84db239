"""The watchdog's diagnosis on real ranks and the job's real store: a rank whose heartbeat stopped
is named as stopped with its last completed step; when every rank is alive and none progresses it
says so. (The whole path, SIGSTOP to the launcher's exit, is tests/parallel/test_launch_failures.py.)"""
import time

import torch.distributed as dist

from tests.helpers.dist import run_distributed


def _diagnose(rank, world_size, stop_rank):
    from megagpt.parallel.watchdog import Watchdog

    w = Watchdog(1000, interval=0.2).start()
    w.progress(3 + rank)  # the last completed step: 3 on rank 0, 4 on rank 1
    time.sleep(0.5)
    dist.barrier()
    if rank == stop_rank:
        w.close()  # its heartbeat stops, as SIGSTOP stops every thread of a process
    dist.barrier()
    line, victims = (None, None) if rank == stop_rank else w.diagnose()
    dist.barrier()
    w.close()
    return line, victims, w.peers


def test_a_stopped_heartbeat_is_named_with_its_last_step():
    (_, _, peers), (line, victims, _) = run_distributed(_diagnose, 2, 0)
    assert line.startswith("hang: rank 1 made no progress for ")
    assert "(train.hang_timeout_s=1000) after step 4; stopped: rank 0 (last completed: rank 0 step 3); " \
           "alive and waiting: rank 1 step 4." in line
    assert victims == [(0, *peers[0])]  # host and pid, for the SIGKILL on the same host


def test_all_alive_and_none_progressing_is_called_a_deadlock():
    results = run_distributed(_diagnose, 2, -1)
    for line, victims, _ in results:
        assert "every rank is alive but none progresses (a deadlock?); last completed: " \
               "rank 0 step 3, rank 1 step 4." in line, line
        assert victims == []


def _pause(rank, world_size):
    from megagpt.parallel.watchdog import Watchdog

    w = Watchdog(0.5, interval=0.1).start()
    with w.paused():  # a save three times longer than the timeout: not a hang
        time.sleep(1.5)
    w.progress(1)
    w.close()
    return True


def test_a_paused_phase_is_not_a_hang():
    # a firing watchdog would end the rank with status 3 and fail the harness
    assert run_distributed(_pause, 1) == [True]


def _fire_together(rank, world_size):
    from megagpt.parallel.watchdog import Watchdog

    w = Watchdog(1.0, interval=0.2).start(5)
    if rank == 2:
        w._stop.set()  # its threads stop beating and watching: rank 2 "stopped"
        time.sleep(60)
    time.sleep(60)  # ranks 0 and 1 make no progress: both watchdogs fire, diagnosing at once


def test_ranks_diagnosing_at_once_name_only_the_stopped_one(capfd):
    import pytest
    from torch.multiprocessing import ProcessExitedException

    with pytest.raises(ProcessExitedException):  # the watchdogs end their ranks (status 3, SIGKILL for rank 2)
        run_distributed(_fire_together, 3, start_method="spawn")  # capfd reads the ranks' stderr
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("hang: ")]
    assert lines
    for line in lines:  # a peer busy diagnosing still beats: it is never taken for stopped
        assert "stopped: rank 2 (last completed: rank 2 step 5)" in line, line
