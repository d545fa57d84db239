"""A whole training step through megagpt's loop and DeepSpeed vs a plain torch loop, and
model-state memory per rank with and without ZeRO-3. CPU by default; unchanged on a GPU.

    python -m benchmarks.train_throughput [--steps 8 --n-layer 6 --n-embd 384 --seq 256 --batch 8]
    python -m benchmarks.train_throughput --memory-only --dp 2,4
    python -m benchmarks.train_throughput --guard-only   # the step guard on vs off, dp=2
    python -m benchmarks.train_throughput --rows "plain loop;plain loop, reference GPT" --skip-guard --skip-memory

Like for like: dropout 0 everywhere, AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only),
gradient clipping at 1.0, the same batches. Rows:
  plain loop              megagpt's GPT, loss.backward(), clip_grad_norm_, torch AdamW as nanoGPT
                          builds it on this device (fused on a GPU, the default kernel on a CPU)
  plain loop, reference GPT   the same loop over a GPT written in plain PyTorch the nanoGPT way
                          (benchmarks/reference_gpt.py): the speed megagpt's model must match
  plain loop, fused AdamW the same with torch's fused AdamW
  Trainer <config>        megagpt's Trainer.train_step (data stream, DeepSpeed forward/backward/
                          step, loss averaging) with one of the shipped DeepSpeed JSONs
  Trainer <config>, train.compile   the same with the model compiled (DeepSpeed's engine.compile)
  HF GPT-2 + AdamW        transformers' GPT2LMHeadModel in the plain loop
Each row runs in a fresh process, one after the other: building a ZeRO-3 engine replaces
torch.nn.functional.linear for the rest of its process, and a row must not pay for another's
engine or memory. The two plain loops that compare the models (megagpt's GPT and the reference
GPT) share one process instead and take turns step by step, so that a change in the machine's
load falls on both alike. The first step of each row warms up and is not timed. MFU is against
the measured CPU matmul peak, or the GPU's table peak.

Guard: the step guard's cost (train.guard: its one small all-reduce of the loss and one flag per
rank before the last backward, in place of the loss average's all-reduce after the step), on two
data-parallel ranks: one engine per config, blocks of steps with the guard on and off in turn.

Memory: each rank's live tensors, split into parameters, gradients (at the end of backward, before
DeepSpeed reduces them), optimizer states (Adam moments and ZeRO's fp32 master partitions) and the
rest after the step (buckets and buffers), plus the activations autograd saved during the forward
pass; megagpt/train/memory.py measures (the same code checks megagpt/plan.py's predictions).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import add_shape_args, median, random_token_shard

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {  # row label -> (DeepSpeed JSON, zero_optimization overrides)
    "ZeRO-3, 50M buckets (before)": ("zero3.json", {"stage": 3, "reduce_bucket_size": 50_000_000,
                                                    "stage3_prefetch_bucket_size": 50_000_000,
                                                    "stage3_param_persistence_threshold": 100_000}),
    "ZeRO-3": ("zero3.json", {}),
    "ZeRO stage 0": ("zero3.json", {"stage": 0}),
    "auto": ("auto.json", {}),
}
COMPILED = {"ZeRO stage 0, train.compile": "ZeRO stage 0", "ZeRO-3, train.compile": "ZeRO-3"}  # row -> its eager row


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def run_config(args, ds_file: str, zero: dict, precision: str, world: int, prefix: str, compile: bool = False):
    from megagpt.config import DataConfig, ParallelConfig, RunConfig, TrainConfig, load_file, model_config
    from megagpt.train.setup import setup_run

    ds = load_file(ROOT / "ds_configs" / ds_file)
    ds["train_micro_batch_size_per_gpu"] = args.batch
    ds["gradient_accumulation_steps"] = 1
    ds["bf16"] = {"enabled": precision == "bf16"}
    ds["zero_optimization"].update(zero)
    model = model_config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, n_positions=args.seq,
                         vocab_size=args.vocab, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    run = RunConfig(model=model, parallel=ParallelConfig(), data=DataConfig(prefixes=[prefix], valid_fraction=0.0),
                    train=TrainConfig(train_iters=args.steps + 1, checkpoint_dir=None, tensorboard_dir=None,
                                      deepspeed_config=ds_file, log_interval=10 ** 9, eval_interval=10 ** 9,
                                      compile=compile),
                    deepspeed=ds)
    return setup_run(run, world)


class TrainerRow:
    def __init__(self, run):
        from megagpt.train.loop import Trainer

        self.trainer = Trainer(run)

    def step(self):
        self.trainer.train_step()


def plain_model(args, kind: str):
    """A plain-loop row's model and its mean loss on a batch (x, y): megagpt's GPT, the plain-PyTorch
    reference GPT (benchmarks/reference_gpt.py) or HF GPT-2, one shape, dropout 0."""
    shape = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, n_positions=args.seq,
                 vocab_size=args.vocab)
    if kind == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        return model, lambda x, y: model(x, labels=x).loss  # HF shifts the labels itself
    if kind == "reference":
        from benchmarks.reference_gpt import ReferenceGPT

        model = ReferenceGPT(**shape)
        return model, model
    from megagpt.config import model_config
    from megagpt.model import GPT

    model = GPT(model_config(**shape, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
    return model, lambda x, y: model.token_losses(model(x), y).mean()


class PlainRow:
    """The plain loop over one of ``plain_model``'s models with the same optimizer math."""

    def __init__(self, args, fused: bool | None, kind: str = "megagpt", precision: str = "fp32", dataset=None):
        from megagpt.data.gpt_dataset import micro_batches

        torch.manual_seed(0)
        dev = _device()
        self.model, self.loss = plain_model(args, kind)
        self.model.to(dev).train()
        self.dev, self.precision = dev, precision
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        if fused is None:  # nanoGPT: fused where the device is CUDA, the default kernel elsewhere
            fused = dev.type == "cuda"
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=fused or None)
        self.data = micro_batches(dataset, 0, args.batch, 0, 1)

    def step(self):
        x, y = next(self.data)
        x, y = x.to(self.dev), y.to(self.dev)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss = self.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        float(loss)  # the loop reads its loss, as megagpt's does


REFERENCE = "plain loop, reference GPT"
ROWS = (["plain loop", REFERENCE, "plain loop, fused AdamW"]
        + [f"Trainer {k}" for k, (f, _) in CONFIGS.items() if (ROOT / "ds_configs" / f).is_file()]
        + [f"Trainer {k}" for k in COMPILED]
        + ["HF GPT-2 + AdamW"])


SIDE_BY_SIDE = ("plain loop", REFERENCE)  # the model comparison: one process, the steps in turn


def build_row(args, name: str, precision: str, prefix: str, dataset):
    """The row called ``name`` and its notes (the auto config's choices)."""
    if name.startswith("Trainer "):
        label = name[len("Trainer "):]
        row = TrainerRow(run_config(args, *CONFIGS[COMPILED.get(label, label)], precision, 1, prefix,
                                    compile=label in COMPILED))
        return row, getattr(row.trainer.run, "notes", [])
    kind = "hf" if name.startswith("HF") else "reference" if name == REFERENCE else "megagpt"
    return PlainRow(args, True if "fused" in name else None, kind=kind, precision=precision, dataset=dataset), []


def timed_step(row) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    row.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_rows(args, names: list[str], precision: str, prefix: str) -> dict:
    """{row: (median-ready step times, notes)} of the rows ``names``, built in this process and
    stepped in turn, the order alternating, so that a change in the machine's load falls on each
    alike. The first step of each row warms up and is not timed."""
    from megagpt.data.gpt_dataset import GPTDataset, split_documents
    from megagpt.data.indexed import IndexedDataset

    ranges, _ = split_documents([IndexedDataset(prefix)], 0.0)
    ds = GPTDataset(ranges, args.seq, (args.steps + 1) * args.batch, seed=1234)
    rows = {name: build_row(args, name, precision, prefix, ds) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.steps + 1):
        for name in names if i % 2 == 0 else names[::-1]:
            t = timed_step(rows[name][0])
            if i:
                times[name].append(t)
    return {name: (times[name], rows[name][1]) for name in names}


def processes(names: list[str]) -> list[list[str]]:
    """The rows of each child process: the ``SIDE_BY_SIDE`` plain loops together (they build no
    engine), every other row alone."""
    together = [n for n in names if n in SIDE_BY_SIDE]
    return ([together] if together else []) + [[n] for n in names if n not in SIDE_BY_SIDE]


def throughput(args, precision: str, prefix: str) -> dict:
    """{row: (times, notes)}, the rows timed in child processes of this script (``processes``)."""
    import json
    import subprocess

    out = {}
    shape = ["--n-layer", args.n_layer, "--n-embd", args.n_embd, "--n-head", args.n_head, "--seq", args.seq,
             "--batch", args.batch, "--vocab", args.vocab, "--steps", args.steps, "--threads", args.threads]
    names = args.rows.split(";") if args.rows else ROWS
    for group in processes(names):
        from megagpt.parallel.launch import free_port

        env = dict(os.environ, MASTER_PORT=str(free_port()))
        r = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", *map(str, shape),
                            "--row", ";".join(group), "--row-precision", precision, "--row-prefix", prefix],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("ROW ")]
        if r.returncode or not line:
            raise RuntimeError(f"row {group!r} failed:\n{r.stderr[-3000:]}")
        out.update(json.loads(line[-1][4:]))
    return {name: out[name] for name in names}


# --- guard ----------------------------------------------------------------------------------------
def _guard_worker(rank, world_size, args, label, prefix, rounds, block):
    """Step times with the guard off and on, alternating blocks on one engine."""
    from megagpt.train.loop import Trainer

    ds_file, zero = CONFIGS[label]
    run = run_config(args, ds_file, zero, "fp32", world_size, prefix)
    run.train.train_iters = 10 ** 6
    trainer = Trainer(run)
    trainer.train_step()  # warm-up
    times = {False: [], True: []}
    for r in range(rounds):
        for on in ((False, True) if r % 2 == 0 else (True, False)):  # neither always goes first
            run.train.guard.enabled = on
            for _ in range(block):
                t0 = time.perf_counter()
                trainer.train_step()
                times[on].append(time.perf_counter() - t0)
    return times


def guard_overhead(args, prefix, rounds: int = 6, block: int = 2) -> None:
    from tests.helpers.dist import run_distributed

    print(f"\nstep guard, dp=2 (fp32, one engine, {rounds} rounds of {block} steps with it off and on, the order "
          f"alternating; median step):")
    print(f"{'config':<16} {'guard off s':>11} {'guard on s':>10} {'overhead':>9}")
    for label in ("ZeRO stage 0", "ZeRO-3"):
        t = run_distributed(_guard_worker, 2, args, label, prefix, rounds, block, use_deepspeed=True)[0]
        off, on = median(t[False]), median(t[True])
        print(f"{label:<16} {off:11.4f} {on:10.4f} {on / off - 1:+8.1%}")


# --- memory ---------------------------------------------------------------------------------------
def _memory_worker(rank, world_size, args, label, precision, prefix):
    """One rank's bytes by category (megagpt.train.memory.measure) over two training steps."""
    ds_file, zero = CONFIGS[label]
    run = run_config(args, ds_file, zero, precision, world_size, prefix)
    from megagpt.data.gpt_dataset import GPTDataset, micro_batches, split_documents
    from megagpt.data.indexed import IndexedDataset
    from megagpt.train.engine import build_engine
    from megagpt.train.memory import measure

    eng = build_engine(run, total_tokens=10 ** 9).engine
    ranges, _ = split_documents([IndexedDataset(prefix)], 0.0)
    data = micro_batches(GPTDataset(ranges, args.seq, 64, seed=1), 0, args.batch, rank, world_size)

    def step():
        x, y = next(data)
        eng.lr_scheduler.pending_tokens = args.batch * args.seq
        eng.backward(eng.module.token_losses(eng(x.to(eng.device)), y.to(eng.device)).mean())
        eng.step()

    m = measure(eng, step)
    return {"params": m["params"], "grads kept": m["grads_kept"], "grads peak": m["grads"],
            "optimizer": m["optimizer"], "other after step": m["other"],
            "activations": m["activations"], "live after step": m["live"]}


def throughput_table(args, precision: str, prefix: str, flops: float) -> None:
    """Time every row at ``precision`` and print the table (``flops`` per step)."""
    from megagpt.train.metrics import device_peak_flops

    tokens = args.batch * args.seq
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak, source = device_peak_flops(dtype)
    rows = throughput(args, precision, prefix)
    times = {k: v[0] for k, v in rows.items()}
    auto_notes = rows.get("Trainer auto", [None, ["(no ds_configs/auto.json)"]])[1]
    base = median(times.get("plain loop") or next(iter(times.values())))
    print(f"\n{precision}: peak {peak / 1e12:.3f} TFLOP/s ({source}); auto chose: {'; '.join(auto_notes)}")
    print(f"{'run':<44} {'step s':>7} {'vs plain':>8} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6}")
    for name, ts in times.items():
        t = median(ts)
        print(f"{name:<44} {t:7.3f} {base / t:7.2f}x {tokens / t:9.0f} {flops / t / 1e12:8.4f} "
              f"{flops / t / peak:6.1%}")
    if "plain loop" in times and REFERENCE in times:  # stepped in turn: step i of each ran back to back
        paired = median([r / m for r, m in zip(times[REFERENCE], times["plain loop"])])
        print(f"megagpt's GPT vs the reference GPT, same plain loop: {paired:.3f}x the reference's tokens/s "
              f"(median of the per-step ratios; of the medians: {median(times[REFERENCE]) / base:.3f}x)")


def memory_table(args, prefix: str) -> None:
    """Each rank's memory by category, stage 0 against ZeRO-3, at every dp of ``args.dp``."""
    from tests.helpers.dist import run_distributed

    print("\nmemory per rank (MiB; rank 0). grads kept: at the optimizer step (ZeRO's model states);"
          "\ngrads peak: the most at the end of backward, where ZeRO-3 still holds the whole gradient of"
          "\nthe last bucket and of the tied embedding; the rest after the step. Model states vs stage 0:"
          "\nparams + grads + optimizer, with kept and with peak grads.")
    cols = ("params", "grads kept", "grads peak", "optimizer", "activations", "other after step", "live after step")
    print(f"{'dp':>3} {'config':<30} " + " ".join(f"{c:>16}" for c in cols) + f" {'states kept':>12} {'peak':>6}")
    for dp in (int(x) for x in args.dp.split(",")):
        base = None
        for label in ("ZeRO stage 0", "ZeRO-3", "ZeRO-3, 50M buckets (before)"):
            m = run_distributed(_memory_worker, dp, args, label, "fp32", prefix, use_deepspeed=True)[0]
            kept = m["params"] + m["grads kept"] + m["optimizer"]
            peak = m["params"] + m["grads peak"] + m["optimizer"]
            base = base or (kept, peak)
            print(f"{dp:>3} {label:<30} " + " ".join(f"{m[c] / 2 ** 20:16.1f}" for c in cols) +
                  f" {kept / base[0]:11.2f}x {peak / base[1]:5.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(ap, steps_flag="--steps", steps_default=8)
    ap.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16")
    ap.add_argument("--dp", default="2,4", help="data-parallel sizes for the memory table")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--guard-only", action="store_true", help="only the step guard's overhead (dp=2)")
    ap.add_argument("--skip-guard", action="store_true")
    ap.add_argument("--rows", help="';'-separated row names to run (default: all), e.g. "
                    f"'plain loop;{REFERENCE}'")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # a child process: time these rows
    ap.add_argument("--row-precision", help=argparse.SUPPRESS)
    ap.add_argument("--row-prefix", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29611"))
    from megagpt.parallel.launch import quiet_deepspeed

    quiet_deepspeed()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    if args.row:
        import json

        print("ROW " + json.dumps(time_rows(args, args.row.split(";"), args.row_precision, args.row_prefix)),
              flush=True)
        return
    from megagpt.config import model_config
    from megagpt.model.flops import model_flops_per_token

    tmp = Path(tempfile.mkdtemp(prefix="megagpt_bench_"))
    prefix = random_token_shard(tmp / "bench_text_document", args.vocab, (args.steps + 2) * args.batch * 2,
                                args.seq + 1)
    cfg = model_config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, n_positions=args.seq,
                       vocab_size=args.vocab)
    flops = model_flops_per_token(cfg, args.seq) * args.batch * args.seq
    print(f"shape: {args.n_layer} layers, n_embd {args.n_embd}, ctx {args.seq}, vocab {args.vocab}, "
          f"batch {args.batch}, threads {args.threads}, device {_device()}, {args.steps} timed steps per row "
          f"(median), dropout 0")
    if args.guard_only:
        guard_overhead(args, prefix)
        return
    for precision in ([] if args.memory_only else args.precisions.split(",")):
        throughput_table(args, precision, prefix, flops)
    if not (args.memory_only or args.skip_guard):
        guard_overhead(args, prefix)
    if args.skip_memory:
        return
    memory_table(args, prefix)


if __name__ == "__main__":
    main()
