"""OpenAI's completion and chat-completion requests, checked field by field, and their responses.

Every problem with a request is an ``APIError``: an HTTP status and OpenAI's error object
(``{"error": {"message", "type", "param", "code"}}``) whose message names the field and what was
expected. Extensions beyond OpenAI's fields: ``top_k`` and ``repetition_penalty`` (completions
and chat), and for chat ``mmi`` (rerank ``mmi_n`` sampled replies with the backward model,
DialoGPT's maximum mutual information) and ``mmi_weight``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from megagpt.inference.generation import SamplingParams


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def parse_body(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}).",
                       code="invalid_encoding") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}.",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}.", code="invalid_json")
    return body


def _number(body: dict, key: str, default, *, lo=None, hi=None, integer=False, lo_open=False):
    v = body.get(key, default)
    if v is None:
        v = default
    if v is None:
        return None
    ok = not isinstance(v, bool) and (isinstance(v, int) if integer else isinstance(v, (int, float)))
    kind = "an integer" if integer else "a number"
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        rng = "" if lo is None else (f" > {lo}" if lo_open else f" >= {lo}") + ("" if hi is None else f" and <= {hi}")
        raise APIError(400, f"'{key}' must be {kind}{rng}, got {v!r}.", param=key)
    return v


MAX_STOP = 32  # OpenAI takes 4; lm-evaluation-harness sends a task's stop sequences plus EOS (6 for HumanEval)
GREEDY_BELOW = 1e-5  # a temperature this small is greedy (dividing by it would overflow the logits)


def flag(body: dict, key: str) -> bool:
    """A true/false field (false when absent)."""
    v = body.get(key, False)
    if not isinstance(v, bool):
        raise APIError(400, f"'{key}' must be true or false, got {v!r}.", param=key)
    return v


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not (isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them.", param="stop")
    return stop


def _refuse(body: dict, keys: dict) -> None:
    for key, neutral in keys.items():
        if body.get(key) not in (None, neutral):
            raise APIError(400, f"'{key}' is not supported by this server.", param=key, code="unsupported_parameter")


@dataclass
class Common:
    """What completions and chat share: sampling, choices, stops, penalties, streaming."""

    model: str | None
    params: SamplingParams
    max_tokens: int | None
    stop: list[str]
    stream: bool
    include_usage: bool
    presence: float
    frequency: float
    seed: int | None


def parse_common(body: dict, *, max_n: int) -> Common:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, f"'model' must be a string, got {model!r}.", param="model")
    max_tokens = _number(body, "max_tokens", None, lo=0, integer=True)
    if "max_completion_tokens" in body and body["max_completion_tokens"] is not None:
        max_tokens = _number(body, "max_completion_tokens", None, lo=0, integer=True)
    stream = flag(body, "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise APIError(400, "'stream_options' must be an object.", param="stream_options")
    seed = _number(body, "seed", None, lo=-(2 ** 63), hi=2 ** 63 - 1, integer=True)
    temperature = float(_number(body, "temperature", 1.0, lo=0, hi=2))
    params = SamplingParams(
        max_new_tokens=1,
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=float(_number(body, "top_p", 1.0, lo=0, hi=1, lo_open=True)),
        top_k=0 if body.get("top_k") == -1 else _number(body, "top_k", 0, lo=0, integer=True),  # -1: off (vLLM)
        repetition_penalty=float(_number(body, "repetition_penalty", 1.0, lo=0, lo_open=True)),
        num_return_sequences=_number(body, "n", 1, lo=1, hi=max_n, integer=True),
        seed=0)
    _refuse(body, {"logit_bias": {}, "suffix": "", "best_of": 1, "tools": [], "functions": [], "tool_choice": "none",
                   "response_format": {"type": "text"}})
    return Common(model, params, max_tokens, _stop(body), stream, bool(opts.get("include_usage", False)),
                  float(_number(body, "presence_penalty", 0.0, lo=-2, hi=2)),
                  float(_number(body, "frequency_penalty", 0.0, lo=-2, hi=2)), seed)


def parse_prompts(body: dict, tok) -> list[list[int]]:
    """``prompt``: a string, a list of strings, a list of token ids, or a list of such lists."""
    if "prompt" not in body:
        raise APIError(400, "'prompt' is required.", param="prompt")
    p = body["prompt"]
    if isinstance(p, str):
        items = [p]
    elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        items = [p]
    elif isinstance(p, list) and p and all(isinstance(x, (str, list)) for x in p):
        items = p
    else:
        raise APIError(400, "'prompt' must be a string, a list of strings, a list of token ids, or a list of "
                            "token-id lists.", param="prompt")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            ids = encode(tok, item)
        else:
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < tok.vocab_size for t in item):
                raise APIError(400, f"'prompt'[{i}] must hold token ids in [0, {tok.vocab_size}).", param="prompt")
            ids = list(item)
        out.append(ids or [tok.eod_id])
    return out


def encode(tok, text: str) -> list[int]:
    """Text to ids, with the EOD marker's own text read as the EOD token (as tokenizers treat their
    special tokens)."""
    marker = tok.sp.id_to_piece(tok.eod_id)
    parts = text.split(marker)
    ids: list[int] = []
    for j, part in enumerate(parts):
        if j:
            ids.append(tok.eod_id)
        if part:
            ids += tok.encode(part)
    return ids


def parse_messages(body: dict) -> list[str]:
    """Chat ``messages`` as dialogue turns: the user's and assistant's contents in order (system
    messages are left out: DialoGPT-style models were trained on turns only)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects.", param="messages")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"'messages'[{i}] must be an object with role system, user or assistant.",
                           param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                       for c in content):
                raise APIError(400, f"'messages'[{i}].content: only text parts are supported.", param="messages")
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str):
            raise APIError(400, f"'messages'[{i}].content must be a string.", param="messages")
        if m["role"] in ("user", "assistant"):
            turns.append(content)
    if not turns:
        raise APIError(400, "'messages' holds no user or assistant turn.", param="messages")
    return turns


@dataclass
class Usage:
    prompt: int = 0
    completion: int = 0

    @classmethod
    def of(cls, handles) -> Usage:
        """The prompt and generated tokens of finished requests (``Handle``s)."""
        return cls(sum(len(h.job.prompt) for h in handles),
                   sum(len(r.tokens) for h in handles for r in h.rows))

    def body(self) -> dict:
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion,
                "total_tokens": self.prompt + self.completion}


@dataclass
class LogprobBuilder:
    """OpenAI's legacy completion ``logprobs`` object, built token by token."""

    piece: object  # id -> text
    strip_first: bool = False  # the text starts without the first piece's leading space
    tokens: list = field(default_factory=list)
    token_logprobs: list = field(default_factory=list)
    top_logprobs: list = field(default_factory=list)
    text_offset: list = field(default_factory=list)
    offset: int = 0

    def add(self, token: int, logprob, top) -> None:
        text = self.piece(token)
        if self.strip_first and not self.tokens and text.startswith(" "):
            text = text[1:]
        self.tokens.append(text)
        self.token_logprobs.append(logprob)
        self.top_logprobs.append(None if top is None else {self.piece(t): lp for t, lp in top})
        self.text_offset.append(self.offset)
        self.offset += len(text)

    def body(self, start: int = 0) -> dict:
        """The entries from ``start`` on (a streamed chunk's); offsets count from the choice's start."""
        return {"tokens": self.tokens[start:], "token_logprobs": self.token_logprobs[start:],
                "top_logprobs": self.top_logprobs[start:], "text_offset": self.text_offset[start:]}
