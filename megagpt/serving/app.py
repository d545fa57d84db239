"""The HTTP side of ``megagpt/serve.py``: OpenAI's ``/v1/completions``, ``/v1/chat/completions``
and ``/v1/models``, vLLM's ``/tokenize``, ``/detokenize`` and ``/tokenizer_info`` (what
lm-evaluation-harness's remote tokenizer reads), ``/health``, and the chat page at ``/``.

Built on Starlette (the ASGI toolkit FastAPI itself is made of) and served by uvicorn: the
request checks are this project's own (``protocol.py``, errors in OpenAI's shape naming the
field), so FastAPI's pydantic layer would only add a second, differently worded set of errors.
Handlers never touch the model: they put ``Handle``s in the scheduler's inbox and read their
events; the decode loop runs in its own thread.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from megagpt.dialogue.mmi import history_ids
from megagpt.inference.batching import Job
from megagpt.serving.protocol import (
    APIError,
    LogprobBuilder,
    Usage,
    _number,
    encode,
    flag,
    parse_body,
    parse_common,
    parse_messages,
    parse_prompts,
)
from megagpt.serving.scheduler import Handle, Scheduler

CHAT_PAGE = Path(__file__).with_name("chat.html")


class Service:
    """Everything a handler needs: the served name, the tokenizer, the limits and the scheduler."""

    def __init__(self, name: str, tok, n_positions: int, scheduler: Scheduler, *, mmi: bool = False,
                 max_body: int = 4 << 20, chat_max_tokens: int = 64):
        self.name, self.tok, self.n_positions, self.scheduler = name, tok, n_positions, scheduler
        self.mmi, self.max_body, self.chat_max_tokens = mmi, max_body, chat_max_tokens
        self.max_n = scheduler.engine.max_rows
        self.created = int(time.time())

    # -- helpers ------------------------------------------------------------------------------
    async def body(self, request: Request) -> dict:
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > self.max_body:
            raise APIError(413, f"the request body has {size} bytes; this server takes at most {self.max_body} "
                                "(--max-body-mb).", code="request_too_large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.max_body:
                raise APIError(413, f"the request body is over {self.max_body} bytes (--max-body-mb).",
                               code="request_too_large")
        return parse_body(bytes(raw))

    def check_model(self, model: str | None) -> None:
        if model not in (None, self.name):
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{self.name}'.",
                           param="model", code="model_not_found")

    def check_length(self, prompt: list[int], max_tokens: int, index: int | None = None) -> None:
        if len(prompt) + max_tokens > self.n_positions:
            which = "" if index is None else f" (prompt {index})"
            raise APIError(400, f"This model's maximum context length is {self.n_positions} tokens; the prompt"
                                f"{which} has {len(prompt)} tokens and max_tokens is {max_tokens}.",
                           param="max_tokens" if len(prompt) < self.n_positions else "prompt",
                           code="context_length_exceeded")

    def envelope(self, rid: str, obj: str) -> dict:
        """The fields every response and chunk starts with."""
        return {"id": rid, "object": obj, "created": int(time.time()), "model": self.name}

    def piece(self, token: int) -> str:
        return self.tok.sp.id_to_piece(int(token)).replace("\u2581", " ")

    def handles(self, prompts, common, *, max_tokens, logprobs=None, echo_logprobs=None, lstrip=False):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        if not self.scheduler.alive():
            raise APIError(503, f"the decode loop stopped ({self.scheduler.failure!r}); restart the server.",
                           kind="server_error")
        seed = common.seed % (2 ** 62) if common.seed is not None else random.randrange(2 ** 31)
        out = []
        for i, prompt in enumerate(prompts):
            p = common.params
            params = dataclasses.replace(p, max_new_tokens=max_tokens, seed=seed + i, stop=list(common.stop))
            job = Job(self.scheduler.next_id(), prompt, params, logprobs, echo_logprobs, common.presence,
                      common.frequency, stream_text=True, lstrip=lstrip)
            out.append(Handle(job, loop=loop, events=events, tag=i))
        for h in out:
            self.scheduler.submit(h)
        return out, events

    async def wait(self, handles, events, request: Request) -> None:
        """Until every handle is done; cancels them if the client goes away."""
        left, checked = len(handles), time.monotonic()
        while left:
            try:
                ev = await asyncio.wait_for(events.get(), 0.5)
            except asyncio.TimeoutError:
                ev = None
            if time.monotonic() - checked >= 0.5:  # also while tokens flow: a gone client frees its rows
                checked = time.monotonic()
                if await request.is_disconnected():
                    self.cancel(handles)
                    raise APIError(499, "the client disconnected.")
            if ev is None:
                if not self.scheduler.alive():
                    raise APIError(503, "the decode loop stopped; restart the server.", kind="server_error")
                continue
            if ev[1] == "done":
                left -= 1
            elif ev[1] == "error":
                self.cancel(handles)
                raise APIError(500, ev[2], kind="server_error")

    def cancel(self, handles) -> None:
        for h in handles:
            self.scheduler.cancel(h.job.rid)

    # -- endpoints ----------------------------------------------------------------------------
    async def models(self, request: Request):
        return JSONResponse({"object": "list", "data": [{
            "id": self.name, "object": "model", "created": self.created, "owned_by": "megagpt",
            "max_model_len": self.n_positions, "mmi": self.mmi}]})

    async def health(self, request: Request):
        s = self.scheduler
        if s.alive():
            return JSONResponse({"status": "ok", "rows": s.engine.active, "waiting": len(s.waiting),
                                 "iterations": s.iterations, "cancelled": s.cancelled})
        return JSONResponse({"status": "failed", "error": repr(self.scheduler.failure)}, status_code=503)

    async def page(self, request: Request):
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))

    async def tokenizer_info(self, request: Request):
        eod = self.tok.sp.id_to_piece(self.tok.eod_id)
        return JSONResponse({"eos_token": eod, "bos_token": None, "pad_token": None,
                             "model_max_length": self.n_positions, "vocab_size": self.tok.vocab_size})

    async def tokenize(self, request: Request):
        body = await self.body(request)
        text = body.get("prompt")
        if not isinstance(text, str):
            raise APIError(400, "'prompt' must be a string.", param="prompt")
        ids = encode(self.tok, text)
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": self.n_positions})

    async def detokenize(self, request: Request):
        body = await self.body(request)
        ids = body.get("tokens")
        if not (isinstance(ids, list) and all(isinstance(t, int) and 0 <= t < self.tok.vocab_size for t in ids)):
            raise APIError(400, f"'tokens' must be a list of token ids in [0, {self.tok.vocab_size}).", param="tokens")
        return JSONResponse({"prompt": self.tok.decode(ids)})

    async def completions(self, request: Request):
        body = await self.body(request)
        common = parse_common(body, max_n=self.max_n)
        self.check_model(common.model)
        prompts = parse_prompts(body, self.tok)
        echo = flag(body, "echo")
        logprobs = _number(body, "logprobs", None, lo=0, hi=20, integer=True)
        max_tokens = 16 if common.max_tokens is None else common.max_tokens
        if max_tokens == 0 and not echo:
            raise APIError(400, "'max_tokens' must be >= 1 (0 only with echo, to score the prompt).",
                           param="max_tokens")
        for i, p in enumerate(prompts):
            self.check_length(p, max_tokens, i if len(prompts) > 1 else None)
        handles, events = self.handles(prompts, common, max_tokens=max_tokens, logprobs=logprobs,
                                       echo_logprobs=logprobs if echo and logprobs is not None else None)
        rid, n = f"cmpl-{uuid.uuid4().hex}", common.params.num_return_sequences
        if common.stream:
            return self.stream(request, handles, events, rid, "text_completion", n, common.include_usage,
                               echo=echo, logprobs=logprobs)
        await self.wait(handles, events, request)
        choices = []
        for i, h in enumerate(handles):
            prompt_text = self.tok.decode(h.job.prompt) if echo else ""
            for j, row in enumerate(h.rows):
                lp = None
                if logprobs is not None:
                    b = LogprobBuilder(self.piece, strip_first=echo)
                    for t, v, top in (h.prompt_entries() if echo else []) + row.logprobs:
                        b.add(t, v, top)
                    lp = b.body()
                choices.append({"index": i * n + j, "text": prompt_text + row.text, "logprobs": lp,
                                "finish_reason": row.finish})
        return JSONResponse({**self.envelope(rid, "text_completion"), "choices": choices,
                             "usage": Usage.of(handles).body()})

    async def chat(self, request: Request):
        body = await self.body(request)
        common = parse_common(body, max_n=self.max_n)
        self.check_model(common.model)
        turns = parse_messages(body)
        for key in ("logprobs", "top_logprobs"):
            if body.get(key) not in (None, False, 0):
                raise APIError(400, f"'{key}' is not supported for chat; use /v1/completions.", param=key,
                               code="unsupported_parameter")
        mmi = flag(body, "mmi")
        if mmi and not self.mmi:
            raise APIError(400, "'mmi' needs a backward model: start the server with --backward.", param="mmi")
        mmi_n = _number(body, "mmi_n", min(16, self.max_n), lo=1, hi=self.max_n, integer=True) if mmi else 1
        weight = float(_number(body, "mmi_weight", 0.0)) if mmi else 0.0
        if mmi and common.params.num_return_sequences != 1:
            raise APIError(400, "'n' must be 1 with 'mmi' (MMI picks one reply from 'mmi_n' samples).", param="n")
        max_tokens = self.chat_max_tokens if common.max_tokens is None else common.max_tokens
        if not 1 <= max_tokens < self.n_positions:
            raise APIError(400, f"'max_tokens' must be in [1, {self.n_positions - 1}], got {max_tokens}.",
                           param="max_tokens", code="context_length_exceeded")
        prompt = history_ids(self.tok, turns, self.n_positions - max_tokens)
        if mmi:
            common.params.num_return_sequences = mmi_n
        handles, events = self.handles([prompt], common, max_tokens=max_tokens, lstrip=True)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if mmi:
            return await self.chat_mmi(request, handles, events, rid, turns, weight, common)
        if common.stream:
            return self.stream(request, handles, events, rid, "chat.completion.chunk",
                               common.params.num_return_sequences, common.include_usage)
        await self.wait(handles, events, request)
        h = handles[0]
        choices = [{"index": j, "message": {"role": "assistant", "content": row.text}, "logprobs": None,
                    "finish_reason": row.finish} for j, row in enumerate(h.rows)]
        return JSONResponse({**self.envelope(rid, "chat.completion"), "choices": choices,
                             "usage": Usage.of(handles).body()})

    async def chat_mmi(self, request, handles, events, rid, turns, weight, common):
        await self.wait(handles, events, request)
        h = handles[0]
        cands = [r.tokens or [self.tok.eod_id] for r in h.rows]
        scored = await asyncio.wrap_future(self.scheduler.call("mmi", turns, cands, weight))
        best = max(range(len(scored)), key=lambda i: scored[i].score)
        text, finish = scored[best].text, h.rows[best].finish
        usage = Usage.of(handles)
        extra = {"mmi": {"candidates": len(scored), "chosen": best, "score": scored[best].score}}
        if not common.stream:
            return JSONResponse({**self.envelope(rid, "chat.completion"), "choices": [{"index": 0, "message": {
                "role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}],
                "usage": usage.body(), **extra})
        base = self.envelope(rid, "chat.completion.chunk")

        async def chunks():
            for delta, fin in (({"role": "assistant", "content": ""}, None), ({"content": text}, None), ({}, finish)):
                yield sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}],
                           **(extra if fin else {})})
            if common.include_usage:
                yield sse({**base, "choices": [], "usage": usage.body()})
            yield "data: [DONE]\n\n"
        return StreamingResponse(chunks(), media_type="text/event-stream")

    def stream(self, request, handles, events, rid, obj, n, include_usage, *, echo=False, logprobs=None):
        base = self.envelope(rid, obj)
        chat = obj.startswith("chat")

        builders: dict[int, LogprobBuilder] = {}  # per choice: offsets run on across its chunks

        def choice(index, text, finish=None, entries=None, role=False):
            if chat:
                delta = {} if text is None else {"role": "assistant", "content": text} if role else {"content": text}
                return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            lp = None
            if entries is not None and logprobs is not None:
                b = builders.setdefault(index, LogprobBuilder(self.piece, strip_first=echo))
                start = len(b.tokens)
                for t, v, top in entries:
                    b.add(t, v, top)
                lp = b.body(start)
            return {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}

        async def chunks():
            left, finished, echoed = len(handles), False, set()
            try:
                for i, h in enumerate(handles):
                    for j in range(n):
                        if chat:
                            yield sse({**base, "choices": [choice(i * n + j, "", role=True)]})
                        elif echo:
                            yield sse({**base, "choices": [choice(i * n + j, self.tok.decode(h.job.prompt))]})
                while left:
                    tag, kind, *rest = await events.get()
                    h = handles[tag]
                    if kind == "delta":
                        row, text, entries = rest
                        if not chat and echo and logprobs is not None and h.prompt_logprobs \
                                and (tag, row) not in echoed:  # the prompt's entries come first
                            echoed.add((tag, row))
                            entries = h.prompt_entries() + entries
                        yield sse({**base, "choices": [choice(tag * n + row, text, entries=entries)]})
                    elif kind == "finish":
                        row, reason = rest
                        yield sse({**base, "choices": [choice(tag * n + row, None if chat else "", reason)]})
                    elif kind == "done":
                        left -= 1
                    else:
                        yield sse({"error": APIError(500, rest[0], kind="server_error").body()["error"]})
                        break
                finished = True
                if include_usage:
                    yield sse({**base, "choices": [], "usage": Usage.of(handles).body()})
                yield "data: [DONE]\n\n"
            finally:
                if not finished:  # the client went away (or the loop failed): free the batch rows
                    self.cancel(handles)
        return StreamingResponse(chunks(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def build_app(service: Service) -> Starlette:
    def guarded(fn):
        async def endpoint(request: Request):
            try:
                return await fn(request)
            except APIError as e:
                return JSONResponse(e.body(), status_code=e.status)
            except Exception as e:  # noqa: BLE001 - a bad request must never take the server down
                return JSONResponse(APIError(500, f"{type(e).__name__}: {e}", kind="server_error").body(),
                                    status_code=500)
        return endpoint

    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").body(),
                            status_code=exc.status_code)

    s = service
    routes = [Route("/", guarded(s.page)), Route("/health", guarded(s.health)),
              Route("/v1/models", guarded(s.models)),
              Route("/v1/completions", guarded(s.completions), methods=["POST"]),
              Route("/v1/chat/completions", guarded(s.chat), methods=["POST"]),
              Route("/tokenizer_info", guarded(s.tokenizer_info)),
              Route("/tokenize", guarded(s.tokenize), methods=["POST"]),
              Route("/detokenize", guarded(s.detokenize), methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
