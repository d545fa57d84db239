"""A checkpoint saved in one parallel layout resumes in another: tp, pp, dp and the ZeRO stage all
change (zero3 <-> 3d included). Right after loading, the new layout's fp32 masters and both Adam
moments, gathered whole, equal the original checkpoint's exactly, and with dropout off the next
steps' losses equal the uninterrupted run's. Also: the offline universal export, and the refusals."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megagpt.formats.checkpoint_reader import OPTIMIZER_KEYS, SavedCheckpoint
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import RUN_YAML, layout_overrides, no_dropout, train_worker

ROOT = Path(__file__).parents[2]
GLOBAL_BATCH, MICRO, STEPS, SAVED_AT = 8, 2, 6, 4


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    return write_pattern_shard(tmp_path_factory.mktemp("data") / "pattern_text_document")


def _overrides(tmp, shard, name, layout, tp, pp, stage, world=4, extra=()):
    dp = world // (tp * pp)
    ov = layout_overrides(layout, tp, pp, MICRO, GLOBAL_BATCH // (MICRO * dp), tmp, name) + no_dropout() + [
        f"data.prefixes=[{shard}]", f"train.train_iters={STEPS}", "train.eval_interval=1000",
        "train.log_interval=1000", f"deepspeed.zero_optimization.stage={stage}"]
    return ov + list(extra)


def _resume_worker(rank, world_size, overrides):
    """Build the trainer (which loads the checkpoint), gather its state whole, then train on."""
    from megagpt.config import load_run_config
    from megagpt.train.loop import Trainer
    from megagpt.train.reshard import _torch_optimizer, train_state
    from megagpt.train.setup import setup_run

    run = setup_run(load_run_config(RUN_YAML, overrides), world_size)
    trainer = Trainer(run)
    state = train_state(trainer.built, run.model)
    steps = {float(s["step"]) for s in _torch_optimizer(trainer.engine.optimizer).state.values()}
    start = trainer.step
    losses = trainer.train()
    return {"state": state, "adam_steps": steps, "start": start, "losses": losses}


BF16 = ["deepspeed.bf16.enabled=true"]
# (saved layout, tp, pp, ZeRO stage) -> (resumed layout, tp, pp, ZeRO stage), precision; 4 ranks each
PAIRS = [
    (("zero3", 2, 1, 3), ("zero3", 1, 1, 3), []),   # tp2 x dp2 -> dp4, ZeRO-3 both
    (("zero3", 1, 1, 3), ("3d", 1, 2, 1), []),      # ZeRO-3 dp4 -> pipeline pp2 x dp2, ZeRO-1
    (("3d", 2, 2, 0), ("zero3", 2, 1, 0), []),      # pipeline tp2 x pp2, no ZeRO -> tp2 x dp2, no ZeRO
    (("zero3", 2, 1, 1), ("zero3", 1, 1, 3), BF16),  # bf16: ZeRO-1 tp2 x dp2 -> ZeRO-3 dp4
]


@pytest.mark.parametrize("saved,resumed,precision", PAIRS, ids=[
    "-".join(f"{a[0]}-tp{a[1]}-pp{a[2]}-z{a[3]}" for a in p[:2]) + ("-bf16" if p[2] else "") for p in PAIRS])
def test_resume_in_another_layout(tmp_path, shard, saved, resumed, precision):
    # the uninterrupted run, saving at step 4 on its way to step 6
    ov = _overrides(tmp_path, shard, "a", *saved, extra=[f"train.save_interval={SAVED_AT}", *precision])
    reference = run_distributed(train_worker, 4, ov, use_deepspeed=True)[0]
    ckpt = tmp_path / "a" / "ckpt"
    original = SavedCheckpoint(ckpt, f"global_step{SAVED_AT}")
    assert (original.meta["layout"], original.tp, original.pp, original.zero_stage) == saved

    # a new run in another layout continues from step 4's checkpoint
    ov = _overrides(tmp_path, shard, "b", *resumed,
                    extra=[f"train.resume_from={ckpt / f'global_step{SAVED_AT}'}", *precision])
    results = run_distributed(_resume_worker, 4, ov, use_deepspeed=True)
    assert {r["start"] for r in results} == {SAVED_AT}
    assert {s for r in results for s in r["adam_steps"]} == {float(SAVED_AT)}

    gathered = {}
    for r in results:  # pipeline stages hold different parameters
        for name, values in r["state"].items():
            gathered.setdefault(name, values)
    want = {"fp32": original.tensors(), **{k: original.tensors(k) for k in OPTIMIZER_KEYS}}
    assert sorted(gathered) == sorted(want["fp32"])
    for name, values in gathered.items():
        for key, t in values.items():
            assert torch.equal(t, want[key][name]), f"{name} {key} differs after resharding"
    assert any(float(want["exp_avg_sq"][n].abs().max()) > 0 for n in want["exp_avg_sq"])  # moments are real

    losses = results[0]["losses"]
    assert len(losses) == STEPS - SAVED_AT
    # bf16 matmuls round differently when the shapes per rank change: equal to bf16's precision
    rel = 5e-4 if precision else 1e-5
    for step, (a, b) in enumerate(zip(losses, reference[SAVED_AT:]), start=SAVED_AT + 1):
        assert a == pytest.approx(b, rel=rel), f"step {step}: resumed {losses} vs uninterrupted {reference}"
    print(f"\n{saved} -> {resumed} {precision}: resumed losses {losses}, uninterrupted {reference[SAVED_AT:]}")


def test_rerun_in_new_layout_reshards_checkpoint_dir(tmp_path, shard):
    """The same checkpoint_dir rerun with another tp/dp: the tag is converted once beside its
    DeepSpeed files and the run goes on to the end."""
    ov = _overrides(tmp_path, shard, "r", "zero3", 2, 1, 3, extra=[f"train.exit_after_iters={SAVED_AT}"])
    run_distributed(train_worker, 4, ov, use_deepspeed=True)
    ov = _overrides(tmp_path, shard, "r", "zero3", 1, 1, 0, world=2)
    losses = run_distributed(train_worker, 2, ov, use_deepspeed=True)[0]
    assert len(losses) == STEPS - SAVED_AT
    tag = tmp_path / "r" / "ckpt" / f"global_step{SAVED_AT}"
    info = json.loads((tag / "universal" / "universal.json").read_text())
    assert info["saved_layout"] == {"layout": "zero3", "tp": 2, "pp": 1, "dp": 2, "zero_stage": 3}
    assert info["step"] == SAVED_AT and info["optimizer_step"] == SAVED_AT
    assert json.loads((tmp_path / "r" / "ckpt" / f"global_step{STEPS}" / "megagpt.json").read_text())["dp"] == 2


def test_universal_export_and_refusals(tmp_path, shard):
    ov = _overrides(tmp_path, shard, "u", "zero3", 1, 1, 0, world=2, extra=[f"train.exit_after_iters={SAVED_AT}"])
    run_distributed(train_worker, 2, ov, use_deepspeed=True)
    ckpt = tmp_path / "u" / "ckpt"
    out = tmp_path / "universal"
    r = subprocess.run([sys.executable, str(ROOT / "megagpt/export.py"), "--model", str(ckpt), "--universal", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    saved = SavedCheckpoint(ckpt)
    from megagpt.formats.universal import read_info
    from megagpt.formats.universal import read_param as _read_param

    info = read_info(out)
    assert info["params"] == list(saved.tensors())
    for key in ("fp32",) + OPTIMIZER_KEYS:
        for name, t in saved.tensors(None if key == "fp32" else key).items():
            assert torch.equal(_read_param(out, name, key), t)

    # megagpt.load / read_weights take it like any other weights source
    from megagpt.inference import read_weights

    cfg, full, meta = read_weights(out)
    assert cfg == saved.cfg and meta["format"] == "universal" and meta["step"] == SAVED_AT
    assert all(torch.equal(full[n], t) for n, t in saved.tensors().items())

    # a resume into a model of another shape is refused, naming the field
    from megagpt.config import ConfigError

    ov = _overrides(tmp_path, shard, "v", "zero3", 1, 1, 0, world=1,
                    extra=[f"train.resume_from={out}", "model.n_embd=64"])
    with pytest.raises(Exception, match=r"n_embd=32 but model.n_embd=64"):
        run_distributed(train_worker, 1, ov, use_deepspeed=True)
    from megagpt.config import TrainConfig

    with pytest.raises(ConfigError, match="exclude each other"):
        TrainConfig(resume_from=str(out), init_from=str(out)).validate()
    # a half-written universal directory is never taken for one
    (out / "universal.json").unlink()
    from megagpt.formats.universal import is_universal

    assert not is_universal(out)
