"""Exports are safetensors plus JSON and load without unpickling: a pickle with a payload, a
truncated file or a config that does not fit the tensors fails with one sentence and runs nothing."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import megagpt
from megagpt.config import model_config
from megagpt.formats.weights import save_export
from megagpt.inference import WeightsError, load
from megagpt.model import GPT, full_state_dict
from tests.helpers.tamper import Payload

ROOT = Path(__file__).resolve().parents[2]


def _export(tmp_path):
    torch.manual_seed(0)
    cfg = model_config("tiny", attention="alternating", local_window=8)
    model = GPT(cfg).eval()
    return model, save_export(full_state_dict(model), cfg, tmp_path / "m.safetensors", step=7)


def test_round_trip_and_one_line_api(tmp_path):
    model, path = _export(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["step"] == 7 and meta["model"]["attention"] == "alternating"
    loaded, tok = megagpt.load(path)
    assert tok is None  # no tokenizer recorded or beside it
    idx = torch.randint(0, 512, (2, 20))
    assert torch.equal(loaded.gathered_logits(idx), model.gathered_logits(idx))
    # the header alone carries the config when the JSON is gone
    path.with_suffix(".json").unlink()
    assert torch.equal(load(path).model.gathered_logits(idx), model.gathered_logits(idx))


def test_pickle_payload_named_safetensors_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    with pytest.raises(WeightsError, match=r"evil.safetensors: not a valid safetensors file"):
        load(bad)
    legacy = tmp_path / "evil.pt"
    torch.save({"config": {}, "state_dict": Payload(marker)}, legacy)
    with pytest.raises(WeightsError, match=r"evil.pt: not a megagpt export readable without unpickling"):
        load(legacy)
    assert not marker.exists()


def test_truncated_file_and_mismatched_config(tmp_path):
    _, path = _export(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(WeightsError, match=r"cut.safetensors: not a valid safetensors file"):
        load(cut)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["model"]["n_embd"] = 128
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match=r"m.safetensors: the tensors do not match the model config: "
                                           r"embed.wte.weight: shape \(512, 64\) does not fit parameter"):
        load(path)


def test_generate_cli_refuses_a_tampered_file_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps(Payload(marker)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "megagpt" / "generate.py"), "--model", str(bad),
                        "--prompt", "x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "evil.safetensors: not a valid safetensors file" in errors[0]
    assert "Traceback" not in r.stderr and not marker.exists()
