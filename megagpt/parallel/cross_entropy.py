"""Cross-entropy over logits split along the vocabulary, without gathering them.

For logits z split over ranks and a target t owned by one rank:

    loss = log(sum_r sum_{v in r} exp(z_v - m)) + m - z_t,   m = max over all ranks

needs three all-reduces of (tokens,)-sized tensors (max, sum of exp, target logit), never the
(tokens, vocab) logits. The gradient, softmax(z) - onehot(t), is computed locally.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megagpt.parallel.mappings import group_size


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, vocab_start, group, ignore_index):
        logits = logits.float()
        local_v = logits.size(-1)
        if local_v:
            m = logits.max(dim=-1).values
        else:  # this rank holds only vocabulary padding
            m = logits.new_full(logits.shape[:-1], float("-inf"))
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        exp = (logits - m.unsqueeze(-1)).exp_()  # reused as the softmax in backward
        sum_exp = exp.sum(dim=-1)
        dist.all_reduce(sum_exp, group=group)

        ignored = target == ignore_index
        local_t = target - vocab_start
        outside = (local_t < 0) | (local_t >= local_v) | ignored
        local_t = local_t.masked_fill(outside, 0)
        if local_v:
            z_t = logits.gather(-1, local_t.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        else:
            z_t = torch.zeros_like(m)
        dist.all_reduce(z_t, group=group)

        loss = (sum_exp.log() + m - z_t).masked_fill(ignored, 0.0)
        exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(exp, local_t, outside, ignored)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_t, outside, ignored = ctx.saved_tensors
        grad = softmax  # saved buffer reused in place: backward runs once
        onehot = (~outside).to(grad.dtype)
        if grad.size(-1):
            grad.scatter_add_(-1, local_t.unsqueeze(-1), -onehot.unsqueeze(-1))
        grad.mul_((grad_loss * (~ignored).to(grad.dtype)).unsqueeze(-1))
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, vocab_start: int = 0,
                                 group=None, ignore_index: int = -100) -> torch.Tensor:
    """Per-token loss (float32, the shape of ``target``; 0 where ``target == ignore_index``).

    ``logits[..., j]`` is the logit of token ``vocab_start + j``; the other columns live on the
    other ranks of ``group``.
    """
    if group_size(group) == 1:
        flat = F.cross_entropy(logits.float().flatten(0, -2), target.flatten(),
                               ignore_index=ignore_index, reduction="none")
        return flat.view(target.shape)
    return _VocabParallelCrossEntropy.apply(logits, target, vocab_start, group, ignore_index)
