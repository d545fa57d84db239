"""The rank layout matches DeepSpeed's pipeline topology (TP fastest, then DP, then PP)."""
import pytest
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from megagpt.config import ConfigError
from megagpt.parallel import ParallelState


@pytest.mark.parametrize("tp,pp,dp", [(2, 1, 4), (2, 2, 2), (4, 2, 1), (1, 4, 2)])
def test_groups_match_deepspeed_topology(tp, pp, dp):
    ps = ParallelState(tp_size=tp, pp_size=pp, dp_size=dp)
    topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    assert sorted(ps.tp_groups_ranks()) == sorted(topo.get_axis_comm_lists("model"))
    assert sorted(ps.dp_groups_ranks()) == sorted(topo.get_axis_comm_lists("data"))
    assert sorted(ps.pp_groups_ranks()) == sorted(topo.get_axis_comm_lists("pipe"))
    for rank in range(tp * pp * dp):
        c = topo.get_coord(rank)
        r = ParallelState(tp_size=tp, pp_size=pp, dp_size=dp, rank=rank)
        assert (r.tp_rank, r.dp_rank, r.pp_rank) == (c.model, c.data, c.pipe)


def test_single_needs_no_process_group():
    ps = ParallelState.build(tp_size=1)
    assert ps.world_size == 1 and ps.tp_group is None and ps.get_model_parallel_world_size() == 1


def test_bad_degree():
    with pytest.raises(ConfigError, match="parallel.tp_size must be a positive integer, got 0"):
        ParallelState(tp_size=0)
