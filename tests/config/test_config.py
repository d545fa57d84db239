import pytest

from megagpt.config import PRESETS, ConfigError, ParallelConfig, load_file, model_config
from megagpt.model import GPT, param_count
from megagpt.model.flops import model_flops_per_token

# Published sizes; GPT-2's paper numbers (117M/345M/762M/1542M) undercount: with the tied
# embedding counted once they are 124M/355M/774M/1558M, the sizes of the released checkpoints.
PUBLISHED = {
    "gpt1": 117e6, "gpt2-117m": 124e6, "gpt2-345m": 355e6, "gpt2-762m": 774e6,
    "gpt2-1542m": 1558e6, "gpt3-125m": 125e6, "gpt3-350m": 350e6, "gpt3-760m": 760e6,
    "gpt3-1.3b": 1.3e9, "gpt3-2.7b": 2.7e9, "gpt3-6.7b": 6.7e9, "gpt3-13b": 13e9,
    "gpt3-175b": 174.6e9,
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_preset_sizes_match_published(preset):
    n = param_count(model_config(preset))
    assert abs(n - PUBLISHED[preset]) / PUBLISHED[preset] < 0.02, (preset, n)


def test_param_count_equals_allocated_parameters():
    for preset, kw in [("tiny", {}), ("tiny", dict(ln_position="post")), ("tiny", dict(n_inner=100))]:
        cfg = model_config(preset, **kw)
        model = GPT(cfg)
        allocated = sum(p.numel() for p in model.parameters())
        padding = (cfg.padded_vocab_size() - cfg.vocab_size) * cfg.n_embd
        assert allocated - padding == param_count(cfg)


def test_flops_follow_6n_plus_attention():
    cfg = model_config("gpt2-117m")
    n = param_count(cfg, include_embeddings=False)
    T = 1024
    expected = 6 * (n - cfg.n_layer * 13 * cfg.n_embd - 2 * cfg.n_embd) + 12 * cfg.n_layer * cfg.n_embd * T \
        + 6 * cfg.n_embd * cfg.vocab_size
    assert model_flops_per_token(cfg, T) == expected
    banded = model_config("gpt3-125m")
    assert model_flops_per_token(banded, 2048) < model_flops_per_token(
        model_config("gpt3-125m", attention="dense"), 2048)


@pytest.mark.parametrize("overrides,needle", [
    (dict(n_embd=100, n_head=3), "model.n_embd=100 must be divisible by model.n_head=3"),
    (dict(n_layer=-2), "model.n_layer must not be negative, got -2"),
    (dict(vocab_size=0), "model.vocab_size must be a positive integer"),
    (dict(attention="sparse"), "model.attention must be 'dense' or 'alternating'"),
    (dict(ln_position="middle"), "model.ln_position must be 'pre'"),
    (dict(attn_pdrop=1.5), "model.attn_pdrop must be a probability"),
])
def test_bad_model_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        model_config("tiny", **overrides).validate()


def test_n_head_not_divisible_by_tp():
    with pytest.raises(ConfigError) as e:
        model_config("gpt2-1542m").validate(tp_size=2)
    assert str(e.value) == ("model.n_head=25 must be divisible by parallel.tp_size=2; "
                            "use a tp_size that divides 25.")


def test_unknown_key_rejected(tmp_path):
    with pytest.raises(ConfigError, match="model: unknown key 'n_layers'; allowed keys are"):
        model_config("tiny", n_layers=4)
    with pytest.raises(ConfigError, match="model.preset 'gpt5' is unknown"):
        model_config("gpt5")


def test_parallel_config_errors():
    with pytest.raises(ConfigError,
                       match="world size 6 is not divisible by parallel.tp_size x parallel.pp_size = 4 x 1"):
        ParallelConfig(tp_size=4).validate(world_size=6)
    with pytest.raises(ConfigError, match="parallel.tp_size must be a positive integer"):
        ParallelConfig(tp_size=0).validate()
    with pytest.raises(ConfigError, match="parallel.layout must be one of zero3, 3d"):
        ParallelConfig(layout="2d").validate()


def test_load_file_reports_the_file(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match=f"{bad}:2: not valid YAML"):
        load_file(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_file(tmp_path / "missing.yaml")


def test_presets_validate():
    for name in PRESETS:
        model_config(name).validate()
