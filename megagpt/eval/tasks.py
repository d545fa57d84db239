"""Task files and k-shot prompts.

A task is one JSONL file. Its first line is a header, every other line one item (see
``megagpt/eval/__init__.py`` for the schema). Prompts are built as GPT-3 built them: K solved
examples drawn at random (seeded, per item) from the train split, or from the test split minus the
item itself when there is no train split, joined by the task's separator, after an optional
natural-language description; the item's own context comes last.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from megagpt import jsonl

TYPES = ("cloze", "multiple_choice", "generation")
HEADER_KEYS = {"megagpt_task", "name", "type", "description", "separator", "target_delimiter",
               "unconditional_context", "stop", "max_tokens", "source"}


class TaskError(ValueError):
    """A task file that cannot be used; the message names the file and line."""


@dataclass
class Item:
    line: int                     # 1-based line in the task file
    split: str                    # "train" or "test"
    context: str
    target: str = ""              # cloze
    choices: list[str] = field(default_factory=list)  # multiple_choice
    label: int = 0                # multiple_choice
    answers: list[str] = field(default_factory=list)  # generation
    id: str | None = None

    def gold(self) -> str:
        """The solved continuation shown for this item when it is a conditioning example."""
        if self.choices:
            return self.choices[self.label]
        return self.target or (self.answers[0] if self.answers else "")


@dataclass
class Task:
    path: Path
    name: str
    type: str
    items: list[Item]
    description: str = ""
    separator: str = "\n\n"
    target_delimiter: str = " "
    unconditional_context: str = "Answer:"
    stop: list[str] = field(default_factory=lambda: ["\n"])
    max_tokens: int = 32
    source: str = ""

    @property
    def test(self) -> list[Item]:
        return [it for it in self.items if it.split == "test"]

    @property
    def train(self) -> list[Item]:
        return [it for it in self.items if it.split == "train"]

    def where(self, item: Item) -> str:
        return f"{self.path}:{item.line}"

    def chance(self, items: list[Item] | None = None) -> float:
        """The score of guessing: 1/choices averaged over multiple-choice items, 0 otherwise."""
        items = self.test if items is None else items
        if self.type != "multiple_choice" or not items:
            return 0.0
        return sum(1 / len(it.choices) for it in items) / len(items)

    def to_datasets(self):
        """The items as a ``datasets.DatasetDict`` (``test`` and, when present, ``train``), the form
        lm-evaluation-harness reads."""
        import datasets

        def rows(items):
            return [{"context": it.context, "target": it.target, "choices": it.choices, "label": it.label,
                     "answers": it.answers, "gold": it.gold()} for it in items]

        splits = {"test": datasets.Dataset.from_list(rows(self.test))}
        if self.train:
            splits["train"] = datasets.Dataset.from_list(rows(self.train))
        return datasets.DatasetDict(splits)


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise TaskError(f"{where}: {msg}")


def _string_list(value, where: str, key: str, min_len: int) -> list[str]:
    _need(isinstance(value, list) and len(value) >= min_len
          and all(isinstance(v, str) and (v.strip() or key == "stop" and v) for v in value),
          where, f"'{key}' must be a list of at least {min_len} non-empty strings, got {json.dumps(value)[:80]}.")
    return list(value)


def load_task(path: str | Path) -> Task:
    """Read and check a task file; any problem is a ``TaskError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such task file.")
    header, items = _read(path)
    if header is None:
        raise TaskError(f"{path}: empty task file (expected a header line and items).")
    task = Task(path=path, name=header.get("name") or path.stem, type=header["type"], items=items,
                **{k: header[k] for k in ("description", "separator", "target_delimiter",
                                          "unconditional_context", "stop", "max_tokens", "source")
                   if k in header})
    if not task.test:
        raise TaskError(f"{path}: no test items (items have \"split\": \"test\" or no split).")
    return task


def _read(path: Path):
    header, items = None, []
    for n, where, obj in jsonl.objects(path, TaskError):
        if header is None:
            _need("megagpt_task" in obj, where, "the first line must be the task header "
                  "({\"megagpt_task\": 1, \"type\": ...}).")
            unknown = set(obj) - HEADER_KEYS
            _need(not unknown, where, f"unknown header key(s) {sorted(unknown)}; expected some of "
                  f"{sorted(HEADER_KEYS)}.")
            _need(obj.get("type") in TYPES, where, f"'type' must be one of {list(TYPES)}, got "
                  f"{obj.get('type')!r}.")
            for key in ("description", "separator", "target_delimiter", "unconditional_context"):
                _need(isinstance(obj.get(key, ""), str), where, f"'{key}' must be a string.")
            if "stop" in obj:
                _string_list(obj["stop"], where, "stop", 0)
            mt = obj.get("max_tokens", 32)
            _need(isinstance(mt, int) and not isinstance(mt, bool) and mt > 0, where,
                  f"'max_tokens' must be a positive integer, got {mt!r}.")
            header = obj
            continue
        items.append(_item(obj, header["type"], where, n))
    return header, items


def _item(obj: dict, kind: str, where: str, line: int) -> Item:
    ctx = obj.get("context")
    _need(isinstance(ctx, str), where, "missing 'context' (a string).")
    split = obj.get("split", "test")
    _need(split in ("train", "test"), where, f"'split' must be 'train' or 'test', got {split!r}.")
    item = Item(line=line, split=split, context=ctx, id=str(obj["id"]) if "id" in obj else None)
    if kind == "cloze":
        _need(isinstance(obj.get("target"), str) and obj["target"].strip(), where,
              "missing 'target' (the non-empty word to predict).")
        item.target = obj["target"]
    elif kind == "multiple_choice":
        _need("choices" in obj, where, "missing 'choices' (a list of strings).")
        item.choices = _string_list(obj["choices"], where, "choices", 2)
        label = obj.get("label")
        _need(isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(item.choices), where,
              f"'label' must be an index into the {len(item.choices)} choices, got {label!r}.")
        item.label = label
    else:
        _need("answers" in obj, where, "missing 'answers' (a list of reference strings).")
        item.answers = _string_list(obj["answers"], where, "answers", 1)
    return item


def write_task(path: str | Path, header: dict, items: list[dict]) -> Path:
    """Write a task file (header first); the file appears only when complete."""
    return jsonl.write(path, [{"megagpt_task": 1, **header}, *items])


# --- prompts ----------------------------------------------------------------------------------------
@dataclass
class Prompt:
    item: Item
    text: str              # description + examples + the item's context
    shots: list[int]       # file lines of the conditioning examples, in order
    n_tokens: int = 0      # of ``text``


def draw_examples(task: Task, item: Item, k: int, seed: int) -> list[Item]:
    """K conditioning examples for ``item``: reproducible per (seed, item), never the item itself."""
    pool = task.train or [it for it in task.test if it is not item]
    pool = [it for it in pool if it is not item]
    rng = random.Random(seed * 1_000_003 + item.line)
    return rng.sample(pool, min(k, len(pool)))


def render(task: Task, item: Item, examples: list[Item]) -> str:
    parts = [ex.context + task.target_delimiter + ex.gold() for ex in examples] + [item.context]
    text = task.separator.join(parts)
    return (task.description + task.separator + text) if task.description else text


def build_prompt(task: Task, item: Item, k: int | str, seed: int, encode, n_positions: int,
                 budget: int) -> Prompt:
    """The item's prompt with ``k`` examples (``"max"``: as many as fit): the largest prefix of the
    drawn examples whose prompt plus ``budget`` tokens (the longest continuation, or the tokens to
    generate) fits ``n_positions``; a TaskError naming the line when even k=0 does not fit."""
    want = len(task.train or task.test) if k == "max" else int(k)
    examples = draw_examples(task, item, want, seed)
    sizes: dict[int, int] = {}

    def size(m: int) -> int:
        if m not in sizes:
            sizes[m] = len(encode(render(task, item, examples[:m])))
        return sizes[m]

    if size(0) + budget > n_positions:
        raise TaskError(f"{task.where(item)}: the prompt is {size(0)} tokens and {budget} more are scored or "
                        f"generated, longer than the model's context of {n_positions} tokens.")
    lo, hi = 0, len(examples)  # the prompt grows with every example: binary search the largest m that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(mid) + budget <= n_positions:
            lo = mid
        else:
            hi = mid - 1
    return Prompt(item, render(task, item, examples[:lo]), [ex.line for ex in examples[:lo]], size(lo))
