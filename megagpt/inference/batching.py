"""Continuous batching: requests join and leave a running decode batch between steps (Orca's
iteration-level scheduling), over the same left-padded key/value caches as ``generate``.

The batch is a set of rows advancing in lockstep: at every step each row writes cache slot ``S``.
A row's position is its slot minus its left padding, so a new request can join a batch at any
step: the requests admitted in one iteration are prefilled together, left-padded to the longest
prompt (their first tokens come from that prefill, as in ``generate``), and their caches are copied
into the batch's so that their last prompt slot lines up with the batch's last filled slot (the
batch is shifted right first when the new prompts are longer than ``S``). Rows
leave when they finish; when every remaining row has left padding the batch is shifted left, so
the caches stay about as long as the longest request in flight. Nothing in a row's computation
depends on its neighbours except through padding the attention mask hides, so a greedy request
decodes the same tokens in a batch as alone.

``BatchEngine.apply(plan)`` does one iteration's tensor work. Under tensor parallelism every rank
applies the same plans (rank 0 makes them and broadcasts them; see ``megagpt.serving``): the
logits are gathered over the vocabulary and every request carries its own seeded generator, so
all ranks pick the same tokens and leave the batch at the same steps.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from megagpt.inference.generation import SamplingParams, _left_pad, choose, penalize_repetition
from megagpt.model.cache import DecodeState, KVCache


@dataclass
class Job:
    """One request for the engine: ``n`` rows continuing ``prompt`` under ``params``.
    ``logprobs``: top entries kept per generated token (None: none); ``prompt_logprobs``: the same
    for the prompt's own tokens (OpenAI's ``echo`` with ``logprobs``); ``presence`` and
    ``frequency``: OpenAI's penalties (subtracted from the logits of tokens already generated)."""

    rid: int
    prompt: list[int]
    params: SamplingParams
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    presence: float = 0.0
    frequency: float = 0.0


@dataclass
class TokenEvent:
    """Row ``row`` of request ``rid`` chose ``token``; ``finished``: 'eod' or 'length' when the
    engine took the row out of the batch; ``logprob``/``top``: when the job asked for logprobs."""

    rid: int
    row: int
    token: int
    finished: str | None = None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


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
    """Engine-side state of a request: its generator and its per-row penalty counts."""

    def __init__(self, job: Job, vocab: int, device):
        p = job.params
        self.job, self.n = job, p.num_return_sequences
        self.generator = torch.Generator(device=device).manual_seed(p.seed)
        self.produced = [0] * self.n
        self.counts = None
        if job.presence or job.frequency or p.repetition_penalty != 1.0:
            self.counts = torch.zeros(self.n, vocab, device=device)
            if p.repetition_penalty != 1.0:  # CTRL's penalty also covers the prompt's tokens
                self.prompt_seen = torch.zeros(vocab, dtype=torch.bool, device=device)
                self.prompt_seen[job.prompt] = True


def _remap(old: torch.Tensor, *, old_ring: bool, new_ring: bool, new_slots: int, S_new: int, shift: int,
           banded: bool, window: int) -> torch.Tensor:
    """``old``'s keys (or values) in a new slot layout: new slot ``t`` holds old slot ``t + shift``
    for the filled slots ``t < S_new``. A ring holds slot ``t`` at ``t % window``; a banded layer
    only ever reads its last ``window`` slots, so only those are copied."""
    lo = max(0, S_new - window) if banded else 0
    t = torch.arange(max(lo, -shift), S_new, device=old.device)
    src = t + shift
    new = old.new_zeros(old.size(0), old.size(1), new_slots, old.size(3))
    if t.numel():
        new[:, :, t % window if new_ring else t] = old[:, :, src % window if old_ring else src]
    return new


class BatchEngine:
    """The running batch of one model. ``max_rows`` caps the rows decoded together (a request with
    ``n`` choices takes ``n``); the scheduler keeps to it (``kept_after``)."""

    def __init__(self, model, *, eod_id: int | None, max_rows: int = 32, vocab_limit: int | None = None):
        self.model, self.cfg, self.eod_id, self.max_rows = model, model.cfg, eod_id, max_rows
        # ids at or above vocab_limit (a tokenizer smaller than the model's padded vocabulary) are never chosen
        self.vocab_limit = vocab_limit if vocab_limit is not None and vocab_limit < model.cfg.vocab_size else None
        self.device = next(model.parameters()).device
        self.banded = [bool(b.attn.banded) for b in model.blocks]
        self.calls: dict[str, Callable] = {}
        self.requests: dict[int, _Request] = {}
        self.rows: list[tuple[int, int]] = []  # (rid, row) per batch row
        self.ends = torch.zeros(0, dtype=torch.long)  # per row: the slot count it can need at most
        self.next = torch.zeros(0, dtype=torch.long, device=self.device)  # per row: the input token
        self.state: DecodeState | None = None

    # -- what the scheduler reads -------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self.rows)

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
        self.rows, self.state = [], None
        self.ends, self.next = torch.zeros(0, dtype=torch.long), self.next[:0]

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
            self._step(out)
        return out

    # -- internals ----------------------------------------------------------------------------
    def _layout(self, capacity: int, layer: int) -> tuple[bool, int]:
        ring = self.banded[layer] and self.cfg.local_window < capacity
        return ring, (self.cfg.local_window if ring else capacity)

    def _relayout(self, caches, old_cap: int, S_new: int, shift: int, new_cap: int) -> list[KVCache]:
        new = []
        for layer, c in enumerate(caches):
            old_ring = self._layout(old_cap, layer)[0]
            ring, slots = self._layout(new_cap, layer)
            k, v = (_remap(t, old_ring=old_ring, new_ring=ring, new_slots=slots, S_new=S_new, shift=shift,
                           banded=self.banded[layer], window=self.cfg.local_window) for t in (c.k, c.v))
            new.append(KVCache.of(k, v, ring=ring))
        return new

    def _in_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """fp32 logits without the ids the tokenizer does not have (-inf there)."""
        logits = logits.float()
        if self.vocab_limit is not None:
            logits[..., self.vocab_limit:] = float("-inf")
        return logits

    def _set_state(self, pad: torch.Tensor, capacity: int, caches, S: int) -> None:
        self.state = DecodeState(self.cfg, pad, capacity, caches)
        self.state.start = S

    def _sample(self, req: _Request, logits: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, list]:
        """Tokens for some rows of one request from their raw logits (R, V); the log-probability
        entries when the job asked for them."""
        job, p = req.job, req.job.params
        raw = self._in_vocab(logits)
        x = raw
        if req.counts is not None:
            c = req.counts[rows]
            if p.repetition_penalty != 1.0:
                x = penalize_repetition(x, (c > 0) | req.prompt_seen, p.repetition_penalty)
            x = x - job.frequency * c - job.presence * (c > 0).float()
        tok = choose(x, p, req.generator)
        info = []
        if job.logprobs is not None:
            lp = raw.log_softmax(-1)
            picked = lp.gather(-1, tok.unsqueeze(-1))[:, 0].tolist()
            info = list(zip(picked, top_entries(lp, job.logprobs)))
        if req.counts is not None:
            req.counts[rows, tok] += 1
        return tok, info

    def _emit(self, out: Outcome, rid: int, rows: list[int], tok: torch.Tensor, info: list) -> list[bool]:
        """Record chosen tokens; True for each row that is finished."""
        req = self.requests[rid]
        done = []
        for j, (row, t) in enumerate(zip(rows, tok.tolist())):
            req.produced[row] += 1
            finished = None
            if self.eod_id is not None and req.job.params.stop_at_eod and t == self.eod_id:
                finished = "eod"
            elif req.produced[row] >= req.job.params.max_new_tokens:
                finished = "length"
            lp, top = info[j] if info else (None, None)
            out.tokens.append(TokenEvent(rid, row, t, finished, lp, top))
            done.append(finished is not None)
        return done

    def _admit(self, jobs: list[Job], out: Outcome) -> None:
        """Prefill ``jobs`` together and join their rows to the batch; a group that fails is
        retried one job at a time, so an error (e.g. out of memory) fails only its own request."""
        ok = []
        for job in jobs:
            if len(job.prompt) + job.params.max_new_tokens > self.cfg.n_positions:
                out.errors[job.rid] = (f"ValueError: {len(job.prompt)} prompt + {job.params.max_new_tokens} new "
                                       f"tokens exceed n_positions={self.cfg.n_positions}")
            else:
                ok.append(job)
        if not ok:
            return
        try:
            self._add(ok, out)
            return
        except Exception as e:  # noqa: BLE001
            self._forget(ok, out)
            if len(ok) == 1:
                out.errors[ok[0].rid] = f"{type(e).__name__}: {e}"
                return
        for job in ok:
            try:
                self._add([job], out)
            except Exception as e:  # noqa: BLE001
                self._forget([job], out)
                out.errors[job.rid] = f"{type(e).__name__}: {e}"

    def _forget(self, jobs: list[Job], out: Outcome) -> None:
        """Undo what a failed ``_add`` left: the jobs' requests and their events (the batch itself is
        only changed at its end)."""
        rids = {j.rid for j in jobs}
        for rid in rids:
            self.requests.pop(rid, None)
            out.prompt_logprobs.pop(rid, None)
        out.tokens = [t for t in out.tokens if t.rid not in rids]

    def _add(self, jobs: list[Job], out: Outcome) -> None:
        """One prefill for all rows of ``jobs``, left-padded to the longest prompt (each job's
        first tokens come from it, as in ``generate``), then the rows that go on join the batch."""
        model, dev = self.model, self.device
        tokens, pad = _left_pad([j.prompt for j in jobs for _ in range(j.params.num_return_sequences)], 0, dev)
        P = tokens.size(1)
        cap = max(P + j.params.max_new_tokens for j in jobs)
        state = DecodeState.allocate(model, pad, cap)
        h = model.hidden_states(tokens, state)
        logits = model.head.gather(model.head(h[:, -1:]))[:, 0]  # what next_token_logits computes
        state.advance(P)
        keep, first, ends, joined = [], [], [], []
        S_old = self.state.start if self.rows else 0
        S = max(S_old, P)
        start = 0
        for job in jobs:
            n, L = job.params.num_return_sequences, len(job.prompt)
            if job.prompt_logprobs is not None:  # every position's logits (of one row), from the same pass
                lp = self._in_vocab(model.head.gather(model.head(h[start:start + 1, P - L:]))[0]).log_softmax(-1)
                ids = torch.tensor(job.prompt[1:], device=dev)
                picked = [None] + lp[:-1].gather(-1, ids.unsqueeze(-1))[:, 0].tolist()
                tops = [None] + top_entries(lp[:-1], job.prompt_logprobs)
                out.prompt_logprobs[job.rid] = list(zip(picked, tops))
            if job.params.max_new_tokens == 0:  # scoring only (OpenAI's echo with max_tokens 0)
                start += n
                continue
            req = self.requests[job.rid] = _Request(job, self.cfg.vocab_size, dev)
            rows = list(range(n))
            tok, info = self._sample(req, logits[start:start + n], rows)
            for r, d in zip(rows, self._emit(out, job.rid, rows, tok, info)):
                if not d:
                    keep.append(start + r)
                    first.append(tok[r])
                    ends.append(S + job.params.max_new_tokens)
                    joined.append((job.rid, r))
            if not any(rid == job.rid for rid, _ in joined):
                del self.requests[job.rid]
            start += n
        if not keep:
            return
        # join the batch: the group's slot P lines up with the batch's slot S
        keep_t = torch.tensor(keep, device=dev)
        ends_old = self.ends + (S - S_old)
        ends_new = torch.tensor(ends, dtype=torch.long)
        cap_new = int(torch.cat([ends_old, ends_new]).max())
        new_caches = self._relayout([_rows(c, keep_t) for c in state.caches], cap, S, P - S, cap_new)
        pad_new = pad[keep_t] + (S - P)
        if self.state is not None:
            old = self._relayout(self.state.caches, self.state.capacity, S, S_old - S, cap_new)
            caches = [_cat(a, b) for a, b in zip(old, new_caches)]
            pad_all = torch.cat([self.state.pad + (S - S_old), pad_new])
        else:
            caches, pad_all = new_caches, pad_new
        self.rows += joined
        self.ends = torch.cat([ends_old, ends_new])
        self.next = torch.cat([self.next, torch.stack(first)])
        self._set_state(pad_all, cap_new, caches, S)

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
        if not keep:
            self.state, self.ends = None, torch.zeros(0, dtype=torch.long)
            self.next = self.next[:0]
            return
        idx = torch.tensor(keep, device=self.device)
        st = self.state
        pad, S, cap = st.pad[idx], st.start, st.capacity
        caches = [_rows(c, idx) for c in st.caches]
        ends = self.ends[torch.tensor(keep)]
        shift = int(pad.min())
        if shift:  # every remaining row starts later: move the batch left, shrink the caches
            new_cap = int(ends.max()) - shift
            caches = self._relayout(caches, cap, S - shift, shift, new_cap)
            pad, S, ends, cap = pad - shift, S - shift, ends - shift, new_cap
        self.ends, self.next = ends, self.next[idx]
        self._set_state(pad, cap, caches, S)

    def _step(self, out: Outcome) -> None:
        st = self.state
        logits = self.model.next_token_logits(self.next.unsqueeze(1), st)
        st.advance(1)
        groups: dict[int, list[int]] = {}
        for i, (rid, _) in enumerate(self.rows):
            groups.setdefault(rid, []).append(i)
        nxt = torch.empty_like(self.next)
        finished = []
        for rid, idx in groups.items():
            req = self.requests[rid]
            rows = [self.rows[i][1] for i in idx]
            idx_t = torch.tensor(idx, device=self.device)
            tok, info = self._sample(req, logits[idx_t], rows)
            nxt[idx_t] = tok
            for i, d in zip(idx, self._emit(out, rid, rows, tok, info)):
                if d:
                    finished.append(i)
        self.next = nxt
        if finished:
            gone = set(finished)
            self._keep([i for i in range(len(self.rows)) if i not in gone])


def _rows(c: KVCache, idx: torch.Tensor) -> KVCache:
    return KVCache.of(c.k.index_select(0, idx), c.v.index_select(0, idx), ring=c.ring)


def _cat(a: KVCache, b: KVCache) -> KVCache:
    return KVCache.of(torch.cat([a.k, b.k]), torch.cat([a.v, b.v]), ring=a.ring)
