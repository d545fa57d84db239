"""DialoGPT's maximum-mutual-information reranking (Zhang et al. 2020, section 4).

A dialogue is its turns joined by EOD. The forward model samples N candidate responses to the
history in one batched, cached ``generate`` call (``num_return_sequences=N``). The backward model,
trained on the same sessions written back to front, then scores each candidate by
log P(history | candidate): the candidate and its EOD are the context, and the history turns in
reverse order, each followed by EOD, are the continuation. The reply is the candidate with the
highest ``backward + weight * forward`` log-probability. With weight 0 this is DialoGPT's rule,
which favours responses the history can be recovered from over bland ones.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from megagpt.inference.generation import SamplingParams, generate
from megagpt.inference.scoring import loglikelihood


@dataclass
class Candidate:
    text: str
    tokens: list[int]
    forward: float      # log P(candidate EOD | history)
    backward: float     # log P(reversed history | candidate EOD); nan without a backward model
    score: float


def encode_turns(tok, turns: list[str]) -> list[int]:
    ids = []
    for t in turns:
        ids += tok.encode(t) + [tok.eod_id]
    return ids


def history_ids(tok, turns: list[str], budget: int) -> list[int]:
    """The newest turns that fit ``budget`` tokens, joined by EOD (whole turns only, at least the
    last one, cut from its start if it alone is too long)."""
    kept: list[int] = []
    for t in reversed(turns):
        piece = tok.encode(t) + [tok.eod_id]
        if kept and len(piece) + len(kept) > budget:
            break
        kept = piece + kept
    return kept[-budget:]


def rerank(forward, backward, tok, turns: list[str], candidates: list[list[int]], *, weight: float = 0.0,
           batch_size: int = 16) -> list[Candidate]:
    """Score token-id candidates (without EOD) for the history ``turns``."""
    n_pos = forward.cfg.n_positions
    ctx = history_ids(tok, turns, n_pos - 1)
    fwd = loglikelihood(forward, [(ctx, c + [tok.eod_id]) for c in candidates], batch_size=batch_size)
    if backward is not None:
        reverse = encode_turns(tok, list(reversed(turns)))
        # the candidate stays whole; the reversed history is cut at its far (oldest) end to fit
        bwd = loglikelihood(backward, [(c + [tok.eod_id], reverse[:max(1, backward.cfg.n_positions - len(c))])
                                       for c in candidates], batch_size=batch_size)
        back = [b.logprob for b in bwd]
    else:
        back = [float("nan")] * len(candidates)
    out = []
    for c, f, b in zip(candidates, fwd, back):
        score = f.logprob if backward is None else b + weight * f.logprob
        text = clean_reply(tok.decode(c))
        # an empty reply says nothing about the history, yet P(history | nothing) can be high
        out.append(Candidate(text, c, f.logprob, b, score if text or backward is None else float("-inf")))
    return out


def clean_reply(text: str) -> str:
    """A reply on one line, without the replacement characters of a multi-byte character whose
    byte pieces were cut off (byte fallback)."""
    return " ".join(text.replace("\ufffd", "").split())


def reply(forward, tok, turns: list[str], params: SamplingParams, *, backward=None, n: int = 16,
          weight: float = 0.0) -> tuple[Candidate, list[Candidate]]:
    """(the chosen reply, every candidate). Without a backward model (or n=1) the first sample
    is the reply, as plain sampling would give. Empty candidates lose to any other."""
    n_pos = forward.cfg.n_positions
    prompt = history_ids(tok, turns, max(1, n_pos - params.max_new_tokens))
    k = n if backward is not None else 1
    sampled = generate(forward, [prompt], replace(params, num_return_sequences=k), eod_id=tok.eod_id,
                       decode=tok.decode)
    cands = [c.tokens or [tok.eod_id] for c in sampled]
    scored = rerank(forward, backward, tok, turns, cands, weight=weight)
    if backward is None:
        return scored[0], scored
    return max(scored, key=lambda c: c.score), scored


_UNITS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W\u3400-\u9fff\uf900-\ufaff]+")


def units(text: str) -> list[str]:
    """The words of a response for diversity counts: each CJK character is one, other words are
    runs of letters and digits, lowercased."""
    return _UNITS.findall(text.lower())


def distinct(responses: list[str], n: int) -> float:
    """distinct-n (Li et al. 2016): distinct n-grams over all n-grams of all responses."""
    grams = [tuple(u[i:i + n]) for r in responses for u in [units(r)] for i in range(len(u) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(responses: list[str]) -> dict[str, float]:
    """distinct-1, distinct-2 and the average length in words (characters for Chinese)."""
    return {"distinct_1": distinct(responses, 1), "distinct_2": distinct(responses, 2),
            "avg_len": sum(len(units(r)) for r in responses) / max(1, len(responses))}
