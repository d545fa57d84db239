"""The step guard on real ranks: a NaN on one rank of two is skipped by every rank and leaves
weights, optimizer state and LR schedule bit for bit as they were, and the run goes on as if that
batch had never been in the stream; K spiking steps in a row rewind the run to the right
checkpoint and leave the data window out, again after a kill and a resume. Plus the guard's
arithmetic and its configuration errors."""
import json

import pytest
import torch

from megagpt.config import ConfigError, load_run_config
from megagpt.config.guard import GuardConfig
from megagpt.train.cursor import merge_windows, next_start
from megagpt.train.guard import StepGuard, Verdict
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import RUN_YAML, layout_overrides, train_worker

BATCH = 8  # micro 2 x gas 2 x dp 2 samples per step


def _snapshot(engine) -> list[torch.Tensor]:
    """Every full fp32 weight and Adam moment (gathered across ZeRO partitions), the LR schedule."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    out = []
    for p in engine.module.parameters():
        if engine.zero_optimization():
            out.append(safe_get_full_fp32_param(p).clone())
            out += [safe_get_full_optimizer_state(p, key).clone() for key in ("exp_avg", "exp_avg_sq")]
        else:  # stage 0 in fp32: the parameters are the weights, torch's AdamW holds the moments
            state = engine.optimizer.state[p]
            out += [p.detach().clone(), state["exp_avg"].clone(), state["exp_avg_sq"].clone(),
                    torch.as_tensor(state["step"]).clone()]
    out.append(torch.tensor([engine.lr_scheduler.tokens, engine.lr_scheduler.get_lr()[0]], dtype=torch.float64))
    return out


def nan_worker(rank, world, overrides, bad_step):
    from megagpt.config import load_run_config
    from megagpt.train.loop import Trainer
    from megagpt.train.setup import setup_run

    run = setup_run(load_run_config(RUN_YAML, overrides), world)
    t = Trainer(run)
    losses = []
    while t.step < bad_step - 1:
        losses.append(t.train_step().loss)
    before = _snapshot(t.engine)
    verdict = t.train_step()
    after = _snapshot(t.engine)
    untouched = len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))
    step_after, consumed_after = t.step, t.cursor.consumed
    while t.step < run.train.train_iters:
        losses.append(t.train_step().loss)
    return {"losses": losses, "reason": verdict.reason, "applied": verdict.applied, "untouched": untouched,
            "step_after": step_after, "consumed_after": consumed_after, "skip": t.cursor.skip}


@pytest.mark.parametrize("ds", ["zero3.json", "auto.json"])  # ZeRO-3, and stage 0 (no DeepSpeed optimizer wrapper)
def test_nan_on_one_rank_is_skipped_everywhere_bit_for_bit(tmp_path, monkeypatch, ds):
    monkeypatch.setenv("MEGAGPT_ALLOW_FAULTS", "1")
    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    s = 4

    def overrides(tag, *extra):
        return layout_overrides("zero3", 1, 1, 2, 2, tmp_path, tag) + [
            f"data.prefixes=[{shard}]", "train.train_iters=7", "model.attn_pdrop=0.1",
            f"train.deepspeed_config={RUN_YAML.parents[2] / 'ds_configs' / ds}", *extra]

    guarded = run_distributed(nan_worker, 2, overrides("nan", "train.fault.kind=nan", f"train.fault.step={s}",
                                                       "train.fault.rank=1"), s, use_deepspeed=True)
    for r in guarded:
        assert r["reason"] == "non-finite loss on rank 1" and r["applied"] is False
        assert r["untouched"], "the skipped step changed weights, Adam moments or the LR schedule"
        assert r["step_after"] == s - 1 and r["consumed_after"] == s * BATCH
        assert r["skip"] == [[(s - 1) * BATCH, s * BATCH]]  # recorded: a resume leaves it out too
    # the same run with that batch taken out of the stream
    window = f"train.skip_data=[[{(s - 1) * BATCH},{s * BATCH}]]"
    reference = run_distributed(train_worker, 2, overrides("ref", window), use_deepspeed=True)[0]
    assert guarded[0]["losses"] == guarded[1]["losses"] == reference


def test_spike_rewinds_and_a_resume_leaves_the_same_window_out(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MEGAGPT_ALLOW_FAULTS", "1")
    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    guard = ["train.guard.window=5", "train.guard.min_history=2", "train.guard.zscore=3",
             "train.guard.min_ratio=1.2", "train.guard.rewind_after=3", "train.guard.rewind_min_steps=2"]

    def overrides(tag, *extra):
        return layout_overrides("zero3", 1, 1, 2, 2, tmp_path, tag) + [
            f"data.prefixes=[{shard}]", "train.train_iters=10", "train.save_interval=2", *guard, *extra]

    # step 7 spikes on three tries (batches 48..72): checkpoints at 2, 4, 6; the newest at least
    # 2 steps before step 6 is step 4 (32 samples): samples 32..72 are left out
    spike = ["train.fault.kind=spike", "train.fault.step=7", "train.fault.count=3", "train.fault.rank=1"]
    first = run_distributed(train_worker, 2, overrides("spike", *spike, "train.exit_after_iters=8"),
                            use_deepspeed=True)[0]
    ckpt = tmp_path / "spike" / "ckpt"
    assert json.loads((ckpt / "guard.json").read_text()) == {"skip_data": [[32, 72]]}
    assert (ckpt / "latest").read_text().strip() == "global_step8"
    saved = torch.load(ckpt / "global_step8" / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)
    assert saved["skip_data"] == [[32, 72]] and saved["guard"]["rewinds"] == 1
    rest = run_distributed(train_worker, 2, overrides("spike"), use_deepspeed=True)[0]  # killed at 8, resumed

    reference = run_distributed(train_worker, 2, overrides("ref", "train.skip_data=[[32,72]]"),
                                use_deepspeed=True)[0]
    assert len(first) == 6 + 4  # steps 1..6, then 5..8 again after the rewind to step 4
    assert first[:4] == reference[:4] and first[6:] == reference[4:8]  # 5, 6 saw samples 32..48
    assert rest == reference[8:]

    acc = EventAccumulator(str(tmp_path / "spike" / "tb" / "run_tiny"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("guard/skipped")] == [1.0, 2.0, 3.0]
    assert [(e.step, e.value) for e in acc.Scalars("guard/rewinds")] == [(4, 1.0)]


def test_rewind_without_a_checkpoint_stops_with_one_line(tmp_path, monkeypatch):
    from megagpt.train.loop import GuardError

    monkeypatch.setenv("MEGAGPT_ALLOW_FAULTS", "1")
    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    ov = layout_overrides("zero3", 1, 1, 2, 1, tmp_path, "none") + [
        f"data.prefixes=[{shard}]", "train.train_iters=4", "train.fault.kind=nan", "train.fault.step=2",
        "train.fault.count=3", "train.guard.rewind_after=3"]
    with pytest.raises(Exception) as e:
        run_distributed(train_worker, 1, ov, use_deepspeed=True)
    assert "no whole checkpoint at or before step" in str(e.value) and GuardError.__name__ in str(e.value)


def test_spike_test_and_nonfinite():
    g = StepGuard(GuardConfig(window=5, min_history=3, zscore=3.0, min_ratio=1.5), check_grad_norm=True)
    for loss in (4.0, 4.1, 3.9):
        assert g.judge(loss) is None
        assert g.record(Verdict(loss)) is False
    assert g.judge(4.3) is None  # z = 3.7 but not 1.5x the mean
    assert g.judge(6.1).startswith("loss spike 6.1000")
    assert g.judge(float("nan"), [1]) == "non-finite loss on rank 1"
    assert g.judge(float("inf"), [0, 3]) == "non-finite loss on ranks 0, 3"
    # K bad steps in a row; a good one in between resets the count
    bad = Verdict(9.0, "loss spike", applied=False)
    assert [g.record(bad), g.record(Verdict(4.0)), g.record(bad), g.record(bad), g.record(bad)] == \
        [False, False, False, False, True]
    assert g.skipped == 4
    # outside fp16 a non-finite gradient norm (DeepSpeed skipped the update) is a bad step
    v = g.after_step(Verdict(4.0), float("inf"))
    assert v.reason == "non-finite gradient norm" and v.applied is False
    fp16 = StepGuard(GuardConfig(), check_grad_norm=False)  # the loss scaler owns overflow there
    assert fp16.after_step(Verdict(4.0), float("inf")).reason is None
    assert StepGuard(GuardConfig(enabled=False), check_grad_norm=True).judge(float("nan")) is None


def test_data_windows():
    assert merge_windows([[10, 20], [0, 5], [18, 30], [30, 31]]) == [[0, 5], [10, 31]]
    w = [[16, 24], [24, 40]]
    assert next_start(8, 8, w) == 8  # [8, 16) touches no window
    assert next_start(16, 8, w) == 40
    assert next_start(12, 8, [[14, 20]]) == 20  # a batch overlapping a user's unaligned window
    # past the end of a 48-sample stream it reads on from the start, leaving the same windows out
    assert next_start(64, 8, w, 48) == 88 and next_start(48, 8, w, 48) == 48
    assert next_start(40, 16, [[0, 8]], 48) == 56  # a batch across the end meets the next pass's window


def test_guard_and_fault_configuration(monkeypatch):
    monkeypatch.delenv("MEGAGPT_ALLOW_FAULTS", raising=False)
    with pytest.raises(ConfigError, match="train.fault injects a failure on purpose.*MEGAGPT_ALLOW_FAULTS=1"):
        load_run_config(RUN_YAML, ["train.fault.kind=nan"])
    monkeypatch.setenv("MEGAGPT_ALLOW_FAULTS", "1")
    with pytest.raises(ConfigError, match="train.fault.kind must be one of nan, spike, stop, crash, got 'oops'"):
        load_run_config(RUN_YAML, ["train.fault.kind=oops"])
    with pytest.raises(ConfigError, match="run_tiny.yaml: train.guard: unknown key 'zscre'"):
        load_run_config(RUN_YAML, ["train.guard.zscre=4"])
    with pytest.raises(ConfigError, match="train.guard.min_ratio must be >= 1"):
        load_run_config(RUN_YAML, ["train.guard.min_ratio=0.5"])
    with pytest.raises(ConfigError, match=r"train.skip_data must be a list of \[start, end\]"):
        load_run_config(RUN_YAML, ["train.skip_data=[[5,2]]"])
    with pytest.raises(ConfigError, match="train.hang_timeout_s must be > 0 seconds"):
        load_run_config(RUN_YAML, ["train.hang_timeout_s=0"]).train.validate()
    run = load_run_config(RUN_YAML, ["train.guard.zscore=4.5", "train.skip_data=[[0,8]]"])
    assert run.train.guard.zscore == 4.5 and run.train.guard.enabled and run.train.skip_data == [[0, 8]]
