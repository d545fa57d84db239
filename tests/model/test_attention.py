"""GPT-3's locally banded layers see only their window; dense layers see the whole prefix."""
import torch

from megagpt.config import model_config
from megagpt.model.gpt import Attention, band_mask
from megagpt.parallel import ParallelState


def _input_grad_support(layer_idx, T=16, window=4):
    cfg = model_config(n_layer=2, n_head=2, n_embd=16, n_positions=T, vocab_size=64,
                       attention="alternating", local_window=window, attn_pdrop=0.0)
    torch.manual_seed(0)
    attn = Attention(cfg, ParallelState.single(), layer_idx)
    x = torch.randn(1, T, 16, requires_grad=True)
    i = T - 1
    attn(x)[0, i].sum().backward()
    return (x.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()


def test_banded_layer_ignores_tokens_outside_window():
    # layer 1 is banded: position 15 with window 4 depends on positions 12..15 only
    assert _input_grad_support(layer_idx=1) == [12, 13, 14, 15]


def test_dense_layer_sees_whole_prefix():
    assert _input_grad_support(layer_idx=0) == list(range(16))


def test_banded_by_perturbation():
    cfg = model_config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=64,
                       attention="alternating", local_window=3, attn_pdrop=0.0)
    attn = Attention(cfg, ParallelState.single(), 1).eval()
    x = torch.randn(1, 20, 16)
    y = x.clone()
    y[0, 5] += 10.0  # outside the window of positions >= 8
    a, b = attn(x), attn(y)
    assert torch.equal(a[0, 8:], b[0, 8:])
    assert not torch.allclose(a[0, 5:8], b[0, 5:8])


def test_band_mask_shape():
    m = band_mask(5, 2)
    assert m.tolist()[4] == [False, False, False, True, True]
    assert m.tolist()[0] == [True, False, False, False, False]
