"""zero3 (TP x DP, ZeRO-3) and 3d (TP x PP x DP, ZeRO-1) from the same seed and data give the
single-process losses; the loss falls."""
import pytest

from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import layout_overrides, no_dropout, train_worker

GLOBAL_BATCH = 8
STEPS = 4


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    return write_pattern_shard(tmp_path_factory.mktemp("data") / "pattern_text_document")


def _run(tmp_path, shard, layout, tp, pp, world, steps=STEPS, extra=()):
    dp = world // (tp * pp)
    micro = 2
    gas = GLOBAL_BATCH // (micro * dp)
    tag = f"{layout}_tp{tp}_pp{pp}_w{world}"
    ov = layout_overrides(layout, tp, pp, micro, gas, tmp_path, tag) + no_dropout() + [
        f"data.prefixes=[{shard}]", f"train.train_iters={steps}", "train.eval_interval=1000",
        "train.log_interval=1000"] + list(extra)
    results = run_distributed(train_worker, world, ov, use_deepspeed=True)
    return results[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shard):
    return _run(tmp_path_factory.mktemp("ref"), shard, "zero3", 1, 1, 1)


@pytest.mark.parametrize("layout,tp,pp,world", [
    ("zero3", 1, 1, 2),  # dp=2
    ("zero3", 2, 1, 4),  # tp=2 x dp=2
    ("3d", 1, 1, 1),     # the pipeline engine with one stage
    ("3d", 1, 2, 2),     # pp=2
    ("3d", 2, 2, 4),     # pp=2 x tp=2
])
def test_layout_matches_single_process(tmp_path, shard, reference, layout, tp, pp, world):
    losses = _run(tmp_path, shard, layout, tp, pp, world)
    assert len(losses) == STEPS
    for step, (a, b) in enumerate(zip(losses, reference)):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4), f"step {step + 1}: {losses} vs {reference}"


def test_loss_falls(tmp_path, shard):
    losses = _run(tmp_path, shard, "zero3", 1, 1, 2, steps=30,
                  extra=["deepspeed.optimizer.params.lr=0.003"])
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.5, losses


@pytest.mark.parametrize("layout,pp,world", [("zero3", 1, 1), ("3d", 2, 2)])
def test_activation_checkpointing_is_exact(tmp_path, shard, layout, pp, world):
    """Recomputing blocks (inside pipeline stages too) with dropout on changes nothing."""
    dropout = ["model.attn_pdrop=0.1", "model.resid_pdrop=0.1"]
    plain = _run(tmp_path / "plain", shard, layout, 1, pp, world, steps=3, extra=dropout)
    ckpt = _run(tmp_path / "ckpt", shard, layout, 1, pp, world, steps=3,
                extra=dropout + ["train.activation_checkpointing=true"])
    assert ckpt == plain



def _compiled_worker(rank, world_size, overrides):
    import torch._dynamo

    from megagpt.config import load_run_config
    from megagpt.train.loop import Trainer
    from megagpt.train.setup import setup_run
    from tests.helpers.train import RUN_YAML

    trainer = Trainer(setup_run(load_run_config(RUN_YAML, overrides), world_size))
    losses = trainer.train()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return losses, trainer.engine.is_compiled, graphs


def test_compiled_training_gives_the_eager_losses(tmp_path, shard, reference):
    """train.compile (DeepSpeed's engine.compile, inductor) inside two pipeline stages: graphs were
    compiled and the fp32 losses are the eager single-process run's (which every layout above
    equals). ZeRO-3 compiled training runs in tests/test_gpu_acceptance.py."""
    layout, pp, world = "3d", 2, 2
    eager = reference
    ov = layout_overrides(layout, 1, pp, 2, GLOBAL_BATCH // (2 * world // pp), tmp_path, "compiled") + no_dropout() + [
        f"data.prefixes=[{shard}]", f"train.train_iters={STEPS}", "train.eval_interval=1000",
        "train.log_interval=1000", "train.compile=true"]
    losses, compiled, graphs = run_distributed(_compiled_worker, world, ov, use_deepspeed=True)[0]
    assert compiled and graphs > 0, (compiled, graphs)
    for step, (a, b) in enumerate(zip(losses, eager)):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4), f"step {step + 1}: {losses} vs {eager}"
