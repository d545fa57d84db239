"""Task files: every problem is one sentence naming the file and line; k-shot prompts are
reproducible per seed and never contain the item being asked."""
import json

import pytest

from megagpt.eval.tasks import TaskError, build_prompt, draw_examples, load_task, render, write_task


def _write(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path


HEADER = {"megagpt_task": 1, "type": "multiple_choice"}


@pytest.mark.parametrize("lines, where, message", [
    ([HEADER, {"context": "a", "choices": ["x", "y"], "label": 0}, {"choices": ["x", "y"], "label": 0}],
     3, "missing 'context'"),
    ([HEADER, {"context": "a", "choices": [], "label": 0}], 2, "'choices' must be a list of at least 2"),
    ([HEADER, {"context": "a", "choices": ["x", " "], "label": 0}], 2, "non-empty strings"),
    ([HEADER, {"context": "a", "choices": ["x", "y"], "label": 2}], 2, "'label' must be an index"),
    ([HEADER, {"context": "a"}], 2, "missing 'choices'"),
    ([HEADER, '{"context": "a", '], 2, "not valid JSON"),
    ([{"context": "a"}], 1, "the first line must be the task header"),
    ([{"megagpt_task": 1, "type": "essay"}], 1, "'type' must be one of"),
    ([{"megagpt_task": 1, "type": "cloze", "colour": 1}], 1, "unknown header key"),
    ([{"megagpt_task": 1, "type": "cloze"}, {"context": "a", "target": ""}], 2, "missing 'target'"),
    ([{"megagpt_task": 1, "type": "generation"}, {"context": "a", "answers": "b"}], 2, "'answers' must be"),
    ([HEADER, {"context": "a", "choices": ["x", "y"], "label": 0, "split": "dev"}], 2, "'split' must be"),
])
def test_bad_task_files_name_file_and_line(tmp_path, lines, where, message):
    path = _write(tmp_path / "t.jsonl", lines)
    with pytest.raises(TaskError) as e:
        load_task(path)
    text = str(e.value)
    assert text.startswith(f"{path}:{where}: ") and message in text and "\n" not in text


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(TaskError, match="no such task file"):
        load_task(tmp_path / "none.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(TaskError, match="empty task file"):
        load_task(tmp_path / "e.jsonl")
    only_train = _write(tmp_path / "tr.jsonl", [HEADER, {"split": "train", "context": "a", "choices": ["x", "y"],
                                                          "label": 0}])
    with pytest.raises(TaskError, match="no test items"):
        load_task(only_train)


def _task(tmp_path, n_test=12, n_train=0):
    items = [{"context": f"test <{i}>", "choices": [f"a{i}", f"b{i}"], "label": i % 2} for i in range(n_test)]
    items += [{"split": "train", "context": f"train {i}", "choices": [f"a{i}", f"b{i}"], "label": 0}
              for i in range(n_train)]
    return load_task(write_task(tmp_path / f"t{n_train}.jsonl", {"type": "multiple_choice",
                                                                 "description": "Pick one."}, items))


def test_k_shot_is_deterministic_and_never_shows_the_item(tmp_path):
    task = _task(tmp_path)  # no train split: examples come from the test split minus the item
    for item in task.test:
        a, b = draw_examples(task, item, 5, seed=1), draw_examples(task, item, 5, seed=1)
        assert [x.line for x in a] == [x.line for x in b] and len(a) == 5
        assert item not in a and len({x.line for x in a}) == 5
        assert item.context not in render(task, item, a).rsplit("\n\n", 1)[0]
    draws = {tuple(x.line for x in draw_examples(task, task.test[0], 5, seed=s)) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    text = render(task, task.test[0], draw_examples(task, task.test[0], 2, seed=1))
    assert text.startswith("Pick one.\n\n") and text.endswith("\n\ntest <0>") and text.count("\n\n") == 3
    with_train = _task(tmp_path, n_train=4)
    assert all(x.split == "train" for it in with_train.test for x in draw_examples(with_train, it, 3, seed=0))


def test_k_is_lowered_until_the_prompt_fits(tmp_path):
    task = _task(tmp_path)

    def encode(text):  # one token per character
        return list(text)

    item = task.test[3]
    full = build_prompt(task, item, 4, 0, encode, n_positions=10_000, budget=3)
    assert len(full.shots) == 4 and full.n_tokens == len(full.text)
    cut = build_prompt(task, item, 4, 0, encode, n_positions=len(full.text) - 1 + 3, budget=3)
    assert len(cut.shots) == 3 and cut.shots == full.shots[:3]
    most = build_prompt(task, item, "max", 0, encode, n_positions=60, budget=3)
    one_more = draw_examples(task, item, 11, 0)[:len(most.shots) + 1]
    assert most.n_tokens + 3 <= 60 and len(render(task, item, one_more)) + 3 > 60
    with pytest.raises(TaskError, match=rf"^{task.path}:{item.line}: the prompt is 19 tokens"):
        build_prompt(task, item, 0, 0, encode, n_positions=8, budget=3)


def test_bad_bytes_name_the_file(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"megagpt_task": 1, "type": "cloze"}\n{"context": "caf\xe9", "target": "x"}\n')
    with pytest.raises(TaskError, match=rf"^{p}: not UTF-8 text"):
        load_task(p)


def test_eval_tasks_are_checked_at_startup(tmp_path):
    """train.eval_tasks: a task whose zero-shot prompt cannot fit stops the run before it starts,
    naming the task file's line, as does a string where a list belongs."""
    from data_tools.tokenizer import TokenizerConfig, train
    from megagpt.config import ConfigError
    from megagpt.eval.in_training import check_tasks

    tok = train(["some words to learn from " * 200], tmp_path / "t.model",
                TokenizerConfig(vocab_size=300, sample_bytes=100_000))
    long = write_task(tmp_path / "long.jsonl", {"type": "cloze"}, [{"context": "word " * 50, "target": "x"}])
    with pytest.raises(ConfigError, match=rf"train.eval_tasks\[0\]: {long}:2: the prompt is"):
        check_tasks([str(long)], str(tok), 32, "run.yaml")
    with pytest.raises(ConfigError, match="must be a list of task file paths"):
        check_tasks(str(long), str(tok), 32, "run.yaml")
    check_tasks([str(long)], str(tok), 1024, "run.yaml")  # fits a longer context
