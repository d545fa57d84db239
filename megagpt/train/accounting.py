"""Per-source accounting of a mixture run: each source's training loss over the log window
(``train/loss/<source>``, zero3 layout: the pipeline engine returns one loss per batch) and the
tokens each source has contributed so far (``train/tokens/<source>``)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from megagpt.data.gpt_dataset import source_counts


class SourceAccounting:
    def __init__(self, train_ds, seq: int, consumed: int, *, pipeline: bool, dp: int, dp_group, device,
                 skip=()):
        self.dataset, self.seq = train_ds, seq
        self.names = list(getattr(train_ds, "names", []))
        self.enabled = bool(self.names)  # a mixture: there is something to account per source
        self.pipeline, self.dp, self.dp_group, self.device = pipeline, dp, dp_group, device
        self.reset(consumed, skip)

    def reset(self, consumed: int, skip=()) -> None:
        """Start over at sample ``consumed``: the tokens of samples before it, less those of the
        windows ``skip`` left out, and an empty loss window."""
        self._reset_window()
        n = len(self.names)
        self.tokens = source_counts(self.dataset, 0, consumed, n) * self.seq
        for a, b in skip:
            if a < consumed:
                self.tokens -= source_counts(self.dataset, a, min(b, consumed), n) * self.seq

    def _reset_window(self) -> None:
        n = len(self.names)
        self.loss, self.count = torch.zeros(n), torch.zeros(n)

    def add_micro_batch(self, token_loss: torch.Tensor, y: torch.Tensor, src: torch.Tensor) -> None:
        """One micro-batch's per-sample losses, each under the source its sample came from."""
        learned = (y != -100).sum(dim=1).clamp(min=1)
        per_sample = (token_loss.detach().float().sum(dim=1) / learned).cpu()
        self.loss.index_add_(0, src, per_sample)
        self.count.index_add_(0, src, torch.ones_like(per_sample))

    def add_batch(self, start: int, end: int) -> None:
        """Samples ``start .. end`` of the stream were trained on."""
        self.tokens += source_counts(self.dataset, start, end, len(self.names)) * self.seq

    def scalars(self) -> dict[str, float]:
        """The window's scalars (the DP mean of each source's loss), then a new window."""
        out = {}
        if not self.enabled:
            return out
        if not self.pipeline:
            both = torch.stack([self.loss, self.count]).to(self.device)
            if self.dp > 1:
                dist.all_reduce(both, group=self.dp_group)
            both = both.cpu()
            for i, name in enumerate(self.names):
                if both[1, i] > 0:
                    out[f"train/loss/{name}"] = float(both[0, i] / both[1, i])
        for i, name in enumerate(self.names):
            out[f"train/tokens/{name}"] = float(self.tokens[i])
        self._reset_window()
        return out
