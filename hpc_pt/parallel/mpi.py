"""MPI implementation of :class:`~hpc_pt.parallel.base.Comm` (mpi4py buffer methods only).

Every rank runs the same solver loop (SPMD) on its own shard; the volume is replicated, so volume-sized
partial sums are combined with ``Allreduce(IN_PLACE, SUM)`` and scalars with a one-element float64
``Allreduce`` (DESIGN.md section 3, "easy first version"). Only the upper-case buffer methods are used
(no pickling of arrays).

CuPy arrays are staged through host memory (``cupy.asnumpy`` before, ``cupy.asarray`` after the
collective). There is no CUDA-aware MPI path yet: with a GPU per rank every reduction costs two
device-host copies of the volume.

Launch under ``mpiexec -n P python -m mpi4py ...`` (``-m mpi4py`` makes an uncaught exception on one
rank abort the whole job instead of leaving the others blocked in a collective).
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailable
from .base import Comm

INSTALL_HINT = 'pip install "hpc-pt[mpi]"'


def load_mpi():
    """``mpi4py.MPI``, imported on first use, with a one-line error naming the install command."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # mpi4py missing, or its MPI library cannot be loaded
        raise BackendUnavailable(f"the MPI backend needs mpi4py and an MPI library ({e}); "
                                 f"install them with {INSTALL_HINT}") from None
    return MPI


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


class MPIComm(Comm):
    """Collectives over an ``mpi4py`` communicator (default ``MPI.COMM_WORLD``).

    ``allreduce_sum`` and ``bcast`` of arrays need the same shape and dtype on every rank (the replicated
    volume, a probe, a detector-sized sum). ``allreduce_sum`` returns a new array and leaves its argument
    untouched, like :class:`~hpc_pt.parallel.base.SerialComm` (one host copy of the array per call).
    """

    name = "mpi"

    def __init__(self, comm=None):
        self.MPI = load_mpi()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())

    # -- arrays --------------------------------------------------------------------------------------
    def allreduce_sum(self, x):
        gpu = _is_cupy(x)
        if gpu:
            import cupy

            buf = np.ascontiguousarray(cupy.asnumpy(x))  # already a fresh host copy
        else:
            buf = np.array(x, copy=True, order="C")
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        if gpu:
            import cupy

            return cupy.asarray(buf)
        return buf if isinstance(x, np.ndarray) else buf[()]

    def sum_scalar(self, v: float) -> float:
        buf = np.array([float(v)], dtype=np.float64)
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return float(buf[0])

    def bcast(self, x, root: int = 0):
        """Root's ``x`` on every rank. Arrays (NumPy or CuPy) must have the same shape and dtype on every
        rank; Python / NumPy scalars (bool, int, float, complex) are sent as one-element buffers."""
        if isinstance(x, (bool, int, float, complex, np.generic)):
            buf = np.array([x])
            if self.size > 1:
                self.comm.Bcast(buf, root=root)
            return type(x)(buf[0]) if not isinstance(x, np.generic) else buf[0]
        if isinstance(x, np.ndarray) or _is_cupy(x):
            gpu = _is_cupy(x)
            if gpu:
                import cupy

                buf = np.ascontiguousarray(cupy.asnumpy(x))
            else:
                buf = np.array(x, copy=True, order="C")
            if self.size > 1:
                self.comm.Bcast(buf, root=root)
            if gpu:
                import cupy

                return cupy.asarray(buf)
            return buf
        raise TypeError(f"MPIComm.bcast sends arrays and scalars only, not {type(x).__name__}")

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 2) -> None:
        """Stop every rank of the job (``MPI_Abort``): what a rank that failed alone must do, since the
        others would wait in the next collective forever."""
        self.comm.Abort(code)


__all__ = ["INSTALL_HINT", "MPIComm", "load_mpi"]
