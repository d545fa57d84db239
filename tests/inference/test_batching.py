"""Continuous batching: requests joining and leaving a running batch decode exactly what
``generate`` decodes for each of them alone, for dense and GPT-3 banded (ring-cache) attention."""
import random

import pytest
import torch

from megagpt.config import model_config
from megagpt.inference.batching import BatchEngine, Job, Plan
from megagpt.inference.generation import SamplingParams, generate
from megagpt.model import GPT


def model_for(attention: str):
    torch.manual_seed(0)
    extra = {"local_window": 8} if attention == "alternating" else {}
    cfg = model_config("tiny", vocab_size=300, n_positions=64, attention=attention, embd_pdrop=0.0,
                       attn_pdrop=0.0, resid_pdrop=0.0, **extra)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # peaked distributions: no near-ties between the two best tokens
    return model


def jobs(n: int, draw: int, **params):
    rng = random.Random(draw)
    out = []
    for i in range(n):
        prompt = [rng.randrange(300) for _ in range(rng.randint(1, 30))]
        out.append(Job(i, prompt, SamplingParams(max_new_tokens=rng.randint(1, 25), **params)))
    return out


def run(engine: BatchEngine, todo: list[Job], every: int = 2, drop_at: dict | None = None, per: int = 1):
    """Add ``per`` jobs (prefilled together) every ``every`` iterations; ``drop_at``:
    {iteration: [rid or (rid, row)]}."""
    got: dict = {}
    pending, it = list(todo), 0
    while pending or engine.active:
        plan = Plan(drop=(drop_at or {}).get(it, []))
        if pending and it % every == 0:
            plan.add, pending = pending[:per], pending[per:]
        for e in engine.apply(plan).tokens:
            got.setdefault((e.rid, e.row), []).append(e.token)
        it += 1
    return got


@pytest.mark.parametrize("attention,per", [("dense", 1), ("alternating", 1), ("dense", 3), ("alternating", 3)])
def test_greedy_rows_joining_and_leaving_equal_alone(attention, per):
    model = model_for(attention)
    todo = jobs(10, 1, temperature=0, stop_at_eod=False)
    engine = BatchEngine(model, eod_id=None, max_rows=16)
    got = run(engine, todo, every=3 if per > 1 else 2, per=per)
    for j in todo:
        assert got[(j.rid, 0)] == generate(model, [j.prompt], j.params)[0].tokens, j.rid
    assert engine.active == 0 and engine.state is None


def test_sampled_rows_reproduce_their_seed():
    model = model_for("dense")
    todo = jobs(6, 2, temperature=1.0, top_k=20, num_return_sequences=2, seed=3)
    alone = {}
    for j in todo:  # each request alone in the engine: the reference
        alone.update(run(BatchEngine(model, eod_id=None), [j]))
    assert run(BatchEngine(model, eod_id=None), todo, every=1) == alone
    assert run(BatchEngine(model, eod_id=None), todo, every=2, per=4) == alone  # prefilled in groups
    assert any(alone[(j.rid, 0)] != alone[(j.rid, 1)] for j in todo)


def test_eod_ends_a_row():
    model = model_for("dense")
    (job,) = jobs(1, 4, temperature=0)
    job.params.max_new_tokens = 20
    ref = generate(model, [job.prompt], job.params)[0].tokens
    eod = ref[3]
    engine = BatchEngine(model, eod_id=eod)
    events = [e for e in engine.apply(Plan(add=[job])).tokens]
    while engine.active:
        events += engine.apply(Plan()).tokens
    cut = ref.index(eod)
    assert [e.token for e in events] == ref[:cut + 1] and events[-1].finished == "eod"


def test_a_stop_string_ends_a_row_in_the_iteration_that_made_it():
    """The engine decides stop strings itself (as EOD and the length): the row leaves in the
    iteration whose token completed the stop string, with ``generate``'s tokens and text."""
    model = model_for("dense")
    (job,) = jobs(1, 5, temperature=0, stop_at_eod=False)
    job.params.max_new_tokens = 20

    def decode(ids):  # a stand-in vocabulary: token i is the letter i mod 26
        return "".join(chr(97 + i % 26) for i in ids)

    text = generate(model, [job.prompt], job.params, decode=decode)[0].text
    job.params.stop = [text[6:8]]
    ref = generate(model, [job.prompt], job.params, decode=decode)[0]
    assert ref.finish_reason == "stop" and len(ref.tokens) < 20
    engine = BatchEngine(model, eod_id=None, decode=decode)
    events = engine.apply(Plan(add=[job])).tokens
    while engine.active:
        events += engine.apply(Plan()).tokens
    assert [e.token for e in events] == ref.tokens and events[-1].finished == "stop"  # nothing after it
    assert events[-1].text == ref.text == text[:text.index(text[6:8])]


def test_dropped_rows_leave_and_the_rest_carry_on():
    model = model_for("alternating")
    todo = jobs(5, 3, temperature=0, stop_at_eod=False)
    for j in todo:
        j.params.max_new_tokens = 20
    engine = BatchEngine(model, eod_id=None)
    got = run(engine, todo, every=1, drop_at={3: [0], 5: [(2, 0)]})
    assert len(got[(0, 0)]) < 20 and len(got[(2, 0)]) < 20
    for j in todo:
        ref = generate(model, [j.prompt], j.params)[0].tokens
        assert got[(j.rid, 0)] == ref[:len(got[(j.rid, 0)])]
        if j.rid not in (0, 2):
            assert len(got[(j.rid, 0)]) == 20


def test_prompt_logprobs_match_a_full_forward():
    model = model_for("dense")
    prompt = list(range(5, 25))
    engine = BatchEngine(model, eod_id=None)
    out = engine.apply(Plan(add=[Job(0, prompt, SamplingParams(max_new_tokens=1, temperature=0), logprobs=2,
                                     prompt_logprobs=3)]))
    entries = out.prompt_logprobs[0]
    with torch.no_grad():
        lp = model.gathered_logits(torch.tensor([prompt]))[0].log_softmax(-1)
    assert entries[0] == (None, None) and len(entries) == len(prompt)
    for t in range(1, len(prompt)):
        assert entries[t][0] == pytest.approx(float(lp[t - 1, prompt[t]]), abs=1e-5)
        assert [i for i, _ in entries[t][1]] == lp[t - 1].topk(3).indices.tolist()
    (event,) = out.tokens
    assert event.token == int(lp[-1].argmax()) and event.finished == "length" and len(event.top) == 2


def test_a_job_that_cannot_join_fails_alone_and_ids_stay_in_the_tokenizer():
    model = model_for("dense")
    engine = BatchEngine(model, eod_id=None, vocab_limit=250)
    good = Job(0, [1, 2, 3], SamplingParams(max_new_tokens=30, temperature=2.0, seed=1))
    bad = Job(1, list(range(60)), SamplingParams(max_new_tokens=30))  # 90 > n_positions=64
    out = engine.apply(Plan(add=[good]))
    out2 = engine.apply(Plan(add=[bad]))
    assert list(out2.errors) == [1] and "n_positions" in out2.errors[1] and 1 not in engine.requests
    tokens = [e.token for e in out.tokens + out2.tokens if e.rid == 0]
    while engine.active:
        tokens += [e.token for e in engine.apply(Plan()).tokens]
    assert len(tokens) == 30 and max(tokens) < 250
