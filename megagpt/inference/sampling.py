"""What decoding chooses and how it reads: sampling parameters, the logit processors (top-k, top-p,
CTRL's repetition penalty), the choice of the next token, and the text of a continuation cut at a
stop string. ``megagpt.inference.batching`` applies them to every row it decodes, for ``generate``
and for the server alike.

Sampling: greedy (``temperature=0``), temperature, top-k, top-p (nucleus), repetition penalty
(CTRL's: a seen token's logit is divided by the penalty when positive, multiplied when negative).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


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

