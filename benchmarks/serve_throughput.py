"""Serving throughput: ``megagpt/serve.py`` (continuous batching) under concurrent streaming
clients, against Hugging Face ``generate`` one request at a time, same weights, same run.

The server runs as a subprocess (``--port 0 --max-batch 16``, its own thread default or ``--server-threads``);
real HTTP clients (threads, the standard library's ``http.client``) stream ``POST /v1/completions``
with the prompt as token ids (``--prompt-tokens`` ids drawn with a fixed seed from the tokenizer's
ordinary pieces, a different prompt per request), ``max_tokens`` = ``--new-tokens``, greedy, and
``stream_options.include_usage``. For each ``--concurrency`` level ``c`` the same requests run with
``c`` in flight at a time; concurrency 1 is the "requests one after another" baseline through the
same server. Per level: generated tokens (the usage's ``completion_tokens``: the server stops at
EOD, so lengths are counted, not assumed), aggregate tokens/s (tokens / wall time of the level),
time to first token (from sending to the first chunk with text), per-token latency (the gaps
between text chunks after the first; the footnote says if a chunk ever held more than one token)
and whole-request latency, as p50/p99.

The baseline, in this process before the server starts: ``AutoModelForCausalLM.from_pretrained``
of the same weights (``megagpt.formats.hf.write_hf_dir``) and ``generate`` over the same prompts one
at a time, greedy, stopping at EOD exactly as the server does (no ``min_new_tokens``), so both do
the same work; a streamer timestamps every token. ``torch.set_num_threads(--threads)`` there (default:
every core, HF's fastest here). The last column says whether the server's text equals HF's.

The model: by default the demo model's trained weights (``demo/run/model.safetensors``: 4 layers,
n_positions 128) with its position embedding tiled to ``--n-positions`` (256) rows, since
prompt + new tokens (192) exceed its 128 positions; ``--model`` serves a given model instead.

    python -m benchmarks.serve_throughput                      # 64 + 128 tokens, concurrency 1 4 16, 16 requests
    python -m benchmarks.serve_throughput --quick              # smoke run: 4 requests, 16 new tokens
    python -m benchmarks.serve_throughput --model demo/run/model.safetensors --prompt-tokens 32 --new-tokens 64
"""
from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo" / "run" / "model.safetensors"
WPE = "embed.wpe.weight"


def pct(xs, q: float) -> float:
    """The q-th percentile, linearly interpolated (numpy's default); nan for no data."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# -- the model ------------------------------------------------------------------------------------
def prepare_model(args, tmp: Path):
    """(export path, HF directory, loaded megagpt model, tokenizer, a sentence on the weights)."""
    import megagpt
    from megagpt.formats import read_weights
    from megagpt.formats.hf import write_hf_dir
    from megagpt.formats.weights import save_export
    from megagpt.model import full_state_dict

    need = args.prompt_tokens + args.new_tokens
    if args.model:
        path, what = Path(args.model), f"{args.model} as given"
    else:
        if not DEMO.is_file():
            raise SystemExit(f"error: {DEMO}: not found (run scripts/demo.sh first, or pass --model).")
        cfg, full, meta = read_weights(DEMO)
        old = cfg.n_positions
        if args.n_positions < need:
            raise SystemExit(f"error: --n-positions {args.n_positions} < prompt + new tokens ({need}).")
        new_cfg = dataclasses.replace(cfg, n_positions=args.n_positions).validate()
        tensors = {k: full[k] for k in full}
        wpe = tensors[WPE]
        tensors[WPE] = wpe.repeat(math.ceil(args.n_positions / old), 1)[:args.n_positions].clone()
        tokenizer = meta.get("tokenizer")
        if not (tokenizer and Path(tokenizer).is_file()):
            tokenizer = str(DEMO.parent / "hf" / "tokenizer.model")
        path = save_export(tensors, new_cfg, tmp / "model.safetensors", tokenizer=tokenizer)
        if args.n_positions == old:
            what = f"{DEMO.relative_to(ROOT)} trained weights, unchanged"
        else:
            what = (f"{DEMO.relative_to(ROOT)} trained weights, position embedding tiled {old} -> "
                    f"{args.n_positions} rows (positions >= {old} reuse rows 0..{old - 1}: speed, not quality)")
    model, tok = megagpt.load(path)
    if tok is None:
        raise SystemExit(f"error: {path}: no tokenizer recorded or found beside it.")
    if model.cfg.n_positions < need:
        raise SystemExit(f"error: {path} has n_positions {model.cfg.n_positions} < prompt + new tokens ({need}).")
    hf_dir = write_hf_dir(full_state_dict(model), model.cfg, tmp / "hf", tokenizer_model=tok.path)
    return path, hf_dir, model, tok, what


def make_prompts(tok, n: int, length: int, seed: int) -> list[list[int]]:
    """``n`` distinct prompts of ``length`` ids from the ordinary pieces (no control, unknown,
    unused or byte-fallback pieces)."""
    sp = tok.sp
    ordinary = [i for i in range(tok.vocab_size)
                if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i))]
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        p = rng.choices(ordinary, k=length)
        if tuple(p) not in seen:
            seen.add(tuple(p))
            out.append(p)
    return out


@dataclasses.dataclass
class Result:
    start: float
    end: float
    times: list[float]  # when each piece of text arrived (server: chunks; HF: tokens)
    tokens: int  # generated tokens, EOD not counted
    text: str

    @property
    def ttft(self) -> float:
        return (self.times[0] if self.times else self.end) - self.start

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


# -- the baseline ---------------------------------------------------------------------------------
def hf_baseline(hf_dir: Path, tok, prompts, new: int) -> list[Result]:
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.generation.streamers import BaseStreamer

    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    # the directory's generation_config.json samples; this one is greedy and stops at EOD like the server
    hf.generation_config = GenerationConfig(do_sample=False, eos_token_id=tok.eod_id, pad_token_id=tok.eod_id,
                                            bos_token_id=tok.eod_id)

    class Clock(BaseStreamer):  # put(): the prompt once, then every new token
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def one(prompt, n=new):
        ids = torch.tensor([prompt])
        clock = Clock()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, streamer=clock)
        t1 = time.perf_counter()
        toks = out[0, len(prompt):].tolist()
        if toks and toks[-1] == tok.eod_id:
            toks = toks[:-1]
        return Result(t0, t1, clock.times[1:], len(toks), completion_text(tok, prompt, toks))

    one(prompts[0], 8)  # warm-up
    return [one(p) for p in prompts]


def completion_text(tok, prompt, toks) -> str:
    """The text the server streams for ``toks`` after ``prompt`` (its ``Handle._text``)."""
    head, whole = tok.decode(prompt), tok.decode(prompt + toks)
    return whole[len(head):] if whole.startswith(head) else tok.decode(toks)


# -- the server -----------------------------------------------------------------------------------
class Server:
    def __init__(self, model: Path, max_batch: int, threads: int | None, timeout: float = 300.0):
        cmd = [sys.executable, "-m", "megagpt.serve", "--model", str(model), "--port", "0",
               "--max-batch", str(max_batch)] + ([] if threads is None else ["--threads", str(threads)])
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the server's own default
        self.log: list[str] = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     env=env)
        self.host = self.port = None
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"listening on http://\[?([^\]\s]+?)\]?:(\d+)\s*$", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                self.banner = line.strip()
                break
        if self.port is None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.log))
        self.drain = threading.Thread(target=self._drain, daemon=True)  # keep the pipe from filling up
        self.drain.start()

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stream_completion(host: str, port: int, prompt: list[int], new: int) -> Result:
    body = json.dumps({"prompt": prompt, "max_tokens": new, "temperature": 0, "stop": None, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    conn = http.client.HTTPConnection(host, port, timeout=600)
    try:
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read().decode(errors='replace')[:500]}")
        times, texts, usage, done = [], [], None, False
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            now = time.perf_counter()
            obj = json.loads(data)
            if "error" in obj:
                raise RuntimeError(f"the stream reported an error: {obj['error']}")
            if obj.get("usage"):
                usage = obj["usage"]
            for ch in obj.get("choices") or []:
                if ch.get("text"):
                    times.append(now)
                    texts.append(ch["text"])
        t1 = time.perf_counter()
    finally:
        conn.close()
    if not done or usage is None:
        raise RuntimeError(f"the stream ended without {'[DONE]' if not done else 'a usage chunk'}.")
    return Result(t0, t1, times, int(usage["completion_tokens"]), "".join(texts))


def run_level(server: Server, prompts, concurrency: int, new: int) -> tuple[float, list[Result]]:
    with ThreadPoolExecutor(concurrency) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda p: stream_completion(server.host, server.port, p, new), prompts))
        return time.perf_counter() - t0, results


# -- the report -----------------------------------------------------------------------------------
HEAD = (f"{'':42} {'requests':>8} {'tokens':>6} {'mean len':>8} {'wall s':>7} {'tok/s':>7} "
        f"{'TTFT p50/p99 ms':>16} {'per-token p50/p99 ms':>20} {'request p50/p99 s':>17} {'vs HF':>6} {'same text':>9}")


def row(label: str, wall: float, results: list[Result], hf_rate: float | None, same: str) -> float:
    tokens = sum(r.tokens for r in results)
    rate = tokens / wall
    ttft = [r.ttft * 1e3 for r in results]
    gaps = [g * 1e3 for r in results for g in r.gaps]
    lat = [r.end - r.start for r in results]
    vs = f"{rate / hf_rate:5.2f}x" if hf_rate else f"{'1.00x':>6}"
    print(f"{label:42} {len(results):8d} {tokens:6d} {tokens / len(results):8.1f} {wall:7.2f} {rate:7.0f} "
          f"{pct(ttft, 50):7.1f} /{pct(ttft, 99):7.1f} {pct(gaps, 50):9.2f} /{pct(gaps, 99):9.2f} "
          f"{pct(lat, 50):7.2f} /{pct(lat, 99):7.2f} {vs:>6} {same:>9}", flush=True)
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="serve this export (or HF directory, checkpoint) instead of the demo model")
    ap.add_argument("--n-positions", type=int, default=256, help="without --model: the demo model's positions "
                    "are extended to this many")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128, help="max_tokens per request")
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated levels of requests in flight")
    ap.add_argument("--requests", type=int, default=None, help="requests per level (default: max(level, 16)); "
                    "the baseline runs this many (default 16)")
    ap.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="the baseline's torch.set_num_threads (default: every core)")
    ap.add_argument("--server-threads", type=int, default=None,
                    help="the server's --threads (default: its own: on CPU every core but one, left to HTTP)")
    ap.add_argument("--seed", type=int, default=0, help="for the prompts")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 requests, 16 new tokens, concurrency 1,4")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.new_tokens, args.concurrency = 4, 16, "1,4"
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        raise SystemExit("error: --concurrency takes levels >= 1, e.g. 1,4,16.")
    counts = {c: args.requests or max(c, 16) for c in levels}
    n_base = args.requests or 16
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import transformers

    tmp = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    server = None
    try:
        path, hf_dir, model, tok, what = prepare_model(args, tmp)
        c = model.cfg
        del model
        prompts = make_prompts(tok, max([n_base, *counts.values()]), args.prompt_tokens, args.seed)
        print(f"model: {c.n_layer} layers x {c.n_embd}, {c.n_head} heads, vocab {c.vocab_size}, n_positions "
              f"{c.n_positions}; {what}")
        print(f"requests: prompt {args.prompt_tokens} token ids (seed {args.seed}, distinct per request), "
              f"max_tokens {args.new_tokens}, greedy, streamed; generation stops at EOD on both sides, so "
              f"'tokens' counts what was generated (EOD not counted)")
        st = "its default threads" if args.server_threads is None else f"--threads {args.server_threads}"
        print(f"server: megagpt/serve.py --max-batch {args.max_batch}, {st}; baseline: "
              f"transformers {transformers.__version__} generate (greedy, stops at EOD, batch 1, one request at a "
              f"time), torch.set_num_threads({args.threads}); torch {torch.__version__}, {os.cpu_count()} CPUs")

        hf_results = hf_baseline(hf_dir, tok, prompts[:n_base], args.new_tokens)
        hf_wall = sum(r.end - r.start for r in hf_results)
        hf_text = {tuple(p): r for p, r in zip(prompts, hf_results)}

        server = Server(path, args.max_batch, args.server_threads)
        print(f"server: {server.banner}")
        stream_completion(server.host, server.port, prompts[0], min(8, args.new_tokens))  # warm-up

        print(HEAD)
        hf_rate = row("transformers generate, 1 at a time", hf_wall, hf_results, None, "-")
        rates, chunk_tokens, mismatches = {}, [0, 0], []
        for lvl in levels:
            ps = prompts[:counts[lvl]]
            wall, results = run_level(server, ps, lvl, args.new_tokens)
            matched = [(p, r) for p, r in zip(ps, results) if tuple(p) in hf_text]
            same = sum(r.text == hf_text[tuple(p)].text for p, r in matched)
            for i, (p, r) in enumerate(matched):
                h = hf_text[tuple(p)]
                if r.tokens != h.tokens or r.text != h.text:
                    mismatches.append(f"concurrency {lvl}, request {i}: server {r.tokens} tokens, HF {h.tokens}")
            for r in results:
                chunk_tokens[0] += len(r.times)
                chunk_tokens[1] += r.tokens
            label = f"megagpt serve, concurrency {lvl}" + (" (sequential)" if lvl == 1 else "")
            rates[lvl] = row(label, wall, results, hf_rate, f"{same}/{len(matched)}")
        if 1 in rates:
            for lvl in levels:
                if lvl != 1:
                    print(f"concurrency {lvl} vs {counts[1]} sequential requests (concurrency 1) through the server: "
                          f"{rates[lvl] / rates[1]:.2f}x tokens/s")
        print("tokens/s: generated tokens / wall time (the baseline: the sum of its generate calls); vs HF: "
              "tokens/s over the baseline's; TTFT from sending the request; per-token: gaps between streamed "
              "pieces after the first")
        if chunk_tokens[0] != chunk_tokens[1]:
            print(f"note: the server sent {chunk_tokens[0]} text chunks for {chunk_tokens[1]} tokens (it holds back "
                  f"incomplete characters), so a per-token gap sometimes covers more than one token")
        if mismatches:
            print(f"note: {len(mismatches)} server completions differ from HF's (near-ties in a batch can flip a "
                  f"greedy choice): " + "; ".join(mismatches[:5]) + (" ..." if len(mismatches) > 5 else ""))
    except BaseException:
        if server is not None:
            server.stop()
            print("the server's output:\n" + "".join(server.log[-30:]), file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
            if server.proc.returncode not in (0, -15):
                print(f"note: the server exited with {server.proc.returncode}:\n" + "".join(server.log[-20:]))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
