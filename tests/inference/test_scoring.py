"""Batched log-likelihoods equal those computed request by request with transformers on the
exported Hugging Face directory, and tp=2 equals tp=1."""
import random

import pytest
import torch

from megagpt.config import model_config
from megagpt.formats.hf import write_hf_dir
from megagpt.formats.weights import save_export
from megagpt.inference import load
from megagpt.inference.scoring import loglikelihood
from megagpt.model import GPT, full_state_dict
from tests.helpers.dist import run_distributed


def _requests(n=50, vocab=300):
    rng = random.Random(0)
    reqs = []
    for _ in range(n):  # contexts 1..40 tokens, continuations 1..6: every batch is padded
        ctx = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 40))]
        reqs.append((ctx, [rng.randrange(3, vocab) for _ in range(rng.randint(1, 6))]))
    reqs.append(([5] * 60, [7, 8, 9]))  # longer than the context: cut from the left
    return reqs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(model_config("tiny", vocab_size=300, n_positions=48, embd_pdrop=0.0, attn_pdrop=0.0,
                            resid_pdrop=0.0)).eval()


def test_loglikelihood_equals_transformers(model, tmp_path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(write_hf_dir(full_state_dict(model), model.cfg, tmp_path / "hf")).eval()
    reqs = _requests()
    scores = loglikelihood(model, reqs, batch_size=8)
    n_pos = model.cfg.n_positions
    with torch.no_grad():
        for (ctx, cont), s in zip(reqs, scores):
            seq = (ctx + cont)[-(n_pos + 1):]
            x = torch.tensor([seq[:-1]])
            logp = hf(x).logits[0].log_softmax(-1)
            pos = range(len(seq) - 1 - len(cont), len(seq) - 1)
            ref = sum(logp[p, seq[p + 1]].item() for p in pos)
            greedy = all(int(logp[p].argmax()) == seq[p + 1] for p in pos)
            assert abs(s.logprob - ref) < 1e-4 and s.greedy == greedy and s.n_tokens == len(cont)
    # a request made of the model's own greedy continuation is greedy
    ctx = [4, 5, 6]
    with torch.no_grad():
        nxt = int(model.gathered_logits(torch.tensor([ctx]))[0, -1].argmax())
    assert loglikelihood(model, [(ctx, [nxt])])[0].greedy
    with pytest.raises(ValueError, match="request 0: the continuation is empty"):
        loglikelihood(model, [([1], [])])


def _tp_worker(rank, world_size, path, reqs):
    from megagpt.parallel.state import ParallelState

    m = load(path, ps=ParallelState.build(tp_size=world_size), with_tokenizer=False).model
    return [(s.logprob, s.greedy) for s in loglikelihood(m, reqs, batch_size=8)]


def test_tensor_parallel_scores_equal_tp1(model, tmp_path):
    path = save_export(full_state_dict(model), model.cfg, tmp_path / "m.safetensors")
    reqs = _requests(20)
    ref = [(s.logprob, s.greedy) for s in loglikelihood(model, reqs, batch_size=8)]
    for rank_result in run_distributed(_tp_worker, 2, path, reqs):
        assert [g for _, g in rank_result] == [g for _, g in ref]
        assert max(abs(a - b) for (a, _), (b, _) in zip(rank_result, ref)) < 1e-4
