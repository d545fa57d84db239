"""Training checkpoints read offline (one process, no process group) equal what the live engine
consolidates, for ZeRO-3 x TP x DP, pipeline x TP (ZeRO-1) and bf16 ZeRO-1 x TP x DP (the fp32
masters, not the bf16 weights); without optimizer files the module weights are read; RNG files load
with ``weights_only=True``; missing or truncated files are named in one sentence."""
import json

import pytest
import torch

from megagpt.config import load_run_config
from megagpt.formats.checkpoint_reader import read_checkpoint
from megagpt.formats.weights import WeightsError
from megagpt.train.setup import setup_run
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import RUN_YAML, layout_overrides

BF16_ZERO1 = ["deepspeed.bf16.enabled=true", "deepspeed.zero_optimization.stage=1"]


def _train_and_consolidate(rank, world_size, overrides):
    from megagpt.train.consolidate import consolidated_state_dict
    from megagpt.train.loop import Trainer

    run = setup_run(load_run_config(RUN_YAML, overrides), world_size)
    trainer = Trainer(run)
    trainer.train()  # saves at the last step
    return consolidated_state_dict(trainer.built, run.model)


def _generate_worker(rank, world_size, ckpt):
    from megagpt.inference import SamplingParams, generate, load
    from megagpt.parallel.state import ParallelState

    model = load(ckpt, ps=ParallelState.build(tp_size=world_size), with_tokenizer=False).model
    out = generate(model, [[5, 6, 7, 8], [9]], SamplingParams(max_new_tokens=12, temperature=0))
    return [c.tokens for c in out]


def _assert_equal(full, ref):
    assert list(full) == list(ref)
    for name, t in ref.items():
        assert full[name].dtype == torch.float32
        torch.testing.assert_close(full[name], t, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("layout,tp,pp,extra,stage", [
    ("zero3", 2, 1, [], 3), ("3d", 2, 2, [], 1), ("zero3", 2, 1, BF16_ZERO1, 1)],
    ids=["zero3-tp2-dp2", "3d-tp2-pp2", "bf16-zero1-tp2-dp2"])
def test_offline_reader_equals_engine_consolidation(tmp_path, layout, tp, pp, extra, stage):
    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    ov = layout_overrides(layout, tp, pp, 2, 1, tmp_path, "x") + [
        f"data.prefixes=[{shard}]", "train.train_iters=2", "train.eval_interval=2", *extra]
    engine_full = run_distributed(_train_and_consolidate, 4, ov, use_deepspeed=True)[0]
    ckpt = tmp_path / "x" / "ckpt"
    tag = ckpt / "global_step2"

    cfg, full, meta = read_checkpoint(ckpt)
    assert cfg == load_run_config(RUN_YAML, ov).model
    assert meta == {"tag": "global_step2", "step": 2, "layout": layout, "tp": tp, "pp": pp, "dp": 4 // (tp * pp),
                    "zero_stage": stage, "weights": "fp32 master", "tokenizer": None}
    _assert_equal(full, engine_full)
    # generation straight from the checkpoint: tp=2 (each rank its shard) equals tp=1
    ref = run_distributed(_generate_worker, 1, ckpt)[0]
    assert run_distributed(_generate_worker, 2, ckpt) == [ref, ref]
    assert json.loads((tag / "megagpt.json").read_text())["layout"] == layout
    for f in tag.glob("rng_rank*.pt"):  # no pickled objects
        assert set(torch.load(f, weights_only=True)) == {"megagpt", "numpy", "python"}

    # without megagpt.json: a one-sentence error, or the model config passed in
    meta_file = tag / "megagpt.json"
    saved = meta_file.read_text()
    meta_file.unlink()
    with pytest.raises(WeightsError, match=r"global_step2: no megagpt\.json .*pass the run's model config"):
        read_checkpoint(ckpt)
    _assert_equal(read_checkpoint(ckpt, "global_step2", model_cfg=cfg)[1], engine_full)
    meta_file.write_text(saved)

    # a truncated, then a missing optimizer file is named
    optim = sorted(tag.glob("*optim_states.pt"))
    victim = optim[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(WeightsError, match=f"{victim.name}: cannot be read as a checkpoint file"):
        read_checkpoint(ckpt)
    victim.unlink()
    with pytest.raises(WeightsError, match=f"{victim.name}: missing"):
        read_checkpoint(ckpt)

    # without any optimizer file: ZeRO-3 has no weights left; ZeRO-1 has the module's (bf16 in bf16)
    for f in optim:
        f.unlink(missing_ok=True)
    if stage == 3:
        with pytest.raises(WeightsError, match="optim_states.pt: missing"):
            read_checkpoint(ckpt)
        return
    _, module_full, module_meta = read_checkpoint(ckpt)
    assert module_meta["weights"] == "module"
    bf16 = bool(extra)
    _assert_equal(module_full, {k: t.bfloat16().float() if bf16 else t for k, t in engine_full.items()})
    if bf16:  # the masters are not the bf16 weights
        assert any(not torch.equal(t, module_full[k]) for k, t in engine_full.items())
    if layout == "3d":
        victim = tag / "layer_02-model_01-model_states.pt"
        victim.unlink()
        with pytest.raises(WeightsError, match=f"{victim.name}: missing"):
            read_checkpoint(ckpt)
