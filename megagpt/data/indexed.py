"""Megatron's mmap indexed dataset format (``.bin`` + ``.idx``), byte for byte.

``.idx`` layout (little-endian)::

    b"MMIDIDX\\x00\\x00"          9-byte magic
    <Q version = 1
    <B dtype code               (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16)
    <Q sequence count  N
    <Q document-index length D  (number of documents + 1)
    int32[N] sequence sizes     (elements, not bytes)
    int64[N] sequence pointers  (byte offset of each sequence in .bin)
    int64[D] document index     (0, then the end sequence of each document)

``.bin`` holds the tokens of every sequence back to back. megagpt writes one sequence per
document with the EOD token at its end, as Megatron's preprocessing does with ``--append-eod``.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from megagpt.atomic import replace, replacing, temp_path

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
               6: np.float64, 7: np.float32, 8: np.uint16}
CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class ShardError(ValueError):
    """A shard is missing, truncated or not in Megatron's format; the message names the file."""


def token_dtype(vocab_size: int):
    """uint16 when every id fits (Megatron's rule: vocab < 65500), else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def paths(prefix: str | Path) -> tuple[Path, Path]:
    prefix = str(prefix)
    return Path(prefix + ".bin"), Path(prefix + ".idx")


class IndexedDatasetWriter:
    """Streams documents into ``prefix.bin`` / ``prefix.idx``.

    Both files are written under temporary names and renamed only by ``finalize()``, so a killed
    writer never leaves a shard that looks whole. Use as a context manager.
    """

    def __init__(self, prefix: str | Path, dtype=np.uint16):
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"dtype {self.dtype} has no Megatron dtype code")
        self.bin_path, self.idx_path = paths(prefix)
        self.bin_path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_bin = temp_path(self.bin_path)
        self._bin = open(self._tmp_bin, "wb")
        self._sizes: list[int] = []
        self._doc_idx: list[int] = [0]
        self.tokens = 0

    def add_document(self, tokens) -> None:
        """One document as one sequence (append the EOD token before calling)."""
        arr = np.asarray(tokens)
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids out of range for {self.dtype} in {self.bin_path}")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self._sizes.append(int(arr.size))
        self._doc_idx.append(len(self._sizes))
        self.tokens += int(arr.size)

    def finalize(self) -> None:
        self._bin.close()
        sizes = np.asarray(self._sizes, dtype=np.int32)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with replacing(self.idx_path) as tmp_idx:
            with open(tmp_idx, "wb") as f:
                f.write(MAGIC)
                f.write(struct.pack("<Q", VERSION))
                f.write(struct.pack("<B", CODE_OF[self.dtype]))
                f.write(struct.pack("<Q", len(sizes)))
                f.write(struct.pack("<Q", len(self._doc_idx)))
                f.write(sizes.tobytes(order="C"))
                f.write(pointers.tobytes(order="C"))
                f.write(np.asarray(self._doc_idx, dtype=np.int64).tobytes(order="C"))
            # .bin first: an .idx is only ever next to the .bin it describes
            replace(self._tmp_bin, self.bin_path)

    def abort(self) -> None:
        self._bin.close()
        self._tmp_bin.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


class IndexedDataset:
    """Read-only memory-mapped view of a Megatron shard; validated on open."""

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        bin_path, idx_path = paths(prefix)
        for p in (bin_path, idx_path):
            if not p.is_file():
                raise ShardError(f"{p}: shard file not found.")
        raw = np.memmap(idx_path, dtype=np.uint8, mode="r")
        head = 9 + 8 + 1 + 8 + 8
        if raw.size < head or bytes(raw[:9]) != MAGIC:
            raise ShardError(f"{idx_path}: not a Megatron mmap index (bad header).")
        version, = struct.unpack("<Q", bytes(raw[9:17]))
        code = int(raw[17])
        n_seq, n_doc = struct.unpack("<QQ", bytes(raw[18:34]))
        if version != VERSION or code not in DTYPE_CODES:
            raise ShardError(f"{idx_path}: unsupported version {version} or dtype code {code}.")
        expected = head + n_seq * 4 + n_seq * 8 + n_doc * 8
        if raw.size != expected:
            raise ShardError(f"{idx_path}: {raw.size} bytes, expected {expected} for {n_seq} "
                             f"sequences (truncated or corrupt).")
        self.dtype = np.dtype(DTYPE_CODES[code])
        self.sizes = np.frombuffer(raw, dtype=np.int32, count=n_seq, offset=head)
        self.pointers = np.frombuffer(raw, dtype=np.int64, count=n_seq, offset=head + 4 * n_seq)
        self.document_indices = np.frombuffer(raw, dtype=np.int64, count=n_doc,
                                              offset=head + 12 * n_seq)
        self.num_tokens = int(self.sizes.sum(dtype=np.int64))
        bin_bytes = bin_path.stat().st_size
        if bin_bytes != self.num_tokens * self.dtype.itemsize:
            raise ShardError(f"{bin_path}: {bin_bytes} bytes, but {idx_path} describes "
                             f"{self.num_tokens * self.dtype.itemsize} (truncated or mismatched shard).")
        self._bin = (np.memmap(bin_path, dtype=self.dtype, mode="r") if bin_bytes
                     else np.zeros(0, dtype=self.dtype))

    def __len__(self) -> int:
        return len(self.sizes)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens of sequence ``i`` from ``offset`` (elements), ``length`` of them (default: all)."""
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        n = int(self.sizes[i]) - offset if length is None else length
        return self._bin[start:start + n]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)


def mask_prefix(prefix: str | Path) -> str:
    """The loss-mask sidecar of shard ``<name>_text_document``: ``<name>_mask_document``."""
    p = str(prefix)
    if not p.endswith("_text_document"):
        raise ShardError(f"{p}: a shard trained with a loss mask must be named <name>_text_document, with its "
                         f"mask in <name>_mask_document beside it (as data_tools/build_dialogues.py writes them).")
    return p[:-len("_text_document")] + "_mask_document"


class MaskedShard(IndexedDataset):
    """A shard and its loss-mask sidecar (same document sizes; 1 on the tokens the model learns).
    ``get`` returns two rows, tokens and mask, as int64."""

    def __init__(self, prefix: str | Path):
        super().__init__(prefix)
        self.mask = IndexedDataset(mask_prefix(prefix))
        if not np.array_equal(self.mask.sizes, self.sizes):
            raise ShardError(f"{self.mask.prefix}.idx: its document sizes differ from {self.prefix}.idx "
                             f"(not this shard's mask).")

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        return np.stack([super().get(i, offset, length).astype(np.int64),
                         self.mask.get(i, offset, length).astype(np.int64)])


def open_shard(prefix: str | Path, loss_mask: bool = False) -> IndexedDataset:
    return MaskedShard(prefix) if loss_mask else IndexedDataset(prefix)
