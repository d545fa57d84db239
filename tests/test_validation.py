"""Every number a user writes (run file and overrides, mixture spec, data_tools config) refuses a
NaN, an infinity, a string and a negative value with one sentence naming the file and the key."""
import dataclasses
from pathlib import Path

import pytest

from megagpt.config import ConfigError, DataConfig, ModelConfig, ParallelConfig, load_run_config
from megagpt.train.setup import setup_run
from megagpt.config import TrainConfig
from megagpt.data.mixture import load_spec

RUN = Path(__file__).parent / "train" / "run_tiny.yaml"
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
    with pytest.raises(ValueError, match=rf"^{cfg}: DedupConfig.threshold must be a finite number, got nan"):
        make_config(args)
    cfg.write_text("dedup: {threshold: 0.8\n")
    with pytest.raises(ValueError, match=rf"^{cfg}:\d+: not valid YAML"):
        make_config(args)
