"""Scoring tasks and corpora with a loaded model, split over data-parallel groups.

``Evaluator`` holds a model (one device, or one tensor-parallel shard per rank) and its tokenizer.
Every request list is dealt out round robin over the DP groups, each group scores its share (the
TP ranks of a group together), and the results are gathered back on every rank in their original
order, so every rank returns the same numbers.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from megagpt.eval import metrics as M
from megagpt.eval.tasks import Prompt, Task, build_prompt
from megagpt.inference.distributed import dp_share, gather_dp
from megagpt.inference.generation import SamplingParams, generate
from megagpt.inference.scoring import Score, loglikelihood

# metric -> how per-item values become the task's number (default: their mean)
AGGREGATE = {"ppl": M.perplexity_of_logprobs}
METRICS = {"cloze": ("acc", "ppl"), "multiple_choice": ("acc", "acc_token", "acc_byte", "acc_uncond"),
           "generation": ("em", "f1")}


@dataclass
class TaskResult:
    task: Task
    k: int | str
    prompts: list[Prompt]
    per_item: dict[str, list[float]]           # metric -> one value per test item
    records: list[dict] = field(default_factory=list)  # per item: line, shots, scores / prediction

    def value(self, metric: str, mask: Sequence[bool] | None = None) -> float:
        v = self.per_item[metric]
        if mask is not None:
            v = [x for x, m in zip(v, mask) if m]
        return AGGREGATE.get(metric, M.mean)(v)

    def stderr(self, metric: str, seed: int) -> float:
        return M.bootstrap_stderr(self.per_item[metric], AGGREGATE.get(metric, M.mean), seed=seed)

    @property
    def mean_shots(self) -> float:
        return M.mean([len(p.shots) for p in self.prompts])


class Evaluator:
    def __init__(self, model, tokenizer, ps=None, *, batch_size: int = 16, n_positions: int | None = None):
        """``model`` may be None with ``n_positions`` given: prompts only (config checks)."""
        self.model, self.tok, self.ps = model, tokenizer, ps
        self.batch_size = batch_size
        self.n_positions = n_positions or model.cfg.n_positions
        self._cache: dict[tuple, Score] = {}

    # --- tokenisation ----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) the way lm-evaluation-harness splits them: trailing
        spaces of the context move to the continuation, the whole text is encoded once and the
        continuation is what follows the context's tokens; an empty context is the EOD token."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        if not context:  # empty or only whitespace
            return [self.tok.eod_id], self.encode(continuation)
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return (ctx or [self.tok.eod_id]), whole[len(ctx):]

    # --- distributed primitives ------------------------------------------------------------
    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, keep: bool = True) -> list[Score]:
        """Log-likelihoods of (context ids, continuation ids); repeated requests are scored once.
        ``keep``: remember the scores for later calls (task requests recur across k; perplexity
        windows do not, so a corpus is not kept in memory)."""
        keys = [(tuple(c), tuple(x)) for c, x in requests]
        todo = sorted({k for k in keys if k not in self._cache})
        mine = dp_share(len(todo), self.ps)
        local = dict(zip(mine, loglikelihood(self.model, [todo[i] for i in mine], batch_size=self.batch_size)))
        fresh = {todo[i]: s for i, s in gather_dp(local, self.ps).items()}
        if keep:
            self._cache.update(fresh)
        return [fresh[k] if k in fresh else self._cache[k] for k in keys]

    def complete(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[str]:
        mine = dp_share(len(prompts), self.ps)
        local = {}
        for b in range(0, len(mine), self.batch_size):
            chunk = mine[b:b + self.batch_size]
            for c in generate(self.model, [prompts[i] for i in chunk], params, eod_id=self.tok.eod_id,
                              decode=self.tok.decode):
                local[chunk[c.prompt_index]] = c.text
        got = gather_dp(local, self.ps)
        return [got[i] for i in range(len(prompts))]

    # --- tasks -----------------------------------------------------------------------------
    def prompts(self, task: Task, k: int | str, seed: int, limit: int | None = None) -> list[Prompt]:
        items = task.test[:limit] if limit else task.test
        out = []
        for it in items:
            if task.type == "generation":
                budget = task.max_tokens
            else:  # the longest continuation scored for this item
                conts = it.choices if task.type == "multiple_choice" else [it.target]
                budget = max(len(self.encode_pair("x", task.target_delimiter + c)[1]) for c in conts)
            out.append(build_prompt(task, it, k, seed, self.encode, self.n_positions, budget))
        return out

    def run_task(self, task: Task, k: int | str = 0, *, seed: int = 1234, limit: int | None = None) -> TaskResult:
        prompts = self.prompts(task, k, seed, limit)
        run = {"cloze": self._cloze, "multiple_choice": self._multiple_choice, "generation": self._generation}
        per_item, records = run[task.type](task, prompts)
        for rec, p in zip(records, prompts):
            rec.update(line=p.item.line, shots=p.shots)
        return TaskResult(task, k, prompts, per_item, records)

    def _cloze(self, task, prompts):
        scores = self.score([self.encode_pair(p.text, task.target_delimiter + p.item.target) for p in prompts])
        per_item = {"acc": [float(s.greedy) for s in scores], "ppl": [s.logprob for s in scores]}
        return per_item, [{"logprob": s.logprob, "greedy": s.greedy} for s in scores]

    def _multiple_choice(self, task, prompts):
        reqs, uncond = [], []
        for p in prompts:
            for c in p.item.choices:
                reqs.append(self.encode_pair(p.text, task.target_delimiter + c))
                uncond.append(self.encode_pair(task.unconditional_context, task.target_delimiter + c))
        scores, base = self.score(reqs), self.score(uncond)
        per_item = {m: [] for m in METRICS["multiple_choice"]}
        records, at = [], 0
        for p in prompts:
            n = len(p.item.choices)
            s, u = scores[at:at + n], base[at:at + n]
            at += n
            lp = [x.logprob for x in s]
            nbytes = [len((task.target_delimiter + c).encode("utf-8")) for c in p.item.choices]
            ways = {"acc": lp, "acc_token": [x.logprob / x.n_tokens for x in s],
                    "acc_byte": [a / b for a, b in zip(lp, nbytes)],
                    "acc_uncond": [a - b.logprob for a, b in zip(lp, u)]}
            for m, vals in ways.items():
                per_item[m].append(float(max(range(n), key=vals.__getitem__) == p.item.label))
            records.append({"logprobs": lp, "uncond_logprobs": [b.logprob for b in u], "label": p.item.label})
        return per_item, records

    def _generation(self, task, prompts):
        params = SamplingParams(max_new_tokens=task.max_tokens, temperature=0.0, stop=tuple(task.stop))
        texts = self.complete([self.encode(p.text) or [self.tok.eod_id] for p in prompts], params)
        preds = [t.strip() for t in texts]
        per_item = {"em": [M.exact_match(t, p.item.answers) for t, p in zip(preds, prompts)],
                    "f1": [M.f1(t, p.item.answers) for t, p in zip(preds, prompts)]}
        return per_item, [{"prediction": t} for t in preds]

    # --- perplexity --------------------------------------------------------------------------
    def perplexity(self, docs: Iterable[tuple[list[int], str]], stride: int | None = None) -> dict:
        """GPT-2's sliding-window perplexity of documents given as (token ids, text).

        Each document is preceded by EOD; windows of up to ``n_positions`` tokens advance by
        ``stride`` (default: ``n_positions``, disjoint windows), and each window scores only the
        tokens no earlier window scored, so every token is scored once with the longest context
        the stride leaves. Reported per token, per byte (bits per byte) and per word."""
        n_pos = self.n_positions
        stride = stride or n_pos
        if not 1 <= stride <= n_pos:
            raise ValueError(f"stride must be in 1..n_positions={n_pos}, got {stride}.")
        reqs, owner, n_bytes, n_words, n_tokens, n_docs = [], [], 0, 0, 0, 0
        for ids, text in docs:
            if not ids:
                continue
            seq = [self.tok.eod_id] + list(ids)
            for begin in range(0, len(ids), stride):
                end = min(begin + stride, len(ids))  # score seq[begin+1 .. end]
                start = max(0, end - n_pos)
                reqs.append((seq[start:begin + 1], seq[begin + 1:end + 1]))
                owner.append(n_docs)
            n_tokens += len(ids)
            n_bytes += len(text.encode("utf-8"))
            n_words += len(text.split())
            n_docs += 1
        nll = -sum(s.logprob for s in self.score(reqs, keep=False))
        return {"docs": n_docs, "tokens": n_tokens, "bytes": n_bytes, "words": n_words, "nll": nll,
                "token_ppl": math.exp(nll / n_tokens) if n_tokens else float("nan"),
                "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes else float("nan"),
                "word_ppl": math.exp(nll / n_words) if n_words else float("nan"),
                "stride": stride}


# --- a suite of tasks: rows, a table, TensorBoard scalars ---------------------------------------------
def run_suite(ev: Evaluator, tasks: Sequence[Task], shots: Sequence[int | str], *, seed: int = 1234,
              limit: int | None = None, contamination=None, meta: dict | None = None,
              keep: list | None = None) -> list[dict]:
    """One row per (task, k, metric[, clean/dirty subset]); ``keep`` collects the ``TaskResult``s."""
    rows = []
    for task in tasks:
        flags, n_gram = None, None
        items = task.test[:limit] if limit else task.test
        if contamination is not None:
            n_gram, flags = contamination.dirty(task, items)
        for k in shots:
            res = ev.run_task(task, k, seed=seed, limit=limit)
            if keep is not None:
                keep.append(res)
            n = len(res.prompts)
            for metric in METRICS[task.type]:
                base = {"task": task.name, "type": task.type, "k": k, "k_mean": round(res.mean_shots, 3),
                        "metric": metric, "seed": seed, **(meta or {})}
                chance = task.chance(items) if metric.startswith("acc") and task.type == "multiple_choice" else None
                rows.append(dict(base, subset="all", value=res.value(metric), n=n,
                                 stderr=res.stderr(metric, seed), chance=chance))
                if flags is not None:
                    for subset, want in (("clean", False), ("dirty", True)):
                        mask = [f == want for f in flags]
                        rows.append(dict(base, subset=subset, n=sum(mask), ngram=n_gram, chance=chance,
                                         value=res.value(metric, mask) if any(mask) else None, stderr=None))
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The rows as an aligned text table; with a contamination report, the clean and dirty
    subsets' values (and sizes) sit beside the overall value."""
    def num(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

    sub = {(r["task"], str(r["k"]), r["metric"], r["subset"]): r for r in rows if r.get("subset", "all") != "all"}
    head = ["task", "k", "metric", "value", "stderr", "chance", "n"] + (["clean (n)", "dirty (n)"] if sub else [])
    lines = [head]
    for r in rows:
        if r.get("subset", "all") != "all":
            continue
        k = str(r["k"])
        if k == "max" or float(k) != r["k_mean"]:  # fewer examples fitted than asked: say how many
            k += f" ({r['k_mean']:g})"
        line = [r["task"], k, r["metric"], num(r["value"]), num(r.get("stderr")), num(r.get("chance")), str(r["n"])]
        if sub:
            for s in ("clean", "dirty"):
                x = sub.get((r["task"], str(r["k"]), r["metric"], s))
                line.append(f"{num(x['value'])} ({x['n']})" if x else "-")
        lines.append(line)
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def tensorboard_scalars(rows: Sequence[dict]) -> dict[str, float]:
    """``eval/<task>/<metric>`` for k=0 and ``eval/<task>.<k>shot/<metric>`` otherwise (all items)."""
    out = {}
    for r in rows:
        if r.get("subset", "all") == "all" and r["value"] is not None:
            name = r["task"] if str(r["k"]) == "0" else f"{r['task']}.{r['k']}shot"
            out[f"eval/{name}/{r['metric']}"] = float(r["value"])
    return out
