"""One script for the first GPU: checks and measures every GPU-only path and prints one table.

    python -m benchmarks.gpu_acceptance                 # one GPU, about 8 minutes
    python -m benchmarks.gpu_acceptance --dry-run       # the same code on CPU, tiny shapes (in the test suite)

Training, for GPT-3 125M and 350M at sequence 2048 (the real Trainer and DeepSpeed engine, ZeRO-3,
synthetic tokens), one row per variant:
  * bf16 eager; bf16 with ``train.compile``; bf16 with activation checkpointing; fp16 with dynamic
    loss scaling (the scale must be seen moving); bf16 with the optimizer offloaded to the CPU
    (ZeRO-3 offload, pinned memory); bf16 with dense attention forced onto the flash SDPA kernel;
  * step time, tokens/s, MFU against the device's dense bf16/fp16 peak (``GPU_PEAK_TFLOPS`` by
    device name, ``--peak-tflops`` to override), peak memory next to ``plan.py``'s prediction for
    the same layout, and the loss after the last step, which must agree across variants within
    half-precision noise.
Then decoding (new tokens/s, greedy, batch 1 and 8) and multiple-choice style scoring (requests/s)
against ``transformers`` on the same device and weights.

Exits non-zero when a check fails (a variant that does not run, losses that disagree, a loss scale
that never moves, decoding that differs from transformers'). On CPU (``--dry-run``) the rows that
need CUDA say so instead of failing, and compiled training captures its graphs with the
``aot_eager`` backend (no inductor code generation, which costs a CPU about 30 s here).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

from benchmarks._common import median, random_token_shard, same_weights_models, timed, token_agreement

ROOT = Path(__file__).resolve().parents[1]

# name: (precision, overrides, needs CUDA)
VARIANTS = {
    "bf16 eager": ("bf16", [], False),
    "bf16 compiled": ("bf16", ["train.compile=true"], False),
    "bf16 act. ckpt": ("bf16", ["train.activation_checkpointing=true"], False),
    "fp16 loss scaling": ("fp16", ["deepspeed.fp16.loss_scale_window=2"], True),
    "bf16 ZeRO-3 CPU offload": ("bf16", ["deepspeed.zero_optimization.offload_optimizer.device=cpu",
                                         "deepspeed.zero_optimization.offload_optimizer.pin_memory=true"], False),
    "bf16 flash (dense attn)": ("bf16", ["model.attention=dense"], True),
}
# GPU shapes; --dry-run replaces them with tiny ones of the same structure
GPU = dict(models=["gpt3-125m", "gpt3-350m"], seq=2048, micro=4, steps=8, timed_from=3, vocab=50257,
           decode_layers=12, decode_embd=768, decode_heads=12, prompt=128, new=128, score_batch=16, score_requests=64,
           iters=3, compile_backend="inductor")
DRY = dict(models=["tiny"], seq=64, micro=2, steps=3, timed_from=1, vocab=512,
           decode_layers=2, decode_embd=64, decode_heads=4, prompt=16, new=8, score_batch=4, score_requests=8, iters=1,
           compile_backend="aot_eager")  # the dry run captures graphs but generates no code
LOSS_TOLERANCE = 0.05  # |loss - bf16 eager's| after the last step: half-precision noise over a few steps


def run_variant(name: str, model: str, shape: dict, data: str, tmp: Path, peak: float) -> dict:
    """Train ``shape['steps']`` steps of one variant in this process; its figures (MFU against
    ``peak`` FLOP/s)."""
    from megagpt.config import load_run_config
    from megagpt.model.flops import model_flops_per_token
    from megagpt.train.loop import Trainer
    from megagpt.train.memory import predict
    from megagpt.train.metrics import peak_memory_bytes
    from megagpt.train.setup import setup_run

    precision, extra, _ = VARIANTS[name]
    cuda = torch.cuda.is_available()
    ov = [f"data.prefixes=[{data}]", f"data.seq_length={shape['seq']}",
          f"train.deepspeed_config={ROOT / 'ds_configs' / 'zero3.json'}", f"train.train_iters={shape['steps']}",
          "train.log_interval=1000000", "train.eval_interval=1000000", "train.checkpoint_dir=null",
          "train.tensorboard_dir=null", "train.resume=false", "train.guard.enabled=false",
          f"deepspeed.train_micro_batch_size_per_gpu={shape['micro']}", "deepspeed.gradient_accumulation_steps=1",
          f"deepspeed.bf16.enabled={'true' if precision == 'bf16' else 'false'}"]
    if precision == "fp16":
        ov += ["deepspeed.fp16.enabled=true", "deepspeed.fp16.initial_scale_power=16"]
    if model == "tiny":
        ov += ["model.n_positions=64", "model.vocab_size=512", "model.local_window=16"]
    ov += extra + [f"train.compile_backend={shape['compile_backend']}"]
    yaml = tmp / "run.yaml"
    yaml.write_text(f"model: {{preset: {model}}}\n")
    run = setup_run(load_run_config(yaml, ov), 1)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    flash = (torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.FLASH_ATTENTION])
             if "flash" in name else nullcontext())
    trainer = Trainer(run)
    losses, times, scales = [], [], []
    with flash:
        for _ in range(shape["steps"]):
            t0 = time.perf_counter()
            verdict = trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(verdict.loss)
            if precision == "fp16":
                scales.append(float(trainer.engine.optimizer.cur_scale))
    step = median(times[shape["timed_from"]:])
    tokens = trainer.batch.full * trainer.seq
    flops = model_flops_per_token(run.model, trainer.seq) * tokens / step
    zero = run.deepspeed["zero_optimization"]
    predicted = predict(run.model, seq=trainer.seq, micro_batch=trainer.batch.micro, zero=3, precision=precision,
                        checkpointing=run.train.activation_checkpointing,
                        offload=zero.get("offload_optimizer", {}).get("device") == "cpu").total
    out = {"variant": name, "model": model, "step_s": step, "tokens_per_s": tokens / step,
           "tflops": flops / 1e12, "mfu": flops / peak,
           "memory_gib": peak_memory_bytes() / 2**30 if cuda else None, "predicted_gib": predicted / 2**30,
           "losses": losses, "loss_scales": scales, "compiled": bool(trainer.engine.is_compiled),
           "skipped_steps": int(getattr(trainer.engine, "skipped_steps", 0) or 0)}
    del trainer
    gc.collect()
    return out


def greedy_decoders(hf, ours, prompt: torch.Tensor, greedy, device) -> tuple[dict, dict]:
    """transformers' generate and megagpt's, eager and compiled, each a callable that decodes
    ``prompt`` and leaves its new tokens in ``out[name]``; returns (the decoders, out)."""
    from megagpt.inference.generation import generate

    out: dict = {}

    def hf_gen():
        with torch.no_grad():
            p = prompt.to(device)
            res = hf.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=greedy.max_new_tokens,
                              min_new_tokens=greedy.max_new_tokens, do_sample=False, pad_token_id=0,
                              eos_token_id=None)
        out["hf"] = res[:, prompt.shape[1]:].tolist()

    def ours_gen(compile=False):
        def fn():
            out["compiled" if compile else "eager"] = [c.tokens for c in generate(ours, prompt.tolist(), greedy,
                                                                                 compile=compile)]
        return fn

    return {"hf": hf_gen, "eager": ours_gen(), "compiled": ours_gen(True)}, out

def decode_and_score(shape: dict, cuda: bool) -> list[dict]:
    """megagpt vs transformers on one device, same weights: greedy decoding and scoring."""
    from megagpt.inference.generation import SamplingParams
    from megagpt.inference.scoring import loglikelihood

    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    args = argparse.Namespace(n_layer=shape["decode_layers"], n_embd=shape["decode_embd"],
                              n_head=shape["decode_heads"], vocab=shape["vocab"])
    hf, ours = same_weights_models(args, 2 * (shape["prompt"] + shape["new"]), bos_token_id=0, eos_token_id=0)
    hf, ours = hf.to(device, dtype).eval(), ours.to(device, dtype).eval().requires_grad_(False)
    rows = []
    for batch in (1, 8):
        prompt = torch.randint(1, shape["vocab"], (batch, shape["prompt"]),
                               generator=torch.Generator().manual_seed(batch))
        greedy = SamplingParams(max_new_tokens=shape["new"], temperature=0, stop_at_eod=False)
        decoders, out = greedy_decoders(hf, ours, prompt, greedy, device)
        t = {k: median(timed(f, warmup=1, iters=shape["iters"])) for k, f in decoders.items()}
        n = batch * shape["new"]
        agree = token_agreement(out["eager"], out["hf"])
        rows.append({"what": f"decode batch {batch}", "hf": n / t["hf"], "eager": n / t["eager"],
                     "compiled": n / t["compiled"], "agree_hf": agree,
                     "compiled_equal": out["compiled"] == out["eager"]})
    # scoring: (context, continuation) pairs of the prompt length, as multiple-choice evaluation sends them
    g = torch.Generator().manual_seed(0)
    reqs = [(torch.randint(1, shape["vocab"], (shape["prompt"],), generator=g).tolist(),
             torch.randint(1, shape["vocab"], (4,), generator=g).tolist()) for _ in range(shape["score_requests"])]
    got = {}

    def ours_score():
        got["ours"] = [s.logprob for s in loglikelihood(ours, reqs, batch_size=shape["score_batch"])]

    def hf_score():
        vals = []
        with torch.no_grad():
            for i in range(0, len(reqs), shape["score_batch"]):
                chunk = reqs[i:i + shape["score_batch"]]
                ids = torch.tensor([c + x for c, x in chunk], device=device)
                lp = hf(ids).logits.float().log_softmax(-1)
                tgt = ids[:, 1:]
                tok = lp[:, :-1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                vals += tok[:, -4:].sum(-1).tolist()
        got["hf"] = vals

    ts = {"ours": median(timed(ours_score, warmup=1, iters=shape["iters"])),
          "hf": median(timed(hf_score, warmup=1, iters=shape["iters"]))}
    diff = max(abs(a - b) for a, b in zip(got["ours"], got["hf"]))
    rows.append({"what": f"score batch {shape['score_batch']}", "hf": len(reqs) / ts["hf"],
                 "eager": len(reqs) / ts["ours"], "compiled": None, "max_logprob_diff": diff})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the same code on CPU with tiny shapes")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from its name)")
    ap.add_argument("--models", nargs="+", help="presets to train (default: gpt3-125m gpt3-350m)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("error: no CUDA device; run with --dry-run to check the script on CPU.", file=sys.stderr)
        return 2
    shape = dict(DRY if args.dry_run else GPU)
    if args.models:
        shape["models"] = args.models
    from megagpt.parallel.launch import close_distributed, init_distributed, quiet_deepspeed

    quiet_deepspeed()
    init_distributed()
    import deepspeed

    from megagpt.train.metrics import device_peak_flops

    device = torch.cuda.get_device_name() if cuda else "CPU (dry run)"
    peak, source = (args.peak_tflops * 1e12, "--peak-tflops") if args.peak_tflops else device_peak_flops(torch.bfloat16)
    print(f"device {device}, MFU against {peak / 1e12:.1f} TFLOP/s ({source}); torch {torch.__version__}, "
          f"deepspeed {deepspeed.__version__}; "
          f"seq {shape['seq']}, micro-batch {shape['micro']}, {shape['steps']} steps (median from step "
          f"{shape['timed_from'] + 1}), ZeRO-3 on one device", flush=True)
    failures, results = [], []
    t_start = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        n_tokens = shape["seq"] * shape["micro"] * (shape["steps"] + 2) * 2
        data = random_token_shard(tmp / "tokens", shape["vocab"], max(1, n_tokens // 4096), 4096)
        print(f"{'model':10} {'variant':26} {'step s':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} "
              f"{'mem GiB':>8} {'plan GiB':>8} {'last loss':>9}  notes", flush=True)
        for model in shape["models"]:
            base = None
            for name in args.variants:
                if VARIANTS[name][2] and not cuda:
                    print(f"{model:10} {name:26} {'needs CUDA: not run on CPU':>53}", flush=True)
                    continue
                try:
                    r = run_variant(name, model, shape, data, tmp, peak)
                except Exception as e:  # a variant that cannot run is a finding, not the end of the script
                    failures.append(f"{model} {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    print(f"{model:10} {name:26} FAILED {failures[-1]}", flush=True)
                    traceback.print_exc(limit=3)
                    continue
                results.append(r)
                notes = []
                last = r["losses"][-1]
                if base is None and name == "bf16 eager":
                    base = last
                elif r["skipped_steps"]:  # fp16 overflow steps: fewer updates, the loss is not comparable
                    notes.append(f"{r['skipped_steps']} step(s) skipped on overflow, loss not compared")
                elif base is not None and not abs(last - base) <= LOSS_TOLERANCE:
                    failures.append(f"{model} {name}: last loss {last:.4f} vs bf16 eager {base:.4f}")
                    notes.append("LOSS DIFFERS")
                if r["loss_scales"]:
                    moved = len(set(r["loss_scales"])) > 1
                    notes.append(f"loss scale {r['loss_scales'][0]:g} -> {r['loss_scales'][-1]:g}")
                    if not moved:
                        failures.append(f"{model} {name}: the loss scale never moved")
                if "compile" in name and not r["compiled"]:
                    failures.append(f"{model} {name}: the engine did not compile")
                if not all(math.isfinite(x) for x in r["losses"]):
                    failures.append(f"{model} {name}: non-finite loss {r['losses']}")
                mem = f"{r['memory_gib']:8.2f}" if r["memory_gib"] is not None else f"{'n/a':>8}"
                print(f"{model:10} {name:26} {r['step_s']:8.3f} {r['tokens_per_s']:10.0f} {r['tflops']:8.2f} "
                      f"{r['mfu']:6.1%} {mem} {r['predicted_gib']:8.2f} {last:9.4f}  {'; '.join(notes)}", flush=True)
        print(f"\n{'inference (same weights)':26} {'transformers':>12} {'megagpt':>10} {'compiled':>10} "
              f"{'vs HF':>6}  checks")
        try:
            for row in decode_and_score(shape, cuda):
                comp = f"{row['compiled']:10.1f}" if row["compiled"] else f"{'':>10}"
                if "agree_hf" in row:
                    check = f"tokens equal to HF {row['agree_hf']:.0%}, compiled = eager: {row['compiled_equal']}"
                    if not row["compiled_equal"] or (not cuda and row["agree_hf"] < 1):
                        failures.append(f"{row['what']}: {check}")
                else:
                    check = f"max |logprob diff| {row['max_logprob_diff']:.2e}"
                    if row["max_logprob_diff"] > (0.5 if cuda else 1e-3):
                        failures.append(f"{row['what']}: {check}")
                print(f"{row['what']:26} {row['hf']:12.1f} {row['eager']:10.1f} {comp} "
                      f"{row['eager'] / row['hf']:5.2f}x  {check}", flush=True)
                results.append(row)
        except Exception as e:
            failures.append(f"inference: {type(e).__name__}: {e}")
            traceback.print_exc(limit=3)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "results": results, "failures": failures}, indent=1))
    print(f"\n{len(failures)} check(s) failed in {time.time() - t_start:.0f}s" +
          "".join(f"\n  - {f}" for f in failures) if failures else
          f"\nall checks passed in {time.time() - t_start:.0f}s")
    close_distributed()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
