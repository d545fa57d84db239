"""tp=2 and tp=4 give the logits, loss and gathered gradients of tp=1 from the same weights."""
import pytest
import torch

from megagpt.config import model_config
from megagpt.model import GPT, full_state_dict, load_full_state_dict
from megagpt.parallel import ParallelState, gather_tensor
from tests.helpers.dist import run_distributed

# vocab 300 pads to 384 at tp=1 and 512 at tp=2/4: the padding differs, the results must not.
CFG = dict(n_layer=3, n_head=4, n_embd=32, n_positions=24, vocab_size=300, local_window=5,
           embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


def _reference(cfg, idx, tgt):
    torch.manual_seed(1234)
    ref = GPT(cfg)
    loss = ref.token_losses(ref(idx), tgt).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    grads["embed.wte.weight"] = grads["embed.wte.weight"][: cfg.vocab_size]
    return full_state_dict(ref), ref.gathered_logits(idx).detach(), loss.detach(), grads


def _check_tp(rank, world_size, attention, ln_position):
    cfg = model_config(**CFG, attention=attention, ln_position=ln_position)
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, cfg.vocab_size, (2, 20), generator=g)
    tgt = torch.randint(0, cfg.vocab_size, (2, 20), generator=g)
    full, ref_logits, ref_loss, ref_grads = _reference(cfg, idx, tgt)

    ps = ParallelState.build(tp_size=world_size)
    model = GPT(cfg, ps)
    assert model.embed.wte.weight.shape[0] == cfg.padded_vocab_size(world_size) // world_size
    load_full_state_dict(model, full)
    logits = model.gathered_logits(idx)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    loss = model.token_losses(model(idx), tgt).mean()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    loss.backward()
    for name, p in model.named_parameters():
        if getattr(p, "tensor_model_parallel", False):
            grad = gather_tensor(p.grad, ps, p.partition_dim, p.partition_stride)
        else:
            grad = p.grad
        if name == "embed.wte.weight":
            assert grad[cfg.vocab_size:].abs().max() == 0, "padding rows received gradient"
            grad = grad[: cfg.vocab_size]
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    return float(loss)


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("attention,ln_position", [("dense", "pre"), ("alternating", "pre"),
                                                   ("dense", "post")])
def test_tensor_parallel_matches_single_device(world_size, attention, ln_position):
    losses = run_distributed(_check_tp, world_size, attention, ln_position)
    assert len(set(losses)) == 1  # every TP rank sees the same loss


def _check_init(rank, world_size):
    cfg = model_config(**CFG)
    torch.manual_seed(5)
    whole = full_state_dict(GPT(cfg))
    torch.manual_seed(5)
    sharded = full_state_dict(GPT(cfg, ParallelState.build(tp_size=world_size)))
    for name, t in whole.items():
        torch.testing.assert_close(sharded[name], t, rtol=0, atol=0, msg=name)


def test_same_seed_same_model_at_any_tp():
    run_distributed(_check_init, 2)
