"""Int8 decoding (``--dtype int8``): every linear layer and the tied head hold int8 rows within half
a quantization step of the fp32 weights, a trained model keeps its perplexity and greedy text,
tensor-parallel ranks quantize their own shards, and what cannot run int8 is refused by name."""
import math

import pytest
import torch

from megagpt.config import model_config
from megagpt.formats.weights import save_export
from megagpt.inference import load
from megagpt.inference.generation import SamplingParams, generate
from megagpt.inference.int8 import Int8ColumnParallelLinear, Int8Embedding, Int8RowParallelLinear
from megagpt.model import GPT, full_state_dict
from tests.helpers.dist import run_distributed

VOCAB, SEQ = 200, 48


def _markov_batch(gen: torch.Generator, table: torch.Tensor, n: int) -> torch.Tensor:
    """Sequences of a fixed random Markov chain: something a model can learn, so greedy text and
    perplexity mean something."""
    x = torch.empty(n, SEQ + 1, dtype=torch.long)
    x[:, 0] = torch.randint(VOCAB, (n,), generator=gen)
    for t in range(SEQ):
        x[:, t + 1] = torch.multinomial(table[x[:, t]], 1, generator=gen)[:, 0]
    return x


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    table = torch.softmax(4.0 * torch.randn(VOCAB, VOCAB, generator=gen), -1)
    cfg = model_config("tiny", vocab_size=VOCAB, n_positions=64, attention="alternating", local_window=16,
                       embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        x = _markov_batch(gen, table, 16)
        loss = model.token_losses(model(x[:, :-1]), x[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = save_export(full_state_dict(model), cfg, tmp_path_factory.mktemp("int8") / "m.safetensors")
    return path, _markov_batch(torch.Generator().manual_seed(99), table, 32)


def _ppl(model, held_out) -> float:
    with torch.no_grad():
        return math.exp(model.token_losses(model(held_out[:, :-1]), held_out[:, 1:]).mean().item())


def test_int8_rows_are_within_half_a_step_of_the_weights(trained):
    path, _ = trained
    fp32 = load(path, with_tokenizer=False).model
    q = load(path, with_tokenizer=False, dtype="int8").model
    int8_kinds = (Int8ColumnParallelLinear, Int8RowParallelLinear)
    layers = [(a, b) for a, b in zip(fp32.modules(), q.modules()) if isinstance(b, int8_kinds)]
    assert len(layers) == 4 * fp32.cfg.n_layer
    for ref, layer in layers:
        w = torch.ops.quantized.linear_unpack(layer._packed)[0]
        assert w.dtype == torch.qint8 and w.q_per_channel_axis() == 0
        step = w.q_per_channel_scales().float().unsqueeze(1)
        assert ((w.dequantize() - ref.weight).abs() <= step / 2 + 1e-7).all()
    emb = q.embed.wte
    assert isinstance(emb, Int8Embedding) and emb.qweight.dtype == torch.int8
    table = emb.qweight.float() * emb.scale.unsqueeze(1)
    assert ((table - fp32.embed.wte.weight).abs() <= emb.scale.unsqueeze(1) / 2 + 1e-7).all()
    # the head and the lookup share one table: no fp32 copy is kept
    assert not any(p.numel() == fp32.embed.wte.weight.numel() for p in q.parameters())


def test_trained_model_keeps_its_perplexity_and_greedy_text(trained):
    path, held_out = trained
    fp32 = load(path, with_tokenizer=False).model
    q = load(path, with_tokenizer=False, dtype="int8").model
    p32, p8 = _ppl(fp32, held_out), _ppl(q, held_out)
    assert p32 < VOCAB / 4, p32  # it learned the chain
    assert abs(p8 / p32 - 1) < 0.01, (p8, p32)
    prompts = held_out[:, :8].tolist()
    greedy = SamplingParams(max_new_tokens=16, temperature=0, stop_at_eod=False)
    same = sum(a.tokens == b.tokens for a, b in zip(generate(fp32, prompts, greedy), generate(q, prompts, greedy)))
    assert same >= 0.8 * len(prompts), same


def _tp_int8_worker(rank, world_size, path, held_out):
    from megagpt.parallel.state import ParallelState

    model = load(path, ps=ParallelState.build(tp_size=world_size), with_tokenizer=False, dtype="int8").model
    assert model.blocks[0].attn.c_attn.shape[0] == 3 * model.cfg.n_embd // world_size
    with torch.no_grad():
        logits = model.gathered_logits(held_out[:4, :-1])
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    tokens = [c.tokens for c in generate(model, held_out[:4, :8].tolist(), greedy)]
    return logits, tokens


def test_tensor_parallel_int8_quantizes_each_shard(trained):
    path, held_out = trained
    with torch.no_grad():
        ref = load(path, with_tokenizer=False).model.gathered_logits(held_out[:4, :-1])
    (l0, t0), (l1, t1) = run_distributed(_tp_int8_worker, 2, path, held_out)
    assert torch.equal(l0, l1) and t0 == t1  # the ranks agree
    assert (l0 - ref).abs().max() < 0.05 * ref.abs().max()


def test_what_cannot_run_int8_is_refused(trained):
    path, _ = trained
    with pytest.raises(ValueError, match="int8 runs on CPU"):
        load(path, with_tokenizer=False, dtype="int8", device="meta")
    with pytest.raises(ValueError, match="dtype must be one of fp32, bf16, fp16, int8"):
        load(path, with_tokenizer=False, dtype="int4")
    q = load(path, with_tokenizer=False, dtype="int8").model
    with pytest.raises(ValueError, match="int8 decodes eagerly"):
        generate(q, [[1, 2, 3]], SamplingParams(max_new_tokens=2), compile=True)
