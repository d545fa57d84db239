"""The compiled filter kernels (data_tools/_native.c) compute exactly what the numpy/Python code
computes: Gopher's word counts and n-gram rule, and MinHash's exact hash and shingles, on real
prose (Python's documentation), on it with planted repetitions and Unicode mutations, on random
Unicode, and on texts at the edges (no words, punctuation only, lone surrogates). The equivalence
tests in test_filter_equivalence.py run the filters through both paths too."""
import os
import random
import shutil
import string

import numpy as np
import pytest
import xxhash

from data_tools import dedup, native
from data_tools.document import Document, Stats
from data_tools.filters import GopherQuality, GopherQualityConfig, GopherRepetition, GopherRepetitionConfig
from tests.data_tools.test_filter_equivalence import ODD, mutated, planted, real_documents

kernels = native.kernels


def test_kernels_are_built_where_a_compiler_is():
    """A silent build failure would leave only the Python path tested."""
    if os.environ.get("MEGAGPT_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("MEGAGPT_PURE_PYTHON is set")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the install runs the numpy/Python code")
    assert kernels is not None, "data_tools/_native.c was not built: run `pip install -e .`"
    assert native.name().startswith("compiled")


needs_kernels = pytest.mark.skipif(kernels is None, reason="compiled kernels not built")


def corpus() -> list[str]:
    rng = random.Random(7)
    docs = real_documents()
    alphabet = string.printable + "\x1c\x1d\x1e\x1f\x0b\x0c\x85\u2028\u3000\u00a0" \
        "\u2018\u2019\u201c\u201d\u2026\u2014\u00e9\u00c9\u0130\u03a3\u212a\u4e2d\U0001f600#-"
    odd = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 600))) for _ in range(200)]
    words = ["the", "The", "THE", "\u201cthe\u201d", "'and'", "to.", "\u212aey", "w\u0130th", "\u03a3\u039f\u03a3",
             "...", "#", "--", "\u2026", "x", "\u00e9t\u00e9", "12", "of,", "have!", "with\u2019"]
    small = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 80))) for _ in range(200)]
    edges = ["", " ", "\n\n", "...", "!!! ???", "one", "a b", "\u00e9", "\u201c\u201d", "x " * 3]
    big = " ".join(docs[:400])  # ~58k words: tables past L2, repeats far apart
    big = [big, big[: len(big) // 2] + "\n\n" + big[: len(big) // 3]]
    return docs + planted(docs, rng) + mutated(docs, rng) + [d + " " + o for d, o in zip(docs, ODD * 40)] \
        + odd + small + edges + big


@needs_kernels
def test_xxh64_equals_the_xxhash_package():
    rng = np.random.default_rng(0)
    for n in list(range(0, 80)) + [255, 256, 1000, 4097]:
        b = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert kernels.xxh64(b) == xxhash.xxh64_intdigest(b), n


@needs_kernels
def test_gopher_word_counts_equal_the_python_path(monkeypatch):
    cfgs = [GopherQualityConfig(), GopherQualityConfig(stop_words=("the", "\u00e9t\u00e9", "k", "\u03c3\u03bf\u03c3")),
            GopherQualityConfig(stop_words=("the", "and", "the")),  # a repeat counts once
            GopherQualityConfig(stop_words=("of the", "and"))]  # whitespace: the Python path
    texts = corpus()
    for cfg in cfgs:
        f = GopherQuality(cfg)
        assert bool(f._native_stop) == (cfg.stop_words[0] != "of the")
        got = [f.word_counts(Document(t, "d")) for t in texts]
        with monkeypatch.context() as m:
            m.setattr(native, "kernels", None)
            want = [f.word_counts(Document(t, "d")) for t in texts]
        assert got == want
    assert sum(w[5] >= 2 for w in want) > 100 and sum(w[2] > 0 for w in want) > 100  # stop and symbol words seen


@needs_kernels
def test_gopher_ngram_rules_equal_the_python_path(monkeypatch):
    cfgs = [GopherRepetitionConfig(),
            # a top rule above the duplicate rules, rules past the text's length, a 1-gram rule
            GopherRepetitionConfig(top_ngram_char_frac={2: 0.3, 7: 0.05},
                                   dup_ngram_char_frac={1: 0.9, 5: 0.3, 40: 0.01}),
            GopherRepetitionConfig(top_ngram_char_frac={}, dup_ngram_char_frac={3: 0.5, 4: 0.4}),
            GopherRepetitionConfig(top_ngram_char_frac={2: 0.2, 70: 0.1})]  # k > 64: the Python path
    texts = corpus()
    reasons = set()
    for cfg in cfgs:
        f = GopherRepetition(cfg)
        if 70 not in cfg.top_ngram_char_frac:
            got = [kernels.gopher_ngrams(t, *f._rules()) for t in texts]
            want = [f._ngram_rules(t.split()) if t.split() else None for t in texts]
            assert got == want
            reasons |= set(want)
        with monkeypatch.context() as m:  # and through check(), both paths
            m.setattr(native, "kernels", None)
            want = [f.check(Document(t, "d")) for t in texts]
        assert [f.check(Document(t, "d")) for t in texts] == want
    assert {None, "top_2gram", "top_7gram", "dup_5gram", "dup_40gram"} <= reasons, reasons


@needs_kernels
def test_minhash_input_equals_the_python_path(monkeypatch):
    texts = corpus() + ["caf\ud800e and more words", "\ud800", "A.B,C;D " * 9]
    raised = 0
    for t in texts:
        with monkeypatch.context() as m:
            m.setattr(native, "kernels", None)
            try:
                want = dedup.minhash_input(t, 5)
            except UnicodeEncodeError:  # a lone surrogate: both paths raise as str.encode does
                with pytest.raises(UnicodeEncodeError):
                    m.undo()
                    dedup.minhash_input(t, 5)
                raised += 1
                continue
            want_sorted = dedup.shingle_hashes(t, 3)
        got = dedup.minhash_input(t, 5)
        assert got[0] == want[0] and np.array_equal(got[1], want[1]), t[:100]
        assert np.array_equal(dedup.shingle_hashes(t, 3), want_sorted)
    assert raised == 2
    # a text without words hashes itself, as before
    assert dedup.minhash_input("...", 5)[1].tolist() == [xxhash.xxh64_intdigest(b"...")]


@needs_kernels
def test_signature_table_and_dedup_decisions_unchanged(monkeypatch):
    texts = real_documents()[:300]
    texts += [t.replace(" the ", " a ", 2) for t in texts[:100]]  # near-duplicates
    cfg = dedup.DedupConfig()
    step = dedup.SignatureStep(cfg)
    list(step((Document(t, str(i)) for i, t in enumerate(texts)), Stats()))
    got = dedup.dedup_texts(texts, cfg)
    with monkeypatch.context() as m:
        m.setattr(native, "kernels", None)
        ref = dedup.SignatureStep(cfg)
        list(ref((Document(t, str(i)) for i, t in enumerate(texts)), Stats()))
        want = dedup.dedup_texts(texts, cfg)
    assert np.array_equal(step.table, ref.table)
    assert sorted(got["removed"]) == sorted(want["removed"]) and len(want["removed"]) >= 70


@needs_kernels
def test_duplicate_counts_and_whitespace_equal_the_python_path(monkeypatch):
    from data_tools.clean import CleanConfig, clean_text

    rng = random.Random(8)
    blanks = ["\n", "\n\n", "\n\n\n", "\r\n", "\r", "\r\r\n", " \n ", "\t", "\u3000", "\u00a0 ", "\x01", " \x0b ",
              "\u2028", "\x85", "\u200b", "\n \n", "  "]
    texts = corpus()
    texts += ["".join(rng.choice(blanks + ["a", "b", "x y", "\u00e9"]) for _ in range(rng.randint(0, 60)))
              for _ in range(500)]
    f = GopherRepetition()
    ws = CleanConfig(fix_mojibake=False, nfc=False)
    got = [(f.duplicate_counts(t), clean_text(t, ws)) for t in texts]
    with monkeypatch.context() as m:
        m.setattr(native, "kernels", None)
        want = [(f.duplicate_counts(t), clean_text(t, ws)) for t in texts]
    assert got == want
    assert sum(w[0][1] > 0 for w in want) > 100 and sum(w[0][4] > 0 for w in want) > 100  # repeats seen
    assert sum(w[1] != t for w, t in zip(want, texts)) > 500  # whitespace changed
