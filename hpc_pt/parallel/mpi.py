"""MPI implementation of :class:`~hpc_pt.parallel.base.Comm` (mpi4py buffer methods only).

Every rank runs the same solver loop (SPMD) on its own shard. Scalars are summed with a one-element
float64 ``Allreduce``, small arrays (probe-sized sums) with ``Allreduce(IN_PLACE, SUM)``, and the
per-angle <-> per-slab transposes and halo exchanges of :mod:`hpc_pt.parallel.slabs` with one
``Alltoallv`` on a contiguous byte buffer. Only the upper-case buffer methods are used (no pickling of
arrays). Every call is counted in :attr:`Comm.stats` (bytes sent to other ranks, time).

CuPy arrays: with a CUDA-aware MPI (``device_buffers``, see :func:`cuda_aware_mpi`) the slab layer's
transposes and halos pass device buffers straight to ``Alltoallv``; otherwise it stages them through
pinned (page-locked) host memory. The small ``allreduce_sum`` / ``bcast`` arrays go through host memory.

Launch under ``mpiexec -n P python -m mpi4py ...`` (``-m mpi4py`` makes an uncaught exception on one
rank abort the whole job instead of leaving the others blocked in a collective).
"""
from __future__ import annotations

import time

import numpy as np

from ..backend import is_cupy as _is_cupy
from ..errors import BackendUnavailable
from ..comm import Comm

INSTALL_HINT = 'pip install ".[mpi]" from the hpc-pt checkout'


def load_mpi():
    """``mpi4py.MPI``, imported on first use, with a one-line error naming the install command.

    Returns
    -------
    module
        ``mpi4py.MPI``.

    Raises
    ------
    BackendUnavailable
        When mpi4py is missing or its MPI library cannot be loaded.
    """
    try:
        from mpi4py import MPI
    except ImportError as e:  # mpi4py missing, or its MPI library cannot be loaded
        raise BackendUnavailable(f"the MPI backend needs mpi4py and an MPI library ({e}); "
                                 f"install them with {INSTALL_HINT}") from None
    return MPI


def cuda_aware_mpi(MPI) -> bool:
    """Whether device buffers may go to MPI directly.

    ``HPC_PT_CUDA_AWARE_MPI`` (1/0) decides when set, else the library's own answer where mpi4py exposes one
    (``MPI.Query_cuda_support``), else False.

    Parameters
    ----------
    MPI : module
        ``mpi4py.MPI``.

    Returns
    -------
    bool
        True for a CUDA-aware MPI.
    """
    import os

    env = os.environ.get("HPC_PT_CUDA_AWARE_MPI")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes")
    query = getattr(MPI, "Query_cuda_support", None)
    try:
        return bool(query()) if query is not None else False
    except Exception:  # noqa: BLE001 - an MPI without the extension
        return False


class MPIComm(Comm):
    """Collectives over an ``mpi4py`` communicator (default ``MPI.COMM_WORLD``).

    ``allreduce_sum`` and ``bcast`` of arrays need the same shape and dtype on every rank (a probe-sized
    sum, a small table). ``allreduce_sum`` returns a new array and leaves its argument
    untouched, like :class:`~hpc_pt.parallel.base.SerialComm` (one host copy of the array per call).
    ``deterministic``: the reduction mode of :class:`~hpc_pt.parallel.base.Comm` (rank-count-independent
    sums of per-row / per-angle partials).

    Parameters
    ----------
    comm : mpi4py communicator, optional
        The ranks; default ``MPI.COMM_WORLD``.
    cuda_aware : bool, optional
        Hand CuPy buffers of the slab transposes straight to MPI (``device_buffers``); default
        :func:`cuda_aware_mpi`.
    deterministic : bool, optional
        The reduction mode of :class:`~hpc_pt.parallel.base.Comm`. Default False.

    Raises
    ------
    BackendUnavailable
        When mpi4py cannot be imported (:func:`load_mpi`).
    """

    name = "mpi"

    def __init__(self, comm=None, cuda_aware: bool | None = None, deterministic: bool = False):
        super().__init__(deterministic=deterministic)
        self.MPI = load_mpi()
        #: the slab transposes hand CuPy buffers straight to MPI (CUDA-aware MPI) instead of staging them
        #: through pinned host memory: ``HPC_PT_CUDA_AWARE_MPI=1``, or what the MPI library reports
        self.device_buffers = cuda_aware_mpi(self.MPI) if cuda_aware is None else bool(cuda_aware)
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())

    # -- arrays --------------------------------------------------------------------------------------
    def allreduce_sum(self, x):
        """Sum ``x`` over ranks with ``Allreduce(IN_PLACE, SUM)`` on a host copy; every rank gets the sum.

        Parameters
        ----------
        x : array_like
            NumPy or CuPy array (or scalar) of the same shape and dtype on every rank; left untouched.

        Returns
        -------
        numpy.ndarray or cupy.ndarray
            A new array (CuPy for CuPy input), or a NumPy scalar for a scalar ``x``.
        """
        gpu = _is_cupy(x)
        if gpu:
            import cupy

            buf = np.ascontiguousarray(cupy.asnumpy(x))  # already a fresh host copy
        else:
            buf = np.array(x, copy=True, order="C")
        if self.size > 1:
            t0 = time.perf_counter()
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            self.stats.add("allreduce", buf.nbytes, time.perf_counter() - t0)
        if gpu:
            import cupy

            return cupy.asarray(buf)
        return buf if isinstance(x, np.ndarray) else buf[()]

    def sum_scalar(self, v: float) -> float:
        """Sum a float over ranks (one-element float64 ``Allreduce``).

        Parameters
        ----------
        v : float
            This rank's value, as for :meth:`Comm.sum_scalar <hpc_pt.comm.Comm.sum_scalar>`.

        Returns
        -------
        float
            The sum, on every rank.
        """
        buf = np.array([float(v)], dtype=np.float64)
        if self.size > 1:
            t0 = time.perf_counter()
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            self.stats.add("scalar", 8, time.perf_counter() - t0)
        return float(buf[0])

    def alltoallv(self, send: list, recv_counts: list[int]) -> list:
        """One ``Alltoallv`` on contiguous byte buffers.

        Counts and displacements are in bytes, so any dtype travels; each rank pair's message must stay below
        2 GiB, MPI's int counts. CuPy buffers go to MPI directly (the slab layer sends them only with
        ``device_buffers``, a CUDA-aware MPI).

        Parameters
        ----------
        send : list of array_like
            ``send[s]``: 1-D array for rank ``s``, one per rank (NumPy, or CuPy for a CUDA-aware MPI).
        recv_counts : list of int
            ``recv_counts[s]``: elements rank ``s`` sends to this rank.

        Returns
        -------
        list of array_like
            The received 1-D arrays by source rank (views into one receive buffer, NumPy or CuPy like ``send``).

        Raises
        ------
        ValueError
            When ``send`` or ``recv_counts`` does not have one entry per rank, or a message reaches 2 GiB.
        """
        if len(send) != self.size or len(recv_counts) != self.size:
            raise ValueError(f"alltoallv needs one buffer and one count per rank ({self.size})")
        if any(_is_cupy(b) for b in send):
            return self._alltoallv_device(send, recv_counts)
        dtype = np.result_type(*[b.dtype for b in send]) if send else np.dtype(np.float64)
        item = dtype.itemsize
        scounts = np.array([b.size * item for b in send], dtype=np.int64)
        rcounts = np.array(recv_counts, dtype=np.int64) * item
        if max(scounts.max(initial=0), rcounts.max(initial=0)) >= 2**31:
            raise ValueError("alltoallv message over 2 GiB for one rank pair; use more ranks")
        sbuf = np.concatenate([np.ascontiguousarray(b, dtype=dtype).view(np.uint8).reshape(-1) for b in send]) \
            if scounts.sum() else np.zeros(0, np.uint8)
        rbuf = np.empty(int(rcounts.sum()), dtype=np.uint8)
        sdisp = np.concatenate([[0], np.cumsum(scounts)[:-1]])
        rdisp = np.concatenate([[0], np.cumsum(rcounts)[:-1]])
        t0 = time.perf_counter()
        self.comm.Alltoallv([sbuf, (scounts.astype(np.int32), sdisp.astype(np.int32)), self.MPI.BYTE],
                            [rbuf, (rcounts.astype(np.int32), rdisp.astype(np.int32)), self.MPI.BYTE])
        self.stats.add("alltoallv", int(scounts.sum() - scounts[self.rank]), time.perf_counter() - t0)
        out = rbuf.view(dtype)
        bounds = np.concatenate([[0], np.cumsum(recv_counts)])
        return [out[bounds[s]:bounds[s + 1]] for s in range(self.size)]

    def _alltoallv_device(self, send: list, recv_counts: list[int]) -> list:
        """The same collective on CuPy buffers, for a CUDA-aware MPI (``device_buffers``)."""
        import cupy

        dtype = np.dtype(send[0].dtype)
        item = dtype.itemsize
        scounts = np.array([b.size * item for b in send], dtype=np.int64)
        rcounts = np.array(recv_counts, dtype=np.int64) * item
        sbuf = cupy.concatenate([cupy.ascontiguousarray(b).view(cupy.uint8).reshape(-1) for b in send])
        rbuf = cupy.empty(int(rcounts.sum()), dtype=cupy.uint8)
        sdisp = np.concatenate([[0], np.cumsum(scounts)[:-1]]).astype(np.int32)
        rdisp = np.concatenate([[0], np.cumsum(rcounts)[:-1]]).astype(np.int32)
        cupy.cuda.get_current_stream().synchronize()  # MPI reads the buffers outside CuPy's stream
        t0 = time.perf_counter()
        self.comm.Alltoallv([sbuf, (scounts.astype(np.int32), sdisp), self.MPI.BYTE],
                            [rbuf, (rcounts.astype(np.int32), rdisp), self.MPI.BYTE])
        self.stats.add("alltoallv", int(scounts.sum() - scounts[self.rank]), time.perf_counter() - t0)
        out = rbuf.view(dtype)
        bounds = np.concatenate([[0], np.cumsum(recv_counts)])
        return [out[bounds[s]:bounds[s + 1]] for s in range(self.size)]

    def _bcast_buffer(self, buf: np.ndarray, root: int) -> None:
        self.comm.Bcast(buf, root=root)

    def barrier(self) -> None:
        """Wait for every rank (``MPI_Barrier``)."""
        self.comm.Barrier()

    def abort(self, code: int = 2) -> None:
        """Stop every rank of the job (``MPI_Abort``).

        What a rank that failed alone must do, since the others would wait in the next collective forever.

        Parameters
        ----------
        code : int, optional
            The error code handed to ``MPI_Abort``. Default 2.
        """
        self.comm.Abort(code)


__all__ = ["INSTALL_HINT", "MPIComm", "load_mpi"]
