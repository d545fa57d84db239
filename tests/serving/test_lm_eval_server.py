"""lm-evaluation-harness's ``local-completions`` model against the live server (log-likelihoods
through ``echo`` + ``logprobs``, tokenized by the server's ``/tokenize``) scores a multiple-choice
task exactly as ``evaluate.py`` and lm-evaluation-harness's ``megagpt`` model do on the same model."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.serve import ROOT

pytest.importorskip("lm_eval")

SENTENCES = [
    "The server answers every request in the order it arrives.", "A batch holds the rows that decode together.",
    "Each rank keeps a shard of every weight matrix.", "The cache stores the keys and values of past tokens.",
    "A client may leave before its answer is finished.", "The tokenizer turns text into pieces and back.",
    "Greedy decoding picks the most likely token each time.", "The context window limits how much the model sees.",
    "Streaming sends each piece of text as soon as it is ready.", "The health check reports the rows in flight.",
    "An error names the field that was wrong.", "The chat page keeps the last few turns of history.",
]

YAML = """task: srv_mc
custom_dataset: !function megagpt_data.task
dataset_kwargs:
  task_file: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OPENAI_API_KEY="unused")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd):
    r = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_local_completions_equals_evaluate(server, serve_models, tmp_path):
    from megagpt.eval.tasks import write_task

    items = []
    for i, s in enumerate(SENTENCES):
        words = s[:-1].split()
        others = [SENTENCES[(i + j) % len(SENTENCES)][:-1].split()[-1] for j in (1, 2, 3)]
        items.append({"context": " ".join(words[:-1]), "choices": others[:i % 4] + [words[-1]] + others[i % 4:],
                      "label": i % 4})
    task = write_task(tmp_path / "mc.jsonl", {"name": "srv_mc", "type": "multiple_choice"}, items)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(ROOT / "megagpt" / "eval" / "lm_eval_tasks" / "megagpt_data.py", tasks)
    (tasks / "srv_mc.yaml").write_text(YAML.format(path=task))

    out = tmp_path / "evaluate.json"
    _run([sys.executable, ROOT / "megagpt" / "evaluate.py", "--model", serve_models["forward"], "--tasks", task,
          "--shots", "0", "--output", out])
    mine = {r["metric"]: r["value"] for r in json.loads(out.read_text())["tasks"]}

    bindir = Path(sys.executable).parent
    common = ["--include_path", tasks, "--tasks", "srv_mc", "--num_fewshot", "0", "--seed", "0"]
    results = {}
    for name, cmd in (
            ("server", [shutil.which("lm_eval") or bindir / "lm_eval", "--model", "local-completions",
                        "--model_args", f"base_url={server.url}/v1/completions,model=fwd,tokenizer_backend=remote,"
                                        "max_length=512,num_concurrent=4,max_retries=1", "--batch_size", "4"]),
            ("megagpt", [shutil.which("megagpt-lm-eval") or bindir / "megagpt-lm-eval", "--model", "megagpt",
                         "--model_args", f"path={serve_models['forward']}", "--batch_size", "4"])):
        dest = tmp_path / f"out_{name}"
        _run(cmd + common + ["--output_path", dest])
        results[name] = json.loads(next(dest.rglob("results_*.json")).read_text())["results"]["srv_mc"]
    server_acc, megagpt_acc = results["server"], results["megagpt"]
    assert server_acc["acc,none"] == megagpt_acc["acc,none"] == pytest.approx(mine["acc"])
    assert server_acc["acc_norm,none"] == megagpt_acc["acc_norm,none"]
    print(f"srv_mc acc: server {server_acc['acc,none']:.4f}, megagpt lm-eval {megagpt_acc['acc,none']:.4f}, "
          f"evaluate.py {mine['acc']:.4f}; acc_norm {server_acc['acc_norm,none']:.4f}")
