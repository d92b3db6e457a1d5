"""How shards are placed and how they talk (DESIGN.md layer 6). Solvers call this interface for every
reduction; they never import mpi4py or dask. The serial implementation lives here; MPI and Dask
implementations follow the same :class:`Comm` interface."""
from .base import Comm, SerialComm, split_evenly

__all__ = ["Comm", "SerialComm", "split_evenly"]
