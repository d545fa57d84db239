"""The sentencepiece tokenizer that made the shards, with the ids generation needs."""
from __future__ import annotations

from pathlib import Path

EOD = "<|endoftext|>"


def tokenizer_file(path: str | Path) -> Path:
    """``path`` as a Path, or a FileNotFoundError naming it: the one check every entry point uses."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such tokenizer file (a sentencepiece .model).")
    return path


class Tokenizer:
    """``encode(text) -> ids`` and ``decode(ids) -> text`` (control tokens left out of the text)."""

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        self.path = tokenizer_file(path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{self.path}: not a sentencepiece model ({str(e).splitlines()[0]}).") from None
        self.vocab_size = self.sp.get_piece_size()
        eod = self.sp.piece_to_id(EOD)
        self.eod_id = eod if self.sp.id_to_piece(eod) == EOD else self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)
