"""SentencePiece BPE tokenizer trained on a sample of the cleaned text.

Byte fallback makes every input encodable (no <unk> in shards); character coverage 0.9995 keeps
the common CJK characters as pieces instead of bytes. Reserved ids: 0 <pad>, 1 <unk>, 2 EOD
(``<|endoftext|>``, appended after every document), then the control symbols later stages need:
fine-tuning start / delimiter / extract (GPT-1) and the dialog turn separator (DialoGPT).
Control symbols are never produced from raw text, so a document cannot inject them.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from megagpt.atomic import replace

EOD = "<|endoftext|>"
SPECIAL_TOKENS = ("<|ft_start|>", "<|ft_delim|>", "<|ft_extract|>", "<|turn|>")


@dataclass
class TokenizerConfig:
    vocab_size: int = 50_257
    sample_bytes: int = 200_000_000     # training text is capped: memory stays bounded
    character_coverage: float = 0.9995
    max_sentence_length: int = 16_384
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS
    seed: int = 1
    threads: int = 1


def write_sample(texts: Iterable[str], path: Path, sample_bytes: int, stride: int = 1) -> int:
    """Every ``stride``-th document, a line per sentence, until ``sample_bytes``; returns bytes."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            if i % stride:
                continue
            for line in text.split("\n"):
                line = line.strip()
                if line:
                    f.write(line + "\n")
                    n += len(line.encode()) + 1
            if n >= sample_bytes:
                break
    return n


def train(texts: Iterable[str], model_path, cfg: TokenizerConfig = TokenizerConfig(),
          total_bytes: int | None = None) -> Path:
    """Trains ``model_path`` (``.model`` plus ``.vocab`` and ``.json`` with the special ids); the
    files appear under their final names only when whole."""
    import sentencepiece as spm
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    # a fixed temporary name: the trainer records it in the model, which must not vary by run
    tmp_prefix = model_path.with_name(model_path.stem + ".tmp")
    sample = Path(str(tmp_prefix) + ".sample.txt")
    stride = max(1, (total_bytes or 0) // max(cfg.sample_bytes, 1))
    try:
        write_sample(texts, sample, cfg.sample_bytes, stride)
        try:
            _train(spm, sample, tmp_prefix, cfg)
        except RuntimeError as e:  # e.g. "Vocabulary size too high (2000). Please set it to a value <= 1564."
            raise ValueError(f"sentencepiece training failed: {str(e).split('] ')[-1].strip()} "
                             f"Change --vocab-size or train on more text.") from None
    finally:
        sample.unlink(missing_ok=True)
    replace(str(tmp_prefix) + ".vocab", model_path.with_suffix(".vocab"))
    meta = special_ids(str(tmp_prefix) + ".model") | {"config": asdict(cfg)}
    model_path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    replace(str(tmp_prefix) + ".model", model_path)  # last: a model on disk has its .vocab and .json
    return model_path


def _train(spm, sample: Path, tmp_prefix: Path, cfg: TokenizerConfig) -> None:
    spm.SentencePieceTrainer.train(
        input=str(sample), model_prefix=str(tmp_prefix), model_type="bpe",
        vocab_size=cfg.vocab_size, byte_fallback=True, character_coverage=cfg.character_coverage,
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity",  # text is NFC already; keep decoding exact
        pad_id=0, unk_id=1, eos_id=2, bos_id=-1, eos_piece=EOD,
        control_symbols=list(cfg.special_tokens), max_sentence_length=cfg.max_sentence_length,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=cfg.threads,
        seed_sentencepiece_size=1_000_000, hard_vocab_limit=True, minloglevel=2)


def special_ids(model_path) -> dict:
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    ids = {p: sp.piece_to_id(p) for p in (EOD,) + SPECIAL_TOKENS}
    return {"vocab_size": sp.get_piece_size(), "eod_id": sp.eos_id(), "pad_id": sp.pad_id(),
            "unk_id": sp.unk_id(), "special_ids": ids}
