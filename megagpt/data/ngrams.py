"""Word and n-gram hashing shared by the offline data tools (``data_tools.dedup``,
``data_tools.decontam``) and evaluation's contamination check (``megagpt.eval.contamination``):
one definition, so a 13-gram hashes alike on both sides."""
from __future__ import annotations

import string

import numpy as np
import xxhash

MIX = np.uint64(0x9E3779B97F4A7C15)
# punctuation becomes a word break; str.translate + split is ~2.5x faster than re.findall(r"\w+")
WIDE_PUNCT = ("\u2018\u2019\u201c\u201d\u2026\u2013\u2014\u00ab\u00bb\u00bf\u00a1\u3001\u3002\uff0c\uff01"
               "\uff1f\uff1a\uff1b")
PUNCT = str.maketrans({c: " " for c in string.punctuation + WIDE_PUNCT})
_WORD_HASH: dict[str, int] = {}   # Zipf: most words seen before; a dict hit is ~4x cheaper than xxh64
_WORD_HASH_MAX = 1 << 20


def word_hashes(ws: list[str]) -> np.ndarray:
    out = list(map(_WORD_HASH.get, ws))
    if None in out:
        if len(_WORD_HASH) > _WORD_HASH_MAX:
            _WORD_HASH.clear()  # bounded memory
        for i, w in enumerate(ws):
            if out[i] is None:
                out[i] = _WORD_HASH[w] = xxhash.xxh64_intdigest(w.encode())
    return np.array(out, dtype=np.uint64)


def words(text: str) -> list[str]:
    # the dedup tokenisation (punctuation -> space, lowercase, split), whose word hashes are cached
    return text.translate(PUNCT).lower().split()


def ngram_hashes(words: list[str], n: int) -> np.ndarray:
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    wh = word_hashes(words)
    m = len(wh) - n + 1
    h = wh[:m].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            h = h * MIX + wh[j:j + m]
    return h
