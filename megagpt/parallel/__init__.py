"""Megatron-style tensor parallelism: state (the mpu), mappings, layers, cross-entropy, RNG."""
from megagpt.parallel.cross_entropy import vocab_parallel_cross_entropy
from megagpt.parallel.layers import (
                                     ColumnParallelLinear,
                                     RowParallelLinear,
                                     VocabParallelEmbedding,
                                     gather_tensor,
                                     shard_tensor,
)
from megagpt.parallel.mappings import copy_to_tp, gather_from_tp, reduce_from_tp, scatter_to_tp
from megagpt.parallel.state import ParallelState

__all__ = ["ParallelState", "ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
           "vocab_parallel_cross_entropy", "copy_to_tp", "reduce_from_tp", "scatter_to_tp",
           "gather_from_tp", "shard_tensor", "gather_tensor"]
