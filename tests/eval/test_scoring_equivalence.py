"""Evaluation numbers against independent references: log-likelihoods of text requests equal
transformers' on the exported Hugging Face directory (its own tokenizer), sliding-window perplexity
equals a token-by-token computation, and the contamination report finds the overlapping items."""
import json
import random

import pytest
import torch

from megagpt.eval.contamination import TrainingNgrams, ngram_size
from megagpt.eval.runner import Evaluator, run_suite
from megagpt.eval.tasks import load_task, write_task
from megagpt.formats.hf import write_hf_dir
from megagpt.inference import load
from tests.helpers.eval_data import SENTENCES


@pytest.fixture(scope="module")
def loaded(exported):
    return load(exported)


def test_text_loglikelihoods_equal_transformers(loaded, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megagpt.model import full_state_dict

    model, tok = loaded
    hf_dir = write_hf_dir(full_state_dict(model), model.cfg, tmp_path / "hf", tokenizer_model=tok.path)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    rng = random.Random(0)
    words = " ".join(SENTENCES).replace(".", "").split()
    reqs = []
    for _ in range(50):  # contexts of 1..12 words, continuations of 1..4 words (multi-token): padded batches
        a = rng.randrange(len(words) - 35)
        ctx = " ".join(words[a:a + rng.randint(1, 12)])
        reqs.append((ctx, " " + " ".join(words[a + 30:a + 30 + rng.randint(1, 4)])))
    ev = Evaluator(model, tok, batch_size=7)
    scores = ev.score([ev.encode_pair(c, x) for c, x in reqs])
    worst = 0.0
    with torch.no_grad():
        for (c, x), s in zip(reqs, scores):
            ctx_ids = hf_tok(c)["input_ids"]
            cont_ids = hf_tok(c + x)["input_ids"][len(ctx_ids):]
            ids = torch.tensor([ctx_ids + cont_ids])
            assert ids.size(1) <= 129
            logp = hf(ids).logits[0, :-1].float().log_softmax(-1)
            pos = range(len(ctx_ids) - 1, ids.size(1) - 1)
            ref = sum(logp[p, ids[0, p + 1]].item() for p in pos)
            worst = max(worst, abs(ref - s.logprob))
            assert s.n_tokens == len(cont_ids) and s.greedy == all(int(logp[p].argmax()) == ids[0, p + 1] for p in pos)
    assert worst < 1e-4, worst
    assert max(s.n_tokens for s in scores) > 1


@pytest.mark.parametrize("stride", [128, 24])  # disjoint windows (the default) and overlapping ones
def test_rolling_perplexity_equals_token_by_token(loaded, stride):
    model, tok = loaded
    text = " ".join(SENTENCES * 2)
    ids = tok.encode(text)
    n_pos = model.cfg.n_positions
    assert len(ids) > 2 * n_pos
    got = Evaluator(model, tok, batch_size=5).perplexity([(ids, text)], stride=stride)
    seq = [tok.eod_id] + ids
    nll = 0.0
    with torch.no_grad():
        for j in range(1, len(seq)):  # token j is scored in window (j-1)//stride with the context that window has
            end = min(((j - 1) // stride + 1) * stride, len(ids))
            start = max(0, end - n_pos)
            logits = model(torch.tensor([seq[start:j]]))[0, -1].float()
            nll -= logits.log_softmax(-1)[seq[j]].item()
    assert got["tokens"] == len(ids) and got["bytes"] == len(text.encode()) and got["words"] == len(text.split())
    assert abs(got["nll"] - nll) < 1e-3 * max(1.0, abs(nll) / 1000), (got["nll"], nll)
    assert got["bits_per_byte"] == pytest.approx(nll / 0.6931471805599453 / len(text.encode()), rel=1e-6)


def test_contamination_report_splits_clean_and_dirty(loaded, tmp_path):
    model, tok = loaded
    items = [{"context": f"{s[:-1]} (item {i})", "target": "today"}
             for i, s in enumerate(SENTENCES)]
    task = load_task(write_task(tmp_path / "c.jsonl", {"type": "cloze"}, items))
    train = tmp_path / "deduped"
    train.mkdir()
    # two items' text is in the training text (one in upper case), the rest is not
    (train / "part.jsonl").write_text(json.dumps({"text": "Some preface. " + items[2]["context"] + " today."}) + "\n"
                                      + json.dumps({"text": items[5]["context"].upper() + " TODAY"}) + "\n")
    grams = TrainingNgrams([train])
    n, flags = grams.dirty(task)
    assert n == ngram_size(task) and 8 <= n <= 13 and [i for i, f in enumerate(flags) if f] == [2, 5]
    rows = run_suite(Evaluator(model, tok), [task], [0], contamination=grams)
    by = {(r["metric"], r["subset"]): r for r in rows}
    assert by[("acc", "dirty")]["n"] == 2 and by[("acc", "clean")]["n"] == 6 and by[("acc", "all")]["n"] == 8
