"""How shards are placed and how they talk (layer `parallel`, docs/architecture.md). Solvers call this interface for every
reduction; they never import mpi4py or dask. The serial implementation lives in ``base``, the MPI one in
``mpi`` (mpi4py is imported only when an :class:`MPIComm` is created), the Dask one in ``dask``
(:class:`DaskComm`, :func:`run_spmd`: loaded on first access, so importing hpc_pt never imports dask; the
pipeline on Dask ranks is :func:`hpc_pt.dask_run.run_dask`, above the pipeline), the shard plan in
``shards``."""
from ..comm import Comm, SerialComm, split_evenly
from .mpi import MPIComm
from .shards import plan_shards, split_angles
from .slabs import SlabSpace, chunk_rows, halo_bytes, slab_bounds, transpose_bytes

_DASK_EXPORTS = ("DaskComm", "run_spmd")


def __getattr__(name):  # lazy: hpc_pt.parallel.dask (and dask.distributed) only when asked for
    if name in _DASK_EXPORTS:
        from . import dask as _dask

        return getattr(_dask, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Comm", "DaskComm", "MPIComm", "SerialComm", "SlabSpace", "chunk_rows", "halo_bytes", "plan_shards",
           "run_spmd", "slab_bounds", "split_angles", "split_evenly", "transpose_bytes"]
