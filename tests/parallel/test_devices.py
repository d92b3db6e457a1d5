"""One GPU per rank: the local rank comes from the launcher (SLURM, Open MPI, MPICH) and picks a visible
device round-robin; no visible device is a one-line error."""
import pytest

from hpc_pt.errors import InputError
from hpc_pt.parallel.devices import gpu_index, local_rank


class _C:
    rank = 5


@pytest.mark.parametrize("env,expected", [
    ({"SLURM_LOCALID": "3"}, 3),
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "1"}, 1),
    ({"MPI_LOCALRANKID": "2"}, 2),
    ({"PMI_LOCAL_RANK": "0"}, 0),
    ({"SLURM_LOCALID": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "7"}, 1),  # SLURM first
    ({}, 5),  # no launcher variable: the global rank
])
def test_local_rank(env, expected):
    assert local_rank(_C(), environ=env) == expected


def test_gpu_index():
    assert [gpu_index(r, 4) for r in range(6)] == [0, 1, 2, 3, 0, 1]
    assert gpu_index(3, 1) == 0  # SLURM bound one GPU per task: CUDA_VISIBLE_DEVICES shows only it
    with pytest.raises(InputError, match="no CUDA device is visible"):
        gpu_index(0, 0)


@pytest.mark.parametrize("env,query,expected", [("1", None, True), ("0", lambda: True, False),
                                                (None, lambda: True, True), (None, None, False)])
def test_cuda_aware_mpi_switch(monkeypatch, env, query, expected):
    """Device buffers go to MPI directly only when the user says so (HPC_PT_CUDA_AWARE_MPI) or the MPI
    library reports CUDA support; otherwise the slab layer stages them through pinned host memory."""
    from hpc_pt.parallel.mpi import cuda_aware_mpi

    if env is None:
        monkeypatch.delenv("HPC_PT_CUDA_AWARE_MPI", raising=False)
    else:
        monkeypatch.setenv("HPC_PT_CUDA_AWARE_MPI", env)

    class FakeMPI:
        pass

    if query is not None:
        FakeMPI.Query_cuda_support = staticmethod(query)
    assert cuda_aware_mpi(FakeMPI) is expected
