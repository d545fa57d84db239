"""Hugging Face directories: transformers alone loads what megagpt writes (same token ids as
sentencepiece on real English and Chinese sentences, emoji and rare characters; logits within
1e-4; same greedy continuation), the directory (also sharded) reads back unchanged, GPT-1 and
GPT-3 banded models are refused, and tampered or mismatched files are refused in one sentence
without running anything."""
import glob
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from megagpt.config import model_config
from megagpt.formats.hf import read_hf_dir, write_hf_dir
from megagpt.inference import WeightsError, load
from megagpt.inference.generation import SamplingParams, generate
from megagpt.model import GPT, full_state_dict
from tests.helpers.tamper import Payload

# Beyond the corpus: emoji and characters the 1500-piece vocabulary lacks (byte fallback), digits,
# runs of spaces, newlines, tabs, control and zero-width characters, literal special-token strings.
EXTRA = ["Emoji 😀 and 🚀 rocket!", "  two  spaces\nnewline\ttab 12345 ", "罕见字 龘 𠀀 ok",
         "a literal <|endoftext|> stays text", "<|ft_start|> <|turn|><pad><unk>", " leading space",
         "trailing space ", "3.14159 + 2,718", "", " ", "   ", "\n", "\n\nx", "\r\n windows",
         "👨‍👩‍👧 🇫🇷", "한국어 텍스트", "日本語のテキスト", "é vs e\u0301", "\x00nul", "\ufeffbom",
         "\u200b zero width", "ｆｕｌｌｗｉｄｔｈ １２３", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "▁ lower one eighth block ▁▁", "x" * 300]


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


def _greedy(model, ids, n):
    """Reference greedy decoding: argmax of a full recompute of the logits at every step."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model.gathered_logits(torch.tensor([ids]))[0, -1].argmax()))
    return ids[-n:]


def test_transformers_alone_reads_the_directory(hf_dir):
    import sentencepiece as spm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, model, tok_path, sents = hf_dir
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "tokenizer.model"} <= set(os.listdir(path))
    assert not [p for p in os.listdir(path.parent) if ".tmp" in p]  # the temporary directory is gone
    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    tok = AutoTokenizer.from_pretrained(path)
    chinese = [s for s in sents if any("\u4e00" <= c <= "\u9fff" for c in s)]
    assert len(sents) >= 200 and len(chinese) >= 100
    for s in sents + EXTRA:
        ids = sp.encode(s)
        assert tok(s)["input_ids"] == ids, s  # no BOS / EOS added either
        assert tok.decode(ids) == sp.decode(ids), s
        assert sp.decode(ids) == s or "▁" in s, s  # U+2581 is sentencepiece's space symbol
    pieces = {sp.id_to_piece(i) for s in EXTRA for i in sp.encode(s)}
    assert {"<0xF0>", "<0xED>"} <= pieces  # byte fallback was exercised (emoji, Hangul 한)
    # a literal special-token string is text, as in sentencepiece; the ids can still be asked for
    assert 2 not in tok("x <|endoftext|>")["input_ids"] and 2 not in sp.encode("x <|endoftext|>")
    assert tok("<|turn|>", split_special_tokens=False)["input_ids"][-1] == sp.piece_to_id("<|turn|>")
    assert tok.decode(sp.encode("hi") + [2], skip_special_tokens=True) == sp.decode(sp.encode("hi") + [2])
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == sp.piece_to_id("<|endoftext|>") == 2
    assert tok.unk_token_id == sp.unk_id() == 1
    for piece in ("<|ft_start|>", "<|ft_delim|>", "<|ft_extract|>", "<|turn|>"):
        assert tok.convert_tokens_to_ids(piece) == sp.piece_to_id(piece)
        assert piece in tok.all_special_tokens
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == gen["pad_token_id"] == gen["bos_token_id"] == 2
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied, as in megagpt
    batch = [sp.encode(s)[:60] for s in sents[:50] + chinese[:50] + EXTRA[:3]]
    with torch.no_grad():
        for ids in batch:
            x = torch.tensor([ids])
            assert (hf(x).logits - model.gathered_logits(x)).abs().max().item() < 1e-4
        prompt = torch.tensor([sp.encode(chinese[0])])
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                             do_sample=False, eos_token_id=None, pad_token_id=2)[0, prompt.size(1):].tolist()
    assert theirs == _greedy(model, prompt[0].tolist(), 12)
    ours = generate(model, prompt.tolist(), SamplingParams(max_new_tokens=12, temperature=0, stop_at_eod=False))
    assert ours[0].tokens == theirs


def test_read_back_and_load(hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    path, model, tok_path, _ = hf_dir
    cfg, full, tok = read_hf_dir(path)
    assert cfg == model.cfg and tok == path / "tokenizer.model"
    ref = full_state_dict(model)
    assert set(full) == set(ref) and all(torch.equal(full[k], ref[k]) for k in ref)
    loaded, tokenizer = load(path)
    assert tokenizer.eod_id == 2 and tokenizer.encode("你好") == tokenizer.sp.encode("你好")
    # a sharded directory (index + two files) with an explicit tied head and no tokenizer reads the same
    state = load_file(path / "model.safetensors")
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    keys = sorted(state)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_bytes((path / "config.json").read_bytes())
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        save_file({k: state[k] for k in part}, sharded / f"model-{i}.safetensors")
        weight_map |= {k: f"model-{i}.safetensors" for k in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cfg2, full2, tok2 = read_hf_dir(sharded)
    assert cfg2 == cfg and tok2 is None and all(torch.equal(full2[k], ref[k]) for k in ref)


def test_gpt1_and_banded_models_are_refused(tmp_path):
    for kw, why in [(dict(ln_position="post"), "a GPT-1 model \\(model.ln_position='post'\\) cannot be"),
                    (dict(attention="alternating"), "banded attention \\(model.attention='alternating'\\)")]:
        cfg = model_config("tiny", **kw)
        with pytest.raises(ValueError, match=why):
            write_hf_dir(full_state_dict(GPT(cfg)), cfg, tmp_path / "x")
        assert not (tmp_path / "x").exists()


def test_tampered_directories_are_refused(hf_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    path = hf_dir[0]
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    weights, config = bad / "model.safetensors", bad / "config.json"
    raw = json.loads(config.read_text())

    def refused(match):
        with pytest.raises(WeightsError, match=match) as e:
            read_hf_dir(bad)
        assert "\n" not in str(e.value)

    weights.write_bytes(pickle.dumps(Payload(marker)))  # a pickle renamed to .safetensors
    refused("model.safetensors: not a valid safetensors file")
    with pytest.raises(WeightsError, match="model.safetensors: not a valid safetensors file"):
        load(bad)
    weights.unlink()
    torch.save({"transformer.wte.weight": Payload(marker)}, bad / "pytorch_model.bin")
    refused("pytorch_model.bin: not loadable without unpickling code")
    assert not marker.exists()  # neither payload ran
    (bad / "pytorch_model.bin").unlink()
    refused("no model.safetensors")
    data = (path / "model.safetensors").read_bytes()
    weights.write_bytes(data[:-500])  # truncated
    refused("model.safetensors: not a valid safetensors file")
    state = load_file(path / "model.safetensors")
    save_file({k: v for k, v in state.items() if k != "transformer.h.1.mlp.c_fc.bias"}, weights)
    refused("model.safetensors: tensor transformer.h.1.mlp.c_fc.bias is missing")
    save_file(state | {"lm_head.weight": torch.zeros_like(state["transformer.wte.weight"])}, weights)
    refused("model.safetensors: lm_head.weight differs from transformer.wte.weight")
    shutil.copyfile(path / "model.safetensors", weights)
    config.write_text(json.dumps(raw | {"n_embd": 128}))
    refused(r"model.safetensors: tensor transformer.wte.weight has shape \(1500, 64\) but config.json "
            r"\(n_layer=2, n_embd=128")
    config.write_text(json.dumps(raw | {"model_type": "llama"}))
    refused("config.json: model_type is 'llama'; megagpt reads GPT-2 models")
    config.write_text(json.dumps(raw | {"scale_attn_by_inverse_layer_idx": True}))
    refused("config.json: scale_attn_by_inverse_layer_idx=True changes GPT-2's attention")
    config.unlink()
    refused("config.json: missing")
    assert not marker.exists()


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
