"""Packed GPT samples over indexed shards, and the per-rank batch stream.

A source's documents (one shard sequence each, EOD already at the end) are shuffled per epoch and
concatenated into one token stream; sample i is the ``seq_length + 1`` tokens starting at
``i * seq_length`` (inputs and shifted targets share the overlap token, as in Megatron). Samples
are then shuffled. Everything is a deterministic function of (shards, split, seq_length,
num_samples, seed), so the position in training is one number: the samples consumed.

Shards opened with their loss mask (``indexed.MaskedShard``, ``data.loss_mask``) give samples of
two rows, tokens and mask; the targets of masked-out tokens become -100, which the loss skips.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megagpt.data.indexed import IndexedDataset, ShardError


@dataclass
class DocumentRange:
    """Documents [start, stop) of one shard."""

    shard: IndexedDataset
    start: int
    stop: int


def split_documents(shards: Sequence[IndexedDataset], valid_fraction: float):
    """The last ``valid_fraction`` of each shard's documents are held out for validation."""
    train, valid = [], []
    for s in shards:
        n_valid = int(round(len(s) * valid_fraction))
        if valid_fraction > 0 and len(s) > 1:
            n_valid = max(1, n_valid)
        train.append(DocumentRange(s, 0, len(s) - n_valid))
        valid.append(DocumentRange(s, len(s) - n_valid, len(s)))
    return train, valid


def range_tokens(ranges: Sequence[DocumentRange]) -> int:
    """Tokens in some document ranges."""
    return int(sum(int(r.shard.sizes[r.start:r.stop].sum(dtype=np.int64)) for r in ranges))


class GPTDataset:
    """``num_samples`` packed samples of ``seq_length + 1`` tokens over some document ranges."""

    def __init__(self, ranges: Sequence[DocumentRange], seq_length: int, num_samples: int,
                 seed: int, name: str = "data"):
        self.seq_length, self.num_samples, self.name = seq_length, num_samples, name
        self._ranges = [r for r in ranges if r.stop > r.start]
        sizes = np.concatenate([r.shard.sizes[r.start:r.stop] for r in self._ranges]
                               or [np.zeros(0, np.int32)]).astype(np.int64)
        self._doc_shard = np.concatenate([np.full(r.stop - r.start, i, np.int32)
                                          for i, r in enumerate(self._ranges)] or [np.zeros(0, np.int32)])
        self._doc_local = np.concatenate([np.arange(r.start, r.stop) for r in self._ranges]
                                         or [np.zeros(0, np.int64)])
        tokens_per_epoch = int(sizes.sum())
        if tokens_per_epoch <= seq_length:
            raise ShardError(f"{name}: {tokens_per_epoch} tokens is too few for one sample of "
                             f"{seq_length + 1} tokens.")
        needed = num_samples * seq_length + 1
        self.epochs = -(-needed // tokens_per_epoch)
        rng = np.random.RandomState(seed)
        # document order: every epoch a fresh permutation
        self._doc_order = np.concatenate([rng.permutation(len(sizes)) for _ in range(self.epochs)])
        ends = np.cumsum(sizes[self._doc_order])
        self._doc_starts = np.concatenate([[0], ends[:-1]])
        starts = np.arange(num_samples, dtype=np.int64) * seq_length
        self._sample_doc = np.searchsorted(ends, starts, side="right")  # position in _doc_order
        self._shuffle = rng.permutation(num_samples)
        self._sizes = sizes

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        """``seq_length + 1`` tokens, or (2, seq_length + 1) tokens and mask from masked shards."""
        j = int(self._shuffle[i])
        pos = int(self._sample_doc[j])
        offset = j * self.seq_length - int(self._doc_starts[pos])
        need, parts = self.seq_length + 1, []
        while need > 0:
            doc = int(self._doc_order[pos])
            r = self._ranges[self._doc_shard[doc]]
            piece = r.shard.get(int(self._doc_local[doc]), offset, min(need, int(self._sizes[doc]) - offset))
            parts.append(piece)
            need -= piece.shape[-1]
            pos, offset = pos + 1, 0
        return np.concatenate(parts, axis=-1).astype(np.int64)


def micro_batches(dataset, consumed_samples: int, micro_batch: int, dp_rank: int,
                  dp_size: int, with_source: bool = False) -> Iterator[tuple]:
    """This DP rank's micro-batches from sample ``consumed_samples`` on, as (inputs, targets), or
    (inputs, targets, source ids) with ``with_source`` (a blended dataset's ``source_of``).

    The global stream is cut into chunks of ``micro_batch * dp_size`` samples; rank r takes the
    r-th ``micro_batch`` of each. Resuming from a consumed-sample count continues exactly.
    """
    step = micro_batch * dp_size
    start = consumed_samples
    source_of = getattr(dataset, "source_of", lambda i: 0)
    while True:
        idx = [(start + dp_rank * micro_batch + k) % len(dataset) for k in range(micro_batch)]
        x, y = split_sample(torch.from_numpy(np.stack([dataset[i] for i in idx])))
        if with_source:
            yield x, y, torch.tensor([source_of(i) for i in idx])
        else:
            yield x, y
        start += step


def split_sample(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a batch of samples; with a mask row, targets whose token is masked
    out are -100."""
    if batch.dim() == 3:
        tokens, mask = batch[:, 0], batch[:, 1]
        y = tokens[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return tokens[:, :-1].contiguous(), y.contiguous()
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def token_mean(token_loss: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean loss over the learned tokens (targets not -100; Megatron's loss-mask average), the
    plain mean when nothing is masked; 0 for a batch with no learned token."""
    n = (targets != -100).sum()
    return token_loss.sum() / n.clamp(min=1)


def source_counts(dataset, start: int, stop: int, n_sources: int) -> np.ndarray:
    """How many of samples [start, stop) of the global stream each source supplied."""
    index = getattr(dataset, "dataset_index", None)
    if index is None:
        return np.array([stop - start])
    n = len(index)
    picks = np.arange(start, stop) % n
    return np.bincount(index[picks], minlength=n_sources)
