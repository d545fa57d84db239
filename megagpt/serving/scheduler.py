"""The serving loop: rank 0 turns requests into engine plans, one iteration at a time, and hands
each request its tokens and text; under tensor parallelism it broadcasts every plan first, and the
other ranks (``follow``) apply the same plans to their shards in lockstep.

The engine decides when a row is finished (EOD, a stop string, the length) and hands each token
with its row's text; a ``Handle`` only streams the text that can no longer change: a trailing
incomplete UTF-8 character and a tail that may begin a stop string are held back, so the streamed
pieces add up to the text a non-streamed request gets. The scheduler itself reacts to finishes and
takes out the requests that were cancelled (a client gone) or failed.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
import threading
from dataclasses import dataclass, field

import torch.distributed as dist

from megagpt.inference.batching import BatchEngine, Job, Plan, TokenEvent


@dataclass
class Row:
    tokens: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # (token, logprob, top entries) per generated token
    text: str = ""
    sent: int = 0  # characters of ``text`` already streamed
    finish: str | None = None


class Handle:
    """Rank 0's view of one request in flight. ``events`` (an asyncio queue on the server's loop)
    (shared by the handles of one HTTP request) receives ``(tag, "delta", row, text, logprob
    entries)``, ``(tag, "finish", row, reason)`` and finally ``(tag, "done", None)`` or
    ``(tag, "error", message)``. The job should ask for ``stream_text``: its events carry the text."""

    def __init__(self, job: Job, *, loop: asyncio.AbstractEventLoop, events: asyncio.Queue, tag: int = 0):
        self.job, self.loop = job, loop
        self.rows = [Row() for _ in range(job.params.num_return_sequences)]
        self.events, self.tag = events, tag
        self.prompt_logprobs = None
        self._hold = max((len(s) for s in job.params.stop), default=1) - 1

    def push(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (self.tag, *event))
        except RuntimeError:  # the server's loop is closed (shutting down): nobody is listening
            pass

    def prompt_entries(self) -> list:
        """(token, logprob, top entries) per prompt token, when the job asked for them (the first
        token's are None)."""
        return [(t, v, top) for t, (v, top) in zip(self.job.prompt, self.prompt_logprobs or [])]

    @property
    def done(self) -> bool:
        return all(r.finish for r in self.rows)

    def on_token(self, e: TokenEvent) -> None:
        """Take one token of row ``e.row``; stream what of its text can no longer change."""
        row = self.rows[e.row]
        if e.logprob is not None:  # EOD's too: a scoring client counts one entry per generated token
            row.logprobs.append((e.token, e.logprob, e.top))
        if e.finished != "eod":
            row.tokens.append(e.token)
        row.text = e.text
        if e.finished:
            row.finish = "length" if e.finished == "length" else "stop"  # OpenAI's name for EOD too
        ready = row.text
        if not row.finish:
            ready = ready[:len(ready) - self._hold] if self._hold else ready
            ready = ready.rstrip("\ufffd")
        entries = row.logprobs[-1:] if e.logprob is not None else []
        if len(ready) > row.sent or entries:
            self.push("delta", e.row, ready[row.sent:], entries)
            row.sent = max(row.sent, len(ready))
        if row.finish:
            self.push("finish", e.row, row.finish)


class Scheduler:
    """Runs the engine on rank 0 in a thread of its own. ``submit`` and ``call`` are thread-safe."""

    def __init__(self, engine: BatchEngine, *, group_size: int = 1, keepalive_s: float = 30.0):
        self.engine, self.group_size, self.keepalive_s = engine, group_size, keepalive_s
        self.inbox: queue.Queue = queue.Queue()
        self.waiting: list[Handle] = []
        self.handles: dict[int, Handle] = {}
        self.to_drop: list = []  # requests (rid) that failed, to take out at the next iteration
        self.ids = itertools.count(1)
        self.thread = threading.Thread(target=self._run, name="megagpt-scheduler", daemon=True)
        self.failure: BaseException | None = None
        self.iterations = 0  # engine iterations run
        self.cancelled = 0  # requests given up by their clients before they finished

    def start(self) -> Scheduler:
        self.thread.start()
        return self

    def alive(self) -> bool:
        return self.thread.is_alive()

    def next_id(self) -> int:
        return next(self.ids)

    def submit(self, handle: Handle) -> Handle:
        self.inbox.put(("job", handle))
        return handle

    def cancel(self, rid: int) -> None:
        self.inbox.put(("cancel", rid))

    def call(self, name: str, *args) -> concurrent.futures.Future:
        """Run ``engine.calls[name](*args)`` on every rank between two decode steps."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.inbox.put(("call", (next(self.ids), name, args, fut)))
        return fut

    def shutdown(self, timeout: float = 30.0) -> None:
        self.inbox.put(("stop", None))
        self.thread.join(timeout)

    # -- the loop -----------------------------------------------------------------------------
    def _collect(self, plan: Plan, futures: dict, block: bool) -> None:
        timeout = self.keepalive_s if block else None
        while True:
            try:
                kind, item = self.inbox.get(block=block, timeout=timeout) if block else self.inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            if kind == "job":
                self.waiting.append(item)
            elif kind == "cancel":
                n = len(self.waiting)
                self.waiting = [h for h in self.waiting if h.job.rid != item]
                h = self.handles.pop(item, None)
                if h is not None:
                    plan.drop.append(item)
                self.cancelled += h is not None or len(self.waiting) < n
            elif kind == "call":
                cid, name, args, fut = item
                futures[cid] = fut
                plan.calls.append((cid, name, args))
            else:
                plan.stop = True

    def _run(self) -> None:
        try:
            while True:
                plan, futures = Plan(), {}
                self._collect(plan, futures, block=not (self.engine.active or self.waiting))
                plan.drop += self.to_drop
                self.to_drop = []
                free = self.engine.max_rows - len(self.engine.kept_after(plan.drop))
                while self.waiting and self.waiting[0].job.params.num_return_sequences <= free:
                    h = self.waiting.pop(0)
                    free -= h.job.params.num_return_sequences
                    self.handles[h.job.rid] = h
                    plan.add.append(h.job)
                if self.group_size > 1:
                    dist.broadcast_object_list([plan], src=0)
                if plan.stop:
                    return
                self.iterations += 1
                try:
                    out = self.engine.apply(plan)
                except Exception as e:  # noqa: BLE001 - fail what was in flight, keep serving
                    self.engine.reset()
                    for h in self.handles.values():
                        h.push("error", f"{type(e).__name__}: {e}")
                    self.handles.clear()
                    for fut in futures.values():
                        fut.set_exception(e)
                    continue
                self._deliver(out, futures)
        except BaseException as e:  # noqa: BLE001 - /health reports it
            self.failure = e
            for h in list(self.handles.values()) + self.waiting:
                h.push("error", f"the server's decode loop stopped: {type(e).__name__}: {e}")
            raise

    def _deliver(self, out, futures) -> None:
        for cid, result in out.calls.items():
            fut = futures.pop(cid)
            (fut.set_exception if isinstance(result, BaseException) else fut.set_result)(result)
        for rid, entries in out.prompt_logprobs.items():
            if rid in self.handles:
                self.handles[rid].prompt_logprobs = entries
        for rid, message in out.errors.items():
            h = self.handles.pop(rid, None)
            if h is not None:
                h.push("error", message)
        for e in out.tokens:
            h = self.handles.get(e.rid)
            if h is None:
                continue
            try:
                h.on_token(e)
            except Exception as err:  # noqa: BLE001 - this request fails, the loop and the others go on
                self.handles.pop(e.rid)
                self.to_drop.append(e.rid)
                h.push("error", f"{type(err).__name__}: {err}")
        for rid, h in list(self.handles.items()):
            if h.job.params.max_new_tokens == 0:  # echo only: the prompt's logprobs are the answer
                for i, row in enumerate(h.rows):
                    row.finish = "length"
                    h.push("delta", i, "", [])
                    h.push("finish", i, "length")
            if h.done:  # the engine has taken its rows out already
                self.handles.pop(rid).push("done", None)


def follow(engine: BatchEngine) -> None:
    """The other ranks of a tensor-parallel server: apply rank 0's plans until it says stop."""
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        plan: Plan = box[0]
        if plan.stop:
            return
        try:
            engine.apply(plan)
        except Exception:  # noqa: BLE001 - rank 0 met the same error and reports it
            engine.reset()
