"""Stop after step k, resume: steps k+1..n are bit-identical to an uninterrupted run (dropout on,
so RNG streams, optimizer, scheduler and data position all have to come back exactly)."""
import os

import pytest

from megagpt.formats.manifest import latest_tag
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import layout_overrides, train_worker

N, K = 6, 3


@pytest.mark.parametrize("layout,tp,pp", [("zero3", 1, 1), ("3d", 1, 2)])
def test_resume_is_bit_identical(tmp_path, layout, tp, pp):
    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    world = 2
    dp = world // (tp * pp)

    def overrides(tag, *extra):
        return layout_overrides(layout, tp, pp, 2, 4 // (2 * dp), tmp_path, tag) + [
            f"data.prefixes=[{shard}]", f"train.train_iters={N}", "train.eval_interval=2",
            "train.log_interval=1", "model.attn_pdrop=0.1", *extra]

    full = run_distributed(train_worker, world, overrides("full"), use_deepspeed=True)[0]
    first = run_distributed(train_worker, world, overrides("split", f"train.exit_after_iters={K}"),
                            use_deepspeed=True)[0]
    ckpt = tmp_path / "split" / "ckpt"
    assert latest_tag(ckpt) == f"global_step{K}"
    assert sorted(os.listdir(ckpt / f"global_step{K}"))  # DeepSpeed files plus our RNG files
    rest = run_distributed(train_worker, world, overrides("split"), use_deepspeed=True)[0]
    assert first == full[:K]
    assert rest == full[K:], (rest, full)


def test_keep_last_and_latest_pointer(tmp_path):
    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    ov = layout_overrides("zero3", 1, 1, 2, 1, tmp_path, "keep") + [
        f"data.prefixes=[{shard}]", "train.train_iters=5", "train.save_interval=1", "train.keep_last=2"]
    run_distributed(train_worker, 1, ov, use_deepspeed=True)
    ckpt = tmp_path / "keep" / "ckpt"
    assert sorted(d for d in os.listdir(ckpt) if d.startswith("global_step")) == ["global_step4", "global_step5"]
    assert latest_tag(ckpt) == "global_step5"
