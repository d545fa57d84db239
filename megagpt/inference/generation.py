"""Batched autoregressive generation over a key/value cache.

Two phases, as in gpt-fast: ``prefill`` runs the (left-padded) prompts in one pass and fills the
cache; then each step runs one token per row. Sampling: greedy (``temperature=0``), temperature,
top-k, top-p (nucleus), repetition penalty (CTRL's: a seen token's logit is divided by the
penalty when positive, multiplied when negative); a row stops at EOD or when its text contains a
stop string. Every rank of a tensor-parallel group runs this same loop on identical full-vocabulary
logits with an identically seeded generator, so all ranks pick the same tokens.

The context never exceeds ``model.n_positions``: when the longest row fills it, the window
slides by a quarter of ``n_positions`` and the cache is recomputed from the last three quarters
(one prefill). After a slide the model sees a shorter context than a full recompute sliding one
token at a time would, so cached and uncached outputs agree exactly only while everything fits.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from megagpt.model.cache import DecodeState


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    stop: Sequence[str] = ()  # stop strings (need a tokenizer to decode)
    stop_at_eod: bool = True
    num_return_sequences: int = 1
    seed: int = 0

    def validate(self) -> SamplingParams:
        checks = [("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1"),
                  ("temperature", self.temperature >= 0, ">= 0 (0 is greedy)"),
                  ("top_k", self.top_k >= 0, ">= 0 (0 turns it off)"),
                  ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                  ("repetition_penalty", self.repetition_penalty > 0, "> 0 (1 turns it off)"),
                  ("num_return_sequences", self.num_return_sequences >= 1, "an integer >= 1")]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"{name} must be {want}, got {getattr(self, name)!r}.")
        return self


@dataclass
class Completion:
    """One generated continuation: ``prompt_index`` into the prompts given, ``tokens`` the new
    tokens (EOD not included), ``text`` when a decoder was given (cut before a stop string),
    ``finish_reason`` 'eod', 'stop' or 'length'."""

    prompt_index: int
    tokens: list[int]
    text: str | None = None
    finish_reason: str = "length"
    scores: list = field(default_factory=list, repr=False)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens and the smallest set whose probability reaches
    ``top_p`` (nucleus); the rest get -inf. ``logits``: (B, V)."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # tokens entirely beyond the nucleus
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty on the tokens marked in ``seen`` (B, V) bool."""
    if penalty == 1.0:
        return logits
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def choose(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row (B,) from processed logits."""
    if p.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / p.temperature, p.top_k, p.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def continuation(decode: Callable[[list[int]], str], prompt: list[int], new: list[int], prompt_text: str) -> str:
    """The text of ``new`` after ``prompt`` (whose decoded text is ``prompt_text``): decoded together
    with the prompt (a tokenizer may drop the space that starts a piece at the start of a text),
    then the prompt's text cut off."""
    whole = decode(prompt + new)
    return whole[len(prompt_text):] if whole.startswith(prompt_text) else decode(new)


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """``text`` up to the first of the ``stop`` strings it contains; None when it contains none."""
    hits = [text.find(s) for s in stop if s in text]
    return text[:min(hits)] if hits else None


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(r) for r in rows)
    idx = torch.full((len(rows), P), pad_id, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        idx[i, P - len(r):] = torch.tensor(r, dtype=torch.long, device=device)
    pad = torch.tensor([P - len(r) for r in rows], dtype=torch.long, device=device)
    return idx, pad


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None, *,
             eod_id: int | None = None, decode: Callable[[list[int]], str] | None = None,
             use_cache: bool = True, keep_scores: bool = False, compile: bool = False) -> list[Completion]:
    """Continue each prompt (a list of token ids) ``num_return_sequences`` times.

    ``decode`` turns ids into text (needed for stop strings and ``Completion.text``);
    ``use_cache=False`` recomputes the whole window at every step (the reference the cache is
    tested and benchmarked against); ``keep_scores`` keeps each step's processed full-vocabulary
    logits in ``Completion.scores``; ``compile`` decodes with a compiled one-token step over a static
    cache (``megagpt.inference.compiled``; the same tokens, faster once compiled)."""
    p = (params or SamplingParams()).validate()
    if p.stop and decode is None:
        raise ValueError("stop strings need a tokenizer to decode the generated text.")
    if not prompts or any(len(r) == 0 for r in prompts):
        raise ValueError("every prompt needs at least one token (an empty prompt can start from EOD).")
    model.eval()
    cfg = model.cfg
    device = next(model.parameters()).device
    n_pos = cfg.n_positions
    keep = n_pos - max(1, n_pos // 4)  # tokens kept when the window slides
    rows = [list(map(int, r))[-keep:] if len(r) >= n_pos else list(map(int, r))
            for r in prompts for _ in range(p.num_return_sequences)]
    B = len(rows)
    tokens, pad = _left_pad(rows, 0, device)
    static = None
    if compile:
        if not use_cache:
            raise ValueError("compile=True decodes over a cache; it cannot be combined with use_cache=False.")
        from megagpt.inference.compiled import StaticDecoder

        static = StaticDecoder(model, B, min(n_pos, tokens.size(1) + p.max_new_tokens))
    generator = torch.Generator(device=device).manual_seed(p.seed)
    seen = None
    if p.repetition_penalty != 1.0:
        seen = torch.zeros(B, cfg.vocab_size, dtype=torch.bool, device=device)
        for i, r in enumerate(rows):
            seen[i, r] = True

    def forward_window(state_caches):
        """Prefill (with cache) or full recompute (without) over the current token window."""
        nonlocal tokens, pad
        if tokens.size(1) > n_pos - (1 if use_cache else 0):
            cut = tokens.size(1) - (keep if use_cache else n_pos)
            tokens, pad = tokens[:, cut:], (pad - cut).clamp(min=0)
        T = tokens.size(1)
        if static is not None:
            return static.prefill(tokens, pad), static
        if use_cache and state_caches is None:
            state = DecodeState.allocate(model, pad, min(n_pos, T + p.max_new_tokens))
        elif use_cache:  # the window slid: the same buffers (the cache was full: n_positions)
            state = DecodeState(cfg, pad, n_pos, state_caches)
        else:
            state = DecodeState(cfg, pad, T)
        logits = model.next_token_logits(tokens, state)
        state.advance(T)
        return logits, state

    prompt_text: dict[int, str] = {}

    def new_text(i: int) -> str:
        if i not in prompt_text:
            prompt_text[i] = decode(rows[i])
        return continuation(decode, rows[i], out[i], prompt_text[i])

    logits, state = forward_window(None)
    out: list[list[int]] = [[] for _ in range(B)]
    reason = ["length"] * B
    text: list[str | None] = [None] * B
    scores: list[list] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(p.max_new_tokens):
        if seen is not None:
            logits = penalize_repetition(logits, seen, p.repetition_penalty)
        nxt = choose(logits.float(), p, generator)
        nxt_list = nxt.tolist()
        for i in range(B):
            if done[i]:
                continue
            if keep_scores:
                scores[i].append(logits[i].float().cpu())
            tok = nxt_list[i]
            if eod_id is not None and p.stop_at_eod and tok == eod_id:
                done[i], reason[i] = True, "eod"
                continue
            out[i].append(tok)
            if p.stop:
                cut = cut_at_stop(new_text(i), p.stop)
                if cut is not None:
                    done[i], reason[i], text[i] = True, "stop", cut
        if all(done) or step == p.max_new_tokens - 1:
            break
        if seen is not None:
            seen[torch.arange(B, device=device), nxt] = True
        tokens = torch.cat([tokens, nxt.unsqueeze(1)], dim=1)
        if static is not None:
            logits = forward_window(None)[0] if static.full else static.step(nxt.unsqueeze(1))
        elif not use_cache or state.start == state.capacity:  # no cache, or the window is full
            logits, state = forward_window(state.caches if use_cache else None)
        else:
            logits = model.next_token_logits(nxt.unsqueeze(1), state)
            state.advance(1)
    results = []
    for i in range(B):
        if decode is not None and text[i] is None:
            text[i] = new_text(i)
        results.append(Completion(i // p.num_return_sequences, out[i], text[i], reason[i], scores[i]))
    return results
