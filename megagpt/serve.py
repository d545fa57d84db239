"""Serve a model over OpenAI's HTTP API, with a chat page (``pip install -e .[serve]``).

    python megagpt/serve.py --model demo/run/model.safetensors --port 8000
    python megagpt/serve.py --model demo/chat/en_forward.safetensors --backward demo/chat/en_backward.safetensors
    deepspeed --num_gpus 2 megagpt/serve.py --model checkpoints/run --tp 2      # tensor-parallel

``--model`` takes an export, a Hugging Face GPT-2 directory or a training checkpoint (any layout).
Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (streaming with ``stream``),
``GET /v1/models``, ``GET /health``, the chat page at ``/``, and ``/tokenize``, ``/detokenize``,
``/tokenizer_info`` for clients that tokenize through the server (lm-evaluation-harness's
``local-completions`` with ``tokenizer_backend=remote``). Requests arriving together decode in one
batch and new requests join the running batch between steps (``megagpt.inference.batching``).
Under a launcher rank 0 serves HTTP and every rank decodes its shard of the same batch in lockstep.
``--port 0`` picks a free port; the line ``listening on http://HOST:PORT`` says which.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path


def parse_args(argv=None):
    from megagpt.inference import add_model_args

    ap = argparse.ArgumentParser(description="Serve a megagpt model over OpenAI's HTTP API.")
    add_model_args(ap)
    ap.add_argument("--backward", help="a backward dialogue model: enables MMI reranking in chat ('mmi': true)")
    ap.add_argument("--served-model-name", help="the model id clients name (default: the export's file "
                    "name, its directory's for NAME/model.safetensors, or the directory's name)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: any free port")
    ap.add_argument("--max-batch", type=int, default=32,
                    help="rows decoded together (a request with n choices takes n)")
    ap.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body accepted")
    ap.add_argument("--chat-max-tokens", type=int, default=64, help="chat replies: max_tokens when not given")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for decoding (default on CPU without OMP_NUM_THREADS: every core but one, "
                         "which the HTTP side keeps: sharing it slowed decoding down 1.7x on 2 cores)")
    return ap.parse_args(argv)


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free one), accepting from the moment it returns. Its
    protocol is IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on connections of such
    sockets, and with Nagle on every small response waited out the client's delayed ACK (42 ms a
    request, measured)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def load_models(args):
    """The process group and the models: (ps, device, model, tokenizer, backward model or None).
    Raises ValueError, FileNotFoundError or WeightsError with the sentence to print."""
    from megagpt.inference import load, load_for_text
    from megagpt.inference.distributed import setup_parallel

    if args.max_batch < 1 or args.max_body_mb <= 0:
        raise ValueError("--max-batch must be >= 1 and --max-body-mb > 0.")
    ps, device = setup_parallel(args.tp)
    if ps is not None and ps.dp_size > 1:
        raise ValueError(f"--tp {ps.tp_size} leaves {ps.dp_size} data-parallel replicas; serve one "
                         "tensor-parallel group (--tp equal to the number of ranks).")
    model, tok = load_for_text(args.model, tokenizer=args.tokenizer, ps=ps, tag=args.tag, dtype=args.dtype,
                               device=device)
    bwd = None
    if args.backward:
        bwd = load(args.backward, ps=ps, dtype=args.dtype, device=device, with_tokenizer=False).model
    return ps, device, model, tok, bwd


def decode_engine(args, model, tok, bwd, device):
    """The continuous-batching engine every rank steps (MMI reranking registered given a backward
    model), on the CPU threads asked for (default: all cores but one, unless OMP_NUM_THREADS says)."""
    import torch

    from megagpt.dialogue.mmi import rerank
    from megagpt.inference.batching import BatchEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    elif device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    engine = BatchEngine(model, eod_id=tok.eod_id, max_rows=args.max_batch, vocab_limit=tok.vocab_size,
                         decode=tok.decode)
    if bwd is not None:
        engine.register("mmi", lambda turns, cands, weight: rerank(model, bwd, tok, turns, cands, weight=weight))
    return engine


def served_name(args) -> str:
    """--served-model-name, else the export's file name (its directory's for ``model.safetensors``)."""
    path = Path(args.model.rstrip("/"))
    return args.served_model_name or (path.parent.name if path.name == "model.safetensors" else
                                      path.name.removesuffix(".safetensors"))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn

        from megagpt.serving.app import Service, build_app
    except ImportError as e:
        print(f"error: serving needs the [serve] extra (pip install -e '.[serve]'): {e}", file=sys.stderr)
        return 2
    from megagpt.inference import WeightsError
    from megagpt.inference.distributed import finish
    from megagpt.serving.scheduler import Scheduler, follow

    try:
        ps, device, model, tok, bwd = load_models(args)
    except (ValueError, FileNotFoundError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engine = decode_engine(args, model, tok, bwd, device)
    rank, world = (ps.rank, ps.tp_size) if ps is not None else (0, 1)
    if rank != 0:
        follow(engine)
        finish(ps)
        return 0
    scheduler = Scheduler(engine, group_size=world).start()
    name = served_name(args)
    service = Service(name, tok, model.cfg.n_positions, scheduler, mmi=bwd is not None,
                      max_body=int(args.max_body_mb * (1 << 20)), chat_max_tokens=args.chat_max_tokens)
    try:
        sock = listen_socket(args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        scheduler.shutdown()
        finish(ps)
        return 2
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"megagpt serve: model '{name}' ({model.cfg.n_layer} layers, n_positions {model.cfg.n_positions}"
          f"{', MMI with ' + args.backward if bwd is not None else ''}{f', tp {world}' if world > 1 else ''}); "
          f"listening on http://{shown}:{port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(build_app(service), log_level="warning", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    scheduler.shutdown()
    finish(ps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
