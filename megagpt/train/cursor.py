"""Where the training stream is: the samples consumed so far, the data windows that are never
trained on, and the micro-batch iterator that reads on from there.

Data windows: ranges of the sample stream ``[start, end)`` left out (the user's
``train.skip_data``, every skipped batch and every rewind's window, recorded in checkpoints so a
resume leaves the same samples out). The stream repeats the dataset: a run whose left-out batches
took it past the end reads on from the start, leaving the same windows out on every pass."""
from __future__ import annotations

from collections.abc import Callable, Iterator

from megagpt.data.gpt_dataset import micro_batches


def merge_windows(windows) -> list[list[int]]:
    """Sorted, overlapping or touching ranges joined."""
    out: list[list[int]] = []
    for a, b in sorted(map(tuple, windows)):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def next_start(consumed: int, batch: int, windows, length: int | None = None) -> int:
    """Where the next batch of ``batch`` samples starts: ``consumed``, or past every window the
    batch ``[consumed, consumed + batch)`` would overlap. The stream repeats the dataset's
    ``length`` samples (a run whose left-out batches took it past the end reads on from the
    start): windows apply on every pass."""
    moved = True
    while moved:
        moved = False
        base = consumed // length * length if length else 0
        for shift in ((base, base + length) if length else (0,)):
            for a, b in windows:
                if consumed < b + shift and consumed + batch > a + shift:
                    consumed, moved = b + shift, True
    return consumed


class DataCursor:
    """The data position of a pretraining run. ``next_batch(n)`` gives this rank's micro-batches
    for the next ``n`` samples that are not left out; ``advance(applied)`` says the step on them
    is done (a step that was not applied leaves its samples out). ``consumed`` and ``skip`` (the
    windows) are what a checkpoint records; ``last_batch`` is the ``[start, end)`` of the batch
    ``next_batch`` gave last."""

    def __init__(self, dataset, *, consumed: int, skip, micro: int, dp_rank: int, dp: int, with_source: bool,
                 log: Callable[[str], None]):
        self.dataset, self.micro, self.dp_rank, self.dp, self.with_source = dataset, micro, dp_rank, dp, with_source
        self.consumed, self.skip = consumed, merge_windows(skip)
        self.last_batch: tuple[int, int] | None = None
        self.wrapped = False  # whether the stream has read past its end once
        self._log = log
        self._data: Iterator | None = None

    def next_batch(self, batch_size: int) -> Iterator:
        """The micro-batch iterator positioned at the next ``batch_size`` samples to train on (the
        same iterator as last time while the stream runs on without a gap)."""
        start = next_start(self.consumed, batch_size, self.skip, len(self.dataset))
        if start != self.consumed:  # recorded: a resume leaves the same samples out
            self.skip = merge_windows(self.skip + [[self.consumed, start]])
        if start + batch_size > len(self.dataset) and not self.wrapped:
            self.wrapped = True
            self._log(f"warning: the training stream reaches its end ({len(self.dataset)} samples) because "
                      f"samples were left out; it reads on from its start, leaving the same windows out")
        if self._data is None or start != self.consumed:
            self.consumed = start
            self._data = micro_batches(self.dataset, start, self.micro, self.dp_rank, self.dp,
                                       with_source=self.with_source)
        self.last_batch = (start, start + batch_size)
        return self._data

    def advance(self, applied: bool) -> None:
        """The step on ``last_batch`` is over: the stream moves past it, and a step that was not
        applied leaves its samples out."""
        start, end = self.last_batch
        self.consumed = end
        if not applied:
            self.skip = merge_windows(self.skip + [[start, end]])

    def rewind(self, consumed: int, skip) -> list[int]:
        """Back to sample ``consumed`` (a rewind's checkpoint, whose windows are ``skip``), leaving
        the samples from there to here out; returns that window."""
        window = [consumed, self.consumed]
        self.skip = merge_windows(self.skip + list(skip) + [window])
        self.consumed, self._data = consumed, None
        return window
