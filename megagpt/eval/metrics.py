"""Answer normalisation, exact match / F1 (the SQuAD rules), and bootstrap standard errors."""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and English articles removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in answers))


def f1(prediction: str, answers: Sequence[str]) -> float:
    """Token-overlap F1 against the best-matching reference."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for a in answers:
        gold = normalize_answer(a).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        same = sum((Counter(pred) & Counter(gold)).values())
        if same:
            prec, rec = same / len(pred), same / len(gold)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def perplexity_of_logprobs(values: Sequence[float]) -> float:
    """exp of the mean negative log-probability per item (LAMBADA's target perplexity)."""
    return math.exp(-mean(values)) if len(values) else float("nan")


def bootstrap_stderr(values: Sequence[float], agg: Callable[[np.ndarray], float] = mean, *,
                     n: int = 1000, seed: int = 0) -> float:
    """Standard deviation of ``agg`` over ``n`` resamples (with replacement) of the items."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n, len(v)))
    if agg is mean:
        stats = v[idx].mean(axis=1)
    else:
        stats = np.array([agg(v[row]) for row in idx])
    return float(np.std(stats, ddof=1))
