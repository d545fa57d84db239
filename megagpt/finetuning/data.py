"""Fine-tuning task files and GPT-1's input transformations (Radford et al. 2018, Figure 1).

Every input is turned into token sequences framed by the reserved tokens ``<|ft_start|>``,
``<|ft_delim|>`` and ``<|ft_extract|>``; the head reads the final hidden state at the extract
token:

  classification   start text extract
  entailment       start premise delim hypothesis extract
  similarity       start a delim b extract   and   start b delim a extract (two sequences)
  multiple_choice  start context delim answer_i extract, one sequence per answer

Too long inputs are cut to ``max_length`` without losing a framing token: the longest text piece
loses tokens from its end (a multiple-choice context from its start, so the part next to the
answers stays), and the cut is counted.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megagpt import jsonl

TYPES = ("classification", "entailment", "similarity", "multiple_choice")
FIELDS = {"classification": ("text",), "entailment": ("premise", "hypothesis"), "similarity": ("a", "b"),
          "multiple_choice": ("context",)}
SPLITS = ("train", "valid", "test")
SPECIAL = ("<|ft_start|>", "<|ft_delim|>", "<|ft_extract|>")


class FinetuneDataError(ValueError):
    """A task file that cannot be used; the message names the file and line."""


@dataclass
class Example:
    line: int
    split: str
    texts: dict
    label: object           # class name (str), choice index (int), or a number (similarity regression)
    choices: list[str] = field(default_factory=list)


@dataclass
class FinetuneTask:
    path: Path
    name: str
    type: str
    labels: list[str]       # class names (classification, entailment, similarity as classes)
    regression: bool        # similarity scored as a number (Pearson / Spearman)
    examples: list[Example]

    def split(self, name: str) -> list[Example]:
        return [e for e in self.examples if e.split == name]

    @property
    def n_outputs(self) -> int:
        """Width of W_y: one score per class, one per answer (multiple choice), one for regression."""
        return 1 if self.type == "multiple_choice" or self.regression else len(self.labels)

    def target(self, ex: Example):
        if self.type == "multiple_choice" or self.regression:
            return ex.label
        return self.labels.index(ex.label)

    def majority(self, split: str = "valid") -> float:
        """Accuracy of always answering the most frequent training label (the baseline)."""
        if self.regression:
            return float("nan")
        train = [self.target(e) for e in self.split("train")]
        evals = [self.target(e) for e in self.split(split)]
        if not train or not evals:
            return float("nan")
        top = max(set(train), key=train.count)
        return sum(t == top for t in evals) / len(evals)


def _need(cond, where, msg):
    if not cond:
        raise FinetuneDataError(f"{where}: {msg}")


def load_finetune_task(path: str | Path) -> FinetuneTask:
    """Read and check a task file (header line, then one example per line)."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneDataError(f"{path}: no such task file.")
    examples, header = _read(path)
    if header is None:
        raise FinetuneDataError(f"{path}: empty task file (expected a header line and examples).")
    return _finish(path, header, examples)


def _read(path: Path):
    header, examples = None, []
    for n, where, obj in jsonl.objects(path, FinetuneDataError):
        if header is None:
            _need("megagpt_finetune" in obj, where, 'the first line must be the header ({"megagpt_finetune": 1, '
                  '"type": ...}).')
            _need(obj.get("type") in TYPES, where, f"'type' must be one of {list(TYPES)}, got {obj.get('type')!r}.")
            labels = obj.get("labels")
            _need(labels is None or (isinstance(labels, list) and len(labels) >= 2
                                     and all(isinstance(x, str) and x for x in labels)
                                     and len(set(labels)) == len(labels)),
                  where, "'labels' must be a list of two or more distinct non-empty strings.")
            header = obj
            continue
        examples.append(_example(obj, header, where, n))
    return examples, header


def _finish(path: Path, header: dict, examples: list) -> FinetuneTask:
    kind = header["type"]
    regression = bool(header.get("regression", False))
    _need(not regression or kind == "similarity", f"{path}:1", "'regression' is only for similarity tasks.")
    labels = list(header.get("labels") or [])
    if kind != "multiple_choice" and not regression:
        if not labels:
            labels = sorted({str(e.label) for e in examples if e.split == "train"})
        for e in examples:
            if e.label is not None:  # unlabelled test examples are for --predict
                _need(e.label in labels, f"{path}:{e.line}",
                      f"label {e.label!r} is not one of the task's labels {labels}.")
        _need(len(labels) >= 2, path, f"needs at least two labels, found {labels}.")
    task = FinetuneTask(path, header.get("name") or path.stem, kind, labels, regression, examples)
    _need(task.split("train"), path, 'no training examples ("split": "train").')
    return task


def _example(obj, header, where, n) -> Example:
    kind = header["type"]
    split = obj.get("split", "train")
    _need(split in SPLITS, where, f"'split' must be one of {list(SPLITS)}, got {split!r}.")
    texts = {}
    for key in FIELDS[kind]:
        _need(key in obj, where, f"missing '{key}' (a string).")
        _need(isinstance(obj[key], str) and obj[key].strip(), where, f"'{key}' must be a non-empty string.")
        texts[key] = obj[key]
    label = obj.get("label")
    if split == "test" and label is None:
        label = None  # unlabelled test items are fine: predict mode writes their answers
    elif kind == "multiple_choice":
        pass
    elif header.get("regression"):
        _need(isinstance(label, (int, float)) and not isinstance(label, bool), where,
              f"'label' must be a number (regression), got {label!r}.")
    else:
        _need(isinstance(label, (str, int)) and not isinstance(label, bool) and str(label).strip(), where,
              f"missing 'label' (a class name), got {label!r}.")
        label = str(label)
    choices = []
    if kind == "multiple_choice":
        choices = obj.get("choices")
        two_or_more = isinstance(choices, list) and len(choices) >= 2
        _need(two_or_more and all(isinstance(c, str) and c.strip() for c in choices),
              where, "'choices' must be a list of at least two non-empty strings.")
        if label is not None or split != "test":
            _need(isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(choices), where,
                  f"'label' must be an index into the {len(choices)} choices, got {label!r}.")
    return Example(n, split, texts, label, choices)


# --- token layouts --------------------------------------------------------------------------------
@dataclass
class Encoded:
    seqs: list[list[int]]
    extract: list[int]      # index of the extract token in each sequence
    target: object
    truncated: bool


class Encoder:
    """Turns examples into GPT-1's token layouts with the tokenizer's reserved ids."""

    def __init__(self, task: FinetuneTask, tokenizer, max_length: int):
        self.task, self.tok, self.max_length = task, tokenizer, max_length
        ids = [tokenizer.piece_to_id(p) for p in SPECIAL]
        unk = tokenizer.sp.unk_id() if hasattr(tokenizer, "sp") else None
        for piece, i in zip(SPECIAL, ids):
            if i == unk or tokenizer.sp.id_to_piece(i) != piece:
                raise FinetuneDataError(f"{tokenizer.path}: the tokenizer has no {piece} token (train it with "
                                        f"data_tools/train_tokenizer.py, which reserves it).")
        self.start, self.delim, self.extract = ids

    def _frame(self, parts: list[list[int]], cut_front: set[int]) -> tuple[list[int], bool]:
        """start p0 [delim p1] extract, cutting the longest part until it fits."""
        budget = self.max_length - 1 - len(parts)  # start + one delim between parts + extract
        if budget < len(parts):
            raise FinetuneDataError(f"finetune.max_length={self.max_length} leaves no room for the text of a "
                                    f"{self.task.type} input; use at least {2 * len(parts) + 1}.")
        parts = [list(p) for p in parts]
        cut = False
        while sum(map(len, parts)) > budget:
            i = max(range(len(parts)), key=lambda j: len(parts[j]))
            over = sum(map(len, parts)) - budget
            keep = max(0, len(parts[i]) - over)
            parts[i] = parts[i][len(parts[i]) - keep:] if i in cut_front else parts[i][:keep]
            cut = True
        seq = [self.start] + parts[0]
        for p in parts[1:]:
            seq += [self.delim] + p
        return seq + [self.extract], cut

    def encode(self, ex: Example) -> Encoded:
        enc, t = self.tok.encode, ex.texts
        kind = self.task.type
        if kind == "classification":
            layouts = [([enc(t["text"])], set())]
        elif kind == "entailment":
            layouts = [([enc(t["premise"]), enc(t["hypothesis"])], set())]
        elif kind == "similarity":
            a, b = enc(t["a"]), enc(t["b"])
            layouts = [([a, b], set()), ([b, a], set())]
        else:
            ctx = enc(t["context"])
            layouts = [([ctx, enc(c)], {0}) for c in ex.choices]
        seqs, cut = [], False
        for parts, front in layouts:
            s, c = self._frame(parts, front)
            seqs.append(s)
            cut |= c
        target = None if ex.label is None else self.task.target(ex)
        return Encoded(seqs, [len(s) - 1 for s in seqs], target, cut)


def collate(batch: list[Encoded], pad_id: int, regression: bool = False, *, length: int | None = None,
            choices: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded tensors: ``idx`` (N, S, T), ``extract`` (N, S), ``choice_mask`` (N, S),
    ``lm_targets`` (N, S, T: the next input token, -100 past each sequence's end) and ``labels``.
    ``length`` / ``choices`` fix T / S (the pipeline engine needs the same shapes every time)."""
    S = choices or max(len(e.seqs) for e in batch)
    T = length or max(len(s) for e in batch for s in e.seqs)
    N = len(batch)
    idx = torch.full((N, S, T), pad_id, dtype=torch.long)
    lm = torch.full((N, S, T), -100, dtype=torch.long)
    extract = torch.zeros((N, S), dtype=torch.long)
    mask = torch.zeros((N, S), dtype=torch.bool)
    for n, e in enumerate(batch):
        for s, seq in enumerate(e.seqs):
            idx[n, s, :len(seq)] = torch.tensor(seq)
            lm[n, s, :len(seq) - 1] = torch.tensor(seq[1:])
            extract[n, s] = e.extract[s]
            mask[n, s] = True
    labels = torch.tensor([0 if e.target is None else e.target for e in batch],
                          dtype=torch.float32 if regression else torch.long)
    return {"idx": idx, "extract": extract, "choice_mask": mask, "lm_targets": lm, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training examples' order in ``epoch``: a seeded shuffle, the same on every rank."""
    order = list(range(n))
    random.Random(seed * 7919 + epoch).shuffle(order)
    return order
