"""``train.init_from``: a fresh run starts from given weights (an export or a Hugging Face GPT-2
directory), in both layouts, sharded over TP and partitioned by ZeRO; a mismatched architecture
is refused in one sentence."""
import pytest
import torch

from megagpt.config import ConfigError, load_run_config
from megagpt.formats.weights import save_export
from megagpt.model import GPT, full_state_dict
from megagpt.train.setup import setup_run
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import RUN_YAML, layout_overrides


def _init_worker(rank, world_size, overrides, expected_path):
    from megagpt.formats.weights import read_export
    from megagpt.train.consolidate import consolidated_state_dict
    from megagpt.train.engine import build_engine

    run = setup_run(load_run_config(RUN_YAML, overrides), world_size)
    built = build_engine(run, total_tokens=10_000)
    full = consolidated_state_dict(built, run.model)
    if rank == 0:
        expected = read_export(expected_path)[1]
        assert set(full) == set(expected)
        for name in expected:
            torch.testing.assert_close(full[name], expected[name], rtol=0, atol=0, msg=name)
    return rank


@pytest.mark.parametrize("layout,tp,pp,source", [("zero3", 2, 1, "export"), ("3d", 2, 2, "export"),
                                                 ("zero3", 2, 1, "hf")])
def test_fresh_run_starts_from_init_weights(tmp_path, layout, tp, pp, source):
    shard = write_pattern_shard(tmp_path / "pattern_text_document")
    ov = layout_overrides(layout, tp, pp, 2, 1, tmp_path, "x") + [f"data.prefixes=[{shard}]"]
    if source == "hf":
        ov.append("model.attention=dense")  # GPT2LMHeadModel has no banded layers
    run = load_run_config(RUN_YAML, ov)
    other = GPT(run.model, init_seed=99)  # not the run's seed: the weights must come from the file
    path = save_export(full_state_dict(other), run.model, tmp_path / "init.safetensors")
    init = path
    if source == "hf":
        from megagpt.formats.hf import write_hf_dir

        init = write_hf_dir(full_state_dict(other), run.model, tmp_path / "hf")
    run_distributed(_init_worker, 4, ov + [f"train.init_from={init}"], path, use_deepspeed=True)


def test_mismatched_architecture_is_refused(tmp_path):
    from megagpt.train.engine import load_initial_weights

    run = load_run_config(RUN_YAML, ["data.prefixes=[x]"])
    wider = load_run_config(RUN_YAML, ["data.prefixes=[x]", "model.n_embd=64"]).model
    path = save_export(full_state_dict(GPT(wider)), wider, tmp_path / "wide.safetensors")
    run.train.init_from = str(path)
    with pytest.raises(ConfigError, match=r"has n_embd=64 but model.n_embd=32; make the run's model match"):
        load_initial_weights([], run, None)
