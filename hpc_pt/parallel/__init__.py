"""How shards are placed and how they talk (DESIGN.md layer 6). Solvers call this interface for every
reduction; they never import mpi4py or dask. The serial implementation lives in ``base``, the MPI one in
``mpi`` (mpi4py is imported only when an :class:`MPIComm` is created), the shard plan in ``shards``."""
from .base import Comm, SerialComm, split_evenly
from .mpi import MPIComm
from .shards import plan_shards, split_angles
from .slabs import SlabSpace, chunk_rows, halo_bytes, slab_bounds, transpose_bytes

__all__ = ["Comm", "MPIComm", "SerialComm", "SlabSpace", "chunk_rows", "halo_bytes", "plan_shards", "slab_bounds",
           "split_angles", "split_evenly", "transpose_bytes"]
