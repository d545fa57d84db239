"""Multiple-choice evaluation throughput (scored requests per second), same weights, same task,
same run: lm-evaluation-harness with ``--model hf`` on the exported Hugging Face directory,
lm-evaluation-harness with ``--model megagpt``, and megagpt's own ``evaluate.py`` path (which
also scores GPT-3's unconditional requests). Both harness runs must give the same accuracy.

    python -m benchmarks.eval_throughput                       # the demo model and WordNet task
    python -m benchmarks.eval_throughput --n-layer 6 --n-embd 384 --n-head 6 --ctx 256   # random weights
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import median

ROOT = Path(__file__).resolve().parents[1]

YAML = """task: bench_mc
custom_dataset: !function megagpt_data.task
dataset_kwargs:
  task_file: {task}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "demo/run/model.safetensors"), help="an export (default: the demo's)")
    ap.add_argument("--task", default=str(ROOT / "demo/eval/wordnet_defs.jsonl"), help="a multiple-choice task file")
    ap.add_argument("--n-layer", type=int, help="instead of --model: random weights of this shape, the "
                    "model's tokenizer and vocabulary")
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="test items")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for p in (args.model, args.task):
        if not Path(p).is_file():
            raise SystemExit(f"error: {p}: not found (run scripts/demo.sh first, or pass --model/--task).")

    import lm_eval

    import megagpt
    import megagpt.eval.harness  # noqa: F401 - importing it registers --model megagpt
    from megagpt.eval.runner import Evaluator
    from megagpt.eval.tasks import load_task
    from megagpt.formats.hf import write_hf_dir
    from megagpt.formats.weights import save_export
    from megagpt.model import GPT, full_state_dict

    tmp = Path(tempfile.mkdtemp(prefix="eval_bench_"))
    model_path = Path(args.model)
    model, tok = megagpt.load(model_path)
    if args.n_layer:
        from megagpt.config import model_config

        torch.manual_seed(0)
        cfg = model_config(None, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_positions=args.ctx,
                           vocab_size=model.cfg.vocab_size, attention="dense", embd_pdrop=0.0, attn_pdrop=0.0,
                           resid_pdrop=0.0)
        model_path = save_export(full_state_dict(GPT(cfg)), cfg, tmp / "model.safetensors", tokenizer=str(tok.path))
        model, tok = megagpt.load(model_path)
    hf_dir = write_hf_dir(full_state_dict(model), model.cfg, tmp / "hf", tokenizer_model=tok.path)
    (tmp / "tasks").mkdir()
    shutil.copy(ROOT / "megagpt/eval/lm_eval_tasks/megagpt_data.py", tmp / "tasks")
    (tmp / "tasks" / "bench_mc.yaml").write_text(YAML.format(task=Path(args.task).resolve()))
    task = load_task(args.task)
    items = task.test[:args.limit] if args.limit else task.test
    n_req = sum(len(it.choices) for it in items)
    c = model.cfg
    print(f"model {c.n_layer} layers x {c.n_embd}, ctx {c.n_positions}, vocab {c.vocab_size}; task {task.name}: "
          f"{len(items)} items, {n_req} (context, choice) requests; batch {args.batch_size}; "
          f"{args.threads} threads; median of {args.repeats}")

    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tmp / "tasks"))

    def harness(name, model_args):
        out = {}

        def once():
            r = lm_eval.simple_evaluate(model=name, model_args=model_args, tasks=["bench_mc"], task_manager=tm,
                                        batch_size=args.batch_size, limit=args.limit, device="cpu",
                                        bootstrap_iters=0, log_samples=False)
            out["acc"] = r["results"]["bench_mc"]["acc,none"]

        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
        return median(times), out["acc"]

    rows = []
    t, acc_hf = harness("hf", f"pretrained={hf_dir},dtype=float32")
    rows.append(("lm_eval --model hf", n_req, t, acc_hf))
    t, acc_mg = harness("megagpt", f"path={model_path}")
    rows.append(("lm_eval --model megagpt", n_req, t, acc_mg))

    def native():
        ev = Evaluator(model, tok, batch_size=args.batch_size)  # a fresh request cache each time
        return ev.run_task(task, 0, limit=args.limit)

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = native()
        times.append(time.perf_counter() - t0)
    n_native = n_req + len({c for it in items for c in it.choices})  # + distinct unconditional requests
    rows.append(("megagpt evaluate.py (acc + acc_uncond)", n_native, median(times), res.value("acc")))

    base = rows[0][1] / rows[0][2]
    print(f"{'path':<40} {'requests':>9} {'seconds':>8} {'req/s':>8} {'vs hf':>6} {'acc':>7}")
    for name, n, t, acc in rows:
        print(f"{name:<40} {n:>9} {t:>8.2f} {n / t:>8.1f} {n / t / base:>5.2f}x {acc:>7.4f}")
    if acc_hf != acc_mg:
        print(f"WARNING: the two harness runs disagree on accuracy ({acc_hf} vs {acc_mg})")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
