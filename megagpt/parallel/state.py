"""The parallel state: which ranks form the tensor-, pipeline- and data-parallel groups.

Ranks are laid out as Megatron and DeepSpeed's ``PipeModelDataParallelTopology`` do, tensor
parallel fastest, then data parallel, then pipeline::

    rank = pp_rank * (dp_size * tp_size) + dp_rank * tp_size + tp_rank

so the TP peers of a rank are neighbours (same node, fast links). One ``ParallelState`` is built
per process and passed explicitly; it doubles as DeepSpeed's ``mpu``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from megagpt.config import ConfigError
from megagpt.parallel.random import TPRandom


@dataclass
class ParallelState:
    tp_size: int = 1
    pp_size: int = 1
    dp_size: int = 1
    rank: int = 0
    tp_group: Any = None
    pp_group: Any = None
    dp_group: Any = None
    # the group of all ranks that hold one full model (TP x PP), for model-parallel reductions
    mp_group: Any = None
    rng: TPRandom = field(default_factory=TPRandom, repr=False)

    def seed(self, seed: int) -> None:
        """Seed the default stream (same on TP peers) and the per-TP-rank stream."""
        self.rng.seed(seed, tp_rank=self.tp_rank, pp_rank=self.pp_rank)

    def __post_init__(self):
        for name in ("tp_size", "pp_size", "dp_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"parallel.{name} must be a positive integer, got {value!r}.")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def single(cls) -> ParallelState:
        """No parallelism: an ordinary single-device model, no process group needed."""
        return cls()

    @classmethod
    def build(cls, tp_size: int = 1, pp_size: int = 1) -> ParallelState:
        """Split the initialised default process group into TP, PP and DP groups.

        Every rank must call this, in the same order, because ``new_group`` is collective.
        """
        if not dist.is_initialized():
            if tp_size == pp_size == 1:
                return cls.single()
            raise RuntimeError("ParallelState.build needs torch.distributed to be initialised first.")
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % (tp_size * pp_size):
            raise ConfigError(
                f"world size {world} is not divisible by tp_size x pp_size = {tp_size} x {pp_size}; "
                f"launch a multiple of {tp_size * pp_size} processes.")
        dp_size = world // (tp_size * pp_size)
        state = cls(tp_size=tp_size, pp_size=pp_size, dp_size=dp_size, rank=rank)
        # every rank creates every group, in the same order (new_group is collective)
        for attr, all_ranks in (("tp_group", state.tp_groups_ranks()), ("dp_group", state.dp_groups_ranks()),
                                ("pp_group", state.pp_groups_ranks()), ("mp_group", state.mp_groups_ranks())):
            for ranks in all_ranks:
                group = dist.new_group(ranks)
                if rank in ranks:
                    setattr(state, attr, group)
        return state

    # --- rank arithmetic ----------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size * self.dp_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def dp_rank(self) -> int:
        return (self.rank // self.tp_size) % self.dp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp_size * self.dp_size)

    def _rank_of(self, pp: int, dp: int, tp: int) -> int:
        return pp * self.dp_size * self.tp_size + dp * self.tp_size + tp

    def tp_groups_ranks(self) -> list[list[int]]:
        return [[self._rank_of(p, d, t) for t in range(self.tp_size)]
                for p in range(self.pp_size) for d in range(self.dp_size)]

    def dp_groups_ranks(self) -> list[list[int]]:
        return [[self._rank_of(p, d, t) for d in range(self.dp_size)]
                for p in range(self.pp_size) for t in range(self.tp_size)]

    def pp_groups_ranks(self) -> list[list[int]]:
        return [[self._rank_of(p, d, t) for p in range(self.pp_size)]
                for d in range(self.dp_size) for t in range(self.tp_size)]

    def mp_groups_ranks(self) -> list[list[int]]:
        return [[self._rank_of(p, d, t) for p in range(self.pp_size) for t in range(self.tp_size)]
                for d in range(self.dp_size)]

    # --- DeepSpeed ``mpu`` interface ----------------------------------------------------------
    def get_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.tp_size

    def get_model_parallel_group(self):
        return self.tp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_data_parallel_rank(self) -> int:
        return self.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.dp_size

    def get_data_parallel_group(self):
        return self.dp_group

    def get_pipeline_model_parallel_rank(self) -> int:
        return self.pp_rank

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self.pp_size

    def get_pipeline_model_parallel_group(self):
        return self.pp_group
