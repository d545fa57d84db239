"""Cached generation: every step's logits equal a full recompute of the unpadded row (dense,
GPT-3 banded with a ring that wraps, GPT-1 post-LN; batched with left padding), sampling options,
stopping, sliding past n_positions, and tensor-parallel generation equal to tp=1."""
import pytest
import torch

from megagpt.config import model_config
from megagpt.formats.weights import save_export
from megagpt.inference import load
from megagpt.inference.generation import SamplingParams, filter_logits, generate, penalize_repetition
from megagpt.model import GPT, full_state_dict
from tests.helpers.dist import run_distributed

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [3, 4], [100, 101, 102, 103, 104, 105]]


def _model(**kw):
    torch.manual_seed(0)
    cfg = model_config("tiny", n_positions=64, local_window=8, embd_pdrop=0.0, attn_pdrop=0.0,
                       resid_pdrop=0.0, **kw)
    return GPT(cfg).eval()


@pytest.mark.parametrize("arch", [dict(attention="dense"), dict(attention="alternating"),
                                  dict(ln_position="post")])
def test_cached_steps_equal_full_recompute_of_each_row(arch):
    model = _model(**arch)
    steps = 30  # 13 + 30 > 4 x local_window: the banded layers' ring wraps several times
    out = generate(model, PROMPTS, SamplingParams(max_new_tokens=steps, temperature=0), keep_scores=True)
    for row, prompt in zip(out, PROMPTS):
        assert row.finish_reason == "length" and len(row.tokens) == steps
        idx = torch.tensor([prompt])
        for s in range(steps):
            with torch.no_grad():
                ref = model.gathered_logits(idx)[0, -1]
            assert (ref - row.scores[s]).abs().max().item() < 1e-5, (arch, prompt, s)
            assert row.tokens[s] == int(ref.argmax())
            idx = torch.cat([idx, ref.argmax().view(1, 1)], dim=1)
    nocache = generate(model, PROMPTS, SamplingParams(max_new_tokens=steps, temperature=0), use_cache=False)
    assert [r.tokens for r in nocache] == [r.tokens for r in out]


def test_sampling_is_seeded_and_returns_n_sequences_per_prompt():
    model = _model(attention="alternating")
    p = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=40, top_p=0.9, num_return_sequences=3, seed=5)
    a, b = generate(model, PROMPTS, p), generate(model, PROMPTS, p)
    assert [c.tokens for c in a] == [c.tokens for c in b]
    assert [c.prompt_index for c in a] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len({tuple(c.tokens) for c in a[:3]}) > 1  # the three samples of a prompt differ
    c = generate(model, PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.0, top_k=40, seed=6))
    assert [x.tokens for x in c] != [x.tokens for x in a[::3]]


def test_filters_and_repetition_penalty():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.75)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    seen = torch.tensor([[True, False, True, False]])
    out = penalize_repetition(torch.tensor([[2.0, 1.0, -1.0, 0.5]]), seen, 2.0)
    assert out.tolist() == [[1.0, 1.0, -2.0, 0.5]]
    # a huge penalty makes greedy decoding avoid every token it has seen (prompt included)
    model = _model()
    r = generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=40, temperature=0, repetition_penalty=1e9))[0]
    assert len(set(r.tokens)) == 40 and not {1, 2, 3} & set(r.tokens)


def test_stop_on_eod_and_stop_strings():
    model = _model()
    greedy = generate(model, PROMPTS, SamplingParams(max_new_tokens=10, temperature=0))
    eod = greedy[1].tokens[3]
    out = generate(model, PROMPTS, SamplingParams(max_new_tokens=10, temperature=0), eod_id=eod)
    first = greedy[1].tokens.index(eod)
    assert out[1].finish_reason == "eod" and out[1].tokens == greedy[1].tokens[:first]
    assert all(eod not in r.tokens for r in out)

    def decode(ids):  # a stand-in vocabulary: token i is the letter i mod 26
        return "".join(chr(97 + i % 26) for i in ids)

    text = decode(PROMPTS[0] + greedy[0].tokens)[len(decode(PROMPTS[0])):]
    stop = text[4:6]
    out = generate(model, PROMPTS, SamplingParams(max_new_tokens=10, temperature=0, stop=[stop]), decode=decode)
    assert out[0].finish_reason == "stop" and out[0].text == text[:text.index(stop)]
    assert stop not in out[0].text
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        generate(model, PROMPTS, SamplingParams(stop=["x"]))
    with pytest.raises(ValueError, match="top_p must be in"):
        generate(model, PROMPTS, SamplingParams(top_p=0.0))


def test_generation_slides_past_n_positions():
    model = _model(attention="alternating")
    n = model.cfg.n_positions
    long_prompt = list(range(1, n + 10))  # longer than the context: its tail is kept
    out = generate(model, [long_prompt, [7]], SamplingParams(max_new_tokens=2 * n, temperature=0))
    assert [len(r.tokens) for r in out] == [2 * n, 2 * n]
    # before the first slide, the cached output equals the recomputed one
    ref = generate(model, [long_prompt, [7]], SamplingParams(max_new_tokens=2 * n, temperature=0), use_cache=False)
    assert out[1].tokens[: n - 1] == ref[1].tokens[: n - 1]


def _tp_worker(rank, world_size, path, params):
    from megagpt.parallel.state import ParallelState

    ps = ParallelState.build(tp_size=world_size)
    model = load(path, ps=ps, with_tokenizer=False).model
    assert model.blocks[0].attn.n_head == model.cfg.n_head // world_size  # each rank holds its shard
    return [c.tokens for c in generate(model, PROMPTS, params)]


def test_tensor_parallel_generation_equals_tp1(tmp_path):
    model = _model(attention="alternating")
    path = save_export(full_state_dict(model), model.cfg, tmp_path / "m.safetensors")
    greedy = SamplingParams(max_new_tokens=20, temperature=0)
    ref = [c.tokens for c in generate(load(path, with_tokenizer=False).model, PROMPTS, greedy)]
    assert ref == [c.tokens for c in generate(model, PROMPTS, greedy)]
    results = run_distributed(_tp_worker, 2, path, greedy)
    assert results[0] == results[1] == ref
    sampled = run_distributed(_tp_worker, 2, path, SamplingParams(max_new_tokens=20, top_k=50, seed=3))
    assert sampled[0] == sampled[1]  # the ranks of a TP group agree on every sampled token


def test_compiled_decoding_gives_the_eager_tokens():
    """The compiled one-token step over a static cache (GPT-3's alternating dense and banded
    layers): greedy (sliding past n_positions) and sampled tokens equal eager decoding's, logits
    equal up to float rounding."""
    model = _model(attention="alternating")
    n = model.cfg.n_positions
    greedy = SamplingParams(max_new_tokens=n + 10, temperature=0)
    eager = generate(model, PROMPTS, greedy, keep_scores=True)
    compiled = generate(model, PROMPTS, greedy, keep_scores=True, compile=True)
    assert callable(getattr(model, "_compiled_step", None))
    for a, b in zip(eager, compiled):
        assert a.tokens == b.tokens
        assert (torch.stack(a.scores) - torch.stack(b.scores)).abs().max() < 1e-4
    sampled = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=40, num_return_sequences=2, seed=5)
    assert ([c.tokens for c in generate(model, PROMPTS, sampled, compile=True)]
            == [c.tokens for c in generate(model, PROMPTS, sampled)])
