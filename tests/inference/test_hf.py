"""Hugging Face directories: transformers alone loads what megagpt writes (same token ids as
sentencepiece on real English and Chinese sentences, emoji and rare characters; logits within
1e-4; same greedy continuation), the directory reads back unchanged, GPT-1 and GPT-3 banded
models are refused, and tampered files are refused without running anything."""
import glob
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from tamper import Payload
from megagpt.config import model_config
from megagpt.inference import WeightsError, load
from megagpt.inference.generation import SamplingParams, generate
from megagpt.inference.hf import read_hf_dir, write_hf_dir
from megagpt.model import GPT, full_state_dict

EXTRA = ["Emoji 😀 and 🚀 rocket!", "  two  spaces\nnewline\ttab 12345 ", "罕见字 龘 𠀀 ok",
         "a literal <|endoftext|> stays text", " leading space", "trailing space ", "3.14159 + 2,718"]


def _sentences():
    """Real dialogue lines in English and Chinese from the chatterbot-corpus package."""
    import chatterbot_corpus

    base = Path(chatterbot_corpus.__file__).parent / "data"
    out = []
    for lang in ("english", "chinese"):
        for f in sorted(glob.glob(str(base / lang / "*.yml"))):
            for conv in (yaml.safe_load(open(f, encoding="utf-8")) or {}).get("conversations", []):
                out += [t for t in conv if isinstance(t, str) and t.strip()]
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from data_tools.tokenizer import TokenizerConfig, train

    tmp = tmp_path_factory.mktemp("hf")
    sents = _sentences()
    tok = train(["\n".join(sents)], tmp / "tok.model", TokenizerConfig(vocab_size=1500, sample_bytes=10**7))
    torch.manual_seed(0)
    cfg = model_config("tiny", vocab_size=1500, n_positions=64)
    model = GPT(cfg).eval()
    path = write_hf_dir(full_state_dict(model), cfg, tmp / "hf", tokenizer_model=tok)
    return path, model, tok, sents


def test_transformers_alone_reads_the_directory(hf_dir):
    import sentencepiece as spm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, model, tok_path, sents = hf_dir
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer.model"} <= set(os.listdir(path))
    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    tok = AutoTokenizer.from_pretrained(path)
    chinese = [s for s in sents if any("\u4e00" <= c <= "\u9fff" for c in s)]
    assert len(sents) >= 200 and len(chinese) >= 100
    for s in sents + EXTRA:
        ids = sp.encode(s)
        assert tok(s)["input_ids"] == ids, s
        assert tok.decode(ids) == sp.decode(ids), s
    assert tok.eos_token_id == tok.pad_token_id == sp.piece_to_id("<|endoftext|>") == 2
    for piece in ("<|ft_start|>", "<|ft_delim|>", "<|ft_extract|>", "<|turn|>"):
        assert tok.convert_tokens_to_ids(piece) == sp.piece_to_id(piece)
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    batch = [sp.encode(s)[:60] for s in sents[:50] + chinese[:50]]
    with torch.no_grad():
        for ids in batch:
            x = torch.tensor([ids])
            assert (hf(x).logits - model.gathered_logits(x)).abs().max().item() < 1e-4
        prompt = torch.tensor([sp.encode(chinese[0])])
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                             do_sample=False, eos_token_id=None, pad_token_id=2)[0, prompt.size(1):].tolist()
    ours = generate(model, prompt.tolist(), SamplingParams(max_new_tokens=12, temperature=0, stop_at_eod=False))
    assert ours[0].tokens == theirs


def test_read_back_and_load(hf_dir):
    path, model, tok_path, _ = hf_dir
    cfg, full, tok = read_hf_dir(path)
    assert cfg == model.cfg and tok == path / "tokenizer.model"
    ref = full_state_dict(model)
    assert set(full) == set(ref) and all(torch.equal(full[k], ref[k]) for k in ref)
    loaded, tokenizer = load(path)
    assert tokenizer.eod_id == 2 and tokenizer.encode("你好") == tokenizer.sp.encode("你好")


def test_gpt1_and_banded_models_are_refused(tmp_path):
    for kw, why in [(dict(ln_position="post"), "a GPT-1 model \\(model.ln_position='post'\\) cannot be"),
                    (dict(attention="alternating"), "banded attention \\(model.attention='alternating'\\)")]:
        cfg = model_config("tiny", **kw)
        with pytest.raises(ValueError, match=why):
            write_hf_dir(full_state_dict(GPT(cfg)), cfg, tmp_path / "x")
        assert not (tmp_path / "x").exists()


def test_tampered_directories_are_refused(hf_dir, tmp_path):
    import shutil

    path = hf_dir[0]
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    (bad / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(WeightsError, match="model.safetensors: not a valid safetensors file"):
        load(bad)
    (bad / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": Payload(marker)}, bad / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="pytorch_model.bin: not loadable without unpickling code"):
        load(bad)
    assert not marker.exists()
    data = (path / "model.safetensors").read_bytes()
    (bad / "pytorch_model.bin").unlink()
    (bad / "model.safetensors").write_bytes(data[:-500])
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        load(bad)
    shutil.copyfile(path / "model.safetensors", bad / "model.safetensors")
    raw = json.loads((bad / "config.json").read_text())
    raw["n_embd"] = 128
    (bad / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match=r"the tensors do not match the model config: embed.wte.weight"):
        load(bad)


def test_export_cli_both_ways(hf_dir, tmp_path):
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    path, model, _, _ = hf_dir
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))

    def export(*args):
        r = subprocess.run([sys.executable, str(root / "megagpt" / "export.py"), *map(str, args)], cwd=root,
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    export("--from-hf", path, "--out", tmp_path / "m.safetensors")
    loaded, tok = load(tmp_path / "m.safetensors")
    assert tok is not None and tok.eod_id == 2  # the directory's tokenizer.model is recorded
    ref = full_state_dict(model)
    assert all(torch.equal(full_state_dict(loaded)[k], ref[k]) for k in ref)
    export("--model", tmp_path / "m.safetensors", "--hf-dir", tmp_path / "again")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "again").eval()
    x = torch.randint(0, 1500, (2, 30))
    with torch.no_grad():
        assert (hf(x).logits - model.gathered_logits(x)).abs().max().item() < 1e-4
