"""The decoding engine: one loop of iterations over a running batch, for ``generate`` and for the
server alike (nano-vllm's shape: ``generate`` is a loop over this engine's iterations).

Requests join and leave the batch between steps (Orca's iteration-level scheduling): the jobs
admitted in one iteration are prefilled together, left-padded to the longest prompt (their first
tokens come from that prefill), then every iteration runs one token per row. How the rows run
through the model (continuous key/value caches, a compiled static cache, or no cache) is the
runner's business (``megagpt.inference.runner``); this module chooses the tokens (sampling and
penalties, ``megagpt.inference.sampling``) and decides when a row is finished, in one place
(``_Request.take``: EOD, a stop string, the length), so a finished row leaves the batch in the
iteration that finished it. Nothing in a row's computation depends on its neighbours except
through padding the attention mask hides, so a greedy request decodes the same tokens in a batch
as alone.

``BatchEngine.apply(plan)`` does one iteration's work. Under tensor parallelism every rank applies
the same plans (rank 0 makes them and broadcasts them; see ``megagpt.serving``): the logits are
gathered over the vocabulary, every request carries its own seeded generator and every rank
decodes the same text, so all ranks pick the same tokens and finish the same rows.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from megagpt.inference.runner import CachedRunner, left_pad, slide_keep
from megagpt.inference.sampling import SamplingParams, choose, continuation, cut_at_stop, penalize_repetition


@dataclass
class Job:
    """One request for the engine: rows continuing ``prompt`` under ``params``.

    ``logprobs``: top entries kept per generated token (None: none); ``prompt_logprobs``: the same
    for the prompt's own tokens (OpenAI's ``echo`` with ``logprobs``); ``presence`` and
    ``frequency``: OpenAI's penalties (subtracted from the logits of tokens already generated).
    ``rows``: each row's own prompt (``generate``'s batch: several prompts drawn by one generator);
    None: ``num_return_sequences`` rows of ``prompt``. ``lockstep``: the rows stay in the batch
    until all of them have finished (one generator draws for all of them at every step, so a
    seeded row's tokens do not depend on when the others finish), and the context slides past
    ``n_positions`` instead of the job being refused. ``keep_scores``: each event carries the
    processed logits its token was chosen from. ``stream_text``: each event carries its row's text
    (decoded at every token; otherwise only where stop strings are watched, and at the finish).
    ``lstrip``: the text starts at the first non-space character (a chat reply)."""

    rid: int
    prompt: list[int]
    params: SamplingParams
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    presence: float = 0.0
    frequency: float = 0.0
    rows: list[list[int]] | None = None
    lockstep: bool = False
    keep_scores: bool = False
    stream_text: bool = False
    lstrip: bool = False

    @property
    def prompts(self) -> list[list[int]]:
        """Each row's prompt."""
        return self.rows if self.rows is not None else [self.prompt] * self.params.num_return_sequences


@dataclass
class TokenEvent:
    """Row ``row`` of request ``rid`` chose ``token``; ``finished``: 'eod', 'stop' or 'length' when
    that finished the row (it has left the batch, or under ``lockstep`` no longer counts); no event
    follows a finish. ``logprob``/``top``: when the job asked for logprobs; ``text``: the row's text
    so far when it was decoded (cut before a stop string); ``scores``: with ``Job.keep_scores``."""

    rid: int
    row: int
    token: int
    finished: str | None = None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    text: str | None = None
    scores: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class Plan:
    """One iteration: rows to drop (request ids, or (rid, row) pairs), calls to run on every rank
    (``(call_id, name, args)``, see ``BatchEngine.register``), jobs to add, then one decode step."""

    drop: list = field(default_factory=list)
    calls: list = field(default_factory=list)
    add: list[Job] = field(default_factory=list)
    stop: bool = False


@dataclass
class Outcome:
    tokens: list[TokenEvent] = field(default_factory=list)
    prompt_logprobs: dict = field(default_factory=dict)  # rid -> [(logprob | None, top)] per prompt token
    calls: dict = field(default_factory=dict)  # call_id -> result (or the exception raised)
    errors: dict = field(default_factory=dict)  # rid -> message: a job that could not join (the batch is untouched)


def top_entries(logprobs: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """The ``k`` most likely tokens and their log-probabilities, per row of (R, V)."""
    if k <= 0:
        return [[] for _ in range(logprobs.size(0))]
    vals, ids = logprobs.topk(k, dim=-1)
    return [list(zip(i.tolist(), v.tolist())) for i, v in zip(ids, vals)]


class _Request:
    """Engine-side state of a job's rows: each row's tokens (its prompt, then every token chosen
    for it), its text, the job's generator and penalty counts. ``take`` decides when a row is
    finished."""

    def __init__(self, job: Job, cfg, device, eod_id: int | None, decode: Callable[[list[int]], str] | None):
        p = job.params
        if p.stop and decode is None:
            raise ValueError("stop strings need a tokenizer to decode the generated text.")
        n_pos, keep = cfg.n_positions, slide_keep(cfg.n_positions)
        self.prompts = [r[-keep:] if job.lockstep and len(r) >= n_pos else r for r in job.prompts]
        self.job, self.n, self.eod_id, self.decode = job, len(self.prompts), eod_id, decode
        self.seqs = [list(r) for r in self.prompts]  # what a refill reads
        self.out: list[list[int]] = [[] for _ in range(self.n)]  # the generated tokens, EOD not included
        self.finish: list[str | None] = [None] * self.n
        self.watch = decode is not None and (bool(p.stop) or job.stream_text)  # decode at every token
        self.texts: list[str | None] = [""] * self.n if self.watch else [None] * self.n
        self._prompt_texts: list[str | None] = [None] * self.n
        self.generator = torch.Generator(device=device).manual_seed(p.seed)
        self.counts = None
        if job.presence or job.frequency or p.repetition_penalty != 1.0:
            self.counts = torch.zeros(self.n, cfg.vocab_size, device=device)
            if p.repetition_penalty != 1.0:  # CTRL's penalty also covers the prompt's tokens
                self.prompt_seen = torch.zeros(self.n, cfg.vocab_size, dtype=torch.bool, device=device)
                for i, r in enumerate(self.prompts):
                    self.prompt_seen[i, r] = True

    def choose(self, logits: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens for ``rows`` from their fp32 logits (R, V), and the processed logits they were
        chosen from (penalties applied)."""
        job, p = self.job, self.job.params
        x = logits
        if self.counts is not None:
            c = self.counts[rows]
            if p.repetition_penalty != 1.0:
                x = penalize_repetition(x, (c > 0) | self.prompt_seen[rows], p.repetition_penalty)
            if job.frequency or job.presence:
                x = x - job.frequency * c - job.presence * (c > 0).float()
        tok = choose(x, p, self.generator)
        if self.counts is not None:
            self.counts[rows, tok] += 1
        return tok, x

    def take(self, row: int, token: int) -> str | None:
        """``token`` is ``row``'s next; the reason when that finished the row: 'eod', 'stop' (its text
        then ends before the stop string) or 'length'. Every finish is decided here."""
        self.seqs[row].append(token)
        p = self.job.params
        if self.eod_id is not None and p.stop_at_eod and token == self.eod_id:
            return self._end(row, "eod")
        self.out[row].append(token)
        if self.watch:
            text = self.text(row)
            cut = cut_at_stop(text, p.stop)
            self.texts[row] = text if cut is None else cut
            if cut is not None:
                return self._end(row, "stop")
        return self._end(row, "length") if len(self.out[row]) >= p.max_new_tokens else None

    def _end(self, row: int, reason: str) -> str:
        self.finish[row] = reason
        if self.decode is not None and not self.watch:
            self.texts[row] = self.text(row)
        return reason

    def text(self, row: int) -> str:
        """The text of ``row``'s generated tokens after its prompt."""
        if self._prompt_texts[row] is None:
            self._prompt_texts[row] = self.decode(self.prompts[row])
        t = continuation(self.decode, self.prompts[row], self.out[row], self._prompt_texts[row])
        return t.lstrip() if self.job.lstrip else t

    def leaving(self, rows: list[int]) -> list[bool]:
        """Which of ``rows`` leave the batch now: the finished ones; under ``lockstep`` all of them
        once every row has finished."""
        if self.job.lockstep:
            return [None not in self.finish] * len(rows)
        return [self.finish[r] is not None for r in rows]


class BatchEngine:
    """The running batch of one model. ``max_rows`` caps the rows decoded together (a request with
    ``n`` choices takes ``n``); the scheduler keeps to it (``kept_after``). ``decode``: ids to text
    (stop strings and the rows' text need it); ``runner``: how the rows run through the model
    (default: a ``CachedRunner``)."""

    def __init__(self, model, *, eod_id: int | None, max_rows: int = 32, vocab_limit: int | None = None,
                 decode: Callable[[list[int]], str] | None = None, runner=None):
        self.model, self.cfg, self.eod_id, self.max_rows, self.decode = model, model.cfg, eod_id, max_rows, decode
        # ids at or above vocab_limit (a tokenizer smaller than the model's padded vocabulary) are never chosen
        self.vocab_limit = vocab_limit if vocab_limit is not None and vocab_limit < model.cfg.vocab_size else None
        self.device = next(model.parameters()).device
        self.runner = runner if runner is not None else CachedRunner(model)
        self.calls: dict[str, Callable] = {}
        self.requests: dict[int, _Request] = {}
        self.rows: list[tuple[int, int]] = []  # (rid, row) per batch row
        self.next = torch.zeros(0, dtype=torch.long, device=self.device)  # per row: the input token

    # -- what the scheduler reads -------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self.rows)

    @property
    def state(self):
        """The batch's ``DecodeState`` (None when the batch is empty or the runner keeps none)."""
        return self.runner.state

    def kept_after(self, drop) -> list[int]:
        """The batch rows a plan's ``drop`` (request ids, or (rid, row) pairs) leaves in."""
        rids = {d for d in drop if isinstance(d, int)}
        pairs = {tuple(d) for d in drop if not isinstance(d, int)}
        return [i for i, (rid, row) in enumerate(self.rows) if rid not in rids and (rid, row) not in pairs]

    def register(self, name: str, fn: Callable) -> None:
        """A function plans may call by name (the same on every rank), e.g. MMI reranking."""
        self.calls[name] = fn

    def reset(self) -> None:
        """Forget every row and request (after an error)."""
        self.requests.clear()
        self.rows = []
        self.runner.reset()
        self.next = self.next[:0]

    # -- one iteration ------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, plan: Plan) -> Outcome:
        out = Outcome()
        if plan.drop:
            self._drop(plan.drop)
        for call_id, name, args in plan.calls:
            try:
                out.calls[call_id] = self.calls[name](*args)
            except Exception as e:  # noqa: BLE001 - handed back to the request that asked
                out.calls[call_id] = e
        if plan.add:
            self._admit(plan.add, out)
        if self.rows:
            self.step(out)
        return out

    @torch.no_grad()
    def add(self, jobs: list[Job], out: Outcome) -> None:
        """One prefill for all rows of ``jobs``, left-padded to the longest prompt (each job's first
        tokens come from it, into ``out``), then the rows that go on join the batch. Raises what the
        prefill raises; the batch itself is only changed at the end."""
        reqs = [_Request(job, self.cfg, self.device, self.eod_id, self.decode) for job in jobs]
        tokens, pad = left_pad([r for req in reqs for r in req.prompts], 0, self.device)
        P = tokens.size(1)
        slots = [self._slots(req.job, P) for req in reqs]
        logits, h = self.runner.prefill(tokens, pad, P + max(slots))
        keep, need, joined, start = [], [], [], 0
        for req, n_slots in zip(reqs, slots):
            rid, rows = req.job.rid, list(range(req.n))
            if req.job.prompt_logprobs is not None:  # every position's logits (of one row), from the same pass
                out.prompt_logprobs[rid] = self._prompt_entries(h[start, P - len(req.job.prompt):], req.job)
            if req.job.params.max_new_tokens > 0:  # 0: scoring only (OpenAI's echo with max_tokens 0)
                self.requests[rid] = req
                tok, leave = self._advance(rid, logits[start:start + req.n], rows, out)
                stay = [r for r in rows if not leave[r]]
                keep += [start + r for r in stay]
                need += [n_slots] * len(stay)
                joined += [((rid, r), tok[r]) for r in stay]
                if not stay:
                    del self.requests[rid]
            start += req.n
        self.runner.join(keep, need)
        if joined:
            self.rows += [rr for rr, _ in joined]
            self.next = torch.cat([self.next, torch.stack([t for _, t in joined])])

    @torch.no_grad()
    def step(self, out: Outcome) -> None:
        """One token for every row of the batch, into ``out``; the rows that finish leave."""
        r = self.runner
        if r.full:  # no cache slot left: the window slides, every row's last tokens run again
            logits = r.refill(*left_pad([self._seq(i)[-r.window:] for i in range(len(self.rows))], 0, self.device))
        else:
            logits = r.step(self.next.unsqueeze(1))
        toks, gone = [], set()
        for rid, lo, hi in self._spans():
            tok, leave = self._advance(rid, logits[lo:hi], [row for _, row in self.rows[lo:hi]], out)
            toks.append(tok)
            gone.update(lo + j for j, g in enumerate(leave) if g)
        self.next = torch.cat(toks)
        if gone:
            self._keep([i for i in range(len(self.rows)) if i not in gone])

    # -- internals ----------------------------------------------------------------------------
    def _slots(self, job: Job, P: int) -> int:
        """Cache slots a job's rows may need after a prefill of ``P``; a lockstep job's stop at
        ``n_positions`` (the window slides there)."""
        n = job.params.max_new_tokens
        return min(n, self.cfg.n_positions - P) if job.lockstep else n

    def _seq(self, i: int) -> list[int]:
        rid, row = self.rows[i]
        return self.requests[rid].seqs[row]

    def _spans(self) -> list[list]:
        """[rid, first, end] per request in the batch: a request's rows are neighbours (they join
        together and the batch keeps their order)."""
        spans: list[list] = []
        for i, (rid, _) in enumerate(self.rows):
            if spans and spans[-1][0] == rid:
                spans[-1][2] = i + 1
            else:
                spans.append([rid, i, i + 1])
        return spans

    def _in_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """fp32 logits without the ids the tokenizer does not have (-inf there)."""
        logits = logits.float()
        if self.vocab_limit is not None:
            logits[..., self.vocab_limit:] = float("-inf")
        return logits

    def _advance(self, rid: int, logits: torch.Tensor, rows: list[int], out: Outcome) -> tuple[torch.Tensor, list]:
        """Choose the next token of ``rows`` of request ``rid`` from their logits (R, V), report it
        in ``out`` and say which rows leave the batch."""
        req, job = self.requests[rid], self.requests[rid].job
        raw = self._in_vocab(logits)
        tok, x = req.choose(raw, rows)
        info = []
        if job.logprobs is not None:
            lp = raw.log_softmax(-1)
            picked = lp.gather(-1, tok.unsqueeze(-1))[:, 0].tolist()
            info = list(zip(picked, top_entries(lp, job.logprobs)))
        for j, (row, t) in enumerate(zip(rows, tok.tolist())):
            if req.finish[row] is not None:  # a lockstep row that finished before: fed on, not reported
                req.seqs[row].append(t)
                continue
            finished = req.take(row, t)
            lp, top = info[j] if info else (None, None)
            scores = x[j].cpu() if job.keep_scores else None
            out.tokens.append(TokenEvent(rid, row, t, finished, lp, top, req.texts[row], scores))
        return tok, req.leaving(rows)

    def _prompt_entries(self, h: torch.Tensor, job: Job) -> list:
        """(logprob | None, top entries) per prompt token from the prompt's hidden states (L, E)."""
        model = self.model
        lp = self._in_vocab(model.head.gather(model.head(h.unsqueeze(0)))[0]).log_softmax(-1)
        ids = torch.tensor(job.prompt[1:], device=self.device)
        picked = [None] + lp[:-1].gather(-1, ids.unsqueeze(-1))[:, 0].tolist()
        tops = [None] + top_entries(lp[:-1], job.prompt_logprobs)
        return list(zip(picked, tops))

    def _admit(self, jobs: list[Job], out: Outcome) -> None:
        """``add`` ``jobs`` together; a group that fails is retried one job at a time, so an error
        (e.g. out of memory) fails only its own request."""
        ok = []
        for job in jobs:
            if not job.lockstep and len(job.prompt) + job.params.max_new_tokens > self.cfg.n_positions:
                out.errors[job.rid] = (f"ValueError: {len(job.prompt)} prompt + {job.params.max_new_tokens} new "
                                       f"tokens exceed n_positions={self.cfg.n_positions}")
            else:
                ok.append(job)
        if not ok:
            return
        try:
            self.add(ok, out)
            return
        except Exception as e:  # noqa: BLE001 - the request's error, not the server's
            self._forget(ok, out)
            if len(ok) == 1:
                out.errors[ok[0].rid] = f"{type(e).__name__}: {e}"
                return
        for job in ok:
            try:
                self.add([job], out)
            except Exception as e:  # noqa: BLE001 - the request's error, not the server's
                self._forget([job], out)
                out.errors[job.rid] = f"{type(e).__name__}: {e}"

    def _forget(self, jobs: list[Job], out: Outcome) -> None:
        """Undo what a failed ``add`` left: the jobs' requests and their events (the batch itself is
        only changed at its end)."""
        rids = {j.rid for j in jobs}
        for rid in rids:
            self.requests.pop(rid, None)
            out.prompt_logprobs.pop(rid, None)
        out.tokens = [t for t in out.tokens if t.rid not in rids]

    def _drop(self, which) -> None:
        self._keep(self.kept_after(which))
        for rid in (d for d in which if isinstance(d, int)):
            self.requests.pop(rid, None)

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        live = {rid for rid, _ in self.rows}
        for rid in [r for r in self.requests if r not in live]:
            del self.requests[rid]
        self.runner.keep(keep)
        self.next = self.next[torch.tensor(keep, dtype=torch.long, device=self.device)]
