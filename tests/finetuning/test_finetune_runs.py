"""Fine-tuning through real DeepSpeed engines: tp=2 and dp=2 give one process's losses, a resume
is bit-identical, accuracy on real text rises clearly above the majority class, TensorBoard gets
the finetune/ scalars, the best model predicts what validation measured, and the command line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.dist import run_distributed
from tests.helpers.finetune import ROOT, finetune_worker, run_yaml


def _run(ft_setup, tag, world, *overrides):
    cfg = run_yaml(ft_setup["tmp"], ft_setup["model"], ft_setup["task"], ft_setup["tok"], tag)
    return run_distributed(finetune_worker, world, cfg, list(overrides), use_deepspeed=True)[0]


def test_tp2_and_dp2_match_one_process(ft_setup):
    common = ["finetune.lm_coef=0.5", "train.exit_after_iters=3", "deepspeed.train_micro_batch_size_per_gpu=4"]
    one, _ = _run(ft_setup, "one", 1, *common, "deepspeed.gradient_accumulation_steps=2")
    tp2, _ = _run(ft_setup, "tp2", 2, *common, "deepspeed.gradient_accumulation_steps=2", "parallel.tp_size=2")
    dp2, _ = _run(ft_setup, "dp2", 2, *common, "deepspeed.gradient_accumulation_steps=1")
    assert len(one) == 3
    assert tp2 == pytest.approx(one, rel=1e-5) and dp2 == pytest.approx(one, rel=1e-5), (one, tp2, dp2)


def test_resume_is_bit_identical(ft_setup):
    common = ["deepspeed.train_micro_batch_size_per_gpu=8", "deepspeed.gradient_accumulation_steps=1",
              "model.embd_pdrop=0.1", "finetune.clf_pdrop=0.1"]  # dropout on: its RNG must resume too
    straight, _ = _run(ft_setup, "straight", 2, *common, "train.exit_after_iters=6")
    first, _ = _run(ft_setup, "resumed", 2, *common, "train.exit_after_iters=3")
    rest, _ = _run(ft_setup, "resumed", 2, *common, "train.exit_after_iters=6")
    assert first + rest == straight


def test_accuracy_rises_above_majority_and_predicts(ft_setup, tmp_path):
    from megagpt.finetuning.data import load_finetune_task
    from megagpt.finetuning.trainer import predict

    tag = "learn"
    losses, best = _run(ft_setup, tag, 1, "deepspeed.train_micro_batch_size_per_gpu=16",
                        "deepspeed.gradient_accumulation_steps=1", "deepspeed.optimizer.params.lr=0.002",
                        "finetune.epochs=6", "train.eval_interval=6", "finetune.lm_coef=0.5")
    majority = load_finetune_task(ft_setup["task"]).majority()
    assert best >= majority + 0.2, (best, majority)
    acc = EventAccumulator(str(ft_setup["tmp"] / tag / "tb" / tag))  # run_name: the run file's name
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"finetune/loss", "finetune/loss_task", "finetune/loss_lm", "finetune/lr", "finetune/accuracy",
            "finetune/f1", "finetune/valid_loss_task", "finetune/best"} <= tags
    assert max(e.value for e in acc.Scalars("finetune/accuracy")) == pytest.approx(best)
    best_dir = ft_setup["tmp"] / tag / "ckpt" / "best"
    rows, metrics = predict(best_dir, ft_setup["task"], "valid", tmp_path / "p.jsonl")
    assert metrics["accuracy"] == pytest.approx(best)
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == len(rows) and {x["prediction"] for x in lines} <= {"coding", "trivia"}


def test_command_line_errors_are_one_line(ft_setup, tmp_path):
    cfg = run_yaml(ft_setup["tmp"], ft_setup["model"], ft_setup["task"], ft_setup["tok"], "cli")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"megagpt_finetune": 1, "type": "classification"}\n{"text": "x", "label": "a"}\n{"label": "b"}\n')
    r = subprocess.run([sys.executable, ROOT / "megagpt" / "finetune.py", "--config", cfg, f"finetune.task_file={bad}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"error: {bad}:3: missing 'text' (a string)."
    r = subprocess.run([sys.executable, ROOT / "megagpt" / "finetune.py", "--config", cfg, "finetune.lm_coef=x"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "finetune.lm_coef" in r.stderr.strip().splitlines()[-1]


def test_3d_layout_matches_zero3(ft_setup):
    """The pipeline layout (pp=2, W_y on the last stage) gives the zero3 layout's losses and
    validation accuracy."""
    common = ["finetune.lm_coef=0.5", "train.exit_after_iters=3", "deepspeed.train_micro_batch_size_per_gpu=4",
              "deepspeed.gradient_accumulation_steps=2", "train.eval_interval=3"]
    zero3, best_z = _run(ft_setup, "z3", 1, *common, "finetune.max_length=64")
    pipe, best_p = _run(ft_setup, "pp2", 2, *common, "finetune.max_length=64", "parallel.layout=3d",
                        "parallel.pp_size=2", f"train.deepspeed_config={ROOT / 'ds_configs' / 'finetune_3d.json'}")
    assert pipe == pytest.approx(zero3, rel=1e-5) and best_p == pytest.approx(best_z), (zero3, pipe, best_z, best_p)
    assert (ft_setup["tmp"] / "pp2" / "ckpt" / "best" / "classifier.safetensors").is_file()


def test_starts_from_a_hugging_face_directory(ft_setup):
    """train.init_from takes an HF GPT-2 directory as well as an export: the same first loss."""
    import megagpt
    from megagpt.formats.hf import write_hf_dir
    from megagpt.model import full_state_dict

    model, tok = megagpt.load(ft_setup["model"])
    hf = write_hf_dir(full_state_dict(model), model.cfg, ft_setup["tmp"] / "hf_init", tokenizer_model=tok.path)
    common = ["train.exit_after_iters=1", "deepspeed.train_micro_batch_size_per_gpu=8",
              "deepspeed.gradient_accumulation_steps=1"]
    from_export, _ = _run(ft_setup, "from_export", 1, *common)
    from_hf, _ = _run(ft_setup, "from_hf", 1, *common, f"train.init_from={hf}")
    assert from_hf == pytest.approx(from_export, rel=1e-6)


def test_deepspeed_launcher_and_predict_command(ft_setup, tmp_path):
    import shutil

    cfg = run_yaml(ft_setup["tmp"], ft_setup["model"], ft_setup["task"], ft_setup["tok"], "launcher")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    port = str(29800 + os.getpid() % 100)
    r = subprocess.run([exe, "--hostfile", ROOT / "hostfiles" / "localhost", "--no_ssh_check", "--master_addr",
                        "127.0.0.1", "--master_port", port, ROOT / "megagpt" / "finetune.py", "--config", cfg,
                        "deepspeed.train_micro_batch_size_per_gpu=4", "deepspeed.gradient_accumulation_steps=1",
                        "finetune.epochs=1"], capture_output=True, text=True, env=env, timeout=400, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "tp=1 dp=2" in r.stdout and "done: 24 steps" in r.stdout
    out = tmp_path / "preds.jsonl"
    r = subprocess.run([sys.executable, ROOT / "megagpt" / "finetune.py", "--config", cfg, "--predict", "--split",
                        "valid", "--output", out], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "predicted 48 valid examples" in r.stdout and "accuracy" in r.stdout
    assert len(out.read_text().splitlines()) == 48


def test_multiple_choice_with_different_answer_counts(ft_setup, tmp_path):
    """Validation scores examples with 2 and 3 answers in one batch (padded to the most answers)."""
    from tests.helpers.finetune import corpus_lines

    lines = corpus_lines("trivia")
    rows = []
    for i in range(40):
        n = 2 + i % 2
        rows.append({"split": "valid" if i % 4 == 0 else "train", "context": lines[i],
                     "choices": [lines[100 + 3 * i + j] for j in range(n)], "label": i % n})
    task = tmp_path / "mc.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in [{"megagpt_finetune": 1, "type": "multiple_choice"}] + rows))
    cfg = run_yaml(ft_setup["tmp"], ft_setup["model"], task, ft_setup["tok"], "mc")
    losses, best = run_distributed(finetune_worker, 1, cfg, ["deepspeed.train_micro_batch_size_per_gpu=4",
                                                             "deepspeed.gradient_accumulation_steps=1",
                                                             "train.eval_interval=2", "train.exit_after_iters=2"],
                                   use_deepspeed=True)[0]
    assert len(losses) == 2 and 0.0 <= best <= 1.0
