"""A tiny pretraining run on a 3-source mixture logs per-source train and valid losses."""
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import layout_overrides, train_worker


def test_per_source_scalars(tmp_path):
    for i, name in enumerate(["cc", "web", "wiki"]):
        write_pattern_shard(tmp_path / f"{name}_text_document", n_docs=80, seed=i)
    spec = tmp_path / "mix.yaml"
    spec.write_text("total_tokens: 64000\nseq_length: 32\nvalid_fraction: 0.1\nsources:\n"
                    "  cc: {prefixes: [cc_text_document], weight: 0.6}\n"
                    "  web: {prefixes: [web_text_document], weight: 0.3}\n"
                    "  wiki: {prefixes: [wiki_text_document], weight: 0.1}\n")
    ov = layout_overrides("zero3", 1, 1, 2, 1, tmp_path, "run") + [
        f"data.mixture={spec}", "train.train_iters=6", "train.log_interval=3", "train.eval_interval=3"]
    losses = run_distributed(train_worker, 2, ov, use_deepspeed=True)[0]
    assert len(losses) == 6
    acc = EventAccumulator(str(tmp_path / "run" / "tb" / "run_tiny"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in ["cc", "web", "wiki"]:
        for prefix in ("train/loss/", "train/tokens/", "valid/loss/"):
            assert prefix + name in tags, (prefix + name, sorted(tags))
    tokens = {n: acc.Scalars(f"train/tokens/{n}")[-1].value for n in ["cc", "web", "wiki"]}
    assert sum(tokens.values()) == 6 * 4 * 32  # steps x global batch x seq
    assert tokens["cc"] > tokens["web"] > tokens["wiki"]
