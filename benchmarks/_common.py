"""Shared bits for the benchmarks: timing, median, and the model shape arguments."""
from __future__ import annotations

import time

import torch


def timed(fn, *, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def add_shape_args(ap, *, steps_flag: str, steps_default: int) -> None:
    """The GPT-2-small-like shape both benchmarks measure, and how many timed steps."""
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument(steps_flag, type=int, default=steps_default)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())


def same_weights_models(args, n_positions: int, **hf_config):
    """A Hugging Face ``GPT2LMHeadModel`` of the shape in ``args`` (random init) and a megagpt GPT
    holding the same weights: the pair every side-by-side benchmark compares."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from megagpt.model import GPT, load_full_state_dict
    from megagpt.model.convert import config_from_hf, full_from_hf_gpt2

    torch.manual_seed(0)
    hf_cfg = GPT2Config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                        n_positions=n_positions, vocab_size=args.vocab, **hf_config)
    hf = GPT2LMHeadModel(hf_cfg)
    ours = GPT(config_from_hf(hf_cfg))
    load_full_state_dict(ours, full_from_hf_gpt2(hf.state_dict()))
    return hf, ours


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """The share of positions where two sets of generated rows hold the same token."""
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    return same / sum(len(r) for r in a)


def random_token_shard(prefix, vocab: int, n_docs: int, doc_len: int) -> str:
    """A Megatron shard of ``n_docs`` documents of ``doc_len`` uniformly random ids in [1, vocab)."""
    import numpy as np

    from megagpt.data.indexed import IndexedDatasetWriter, token_dtype

    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, token_dtype(vocab)) as w:
        for _ in range(n_docs):
            w.add_document(rng.integers(1, vocab, doc_len))
    return str(prefix)
