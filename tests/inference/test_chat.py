"""MMI reranking picks the candidate the backward model scores highest (checked against a
token-by-token computation), and the chat command, driven through a pseudo-terminal, answers,
keeps history, forgets it on /reset, and survives broken UTF-8 and empty lines."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tokenizer trained on chatterbot-corpus's English and Chinese lines, and two tiny GPTs
    (forward and backward) exported with it."""
    import chatterbot_corpus
    import yaml

    from data_tools.tokenizer import TokenizerConfig, train
    from megagpt.config import model_config
    from megagpt.formats.weights import save_export
    from megagpt.model import GPT, full_state_dict

    tmp = tmp_path_factory.mktemp("chat")
    data = Path(chatterbot_corpus.__file__).parent / "data"
    text = [str(t) for y in sorted(data.glob("*/*.yml"))
            for c in (yaml.safe_load(y.read_text(encoding="utf-8")) or {}).get("conversations") or [] for t in c]
    tok = train([" ".join(text)], tmp / "tok.model", TokenizerConfig(vocab_size=800, sample_bytes=2_000_000))
    out = {}
    for i, name in enumerate(("forward", "backward")):
        torch.manual_seed(i)
        cfg = model_config(None, n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=800, attention="dense",
                           embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
        out[name] = save_export(full_state_dict(GPT(cfg)), cfg, tmp / f"{name}.safetensors", tokenizer=str(tok))
    return out


def test_mmi_picks_the_best_backward_score(models):
    import megagpt
    from megagpt.dialogue.mmi import encode_turns, rerank

    fwd, tok = megagpt.load(models["forward"])
    bwd = megagpt.load(models["backward"]).model
    turns = ["What is your favourite book?", "I like long novels.", "Which one?"]
    candidates = [tok.encode(t) for t in ("War and Peace.", "I don't know.", "The one about the sea and the old man.",
                                          "Books are nice.")]
    scored = rerank(fwd, bwd, tok, turns, candidates)
    ref = []
    with torch.no_grad():  # log P(reversed history | candidate EOD), token by token
        cont = encode_turns(tok, list(reversed(turns)))
        for c in candidates:
            seq = c + [tok.eod_id] + cont
            logp = bwd(torch.tensor([seq[:-1]]))[0].log_softmax(-1)
            ref.append(sum(logp[p, seq[p + 1]].item() for p in range(len(c), len(seq) - 1)))
    assert [s.backward for s in scored] == pytest.approx(ref, abs=1e-4)
    best = max(scored, key=lambda s: s.score)
    assert best.tokens == candidates[max(range(4), key=ref.__getitem__)]
    weighted = rerank(fwd, bwd, tok, turns, candidates, weight=1.0)
    assert [s.score for s in weighted] == pytest.approx([s.backward + s.forward for s in weighted])
    # an empty reply (EOD at once) is scored but never chosen over a non-empty one
    with_empty = rerank(fwd, bwd, tok, turns, [[]] + candidates)
    assert with_empty[0].text == "" and with_empty[0].score == float("-inf") and with_empty[0].backward > -1e9
    assert max(with_empty, key=lambda s: s.score).tokens == best.tokens


def test_chat_in_a_pseudo_terminal(models):
    pexpect = pytest.importorskip("pexpect")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    child = pexpect.spawn(sys.executable, [str(ROOT / "megagpt" / "chat.py"), "--model", str(models["forward"]),
                                           "--backward", str(models["backward"]), "--n", "4", "--max-new-tokens", "6"],
                          env=env, encoding="utf-8", codec_errors="replace", timeout=120)
    child.expect("you> ")
    child.sendline("Hello, how are you?")
    child.expect("bot> (.*?)\r\n")
    child.expect("you> ")
    child.sendline("你好，很高兴认识你")
    child.expect("bot> ")
    child.expect("you> ")
    child.sendline("/history")
    child.expect("1. Hello, how are you\\?")
    child.expect("3. 你好，很高兴认识你")
    child.expect("you> ")
    child.sendline("")  # an empty line: asked again
    child.expect("you> ")
    os.write(child.child_fd, b"caf\xe9 \xff\xfe broken bytes\n")  # not UTF-8
    child.expect("bot> ")
    child.expect("you> ")
    child.sendline("/reset")
    child.expect("history cleared")
    child.expect("you> ")
    child.sendline("/history")
    child.expect("empty")
    child.expect("you> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_from_a_file(models, tmp_path):
    import subprocess

    f = tmp_path / "turns.txt"
    f.write_bytes("Hello there\n\n/history\n你好\n/quit\n".encode())
    r = subprocess.run([sys.executable, ROOT / "megagpt" / "chat.py", "--model", models["forward"], "--input", f,
                        "--max-new-tokens", "4"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("bot> ") == 2 and "1. Hello there" in r.stdout and "chat (sampling)" in r.stdout


def test_distinct_n_by_hand():
    from megagpt.dialogue.mmi import distinct, diversity, units

    assert units("I don't know, 我不知道!") == ["i", "don", "t", "know", "我", "不", "知", "道"]
    replies = ["i do not know", "i do not care", "我不知道"]
    # unigrams: i do not know i do not care 我 不 知 道 -> 12, distinct 9
    assert distinct(replies, 1) == pytest.approx(9 / 12)
    # bigrams: (i do)(do not)(not know)(i do)(do not)(not care)(我不)(不知)(知道) -> 9, distinct 7
    assert distinct(replies, 2) == pytest.approx(7 / 9)
    assert diversity(replies)["avg_len"] == pytest.approx(4.0)
    assert distinct([], 2) == 0.0


def test_heldout_report(models, tmp_path):
    """--heldout answers each session's history with a plain sample and the MMI choice, and the
    printed and written figures are the diversity of those replies."""
    import json

    from megagpt.chat import main
    from megagpt.dialogue.mmi import diversity

    held = tmp_path / "heldout.jsonl"
    sessions = [["Hello there", "Hi, how are you?"], ["What is AI?", "A field of science.", "Which one?", "Computing."],
                ["你好", "你好，很高兴认识你"], ["Do you like books?", "Yes, very much."]]
    held.write_text("".join(json.dumps({"turns": s}, ensure_ascii=False) + "\n" for s in sessions), encoding="utf-8")
    out = tmp_path / "mmi.json"
    assert main(["--model", str(models["forward"]), "--backward", str(models["backward"]), "--n", "4",
                 "--max-new-tokens", "6", "--heldout", str(held), "--limit", "3", "--report", str(out)]) == 0
    rep = json.loads(out.read_text(encoding="utf-8"))
    assert rep["sessions"] == 3 and [r["reference"] for r in rep["replies"]] == [s[-1] for s in sessions[:3]]
    assert rep["replies"][1]["history"] == sessions[1][:-1]
    for k in ("reference", "sampling", "mmi"):
        assert rep["figures"][k] == pytest.approx(diversity([r[k] for r in rep["replies"]]))
    held.write_text('{"turns": ["only one"]}\n')
    assert main(["--model", str(models["forward"]), "--heldout", str(held)]) == 2
