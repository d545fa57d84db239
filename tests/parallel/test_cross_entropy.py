import pytest
import torch
import torch.nn.functional as F

from megagpt.parallel import ParallelState, vocab_parallel_cross_entropy
from tests.helpers.dist import run_distributed


def _check(rank, world_size, dtype):
    ps = ParallelState.build(tp_size=world_size)
    g = torch.Generator().manual_seed(0)
    V = 96
    full = (torch.randn(3, 7, V, generator=g) * 3).to(dtype)
    target = torch.randint(0, V, (3, 7), generator=g)
    target[0, :2] = -100  # ignored positions (fine-tuning masks)
    weight = torch.rand(3, 7, generator=g)  # a non-uniform upstream gradient

    ref_in = full.clone().float().requires_grad_()
    ref = F.cross_entropy(ref_in.view(-1, V), target.view(-1), reduction="none").view(3, 7)
    (ref * weight).sum().backward()

    per = V // world_size
    local = full[..., rank * per:(rank + 1) * per].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(local, target, vocab_start=rank * per, group=ps.tp_group)
    (loss * weight).sum().backward()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert local.grad.dtype == dtype
    torch.testing.assert_close(local.grad.float(), ref_in.grad[..., rank * per:(rank + 1) * per], **tol)


@pytest.mark.parametrize("world_size", [2, 4])
def test_vocab_parallel_cross_entropy_matches_torch(world_size):
    run_distributed(_check, world_size, torch.float32)


def test_vocab_parallel_cross_entropy_bf16_logits():
    run_distributed(_check, 2, torch.bfloat16)


def test_single_rank_falls_back_to_torch():
    logits = torch.randn(4, 10, requires_grad=True)
    target = torch.tensor([1, 2, -100, 9])
    ours = vocab_parallel_cross_entropy(logits, target)
    ref = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(ours, ref)
