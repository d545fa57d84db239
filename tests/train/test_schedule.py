"""GPT-3's schedule: warmup then cosine to 10%, in tokens; batch-size ramp-up through DeepSpeed."""
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megagpt.train.schedule import WarmupCosineLR, rampup_batch_size
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import RUN_YAML, layout_overrides


def test_warmup_cosine_in_tokens():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = WarmupCosineLR(opt, warmup_tokens=100, decay_tokens=1100, min_ratio=0.1)
    assert s.get_lr()[0] == 0.0
    s.step(50)
    assert s.get_lr()[0] == pytest.approx(0.5)
    s.step(50)
    assert s.get_lr()[0] == pytest.approx(1.0)
    s.step(500)  # halfway through the decay
    assert s.get_lr()[0] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    s.step(10_000)
    assert s.get_lr()[0] == pytest.approx(0.1)
    state = s.state_dict()
    s2 = WarmupCosineLR(opt, warmup_tokens=100, decay_tokens=1100, min_ratio=0.1)
    s2.load_state_dict(state)
    assert s2.get_lr() == s.get_lr()


def test_rampup_batch_size():
    kw = dict(full=64, start=8, rampup_tokens=1000, multiple=8)
    assert rampup_batch_size(0, **kw) == 8
    assert rampup_batch_size(500, **kw) == 32
    assert rampup_batch_size(999, **kw) == 56
    assert rampup_batch_size(1000, **kw) == 64
    assert rampup_batch_size(10, full=64, start=8, rampup_tokens=0, multiple=8) == 64


def _ramp_worker(rank, world_size, overrides):
    from megagpt.config import load_run_config
    from megagpt.train.loop import Trainer
    from megagpt.train.setup import setup_run

    trainer = Trainer(setup_run(load_run_config(RUN_YAML, overrides), world_size))
    losses = trainer.train()
    return losses, trainer.engine.global_steps, trainer.cursor.consumed


@pytest.mark.parametrize("layout,pp", [("zero3", 1), ("3d", 2)])
def test_batch_rampup(tmp_path, layout, pp):
    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    ov = layout_overrides(layout, 1, pp, 2, 4, tmp_path, "ramp") + [
        f"data.prefixes=[{shard}]", "train.train_iters=6", "train.log_interval=1",
        "train.rampup_start_batch=2", f"train.rampup_tokens={8 * 32}"]
    world = pp
    losses, optimizer_steps, consumed = run_distributed(_ramp_worker, world, ov, use_deepspeed=True)[0]
    assert optimizer_steps == 6  # one optimizer step per train step, whatever the accumulation
    acc = EventAccumulator(str(tmp_path / "ramp" / "tb" / "run_tiny"))
    acc.Reload()
    sizes = [int(e.value) for e in acc.Scalars("train/batch_size")]
    assert sizes[0] == 2 and sizes[-1] == 8 and sizes == sorted(sizes), sizes
    assert consumed == sum(sizes)
    assert acc.Scalars("train/tokens_seen")[-1].value == sum(sizes) * 32
