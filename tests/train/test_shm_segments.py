"""DeepSpeed's shared-memory allreduce segments (CPU ranks on one host) do not outlive the run:
each rank unlinks its /dev/shm name once every rank has mapped it, and the shared-memory
allreduce still works on the mappings."""
from pathlib import Path

import pytest
import torch

from tests.helpers.dist import run_distributed


def _ranks(rank, world_size):
    import deepspeed.comm as ds_dist
    import torch.distributed as dist
    from deepspeed.comm import comm as ds_backend

    from megagpt.parallel.launch import shm_allreduce_segment, unlink_shm_allreduce_segment

    if getattr(ds_backend.cdb, "shm_comm_op", None) is None:  # DeepSpeed could not build its shm op
        unlink_shm_allreduce_segment()  # (all the same: no ranks' segments left behind)
        return None
    segment = shm_allreduce_segment()
    dist.barrier()  # every rank has created its segment and mapped its peers'
    existed = segment is not None and segment.is_file()
    unlink_shm_allreduce_segment()
    gone = not segment.exists()
    t = torch.full((1 << 20,), float(rank + 1))  # through the shm kernel where the CPU has it
    ds_dist.inference_all_reduce(t)
    return existed, gone, t[:3].tolist(), t[-1].item(), str(segment)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
@pytest.mark.skipif(torch.cuda.is_available(), reason="DeepSpeed's shm allreduce is its CPU backend's")
def test_segments_unlinked_after_every_rank_mapped_them(monkeypatch):
    monkeypatch.setenv("LOCAL_SIZE", "2")  # as the deepspeed launcher sets it on one host
    results = run_distributed(_ranks, 2, use_deepspeed=True)
    if None in results:
        pytest.skip("DeepSpeed's shared-memory allreduce op was not built")
    for existed, gone, head, last, segment in results:
        assert existed and gone and not Path(segment).exists()
        assert head == [3.0, 3.0, 3.0] and last == 3.0
    assert results[0][4] != results[1][4]
