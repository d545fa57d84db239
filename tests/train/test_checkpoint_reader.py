"""Training checkpoints read offline (one process, no launcher) equal what the live engine
consolidates, for ZeRO-3 x TP and for pipeline x TP; RNG files load with ``weights_only=True``;
missing or truncated files are named in one sentence."""
import json

import pytest
import torch

from common import RUN_YAML, layout_overrides
from dist_harness import run_distributed
from shards import write_pattern_shard
from megagpt.config import load_run_config, validate_run
from megagpt.inference import WeightsError, load
from megagpt.inference.checkpoint_reader import read_checkpoint


def _train_and_consolidate(rank, world_size, overrides):
    from megagpt.train.export import consolidated_state_dict
    from megagpt.train.loop import Trainer

    run = validate_run(load_run_config(RUN_YAML, overrides), world_size)
    trainer = Trainer(run)
    trainer.train()
    return consolidated_state_dict(trainer.built, run.model)


@pytest.mark.parametrize("layout,tp,pp", [("zero3", 2, 1), ("3d", 2, 2)])
def test_offline_reader_equals_engine_consolidation(tmp_path, layout, tp, pp):
    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    ov = layout_overrides(layout, tp, pp, 2, 1, tmp_path, "x") + [
        f"data.prefixes=[{shard}]", "train.train_iters=2", "train.eval_interval=2"]
    engine_full = run_distributed(_train_and_consolidate, 4, ov, use_deepspeed=True)[0]
    ckpt = tmp_path / "x" / "ckpt"
    cfg, full, meta = read_checkpoint(ckpt)
    assert meta["layout"] == layout and meta["tp"] == tp and meta["step"] == 2
    assert cfg == load_run_config(RUN_YAML, ov).model
    assert set(full) == set(engine_full)
    for name, t in engine_full.items():
        torch.testing.assert_close(full[name], t, rtol=0, atol=0, msg=name)
    # the same weights through the one-line API, at tp=1
    model = load(ckpt, with_tokenizer=False).model
    assert torch.equal(model.embed.wte.weight[: cfg.vocab_size], engine_full["embed.wte.weight"])
    # RNG files hold no pickled objects
    for f in (ckpt / "global_step2").glob("rng_rank*.pt"):
        assert set(torch.load(f, weights_only=True)) == {"megagpt", "numpy", "python"}

    # a truncated file and a missing file are named
    tag = ckpt / "global_step2"
    victim = sorted(list(tag.glob("zero_pp_rank_1_mp_rank_01_optim_states.pt")) + list(tag.glob("layer_01-model_01-*")))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=f"{victim.name}: cannot be read as a checkpoint file"):
        read_checkpoint(ckpt)
    victim.unlink()
    with pytest.raises(WeightsError, match=f"{victim.name}: missing|some tensor-parallel ranks"):
        read_checkpoint(ckpt)
    meta_file = tag / "megagpt.json"
    assert json.loads(meta_file.read_text())["layout"] == layout
    meta_file.unlink()
    with pytest.raises(WeightsError, match="no megagpt.json"):
        read_checkpoint(ckpt)
