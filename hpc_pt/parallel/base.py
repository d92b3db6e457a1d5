"""The communicator interface and its serial implementation, which live in :mod:`hpc_pt.comm` (a low layer,
so that solvers can use them); re-exported here for code that imports them from the parallel layer."""
from ..comm import Comm, CommStats, SerialComm, nbytes_of, split_evenly

__all__ = ["Comm", "CommStats", "SerialComm", "nbytes_of", "split_evenly"]
