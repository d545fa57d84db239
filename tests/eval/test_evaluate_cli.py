"""evaluate.py under plain python, the deepspeed launcher (tp=2) and mpirun (dp=2) gives the same
numbers; its output JSON, TensorBoard scalars and one-line errors; and lm-evaluation-harness gives
identical metrics for ``--model megagpt`` and ``--model hf`` on the exported directory."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd, timeout=400):
    r = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    return r


def _evaluate(launcher, exported, task_files, out, *extra):
    r = _run(launcher + [ROOT / "megagpt" / "evaluate.py", "--model", exported, "--tasks", task_files["mc"],
                         task_files["cloze"], task_files["gen"], "--shots", "0,1", "--perplexity", task_files["corpus"],
                         "--stride", "32", "--output", out, "--batch-size", "3", *extra])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


def _numbers(result):
    rows = {(r["task"], str(r["k"]), r["metric"]): r["value"] for r in result["tasks"]}
    ppl = {k: (v["nll"], v["tokens"]) for k, v in result["perplexity"].items()}
    return rows, ppl


def _same(a, b):
    (ra, pa), (rb, pb) = _numbers(a), _numbers(b)
    assert ra.keys() == rb.keys()
    for k in ra:
        assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), k
    for k in pa:
        assert pa[k][1] == pb[k][1] and pa[k][0] == pytest.approx(pb[k][0], rel=1e-6)


def test_launchers_agree_and_output(exported, task_files, tmp_path):
    ref, stdout = _evaluate([sys.executable], exported, task_files, tmp_path / "one.json",
                            "--tensorboard-dir", tmp_path / "tb", "--dump-prompts", tmp_path / "prompts")
    assert "acc_uncond" in stdout and "bits/byte" in stdout
    row = next(r for r in ref["tasks"] if r["task"] == "mc" and r["k"] == 1 and r["metric"] == "acc")
    assert {"task", "k", "metric", "value", "stderr", "n", "model", "step", "seed", "chance"} <= row.keys()
    assert row["n"] == 6 and row["chance"] == 0.25 and row["seed"] == 1234 and 0 <= row["value"] <= 1
    assert {r["metric"] for r in ref["tasks"]} == {"acc", "acc_token", "acc_byte", "acc_uncond", "ppl", "em", "f1"}
    dumped = [json.loads(x) for x in (tmp_path / "prompts" / "mc.k1.jsonl").read_text().splitlines()]
    assert len(dumped) == 6 and all(len(d["shots"]) == 1 and d["line"] not in d["shots"] for d in dumped)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # into the run the model was trained in (its export names it), not beside the runs
    assert not list((tmp_path / "tb").glob("events.*")) and list((tmp_path / "tb" / "tiny_run").glob("events.*"))
    acc = EventAccumulator(str(tmp_path / "tb" / "tiny_run"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"eval/mc/acc", "eval/mc.1shot/acc_uncond", "eval/cloze/ppl", "eval/gen/f1",
            "eval/corpus/bits_per_byte"} <= tags
    assert acc.Scalars("eval/mc/acc")[0].value == pytest.approx(
        next(r["value"] for r in ref["tasks"] if (r["task"], r["k"], r["metric"]) == ("mc", 0, "acc")))

    exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    port = str(29700 + os.getpid() % 1000)
    tp2, _ = _evaluate([exe, "--hostfile", ROOT / "hostfiles" / "localhost", "--no_ssh_check", "--master_addr",
                        "127.0.0.1", "--master_port", port], exported, task_files, tmp_path / "tp2.json")
    assert tp2["tp"] == 2 and tp2["dp"] == 1
    _same(ref, tp2)
    if shutil.which("mpirun"):
        dp2, _ = _evaluate(["mpirun", "-np", "2", "--oversubscribe", sys.executable], exported, task_files,
                           tmp_path / "dp2.json", "--tp", "1")
        assert dp2["tp"] == 1 and dp2["dp"] == 2
        _same(ref, dp2)


def test_errors_are_one_line(exported, task_files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"megagpt_task": 1, "type": "multiple_choice"}\n{"context": "a", "choices": [], "label": 0}\n')
    r = _run([sys.executable, ROOT / "megagpt" / "evaluate.py", "--model", exported, "--tasks", bad])
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:2: 'choices' must be")
    long = tmp_path / "long.jsonl"
    long.write_text('{"megagpt_task": 1, "type": "cloze"}\n'
                    + json.dumps({"context": "word " * 200, "target": "x"}) + "\n")
    r = _run([sys.executable, ROOT / "megagpt" / "evaluate.py", "--model", exported, "--tasks", long])
    assert r.returncode == 2 and "longer than the model's context of 128 tokens" in r.stderr \
        and f"error: {long}:2: the prompt is" in r.stderr


YAML = """task: {name}
custom_dataset: !function megagpt_data.{loader}
dataset_kwargs:
  {key}: {path}
output_type: {output_type}
test_split: test
{extra}
"""


def test_lm_eval_megagpt_equals_hf(exported, task_files, tmp_path):
    from megagpt.formats.hf import write_hf_dir
    from megagpt.inference import load
    from megagpt.model import full_state_dict

    model, tok = load(exported)
    hf_dir = write_hf_dir(full_state_dict(model), model.cfg, tmp_path / "hf", tokenizer_model=tok.path)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(ROOT / "megagpt" / "eval" / "lm_eval_tasks" / "megagpt_data.py", tasks)
    specs = {
        "t_mc": ("task", "task_file", task_files["mc"], "multiple_choice",
                 'fewshot_split: train\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
                 'doc_to_target: label\n'
                 "metric_list:\n  - metric: acc\n  - metric: acc_norm"),
        "t_cloze": ("task", "task_file", task_files["cloze"], "loglikelihood",
                    'doc_to_text: "{{context}}"\ndoc_to_target: "{{target}}"\n'
                    "metric_list:\n  - metric: perplexity\n  - metric: acc"),
        "t_gen": ("task", "task_file", task_files["gen"], "generate_until",
                  'doc_to_text: "{{context}}"\ndoc_to_target: "{{answers[0]}}"\n'
                  'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 4\n  do_sample: false\n'
                  "metric_list:\n  - metric: exact_match"),
        "t_ppl": ("corpus", "corpus_file", task_files["corpus"], "loglikelihood_rolling",
                  'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
                  "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte"),
    }
    for name, (loader, key, path, output_type, extra) in specs.items():
        (tasks / f"{name}.yaml").write_text(YAML.format(name=name, loader=loader, key=key, path=path,
                                                        output_type=output_type, extra=extra))
    common = ["--include_path", tasks, "--tasks", ",".join(specs), "--num_fewshot", "1", "--seed", "0",
              "--batch_size", "4"]
    lm_eval = shutil.which("lm_eval") or str(Path(sys.executable).parent / "lm_eval")
    mine = shutil.which("megagpt-lm-eval") or str(Path(sys.executable).parent / "megagpt-lm-eval")
    results = {}
    for name, cmd in (("megagpt", [mine, "--model", "megagpt", "--model_args", f"path={exported}"]),
                      ("hf", [lm_eval, "--model", "hf", "--model_args", f"pretrained={hf_dir},dtype=float32",
                              "--device", "cpu"])):
        out = tmp_path / f"out_{name}"
        r = _run(cmd + common + ["--output_path", out])
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        results[name] = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    a, b = results["megagpt"], results["hf"]
    assert set(a) == set(specs) == set(b)
    for task in specs:
        metrics = {k for k in a[task] if "," in k and "stderr" not in k}
        assert metrics and metrics == {k for k in b[task] if "," in k and "stderr" not in k}
        for m in metrics:
            if "perplexity" in m or "bits" in m:
                assert a[task][m] == pytest.approx(b[task][m], rel=1e-5), (task, m)
            else:
                assert a[task][m] == b[task][m], (task, m)


def test_output_into_a_missing_directory_is_refused_first(exported, task_files, tmp_path):
    r = _run([sys.executable, ROOT / "megagpt" / "evaluate.py", "--model", exported, "--tasks", task_files["mc"],
              "--output", tmp_path / "no" / "such" / "r.json"])
    assert r.returncode == 2 and "its directory does not exist" in r.stderr.strip().splitlines()[-1]
