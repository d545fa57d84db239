"""Training on a loss mask (data.loss_mask, DialoGPT's response-only objective): targets of
masked-out tokens are -100 in every sample, the loss is the mean over the learned tokens, the
layouts agree on it, and an all-ones mask trains exactly like no mask."""
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megagpt.data.gpt_dataset import GPTDataset, micro_batches, split_documents, token_mean
from megagpt.data.indexed import IndexedDataset, IndexedDatasetWriter, MaskedShard, ShardError, open_shard
from tests.helpers.dist import run_distributed
from tests.helpers.shards import write_pattern_shard
from tests.helpers.train import layout_overrides, no_dropout, train_worker

GLOBAL_BATCH = 8


def write_mask(prefix, rule) -> None:
    """``<name>_mask_document`` beside ``<name>_text_document``: rule(doc index, length) -> 0/1 array."""
    text = IndexedDataset(prefix)
    with IndexedDatasetWriter(str(prefix).replace("_text_document", "_mask_document"), np.uint16) as w:
        for i in range(len(text)):
            w.add_document(rule(i, int(text.sizes[i])))


def second_half(i, n):
    """0 on a document's first part (the "source"), 1 on the rest with its EOD (the "response")."""
    cut = 3 + (i * 7) % max(1, n - 6)
    return np.r_[np.zeros(cut, np.uint16), np.ones(n - cut, np.uint16)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    masked = write_pattern_shard(root / "half" / "dlg_text_document")
    write_mask(masked, second_half)
    ones = root / "ones"
    ones.mkdir()
    for ext in (".bin", ".idx"):
        shutil.copy(masked + ext, ones / ("dlg_text_document" + ext))
    write_mask(ones / "dlg_text_document", lambda i, n: np.ones(n, np.uint16))
    return {"half": masked, "ones": str(ones / "dlg_text_document")}


def test_targets_are_masked_exactly(shards):
    """Every target is the next token where the mask is 1 and -100 where it is 0, across the
    document boundaries inside packed samples."""
    shard = open_shard(shards["half"], loss_mask=True)
    ranges, _ = split_documents([shard], 0.0)
    ds = GPTDataset(ranges, 32, 40, seed=3)
    text = IndexedDataset(shards["half"])
    mask = IndexedDataset(shards["half"].replace("_text", "_mask"))
    stream = np.concatenate([text[int(d)] for d in ds._doc_order])  # the packed token stream
    mstream = np.concatenate([mask[int(d)] for d in ds._doc_order])
    for i in range(len(ds)):
        j = int(ds._shuffle[i])
        toks, m = stream[j * 32: j * 32 + 33], mstream[j * 32: j * 32 + 33]
        sample = ds[i]
        assert sample.shape == (2, 33) and (sample[0] == toks).all() and (sample[1] == m).all()
    learned = ignored = 0
    for k in range(10):
        x, y = next(micro_batches(ds, k * 4, 4, 0, 1))
        for r in range(4):
            toks, m = ds[k * 4 + r]
            assert torch.equal(x[r], torch.from_numpy(toks[:-1]))
            want = np.where(m[1:] == 1, toks[1:], -100)
            assert torch.equal(y[r], torch.from_numpy(want))
            learned += int((m[1:] == 1).sum())
            ignored += int((m[1:] == 0).sum())
    assert learned > 0 and ignored > 0


def test_mixture_sources_carry_their_masks(tmp_path, shards):
    """A mixture with the run's loss_mask serves (tokens, mask) samples from every source, and a
    source without a mask sidecar is refused naming the spec and the source."""
    from megagpt.config import ConfigError
    from megagpt.data import mixture

    lone = write_pattern_shard(tmp_path / "lone_text_document", n_docs=50)
    spec_path = tmp_path / "mix.yaml"
    spec_path.write_text(f"total_tokens: 6400\nseq_length: 32\nsources:\n"
                         f"  half: {{prefixes: [{shards['half']}], weight: 0.5}}\n"
                         f"  ones: {{prefixes: [{shards['ones']}], weight: 0.5}}\n")
    spec = mixture.load_spec(spec_path)
    spec.loss_mask = True
    train, valid = mixture.load(spec, mixture.build(spec))
    rows = [train[i] for i in range(40)]
    assert all(r.shape == (2, 33) for r in rows)
    masks = {k: [r[1] for i, r in enumerate(rows) if train.source_of(i) == k] for k in (0, 1)}
    assert all(m.all() for m in masks[1])  # "ones" learns every token
    assert masks[0] and not all(m.all() for m in masks[0])  # "half" does not
    assert all(v is None or v[0].shape == (2, 33) for v in valid.values())
    spec_path.write_text(f"total_tokens: 6400\nseq_length: 32\nsources:\n  lone: {{prefixes: [{lone}], weight: 1}}\n")
    spec = mixture.load_spec(spec_path)
    spec.loss_mask = True
    with pytest.raises(ConfigError, match="source 'lone': .*lone_mask_document.bin: shard file not found"):
        mixture.build(spec)


def test_token_mean_is_the_masked_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    y = torch.randint(0, 11, (3, 7), generator=g)
    y[0, :4] = -100
    y[2, :] = -100
    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none").view(3, 7)
    want = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    assert token_mean(per_token, y).item() == pytest.approx(want.item(), rel=1e-6)
    assert token_mean(per_token[2:], y[2:]).item() == 0.0  # nothing to learn: 0, not NaN


def test_missing_or_foreign_mask_is_refused(tmp_path, shards):
    lone = write_pattern_shard(tmp_path / "lone_text_document", n_docs=5)
    with pytest.raises(ShardError, match="lone_mask_document.bin: shard file not found"):
        MaskedShard(lone)
    odd = write_pattern_shard(tmp_path / "odd", n_docs=5)
    with pytest.raises(ShardError, match="must be named <name>_text_document"):
        open_shard(odd, loss_mask=True)
    other = write_pattern_shard(tmp_path / "other_text_document", n_docs=5)
    write_mask(other, lambda i, n: np.ones(n + 1, np.uint16))
    with pytest.raises(ShardError, match="document sizes differ"):
        MaskedShard(other)


def _run(tmp_path, prefix, layout, pp, world, mask=True, steps=3):
    micro = 2
    gas = GLOBAL_BATCH // (micro * (world // pp))
    tag = f"{layout}_pp{pp}_w{world}_{mask}_{prefix.split('/')[-2]}"
    ov = layout_overrides(layout, 1, pp, micro, gas, tmp_path, tag) + no_dropout() + [
        f"data.prefixes=[{prefix}]", f"data.loss_mask={'true' if mask else 'false'}", f"train.train_iters={steps}",
        "train.eval_interval=1000", "train.log_interval=1000"]
    return run_distributed(train_worker, world, ov, use_deepspeed=True)[0]


def test_masked_training_across_layouts(tmp_path, shards):
    """The masked loss is the same in one process, under ZeRO-3 data parallelism and through
    two pipeline stages; it differs from the unmasked loss, and an all-ones mask changes nothing."""
    ref = _run(tmp_path, shards["half"], "zero3", 1, 1)
    for layout, pp, world in (("zero3", 1, 2), ("3d", 2, 2)):
        got = _run(tmp_path, shards["half"], layout, pp, world)
        assert got == pytest.approx(ref, rel=1e-4, abs=1e-4), (layout, got, ref)
    plain = _run(tmp_path, shards["half"], "zero3", 1, 1, mask=False)
    assert abs(plain[0] - ref[0]) > 1e-3
    assert _run(tmp_path, shards["ones"], "zero3", 1, 1) == pytest.approx(plain, rel=1e-6, abs=1e-6)
