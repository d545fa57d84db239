"""GPT-1's input transformations token by token, the head's invariances, and the objective."""
import json

import pytest
import torch

from megagpt.data.tokenizer import Tokenizer
from megagpt.finetuning.data import Encoder, FinetuneDataError, collate, load_finetune_task
from megagpt.finetuning.model import FinetuneGPT


def _task(tmp_path, kind, rows, **header):
    p = tmp_path / f"{kind}.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in [{"megagpt_finetune": 1, "type": kind, **header}] + rows))
    return load_finetune_task(p)


def test_token_layouts(tmp_path, ft_setup):
    tok = Tokenizer(ft_setup["tok"])
    S, D, E = (tok.piece_to_id(p) for p in ("<|ft_start|>", "<|ft_delim|>", "<|ft_extract|>"))
    enc = tok.encode
    cases = {
        "classification": ({"text": "what is python", "label": "a"}, [[S, *enc("what is python"), E]]),
        "entailment": ({"premise": "what is python", "hypothesis": "a language", "label": "a"},
                       [[S, *enc("what is python"), D, *enc("a language"), E]]),
        "similarity": ({"a": "what is python", "b": "a language", "label": "a"},
                       [[S, *enc("what is python"), D, *enc("a language"), E],
                        [S, *enc("a language"), D, *enc("what is python"), E]]),
        "multiple_choice": ({"context": "what is python", "choices": ["a language", "a snake"], "label": 0},
                            [[S, *enc("what is python"), D, *enc("a language"), E],
                             [S, *enc("what is python"), D, *enc("a snake"), E]]),
    }
    for kind, (row, want) in cases.items():
        if kind != "multiple_choice":
            rows = [dict(row), dict(row, label="b")]
        else:
            rows = [row]
        task = _task(tmp_path, kind, rows)
        got = Encoder(task, tok, 64).encode(task.examples[0])
        assert got.seqs == want and got.extract == [len(s) - 1 for s in want] and not got.truncated, kind
    # too long: the framing tokens stay, the longest part is cut, the cut is counted
    task = _task(tmp_path, "entailment", [{"premise": "word " * 100, "hypothesis": "a language", "label": "a"},
                                          {"premise": "x", "hypothesis": "y", "label": "b"}])
    got = Encoder(task, tok, 20).encode(task.examples[0])
    seq = got.seqs[0]
    assert len(seq) == 20 and got.truncated and seq[0] == S and seq[-1] == E and seq.count(D) == 1
    assert seq[seq.index(D) + 1:-1] == enc("a language")
    mc = _task(tmp_path, "multiple_choice", [{"context": "word " * 100 + "end", "choices": ["yes", "no"], "label": 1}])
    seq = Encoder(mc, tok, 16).encode(mc.examples[0]).seqs[0]
    assert len(seq) == 16 and seq[seq.index(D) - len(enc("end")):seq.index(D)] == enc("end")  # context cut at the front


def _model(kind, n_out, seed=0):
    from megagpt.config import model_config
    from megagpt.model import GPT

    torch.manual_seed(seed)
    gpt = GPT(model_config(None, n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=64, attention="dense",
                           embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
    return FinetuneGPT(gpt, kind, n_out, clf_pdrop=0.0).eval()


def _batch(seqs_per_example, labels, regression=False):
    from megagpt.finetuning.data import Encoded

    return collate([Encoded(seqs, [len(s) - 1 for s in seqs], y, False) for seqs, y in zip(seqs_per_example, labels)],
                   pad_id=0, regression=regression)


def test_similarity_is_order_invariant_and_mc_shares_w_y():
    m = _model("similarity", 3)
    a, b = [1, 5, 6, 7, 2, 9, 10, 3], [1, 9, 10, 2, 5, 6, 7, 3]  # start a delim b extract, and swapped
    one = m(**_batch([[a, b]], [0]), lm_coef=0.0)[3]
    two = m(**_batch([[b, a]], [0]), lm_coef=0.0)[3]
    assert torch.equal(one, two) and one.shape == (1, 3)
    mc = _model("multiple_choice", 1)
    assert mc.classifier.weight.shape == (1, 32)  # one W_y for every answer
    seqs = [[1, 5, 6, 2, 7, 3], [1, 5, 6, 2, 8, 9, 3], [1, 5, 6, 2, 10, 3]]
    batch = _batch([seqs, seqs[:2]], [2, 1])  # the second example has two answers: the third is masked
    scores = mc(**batch, lm_coef=0.0)[3]
    with torch.no_grad():
        for i, s in enumerate(seqs):
            h = mc.gpt.hidden_states(torch.tensor([s]))[0, -1]
            assert torch.allclose(scores[0, i], mc.classifier(h)[0], atol=1e-6)
    assert scores[1, 2] == float("-inf") and torch.isfinite(scores[1, :2]).all()


def test_lambda_zero_gives_exactly_the_task_gradients():
    seqs = [[[1, 5, 6, 7, 3]], [[1, 8, 9, 3]], [[1, 10, 11, 12, 13, 3]]]
    batch = _batch(seqs, [0, 1, 1])

    def grads(lm_coef, manual=False):
        m = _model("classification", 2)
        m.train()
        if manual:  # L2 by hand: cross-entropy of W_y at the extract token
            N, S, T = batch["idx"].shape
            h = m.gpt.hidden_states(batch["idx"].view(N * S, T))
            logits = m.classifier(h[torch.arange(N), batch["extract"][:, 0]])
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        else:
            loss = m(**batch, lm_coef=lm_coef)[0]
        loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    zero, manual, half = grads(0.0), grads(0.0, manual=True), grads(0.5)
    assert zero.keys() == manual.keys() and all(torch.equal(zero[k], manual[k]) for k in zero)
    assert any(not torch.allclose(zero[k], half[k]) for k in zero)  # the LM term does change them


@pytest.mark.parametrize("lines, line, message", [
    ([{"text": "hello there", "label": "a"}, {"text": "x y", "label": "b"},
      {"text": "z", "label": "c", "split": "valid"}], 4, "label 'c' is not one of the task's labels"),
    ([{"text": "hello there", "label": "a"}, {"label": "b"}], 3, "missing 'text'"),
    ([{"text": "  ", "label": "a"}], 2, "'text' must be a non-empty string"),
    ([{"text": "hello", "label": "a", "split": "dev"}], 2, "'split' must be one of"),
    ([{"text": "hello"}], 2, "missing 'label'"),
])
def test_bad_task_files_name_the_line(tmp_path, lines, line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in [{"megagpt_finetune": 1, "type": "classification"}] + lines))
    with pytest.raises(FinetuneDataError) as e:
        load_finetune_task(p)
    assert str(e.value).startswith(f"{p}:{line}: ") and message in str(e.value), str(e.value)


def test_similarity_regression_and_metrics(tmp_path):
    from megagpt.finetuning.trainer import classification_metrics, regression_metrics

    task = _task(tmp_path, "similarity", [{"a": "x", "b": "y", "label": 3.5}, {"a": "p", "b": "q", "label": 1}],
                 regression=True)
    assert task.regression and task.n_outputs == 1 and task.target(task.examples[0]) == 3.5
    m = _model("similarity", 1)
    m.regression = True
    a, b = [1, 5, 6, 2, 9, 3], [1, 9, 2, 5, 6, 3]
    total, task_l, _, scores = m(**_batch([[a, b], [b, a]], [3.5, 1.0], regression=True), lm_coef=0.0)
    assert scores.shape == (2,) and scores[0] == scores[1]
    assert torch.isclose(total, ((scores - torch.tensor([3.5, 1.0])) ** 2).mean())
    with pytest.raises(FinetuneDataError, match="'label' must be a number"):
        _task(tmp_path, "similarity", [{"a": "x", "b": "y", "label": "high"}], regression=True)
    # Spearman uses ranks (ties share theirs), Pearson the values
    r = regression_metrics([1.0, 2.0, 2.0, 10.0], [1.0, 2.0, 3.0, 4.0])
    assert r["spearman"] == pytest.approx(0.9486832980505138) and r["pearson"] < r["spearman"]
    c = classification_metrics([1, 1, 0, 0], [1, 0, 0, 1], 2)
    assert c == {"accuracy": 0.5, "f1": 0.5}


def test_unlabelled_test_examples_and_bad_bytes(tmp_path):
    task = _task(tmp_path, "classification", [{"text": "a b", "label": "x"}, {"text": "c d", "label": "y"},
                                              {"split": "test", "text": "e f"}])
    assert task.split("test")[0].label is None
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"megagpt_finetune": 1, "type": "classification"}\n{"text": "caf\xe9", "label": "x"}\n')
    with pytest.raises(FinetuneDataError, match=rf"^{p}: not UTF-8 text"):
        load_finetune_task(p)


def test_max_length_too_small_is_an_error_not_a_hang(tmp_path, ft_setup):
    task = _task(tmp_path, "entailment", [{"premise": "a b", "hypothesis": "c", "label": "x"},
                                          {"premise": "d", "hypothesis": "e", "label": "y"}])
    with pytest.raises(FinetuneDataError, match="finetune.max_length=4 leaves no room"):
        Encoder(task, Tokenizer(ft_setup["tok"]), 4).encode(task.examples[0])
