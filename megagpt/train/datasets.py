"""The run's datasets: a mixture's blended train set and per-source held-out sets, or one packed
dataset over a single source's shards with its held-out split."""
from __future__ import annotations

import torch.distributed as dist

from megagpt.config import ConfigError, RunConfig
from megagpt.data.gpt_dataset import GPTDataset, range_tokens, split_documents
from megagpt.data.indexed import ShardError, open_shard


def build_datasets(run: RunConfig, train_samples: int, valid_samples: int):
    """(train, valid, valid by source). A mixture's train set is its blended dataset; a single
    source's is one packed dataset over its shards."""
    d = run.data
    if d.mixture:
        from megagpt.data import mixture

        spec = mixture.load_spec(d.mixture)
        spec.loss_mask = d.loss_mask
        if spec.seq_length != run.seq_length:
            raise ConfigError(f"{d.mixture}: seq_length {spec.seq_length} differs from the run's "
                              f"{run.seq_length} (data.seq_length / model.n_positions).")
        # rank 0 checks the shards and builds (or finds) the cached index once; the report (or the
        # failure) reaches every rank, which then loads that index without hashing the shards again
        outcome = [None, None]  # report, error
        if dist.get_rank() == 0:
            try:
                outcome[0] = mixture.build(spec)
                print(mixture.format_report(outcome[0]), flush=True)
            except ConfigError as e:
                outcome[1] = str(e)
        dist.broadcast_object_list(outcome, src=0)
        if outcome[1]:
            raise ConfigError(outcome[1])
        train, valid_by_source = mixture.load(spec, outcome[0])
        if len(train) < train_samples:
            raise ConfigError(f"{d.mixture}: total_tokens gives {len(train)} samples but the run needs "
                              f"{train_samples} (train_iters x batch); raise total_tokens.")
        return train, None, {k: v for k, v in valid_by_source.items() if v is not None}
    try:
        shards = [open_shard(p, d.loss_mask) for p in d.prefixes]
        valid_shards = [open_shard(p, d.loss_mask) for p in d.valid_prefixes]
    except ShardError as e:
        raise ConfigError(f"data: {e}") from None
    if d.valid_prefixes:
        train_ranges, _ = split_documents(shards, 0.0)
        valid_ranges, _ = split_documents(valid_shards, 0.0)
    else:
        train_ranges, valid_ranges = split_documents(shards, d.valid_fraction)
    train = GPTDataset(train_ranges, run.seq_length, train_samples, d.seed, name="train")
    valid = None
    valid_tokens = range_tokens(valid_ranges)
    if valid_tokens > run.seq_length + 1:
        valid = GPTDataset(valid_ranges, run.seq_length, valid_samples, d.seed + 1, name="valid")
    elif valid_tokens and dist.get_rank() == 0:
        print(f"warning: {valid_tokens} held-out tokens are fewer than one sample of {run.seq_length + 1}; "
              f"no validation (raise data.valid_fraction or give data.valid_prefixes).", flush=True)
    return train, valid, {}
