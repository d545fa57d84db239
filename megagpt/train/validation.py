"""Held-out loss during pretraining: ``valid/loss`` (and for a mixture ``valid/loss/<source>``,
with ``valid/loss`` their mean weighted by each source's share of the training mixture)."""
from __future__ import annotations

import numpy as np
import torch

from megagpt.data.gpt_dataset import micro_batches, token_mean
from megagpt.parallel.launch import dp_mean


class HeldOutLoss:
    def __init__(self, built, *, micro: int, dp: int, eval_iters: int):
        self.built, self.micro, self.dp, self.iters = built, micro, dp, eval_iters

    @torch.no_grad()
    def __call__(self, valid_ds, valid_by_source: dict, train_ds=None) -> dict[str, float]:
        if valid_by_source:
            out = {f"valid/loss/{name}": self._loss(ds) for name, ds in valid_by_source.items()}
            weights = dict(zip(train_ds.names, train_ds.counts.tolist()))
            total = sum(weights[n] for n in valid_by_source)
            out["valid/loss"] = sum(out[f"valid/loss/{n}"] * weights[n] / total for n in valid_by_source)
            return out
        if valid_ds is None:
            return {}
        return {"valid/loss": self._loss(valid_ds)}

    def _loss(self, dataset) -> float:
        engine, ps = self.built.engine, self.built.ps
        it = micro_batches(dataset, 0, self.micro, ps.dp_rank, self.dp)
        n = self.iters
        if self.built.pipeline:
            gas = engine.gradient_accumulation_steps()
            losses = [float(engine.eval_batch(it)) for _ in range(max(1, n // gas))]
            return float(np.mean(losses))
        engine.eval()
        total = torch.zeros(())
        for _ in range(n):
            x, y = next(it)
            y = y.to(engine.device)
            total += token_mean(engine.module.token_losses(engine(x.to(engine.device)), y), y).float().cpu()
        engine.train()
        return float(dp_mean(total / n, ps, engine.device))
