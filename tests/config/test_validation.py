"""Every number a user writes (run file and overrides, mixture spec, data_tools config) refuses a
NaN, an infinity, a string and a negative value with one sentence naming the file and the key."""
import dataclasses
from pathlib import Path

import pytest

from megagpt.config import ConfigError, DataConfig, ModelConfig, ParallelConfig, TrainConfig, load_run_config
from megagpt.data.mixture import load_spec
from megagpt.train.setup import setup_run

RUN = Path(__file__).resolve().parents[1] / "helpers" / "run_tiny.yaml"
BAD = {".nan": "finite", ".inf": "finite", "seventy": "must be", "-3": "negative"}


def _numeric_keys():
    for section, cls in (("model", ModelConfig), ("parallel", ParallelConfig), ("data", DataConfig),
                         ("train", TrainConfig)):
        for f in dataclasses.fields(cls):
            kinds = {k.strip() for k in str(f.type).split("|")}
            if kinds & {"int", "float"}:
                yield f"{section}.{f.name}"


@pytest.mark.parametrize("key", list(_numeric_keys()))
def test_every_numeric_run_key_refuses_bad_values(key):
    for raw, why in BAD.items():
        with pytest.raises(ConfigError) as e:
            run = load_run_config(RUN, ["data.prefixes=[x]", f"{key}={raw}"])
            setup_run(run, 1)
        msg = str(e.value)
        assert "\n" not in msg and key in msg and str(RUN) in msg, (key, raw, msg)
        assert why in msg or "positive" in msg or "must be" in msg, (key, raw, msg)


def test_booleans_are_not_integers_and_strings_not_booleans():
    with pytest.raises(ConfigError, match=r"train.train_iters must be an integer, got True"):
        load_run_config(RUN, ["data.prefixes=[x]", "train.train_iters=true"])
    with pytest.raises(ConfigError, match=r"train.resume must be true or false, got 'maybe'"):
        load_run_config(RUN, ["data.prefixes=[x]", "train.resume=maybe"])


SPEC = """total_tokens: 100000
seq_length: 32
seed: 7
valid_fraction: 0.05
max_epochs: 4
sources:
  a: {prefixes: [a_text_document], weight: 0.6}
  b: {prefixes: [b_text_document], weight: 0.4}
"""


@pytest.mark.parametrize("key", ["total_tokens", "seq_length", "seed", "valid_fraction", "max_epochs", "weight"])
def test_every_numeric_mixture_key_refuses_bad_values(tmp_path, key):
    for raw in BAD:
        text = SPEC.replace("weight: 0.6", f"weight: {raw}") if key == "weight" else \
            "\n".join(f"{key}: {raw}" if line.startswith(f"{key}:") else line for line in SPEC.splitlines())
        spec = tmp_path / "mix.yaml"
        spec.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_spec(spec)
        msg = str(e.value)
        assert "\n" not in msg and str(spec) in msg and key in msg, (key, raw, msg)


def test_syntax_errors_name_file_and_line(tmp_path):
    spec = tmp_path / "mix.yaml"
    spec.write_text(SPEC + "  c: {prefixes: [c, weight: 1}\n")
    with pytest.raises(ConfigError, match=rf"^{spec}:9: not valid YAML \("):
        load_spec(spec)
    js = tmp_path / "ds.json"
    js.write_text('{"a": 1,\n "b": }\n')
    from megagpt.config import load_file

    with pytest.raises(ConfigError, match=rf"^{js}:2: not valid JSON"):
        load_file(js)


def test_data_tools_config_values_are_checked():
    from data_tools.pipeline import PipelineConfig, from_dict

    with pytest.raises(ValueError, match=r"must be a finite number, got nan"):
        from_dict(PipelineConfig, {"dedup": {"threshold": float("nan")}})
    with pytest.raises(ValueError, match=r"must be an integer, got 'many'"):
        from_dict(PipelineConfig, {"tokenizer": {"vocab_size": "many"}})


def test_build_source_config_file_errors_name_the_file(tmp_path):
    from types import SimpleNamespace

    from data_tools.build_source import make_config

    cfg = tmp_path / "cc.yaml"
    cfg.write_text("dedup:\n  threshold: .nan\n")
    args = SimpleNamespace(config=str(cfg), source="cc", format=None, filters=None, classifier=None,
                           strict=False, decontam=None, vocab_size=None)
    with pytest.raises(ValueError, match=rf"^{cfg}: dedup.threshold must be a finite number, got nan"):
        make_config(args)
    cfg.write_text("dedup: {threshold: 0.8\n")
    with pytest.raises(ValueError, match=rf"^{cfg}:\d+: not valid YAML"):
        make_config(args)


# --- numbers in scientific notation (YAML 1.2), everywhere a user writes one -----------------------
def test_scientific_notation_is_a_number_in_overrides_and_files(tmp_path):
    run = load_run_config(RUN, ["data.prefixes=[x]", "train.lr_warmup_tokens=375e6", "train.min_lr_ratio=1e-1",
                                "deepspeed.optimizer.params.lr=3e-3", "deepspeed.optimizer.params.eps=1e-8"])
    assert run.train.lr_warmup_tokens == 375_000_000 and isinstance(run.train.lr_warmup_tokens, int)
    assert run.train.min_lr_ratio == 0.1
    assert run.deepspeed["optimizer"]["params"]["lr"] == 0.003 and run.deepspeed["optimizer"]["params"]["eps"] == 1e-8
    setup_run(run, 1)
    f = tmp_path / "run.yaml"
    f.write_text(RUN.read_text().replace("lr_warmup_tokens: 256", "lr_warmup_tokens: 2.56e2")
                 .replace("../../ds_configs/zero3.json", str(RUN.parents[2] / "ds_configs" / "zero3.json")))
    assert load_run_config(f, ["data.prefixes=[x]"]).train.lr_warmup_tokens == 256
    # a mixture spec and a data_tools config go through the same loader
    (tmp_path / "a_text_document.idx").write_bytes(b"")
    spec = tmp_path / "mix.yaml"
    spec.write_text("total_tokens: 1e5\nseq_length: 32\nsources:\n  a: {prefixes: [a_text_document], weight: 6e-1}\n")
    s = load_spec(spec)
    assert s.total_tokens == 100_000 and s.sources[0].weight == 0.6
    # a string that only looks like a number stays a string, and 1.5 stays a float
    from megagpt.config import load_file

    (tmp_path / "x.yaml").write_text("a: '3e-3'\nb: 1.5\nc: 1e-3\nd: 2.5e1\n")
    assert load_file(tmp_path / "x.yaml") == {"a": "3e-3", "b": 1.5, "c": 0.001, "d": 25}


# --- DeepSpeed values are checked before any process group ---------------------------------------
@pytest.mark.parametrize("override, message", [
    ("deepspeed.optimizer.params.lr=fast", r"^override deepspeed.optimizer.params.lr=fast: optimizer.params.lr must "
                                           r"be a number, got 'fast'\.$"),
    ("deepspeed.optimizer.params.lr=-1e-3", r"optimizer.params.lr must be greater than 0, got -0.001"),
    ("deepspeed.optimizer.params.betas=[0.9, 1.5]", r"optimizer.params.betas must be two numbers in \[0, 1\)"),
    ("deepspeed.gradient_clipping=-1", r"gradient_clipping must be at least 0, got -1"),
    ("deepspeed.train_micro_batch_size_per_gpu=0", r"train_micro_batch_size_per_gpu must be at least 1"),
    ("deepspeed.zero_optimisation={stage: 3}", r"'zero_optimisation' is not a DeepSpeed key \(DeepSpeed would ignore "
                                               r"it\); did you mean 'zero_optimization'\?"),
    ("deepspeed.zero_optimization.overlap_com=true", r"zero_optimization.overlap_com is not a DeepSpeed "
                                                     r"zero_optimization key \(did you mean 'overlap_comm'\?\)"),
    ("deepspeed.zero_optimization.reduce_bucket_size=lots", r"zero_optimization.reduce_bucket_size: input should be "
                                                            r"a valid integer"),
    ("deepspeed.bf16.enabled=maybe", r"bf16.enabled: input should be a valid boolean"),
])
def test_deepspeed_values_are_checked(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_run_config(RUN, ["data.prefixes=[x]", override])
    assert "\n" not in str(e.value)


def test_a_bad_deepspeed_value_in_the_file_names_the_file(tmp_path):
    import json

    ds = json.loads((RUN.parents[2] / "ds_configs" / "zero3.json").read_text())
    ds["optimizer"]["params"]["weight_decay"] = "0.1"
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'ds.json'}: optimizer.params.weight_decay must be a number, "
                                          r"got '0.1'\.$"):
        load_run_config(RUN, ["data.prefixes=[x]", f"train.deepspeed_config={tmp_path / 'ds.json'}"])


def test_every_shipped_deepspeed_config_passes():
    for ds in sorted((RUN.parents[2] / "ds_configs").glob("*.json")):
        load_run_config(RUN, ["data.prefixes=[x]", f"train.deepspeed_config={ds}"])
