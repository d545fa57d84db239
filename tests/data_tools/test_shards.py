"""Tokenizer (real sentencepiece training) and Megatron shards checked byte by byte."""
import json
import struct

import numpy as np
import sentencepiece as spm

from data_tools.shards import merge, tokenize_file
from data_tools.tokenizer import EOD, SPECIAL_TOKENS, TokenizerConfig, train
from megagpt.data.indexed import IndexedDataset

ZH = ["今天天气很好，我们去公园散步。", "他在图书馆里读了一本关于历史的书。", "这个城市有很多美丽的花园和河流。"]


def corpus(rng, make_doc, n=60):
    return [make_doc(rng) + "\n" + ZH[i % 3] for i in range(n)]


def test_tokenizer_specials_and_coverage(tmp_path, rng, make_doc):
    model = train(iter(corpus(rng, make_doc)), tmp_path / "tok.model", TokenizerConfig(vocab_size=600))
    meta = json.loads((tmp_path / "tok.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == 600 and sp.id_to_piece(2) == EOD and meta["eod_id"] == 2
    assert [sp.id_to_piece(i) for i in range(3, 3 + len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    assert all(sp.is_control(i) for i in range(3, 3 + len(SPECIAL_TOKENS)))
    # Chinese characters of the sample are pieces, not byte fallbacks; unseen text still encodes
    ids = sp.encode(ZH[0])
    assert not any(sp.is_byte(i) for i in ids) and sp.decode(ids) == ZH[0]
    odd = "emoji \U0001F600 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u0915"
    assert sp.decode(sp.encode(odd)) == odd and sp.unk_id() not in sp.encode(odd)
    # a document cannot inject a control token
    assert 3 not in sp.encode("<|ft_start|>")


def test_idx_bytes_megatron_layout(tmp_path, rng, make_doc, jsonl_writer):
    texts = corpus(rng, make_doc, 40)
    model = train(iter(texts), tmp_path / "tok.model", TokenizerConfig(vocab_size=500))
    sp = spm.SentencePieceProcessor(model_file=str(model))
    jsonl_writer(tmp_path / "a.jsonl", [{"text": t} for t in texts[:25]])
    jsonl_writer(tmp_path / "b.jsonl", [{"text": t} for t in texts[25:]])
    ra = tokenize_file(tmp_path / "a.jsonl", model, tmp_path / "a_text_document", progress=False)
    rb = tokenize_file(tmp_path / "b.jsonl", model, tmp_path / "b_text_document", progress=False)
    merge([tmp_path / "a_text_document", tmp_path / "b_text_document"], tmp_path / "all_text_document")
    expect = [sp.encode(t) + [2] for t in texts]
    n = len(expect)
    raw = (tmp_path / "all_text_document.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack("<Q", raw[9:17]) == (1,)
    assert raw[17] == 8                                   # dtype code 8 = uint16 (vocab < 65500)
    assert struct.unpack("<QQ", raw[18:34]) == (n, n + 1)
    sizes = np.frombuffer(raw, np.int32, n, 34)
    pointers = np.frombuffer(raw, np.int64, n, 34 + 4 * n)
    doc_idx = np.frombuffer(raw, np.int64, n + 1, 34 + 12 * n)
    assert len(raw) == 34 + 12 * n + 8 * (n + 1)
    assert sizes.tolist() == [len(e) for e in expect]
    assert pointers.tolist() == (np.cumsum([0] + [2 * len(e) for e in expect[:-1]])).tolist()
    assert doc_idx.tolist() == list(range(n + 1))
    binary = (tmp_path / "all_text_document.bin").read_bytes()
    assert binary == np.asarray(sum(expect, []), dtype="<u2").tobytes()   # EOD after each document
    ds = IndexedDataset(tmp_path / "all_text_document")
    assert [ds[i].tolist() for i in range(n)] == expect
    assert ra["tokens"] + rb["tokens"] == ds.num_tokens
    # a finished shard is not rewritten on resume
    assert tokenize_file(tmp_path / "a.jsonl", model, tmp_path / "a_text_document", progress=False)["skipped"]


def test_train_tokenizer_cli(tmp_path, rng, make_doc, jsonl_writer):
    import subprocess
    import sys
    jsonl_writer(tmp_path / "clean.jsonl", [{"text": t} for t in corpus(rng, make_doc, 30)])
    r = subprocess.run([sys.executable, "data_tools/train_tokenizer.py", "--vocab-size", "500",
                        "--model", str(tmp_path / "t.model"), str(tmp_path / "clean.jsonl")],
                       capture_output=True, text=True, check=True)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {EOD: 2, **{t: 3 + i for i, t in enumerate(SPECIAL_TOKENS)}}
    assert spm.SentencePieceProcessor(model_file=str(tmp_path / "t.model")).get_piece_size() == 500
