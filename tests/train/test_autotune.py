"""``"auto"`` DeepSpeed values: the ZeRO stage is the lowest whose predicted memory fits a rank
(0 with one data-parallel rank, at most 1 in the 3d layout), buckets follow n_embd, explicit
numbers win, and auto-configured training gives ZeRO-3's losses."""
from pathlib import Path

import pytest

from megagpt.config import ConfigError, load_run_config
from megagpt.train.autotune import resolve
from megagpt.train.memory import predict
from megagpt.train.setup import setup_run
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import RUN_YAML, layout_overrides, no_dropout, train_worker

ROOT = Path(__file__).resolve().parents[2]
GIB = 2 ** 30


def _run(world, *extra, ds="auto.json"):
    return setup_run(load_run_config(RUN_YAML, [f"train.deepspeed_config={ROOT / 'ds_configs' / ds}",
                                                   "data.prefixes=[x]", *extra]), world)


def test_one_data_parallel_rank_needs_no_sharding():
    run = _run(1)
    assert run.deepspeed["zero_optimization"]["stage"] == 0
    assert any("ZeRO stage 0" in n and "one data-parallel rank" in n for n in run.notes)
    assert _run(2, "parallel.tp_size=2").deepspeed["zero_optimization"]["stage"] == 0  # tp=2 x dp=1


def test_lowest_stage_that_fits():
    """A GPT-3 XL (1.3B) at tp=1, dp=8 in bf16 with activation checkpointing (memory.predict): 20
    bytes per parameter replicated at stage 0 (bf16 weights and grads, an fp32 gradient copy, fp32
    masters and moments) are ~24.5 GiB, so 80 GiB takes stage 0; 24 GiB stage 1 (Adam states
    sharded, ~6.7 GiB); 8 GiB stage 2 (grads too, ~4.6 GiB); 5.5 GiB stage 3 (~2.5 GiB); 1 GiB
    nothing, with a warning (activations and buffers are ~1.3 GiB at micro-batch 1)."""
    def resolved(gib):
        r = load_run_config(ROOT / "configs" / "gpt3_1.3b.yaml", ["data.prefixes=[x]", "parallel.tp_size=1",
                                                                  "deepspeed.train_micro_batch_size_per_gpu=1",
                                                                  "deepspeed.zero_optimization.stage=auto"])
        notes = resolve(r, 8, memory=(gib * GIB, f"{gib} GiB"))
        return r, r.deepspeed["zero_optimization"]["stage"], notes

    for gib, stage in ((80, 0), (24, 1), (8, 2), (5.5, 3)):
        r, got, notes = resolved(gib)
        assert got == stage and f"fits 80% of {gib} GiB" in notes[-1], (gib, notes)
    need = predict(r.model, seq=2048, micro_batch=1, tp=1, dp=8, zero=0, precision="bf16", checkpointing=True)
    assert 1.25e9 * 20 < need.params + need.grads + need.optimizer < 1.4e9 * 20
    r, got, notes = resolved(1)
    assert got == 3 and "expect to run out of memory" in notes[-1]


def test_pipeline_layout_stays_at_stage_one():
    run = load_run_config(RUN_YAML, [f"train.deepspeed_config={ROOT / 'ds_configs' / 'auto.json'}", "data.prefixes=[x]",
                                     "parallel.layout=3d", "parallel.pp_size=2"])
    resolve(run, 4, memory=(1e4, "10 kB"))  # nothing fits: the pipeline engine still cannot go past 1
    assert run.deepspeed["zero_optimization"]["stage"] == 1


def test_buckets_from_the_model_and_explicit_values_win():
    run = _run(2, "model.n_embd=1024", "model.n_head=8")
    z = run.deepspeed["zero_optimization"]
    assert (z["reduce_bucket_size"], z["stage3_prefetch_bucket_size"], z["stage3_param_persistence_threshold"]) == \
        (1024 * 1024, int(0.9 * 1024 * 1024), 10240)
    small = _run(2).deepspeed["zero_optimization"]
    assert small["reduce_bucket_size"] == 500_000  # the floor for a tiny model
    fixed = _run(2, "deepspeed.zero_optimization.reduce_bucket_size=12345", "deepspeed.zero_optimization.stage=3")
    assert fixed.deepspeed["zero_optimization"]["reduce_bucket_size"] == 12345
    assert fixed.deepspeed["zero_optimization"]["stage"] == 3
    with pytest.raises(ConfigError, match="zero_optimization.overlap_comm cannot be 'auto'"):
        _run(2, "deepspeed.zero_optimization.overlap_comm=auto")


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    return write_pattern_shard(tmp_path_factory.mktemp("data") / "pattern_text_document")


def test_auto_config_trains_like_zero3(tmp_path, shard):
    """ZeRO-3 in one process vs the auto config (stage 0, gradient all-reduce skipped) in one
    process and at dp=2: the same losses."""
    def losses(world, ds, tag):
        ov = layout_overrides("zero3", 1, 1, 2, 4 // world, tmp_path, tag) + no_dropout() + [
            f"data.prefixes=[{shard}]", "train.train_iters=4", "train.eval_interval=1000", "train.log_interval=1000",
            f"train.deepspeed_config={ROOT / 'ds_configs' / ds}"]
        return run_distributed(train_worker, world, ov, use_deepspeed=True)[0]

    ref = losses(1, "zero3.json", "z3")
    for world in (1, 2):
        got = losses(world, "auto.json", f"auto{world}")
        assert got == pytest.approx(ref, rel=1e-4, abs=1e-4), (world, got, ref)


def _shared_master_worker(rank, world_size, shard):
    import torch

    from megagpt.train.engine import build_engine

    run = _run(world_size, f"data.prefixes=[{shard}]", *no_dropout(), ds="zero3.json")
    built = build_engine(run, total_tokens=10 ** 6)
    opt = built.engine.optimizer
    pairs = list(zip(opt.fp16_partitioned_groups_flat, opt.fp32_partitioned_groups_flat))
    shared = all(lp.untyped_storage().data_ptr() == hp.untyped_storage().data_ptr() for lp, hp in pairs)
    before = [lp.clone() for lp, _ in pairs]
    x = torch.randint(1, 96, (2, 32))
    for _ in range(2):  # the warmup's first step runs at lr 0
        built.engine.lr_scheduler.pending_tokens = 64
        built.engine.backward(built.engine.module.token_losses(built.engine(x), x).mean())
        built.engine.step()
    pairs = list(zip(opt.fp16_partitioned_groups_flat, opt.fp32_partitioned_groups_flat))
    moved = all(not torch.equal(b, lp) for b, (lp, _) in zip(before, pairs))
    same = all(lp.untyped_storage().data_ptr() == hp.untyped_storage().data_ptr() for lp, hp in pairs)
    return shared, moved, same


def test_fp32_zero3_keeps_one_copy_of_each_partition(shard):
    """fp32 ZeRO-3: the optimizer's master partition is the parameter partition (one storage), and
    a step updates it in place."""
    for shared, moved, same in run_distributed(_shared_master_worker, 2, shard, use_deepspeed=True):
        assert shared and moved and same


def _grad_norm_worker(rank, world_size, layout, shard):
    import torch

    from megagpt.train.engine import build_engine

    extra = ["parallel.layout=3d", "parallel.pp_size=2"] if layout == "3d" else []
    run = _run(world_size, f"data.prefixes=[{shard}]", *extra, *no_dropout())
    assert run.deepspeed["zero_optimization"]["stage"] == 0
    built = build_engine(run, total_tokens=10 ** 6)
    eng = built.engine
    x = torch.randint(1, 96, (run.deepspeed["train_micro_batch_size_per_gpu"], 32))
    eng.lr_scheduler.pending_tokens = x.numel()
    if built.pipeline:
        eng.train_batch(data_iter=iter([(x, x)] * eng.gradient_accumulation_steps()))
        return float(eng.get_global_grad_norm())
    eng.set_gradient_accumulation_boundary(True)
    eng.backward(eng.module.token_losses(eng(x), x).mean())
    want = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in eng.module.parameters()])).item()
    eng.step()
    return float(eng.get_global_grad_norm()), want


@pytest.mark.parametrize("layout,world", [("zero3", 1), ("3d", 2)])
def test_stage_zero_logs_the_gradient_norm(shard, layout, world):
    """Without ZeRO, DeepSpeed clips but forgets the norm; train/grad_norm needs it."""
    out = run_distributed(_grad_norm_worker, world, layout, shard, use_deepspeed=True)[0]
    if layout == "3d":
        assert out > 0
    else:
        got, want = out
        assert got == pytest.approx(want, rel=1e-5) and got > 0
