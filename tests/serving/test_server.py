"""The OpenAI-compatible server, live on a random port, through the official ``openai`` client and
raw HTTP: completions, chat, streaming, n, stop, logprobs, continuous batching under 16
concurrent clients, bad requests, a client leaving mid-stream, and a tensor-parallel server."""
import json
import os
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.serve import ROOT, start_server

openai = pytest.importorskip("openai")
requests = pytest.importorskip("requests")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def complete(client, prompt, **kw):
    return client.completions.create(model="fwd", prompt=prompt, temperature=0, **kw)


def test_completions_streaming_n_and_stop(client, server):
    r = complete(client, "The model", max_tokens=24)
    text = r.choices[0].text
    assert r.model == "fwd" and text and r.usage.prompt_tokens > 0 and r.usage.completion_tokens == 24
    assert r.choices[0].finish_reason == "length"
    tiny = client.completions.create(model="fwd", prompt="The model", max_tokens=24, temperature=1e-9)
    assert tiny.choices[0].text == text  # a vanishing temperature is greedy, not an overflow
    # streaming: the chunks add up to the non-streamed text (greedy), then [DONE]
    pieces, reasons = [], []
    for chunk in complete(client, "The model", max_tokens=24, stream=True):
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert len(pieces) > 5 and "".join(pieces) == text and reasons[-1] == "length"
    raw = requests.post(server.url + "/v1/completions", json={"model": "fwd", "prompt": "The model", "max_tokens": 3,
                                                           "temperature": 0, "stream": True}).text
    assert raw.rstrip().endswith("data: [DONE]")
    # stop: cut before the first occurrence of a string the free run produced
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = complete(client, "The model", max_tokens=24, stop=[stop])
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    # n > 1 with a seed: n different samples, reproducible
    a = client.completions.create(model="fwd", prompt="The model", max_tokens=12, n=3, temperature=1.0, seed=7)
    b = client.completions.create(model="fwd", prompt="The model", max_tokens=12, n=3, temperature=1.0, seed=7)
    assert sorted(c.index for c in a.choices) == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1
    # several prompts in one request, each with its own choices
    two = complete(client, ["The model", "A server"], max_tokens=24)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == text


def test_chat_streaming_and_mmi(client):
    msgs = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Hello, how are you?"}]
    r = client.chat.completions.create(model="fwd", messages=msgs, temperature=0, max_tokens=20)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and text and r.object == "chat.completion"
    chunks = list(client.chat.completions.create(model="fwd", messages=msgs, temperature=0, max_tokens=20, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    zh = client.chat.completions.create(model="fwd", messages=[{"role": "user", "content": "你好，今天天气怎么样？"}],
                                        temperature=0.8, max_tokens=20, seed=1)
    assert zh.choices[0].message.content is not None
    mmi = client.chat.completions.create(model="fwd", messages=msgs, max_tokens=20, seed=3,
                                         extra_body={"mmi": True, "mmi_n": 4, "top_k": 50})
    extra = mmi.model_extra["mmi"]
    assert extra["candidates"] == 4 and 0 <= extra["chosen"] < 4 and mmi.choices[0].message.content is not None


def test_prompt_logprobs_for_scoring(server, serve_models):
    """What lm-evaluation-harness's local-completions sends: token ids, echo, logprobs, one new
    token. The prompt's log-probabilities equal megagpt's own scoring."""
    from megagpt.inference import load, loglikelihood

    model, tok = load(serve_models["forward"])
    ctx, cont = tok.encode("The server answers"), tok.encode(" every request")
    body = {"model": "fwd", "prompt": [ctx + cont], "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True}
    out = requests.post(server.url + "/v1/completions", json=body).json()["choices"][0]["logprobs"]
    n = len(ctx + cont)
    assert len(out["token_logprobs"]) == n + 1 and out["token_logprobs"][0] is None
    ref = loglikelihood(model, [(ctx, cont)])[0]
    assert sum(out["token_logprobs"][len(ctx):n]) == pytest.approx(ref.logprob, abs=1e-4)
    greedy = all(v == max(top.values()) for v, top in zip(out["token_logprobs"][len(ctx):n],
                                                          out["top_logprobs"][len(ctx):n]))
    assert greedy == ref.greedy
    # scoring alone (max_tokens 0), with and without streaming: the prompt's entries, finish 'length'
    body.update(max_tokens=0, prompt=ctx + cont)
    only = requests.post(server.url + "/v1/completions", json=body).json()["choices"][0]
    assert only["logprobs"]["token_logprobs"] == out["token_logprobs"][:n] and only["finish_reason"] == "length"
    assert only["logprobs"]["text_offset"][:2] == [0, len(only["logprobs"]["tokens"][0])]
    chunks = [json.loads(line[6:]) for line in requests.post(server.url + "/v1/completions", json={
        **body, "stream": True}).text.splitlines() if line.startswith("data: {")]
    streamed = [v for c in chunks if c["choices"][0]["logprobs"] for v in c["choices"][0]["logprobs"]["token_logprobs"]]
    assert streamed == out["token_logprobs"][:n] and chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_sixteen_concurrent_clients_equal_alone(client, server):
    prompts = [f"Request {i} asks the model about {w}" for i, w in
               enumerate("batches caches layers tokens ranks shards words pages".split() * 2)]
    lengths = [8 + 5 * (i % 7) for i in range(16)]
    alone = [complete(client, p, max_tokens=n).choices[0].text for p, n in zip(prompts, lengths)]
    before = requests.get(server.url + "/health").json()["iterations"]
    barrier = threading.Barrier(16)

    def one(i):
        barrier.wait()
        if i % 2:  # half of them streaming
            return "".join(c.choices[0].text for c in complete(client, prompts[i], max_tokens=lengths[i], stream=True))
        return complete(client, prompts[i], max_tokens=lengths[i]).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(one, range(16)))
    assert together == alone
    # decoded in shared batches: far fewer iterations than the tokens generated
    steps = requests.get(server.url + "/health").json()["iterations"] - before
    assert steps < sum(lengths) / 2, (steps, sum(lengths))


BAD = [
    ("unknown model", {"model": "gpt-5", "prompt": "x"}, 404, "model"),
    ("negative max_tokens", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ("prompt over the context", {"prompt": "word " * 1000, "max_tokens": 4}, 400, "prompt"),
    ("max_tokens over the context", {"prompt": "x", "max_tokens": 5000}, 400, "max_tokens"),
    ("temperature out of range", {"prompt": "x", "temperature": 3}, 400, "temperature"),
    ("token id out of range", {"prompt": [1, 2, 99999]}, 400, "prompt"),
    ("no prompt", {"max_tokens": 3}, 400, "prompt"),
    ("n too large", {"prompt": "x", "n": 1000}, 400, "n"),
    ("stop of the wrong type", {"prompt": "x", "stop": 5}, 400, "stop"),
    ("logit_bias", {"prompt": "x", "logit_bias": {"1": 5}}, 400, "logit_bias"),
    ("seed beyond int64", {"prompt": "x", "seed": 2 ** 64}, 400, "seed"),
]


@pytest.mark.parametrize("name,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(server, name, body, status, param):
    r = requests.post(server.url + "/v1/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    ok = requests.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 1


def test_bad_bodies_and_routes(server):
    url = server.url + "/v1/chat/completions"
    cases = [
        (requests.post(url, data=b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'), 400, "invalid_encoding"),
        (requests.post(url, data=b'{"messages": [}'), 400, "invalid_json"),
        (requests.post(url, data=b"[1, 2]"), 400, "invalid_json"),
        (requests.post(url, data=b"x" * (5 << 20)), 413, "request_too_large"),
        (requests.post(url, json={"messages": []}), 400, None),
        (requests.post(url, json={"messages": [{"role": "robot", "content": "hi"}]}), 400, None),
        (requests.post(url, json={"messages": [{"role": "user", "content": "hi"}], "mmi": "yes"}), 400, None),
        (requests.get(server.url + "/v2/anything"), 404, None),
        (requests.get(server.url + "/v1/completions"), 405, None),
    ]
    for r, status, code in cases:
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]
        if code:
            assert r.json()["error"]["code"] == code
    assert requests.get(server.url + "/health").json()["status"] == "ok"
    ok = requests.post(url, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_client_leaving_mid_stream_frees_its_rows(server):
    before = requests.get(server.url + "/health").json()
    body = {"model": "fwd", "prompt": "A long answer", "max_tokens": 500, "n": 16, "temperature": 1.0,
            "stream": True}
    with requests.post(server.url + "/v1/completions", json=body, stream=True) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data: {"):
                break  # the first chunk arrived: leave
    deadline = time.time() + 20
    while time.time() < deadline:
        h = requests.get(server.url + "/health").json()
        if h["rows"] == 0 and h["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.05)
    assert h["rows"] == 0 and h["cancelled"] == before["cancelled"] + 1, h
    # without streaming too: the server notices the closed connection while tokens are flowing
    host, port = server.url.removeprefix("http://").split(":")
    payload = json.dumps({**body, "stream": False}).encode()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        deadline = time.time() + 20
        while requests.get(server.url + "/health").json()["rows"] == 0 and time.time() < deadline:
            time.sleep(0.01)
    deadline = time.time() + 20
    while time.time() < deadline:
        h = requests.get(server.url + "/health").json()
        if h["rows"] == 0 and h["cancelled"] == before["cancelled"] + 2:
            break
        time.sleep(0.05)
    assert h["rows"] == 0 and h["cancelled"] == before["cancelled"] + 2, h
    assert requests.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_tokenizer_endpoints(server, serve_models):
    from megagpt.inference import Tokenizer

    tok = Tokenizer(serve_models["tokenizer"])
    info = requests.get(server.url + "/tokenizer_info").json()
    prompt = "Hello" + info["eos_token"] + "你好"
    ids = requests.post(server.url + "/tokenize", json={"prompt": prompt}).json()["tokens"]
    assert ids == tok.encode("Hello") + [tok.eod_id] + tok.encode("你好")
    assert requests.post(server.url + "/detokenize", json={"tokens": tok.encode("你好")}).json()["prompt"] == "你好"


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_tensor_parallel_server_equals_one_rank(serve_models, client, launcher):
    """Two ranks and --tp 2 under either launcher: rank 0 serves, both decode their shards in
    lockstep; greedy text, a batch of concurrent requests, and MMI reranking match the one-process
    server."""
    exe = shutil.which(launcher) or str(Path(sys.executable).parent / launcher)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [exe, "--nproc-per-node", "2", "--master-port", port] if launcher == "torchrun" else \
        [exe, "--num_gpus", "2", "--master_port", port]
    env = {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))}
    tp = start_server("--model", serve_models["forward"], "--backward", serve_models["backward"], "--tp", "2",
                      "--served-model-name", "fwd", launcher=cmd, env=env)
    try:
        tp_client = openai.OpenAI(base_url=tp.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        prompts = ["The model", "Every rank", "A tensor-parallel group", "Shards"]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda p: complete(tp_client, p, max_tokens=20).choices[0].text, prompts))
        assert got == [complete(client, p, max_tokens=20).choices[0].text for p in prompts]
        msgs = [{"role": "user", "content": "Hello, how are you?"}]
        kw = dict(model="fwd", messages=msgs, max_tokens=12, seed=5, extra_body={"mmi": True, "mmi_n": 3})
        a = tp_client.chat.completions.create(**kw)
        b = client.chat.completions.create(**kw)
        assert a.model_extra["mmi"]["chosen"] == b.model_extra["mmi"]["chosen"]
        assert a.choices[0].message.content == b.choices[0].message.content
    finally:
        log = tp.stop()
    # no traceback through megagpt's code (torchrun's own agent prints one on SIGTERM)
    assert f'File "{ROOT / "megagpt"}' not in log, log[-3000:]


def test_connections_to_the_listening_socket_have_nagle_off():
    """asyncio turns Nagle off only on connections of IPPROTO_TCP sockets; with it on, every small
    response waited out the client's delayed ACK (42 ms a request)."""
    import asyncio

    from megagpt.serve import listen_socket

    def nodelay(sock):
        seen = []

        async def main():
            def on_connection(reader, writer):
                seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                writer.close()
            server = await asyncio.start_server(on_connection, sock=sock)
            reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            await reader.read()
            writer.close()
            server.close()
            await server.wait_closed()
        asyncio.run(main())
        return seen[0]

    assert nodelay(listen_socket("127.0.0.1", 0)) != 0
    plain = socket.socket()  # what serve.py made before: protocol 0
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    assert nodelay(plain) == 0


def test_int8_server_decodes_as_int8_generate(serve_models):
    """--dtype int8: the server's greedy text is the int8 model's, decoded in-process."""
    from megagpt.inference import load
    from megagpt.inference.generation import SamplingParams, generate

    q = start_server("--model", serve_models["forward"], "--dtype", "int8", "--served-model-name", "fwd")
    try:
        c = openai.OpenAI(base_url=q.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        got = complete(c, "The model", max_tokens=16).choices[0].text
    finally:
        q.stop()
    model, tok = load(serve_models["forward"], dtype="int8")
    ids = tok.encode("The model")
    ref = generate(model, [ids], SamplingParams(max_new_tokens=16, temperature=0), eod_id=tok.eod_id, decode=tok.decode)
    assert got == ref[0].text and got
