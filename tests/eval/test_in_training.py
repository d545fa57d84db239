"""train.eval_tasks: task files scored during pretraining (every eval_interval) on the consolidated
weights, whatever the layout, logged to TensorBoard as eval/<task>/<metric>, equal to evaluating
the exported model of the same step."""
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megagpt.eval.runner import Evaluator, run_suite
from megagpt.eval.tasks import load_task, write_task
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import layout_overrides, no_dropout, train_worker

WORDS = ["red", "blue", "green", "black", "white", "cold", "warm", "dark", "light", "small"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from data_tools.tokenizer import TokenizerConfig, train

    tmp = tmp_path_factory.mktemp("evaltasks")
    tok = train([" ".join(WORDS * 50) + " the a is of and or"], tmp / "tok.model",
                TokenizerConfig(vocab_size=320, sample_bytes=1_000_000))
    items = [{"context": f"{WORDS[i]} or", "choices": [WORDS[(i + 1) % 10], WORDS[(i + 2) % 10]], "label": i % 2}
             for i in range(10)]
    task = write_task(tmp / "colours.jsonl", {"name": "colours", "type": "multiple_choice"}, items)
    return tmp, tok, task, write_pattern_shard(tmp / "pattern_text_document")


@pytest.mark.parametrize("layout, tp, pp", [("zero3", 1, 1), ("3d", 1, 2)])
def test_eval_tasks_during_pretraining(setup, tmp_path, layout, tp, pp):
    tmp, tok, task, shard = setup
    export = tmp_path / "model.safetensors"
    ov = layout_overrides(layout, tp, pp, 2, 2 if layout == "zero3" else 4, tmp_path, "run") + no_dropout() + [
        f"data.prefixes=[{shard}]", f"data.tokenizer={tok}", "model.vocab_size=320", "train.train_iters=4",
        "train.eval_interval=2", f"train.eval_tasks=[{task}]", "train.eval_task_shots=[0, 1]",
        f"train.export_path={export}"]
    run_distributed(train_worker, 2, ov, use_deepspeed=True)
    acc = EventAccumulator(str(tmp_path / "run" / "tb" / "run_tiny"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("eval/colours/acc", "eval/colours/acc_uncond", "eval/colours.1shot/acc_token"):
        assert tag in tags and [e.step for e in acc.Scalars(tag)] == [2, 4], (tag, tags)
    # the number logged at step 4 is what evaluating the step-4 export gives
    import megagpt

    model, tokenizer = megagpt.load(export)
    rows = run_suite(Evaluator(model, tokenizer), [load_task(task)], [0, 1], seed=1234)
    want = next(r["value"] for r in rows if r["k"] == 1 and r["metric"] == "acc_token")
    assert acc.Scalars("eval/colours.1shot/acc_token")[-1].value == pytest.approx(want)
