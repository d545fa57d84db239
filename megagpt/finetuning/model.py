"""The pretrained transformer plus GPT-1's linear head W_y, and L = L_task + lm_coef * L_lm.

W_y is replicated over the tensor-parallel ranks, not split: it reads the final hidden state,
which every TP rank already holds whole, and it is tiny (n_embd x classes), so splitting it would
add a gather for nothing. Every TP rank computes the same task loss and the same gradient for W_y
and for the hidden states it reads; the classifier's dropout draws from the default RNG stream,
which is the same on TP peers, so the copies never diverge.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from megagpt.model.gpt import GPT


class HeadLinear(nn.Linear):
    """W_y: weights N(0, 0.02), bias 0, drawn in the module's own constructor (ZeRO-3's
    ``zero.Init`` partitions a module as its constructor returns, so an outer module cannot
    initialise it afterwards)."""

    def reset_parameters(self):
        # drawn on the CPU generator whatever device zero.Init allocates on, so every layout
        # (and a GPU run) gets the same W_y from the same seed
        with torch.no_grad():
            self.weight.copy_(torch.empty(self.weight.shape, device="cpu").normal_(0.0, 0.02))
            self.bias.zero_()


def init_classifier(n_embd: int, n_outputs: int, init_seed: int | None) -> nn.Linear:
    """W_y, drawn right after ``torch.manual_seed(init_seed + 10000)`` (away from the seeds the
    GPT's pieces use), so both layouts start from the same head."""
    if init_seed is not None:
        torch.manual_seed(init_seed + 10_000)
    return HeadLinear(n_embd, n_outputs)


def head_scores(classifier: nn.Module, dropout: nn.Module, hidden: torch.Tensor, extract: torch.Tensor,
                choice_mask: torch.Tensor, task_type: str, regression: bool) -> torch.Tensor:
    """Per-example outputs from the hidden states (N*S, T, H) at the extract positions (N, S):
    class logits (N, C), answer scores (N, S) for multiple choice, or one number (N,)."""
    N, S = extract.shape
    h = hidden[torch.arange(N * S, device=hidden.device), extract.reshape(-1)].view(N, S, -1)
    if task_type == "similarity":  # both orders, added before W_y: order-invariant
        h = (h * choice_mask.unsqueeze(-1).to(h.dtype)).sum(1, keepdim=True)
    out = classifier(dropout(h))  # (N, S', C)
    if task_type == "multiple_choice":
        return out.squeeze(-1).masked_fill(~choice_mask, float("-inf"))  # one shared W_y: a score per answer
    out = out[:, 0]
    return out.squeeze(-1) if regression else out


def task_loss(scores: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(scores.float(), labels.float())
    return F.cross_entropy(scores.float(), labels)


def example_mean(per_token: torch.Tensor, lm_targets: torch.Tensor) -> torch.Tensor:
    """Next-token losses (N*S, T) as the mean per example (over all its sequences' tokens), then
    the mean over examples, so data-parallel averaging is exact."""
    N = lm_targets.size(0)
    counts = (lm_targets.reshape(N, -1) != -100).sum(1).clamp(min=1)
    return (per_token.reshape(N, -1).sum(1) / counts).mean()


class FinetuneGPT(nn.Module):
    def __init__(self, gpt: GPT, task_type: str, n_outputs: int, *, clf_pdrop: float = 0.1,
                 regression: bool = False, init_seed: int | None = None):
        super().__init__()
        self.gpt, self.task_type, self.regression = gpt, task_type, regression
        self.dropout = nn.Dropout(clf_pdrop)
        self.classifier = init_classifier(gpt.cfg.n_embd, n_outputs, init_seed)  # W_y

    @property
    def cfg(self):
        return self.gpt.cfg

    def forward(self, idx, extract, choice_mask, lm_targets, labels, lm_coef: float = 0.5):
        """(total loss, task loss, LM loss (0 when lm_coef is 0: not computed), scores)."""
        N, S, T = idx.shape
        hidden = self.gpt.hidden_states(idx.view(N * S, T))
        scores = head_scores(self.classifier, self.dropout, hidden, extract, choice_mask, self.task_type,
                             self.regression)
        task = task_loss(scores, labels, self.regression)
        if lm_coef:
            head = self.gpt.head
            lm = example_mean(head.loss(head(hidden), lm_targets.reshape(N * S, T)), lm_targets)
            return task + lm_coef * lm, task.detach(), lm.detach(), scores.detach()
        return task, task.detach(), torch.zeros((), device=task.device), scores.detach()
