import torch

from megagpt.config import model_config
from megagpt.generate import filter_logits, sample
from megagpt.model import GPT


def test_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus 0.75: 0.5 + 0.3 reaches it, the rest go
    assert torch.isinf(filter_logits(logits, top_p=0.75)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert not torch.isinf(filter_logits(logits)).any()


def test_sampling_is_seeded_and_greedy_is_argmax():
    torch.manual_seed(0)
    model = GPT(model_config("tiny"))
    idx = torch.tensor([[1, 2, 3]])
    a = sample(model, idx, 8, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(1))
    b = sample(model, idx, 8, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (1, 11)
    g = sample(model, idx, 1, temperature=0)
    assert g[0, -1] == model.gathered_logits(idx)[0, -1].argmax()
