"""Activation checkpointing changes memory, not math: same loss and grads, dropout included."""
import torch

from megagpt.config import model_config
from megagpt.model import GPT
from megagpt.parallel import ParallelState


def _run(checkpointing):
    cfg = model_config("tiny", attention="alternating", local_window=8)
    ps = ParallelState.single()
    torch.manual_seed(0)
    model = GPT(cfg, ps, checkpoint_activations=checkpointing).train()
    ps.seed(11)
    idx = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    loss = model.token_losses(model(idx), idx).mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_checkpointing_is_exact_with_dropout():
    loss_a, grads_a = _run(False)
    loss_b, grads_b = _run(True)
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0, msg=name)
