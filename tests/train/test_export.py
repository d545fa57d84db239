"""Consolidation gathers ZeRO partitions, TP shards and pipeline stages into the tp-independent
full state dict: at step 0 it equals a single-device GPT built from the same seed (which also
checks that zero.Init and the seeded pipeline build the same weights)."""
import pytest
import torch

from megagpt.config import load_run_config
from megagpt.model import GPT, full_state_dict
from megagpt.train.setup import setup_run
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import RUN_YAML, layout_overrides


def _export_worker(rank, world_size, overrides):
    from megagpt.train.consolidate import consolidated_state_dict
    from megagpt.train.engine import build_engine

    run = setup_run(load_run_config(RUN_YAML, overrides), world_size)
    built = build_engine(run, total_tokens=10_000)
    full = consolidated_state_dict(built, run.model)
    if rank == 0:
        ref = full_state_dict(GPT(run.model, init_seed=run.train.seed))
        assert set(full) == set(ref)
        for name, t in ref.items():
            torch.testing.assert_close(full[name], t, rtol=0, atol=0, msg=name)
    return rank


@pytest.mark.parametrize("layout,tp,pp", [("zero3", 2, 1), ("3d", 2, 2)])
def test_consolidated_weights_equal_single_device_model(tmp_path, layout, tp, pp):
    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    ov = layout_overrides(layout, tp, pp, 2, 1, tmp_path, "x") + [f"data.prefixes=[{shard}]"]
    run_distributed(_export_worker, 4, ov, use_deepspeed=True)
