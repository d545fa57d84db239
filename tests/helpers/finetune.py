"""Real labelled text for the fine-tuning tests (chatterbot-corpus, a test dependency): lines of its
English 'coding' and 'trivia' conversations, classified by file; a tiny model and run file."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]


def corpus_lines(name: str) -> list[str]:
    import chatterbot_corpus
    import yaml

    path = Path(chatterbot_corpus.__file__).parent / "data" / "english" / f"{name}.yml"
    convs = yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]
    return sorted({str(x).strip() for conv in convs for x in conv if len(str(x).split()) >= 3})


def write_classification(path: Path, per_class: int = 120) -> Path:
    rows = []
    for label in ("coding", "trivia"):
        lines = corpus_lines(label)
        random.Random(0).shuffle(lines)
        rows += [{"text": t, "label": label} for t in lines[:per_class]]
    random.Random(1).shuffle(rows)
    for i, r in enumerate(rows):
        r["split"] = "valid" if i % 5 == 0 else "train"
    with open(path, "w") as f:
        f.write(json.dumps({"megagpt_finetune": 1, "name": "chat_topic", "type": "classification"}) + "\n")
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def finetune_worker(rank, world_size, config, overrides):
    from megagpt.finetune import load_finetune_run
    from megagpt.finetuning.trainer import FinetuneTrainer

    run, meta = load_finetune_run(config, overrides, world_size)
    trainer = FinetuneTrainer(run, weights_meta=meta)
    losses = trainer.train()
    dist.barrier()
    return losses, trainer.best


def run_yaml(tmp: Path, init_from: Path, task: Path, tokenizer: Path, tag: str) -> Path:
    path = tmp / f"{tag}.yaml"
    path.write_text(f"""model:
  embd_pdrop: 0.0
  attn_pdrop: 0.0
  resid_pdrop: 0.0
parallel:
  tp_size: 1
  layout: zero3
data:
  tokenizer: {tokenizer}
train:
  deepspeed_config: {ROOT / 'ds_configs' / 'finetune.json'}
  init_from: {init_from}
  seed: 1234
  log_interval: 1
  eval_interval: 1000
  checkpoint_dir: {tmp / tag / 'ckpt'}
  tensorboard_dir: {tmp / tag / 'tb'}
finetune:
  task_file: {task}
  clf_pdrop: 0.0
  epochs: 1
""")
    os.makedirs(tmp / tag, exist_ok=True)
    return path
