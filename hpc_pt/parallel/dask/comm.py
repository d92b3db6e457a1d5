"""DaskComm: the collectives between the rank tasks of one Dask job (see the package docstring)."""
from __future__ import annotations

import struct
import time
from contextlib import contextmanager, nullcontext

import numpy as np

from ...backend import is_cupy as _is_cupy
from ...errors import BackendUnavailable
from ...comm import Comm, split_evenly
from .transport import RankAborted, byte_view

INSTALL_HINT = 'pip install ".[dask]" from the hpc-pt checkout'

#: allreduce of arrays at least this large on more than 2 ranks: reduce-scatter + all-gather
RS_BYTES = 1 << 16
_F64 = struct.Struct("<d")
_COMM_LABEL = {"alltoallv": "transpose", "allreduce": "allreduce", "scalar": "allreduce-scalar",
               "bcast": "bcast"}


def load_distributed():
    """``distributed``, imported on first use, with a one-line error naming the install command.

    Returns
    -------
    module
        ``distributed``.

    Raises
    ------
    BackendUnavailable
        When dask.distributed cannot be imported.
    """
    try:
        import distributed
    except ImportError as e:
        raise BackendUnavailable(f"the Dask backend needs dask.distributed ({e}); install it with "
                                 f"{INSTALL_HINT}") from None
    return distributed


class JobAborted(RuntimeError):
    """Raised by :meth:`DaskComm.abort` on the rank that aborts the job."""


class WorkerLost(RuntimeError):
    """A rank's Dask worker left the cluster while the job ran.

    Its process was killed or died, or it lost contact with the scheduler. Raised by :func:`run_spmd` once the
    other ranks have stopped, with ``rank`` (the first lost rank), ``ranks`` (every lost rank), ``worker``
    (its address), ``pid`` and ``cause`` (the nanny's account, e.g. ``killed by signal 9 (SIGKILL)``, or None)
    set.

    Parameters
    ----------
    message : str
        The one-line message.
    rank : int
        The first lost rank.
    ranks : list of int
        Every lost rank.
    worker : str
        The first lost rank's worker address.
    pid : int or None
        Its process id, None when unknown.
    cause : str or None
        The nanny's account of the end, None when unknown.
    """

    def __init__(self, message: str, *, rank: int, ranks: list, worker: str, pid, cause):
        super().__init__(message)
        self.rank, self.ranks, self.worker, self.pid, self.cause = rank, list(ranks), worker, pid, cause


_CONTEXT_METER = []


def _meter(label: str):
    """``context_meter.meter(label)`` (Dask's Fine Performance Metrics), or nothing on an old distributed."""
    if not _CONTEXT_METER:
        try:
            from distributed.metrics import context_meter
        except ImportError:
            context_meter = None
        _CONTEXT_METER.append(context_meter)
    cm = _CONTEXT_METER[0]
    return cm.meter(label) if cm is not None else nullcontext()


def _abort_name(token: str) -> str:
    return f"hpc-pt-abort-{token}"


class DaskComm(Comm):
    """Collectives between the rank tasks of one :func:`run_spmd` job (create it inside a rank task).

    ``token`` names the job (its abort flag and address board), ``rank``/``size`` as in MPI. The
    constructor builds the mesh (collective: every rank of the job must construct its DaskComm);
    ``connect_timeout`` bounds that. ``allreduce_sum`` and ``bcast`` of arrays need the same shape and
    dtype on every rank, as with :class:`~hpc_pt.parallel.mpi.MPIComm`; CuPy arrays go through host memory.

    Parameters
    ----------
    token : str
        The job's token.
    rank : int
        This rank, in ``[0, size)``.
    size : int
        Number of ranks.
    connect_timeout : float, optional
        Seconds the mesh set-up may take. Default 120.

    Raises
    ------
    TimeoutError
        When the other ranks do not connect within ``connect_timeout``.
    RankAborted
        When the job is aborted during the set-up.
    """

    name = "dask"

    def __init__(self, token: str, rank: int, size: int, connect_timeout: float = 120.0):
        super().__init__()
        self.token, self.rank, self.size = str(token), int(rank), int(size)
        self._mesh = None
        self._seq = 0
        self._client = None
        self._event = None
        self._closed = False
        if self.size > 1:
            self._connect(float(connect_timeout))

    # -- set-up and tear-down ---------------------------------------------------------------------------
    def _dask(self):
        if self._client is None:
            distributed = load_distributed()
            self._client = distributed.get_client()
            self._event = distributed.Event(_abort_name(self.token), client=self._client)
        return self._client

    def _aborted(self) -> bool:
        try:
            self._dask()
            return bool(self._event.is_set())
        except Exception:  # noqa: BLE001 - no scheduler any more: the job is gone
            return True

    def _check_abort(self, what: str) -> None:
        if self._aborted():
            raise RankAborted(f"rank {self.rank} of {self.size}: the job was aborted (another rank failed) "
                              f"while {what}")

    def _connect(self, timeout: float) -> None:
        from .transport import Mesh

        self._mesh = Mesh(self.token, self.rank, self.size, self._dask(), self._check_abort, timeout=timeout)

    def close(self) -> None:
        """Close the connections (peers blocked on this rank see them closed)."""
        self._closed = True
        mesh, self._mesh = self._mesh, None
        if mesh is not None:
            mesh.close()

    def mark_failed(self) -> None:
        """Tell every rank that this one failed: close the connections, set the job's abort flag."""
        self.close()
        if self.size > 1:
            try:
                self._dask()
                self._event.set()
            except Exception:  # noqa: BLE001 - the scheduler is gone: the closed comms told the peers already
                pass

    def abort(self, code: int = 2) -> None:
        """Stop every rank of the job.

        Mark the failure (the others raise :class:`RankAborted` at their next collective) and raise
        :class:`JobAborted` here (a Dask task must not ``SystemExit``: that would take its worker down).

        Parameters
        ----------
        code : int, optional
            The code named in the message. Default 2.

        Raises
        ------
        JobAborted
            Always.
        """
        self.mark_failed()
        raise JobAborted(f"rank {self.rank} of {self.size} aborted the job (code {code})")

    def _exchange(self, sends: dict, recvs: dict, what: str) -> None:
        """One message to each peer in ``sends`` and one from each peer in ``recvs`` (exactly
        ``len(recvs[peer])`` bytes into that writable byte view), all at once (:meth:`Mesh.exchange
        <hpc_pt.parallel.dask.transport.Mesh.exchange>`); messages are numbered, so every rank must call the
        collectives in the same order."""
        if self._closed or self._mesh is None:
            raise RankAborted(f"rank {self.rank} of {self.size}: communicator closed")
        seq = self._seq
        self._seq += 1
        self._mesh.exchange(seq, sends, recvs, what)

    @contextmanager
    def _timed(self, kind: str, nbytes: int):
        t0 = time.perf_counter()
        with _meter(_COMM_LABEL[kind]):
            yield
        self.stats.add(kind, nbytes, time.perf_counter() - t0)

    def _sum_in_rank_order(self, parts: list):
        acc = np.array(parts[0], copy=True)
        for p in parts[1:]:
            acc += p
        return acc

    # -- collectives -----------------------------------------------------------------------------------
    def allreduce_sum(self, x):
        """Sum ``x`` over ranks, in rank order on every rank (identical bits everywhere).

        Arrays of at least :data:`RS_BYTES` on more than two ranks go through a reduce-scatter and an
        all-gather in the same order.

        Parameters
        ----------
        x : array_like
            As for :meth:`Comm.allreduce_sum <hpc_pt.comm.Comm.allreduce_sum>`; left untouched.

        Returns
        -------
        numpy.ndarray or cupy.ndarray
            A new array (CuPy for CuPy input), or a NumPy scalar for a scalar ``x``.

        Raises
        ------
        RankAborted
            When another rank failed or the communicator is closed.
        """
        gpu = _is_cupy(x)
        if gpu:
            import cupy

            buf = np.ascontiguousarray(cupy.asnumpy(x))
        else:
            buf = np.array(x, copy=True, order="C")
        if self.size > 1:
            with self._timed("allreduce", buf.nbytes):
                buf = self._allreduce(buf)
        if gpu:
            import cupy

            return cupy.asarray(buf)
        return buf if isinstance(x, np.ndarray) else buf[()]

    def _allreduce(self, buf: np.ndarray) -> np.ndarray:
        r, P = self.rank, self.size
        flat = buf.reshape(-1)
        if P == 2 or buf.nbytes < RS_BYTES:  # every rank gets every part, sums in rank order
            parts = [None] * P
            parts[r] = flat
            recvs = {}
            for s in range(P):
                if s != r:
                    parts[s] = np.empty_like(flat)
                    recvs[s] = byte_view(parts[s])
            self._exchange({s: byte_view(flat) for s in range(P) if s != r}, recvs, "all-reducing an array")
            return self._sum_in_rank_order(parts).reshape(buf.shape)
        # reduce-scatter (chunk s summed on rank s in rank order) + all-gather
        bounds = [split_evenly(flat.size, P, s) for s in range(P)]
        a, b = bounds[r]
        parts = [flat[a:b] if s == r else np.empty(b - a, dtype=flat.dtype) for s in range(P)]
        self._exchange({s: byte_view(flat[bounds[s][0]:bounds[s][1]]) for s in range(P)
                        if s != r and bounds[s][1] > bounds[s][0]},
                       {s: byte_view(parts[s]) for s in range(P) if s != r and b > a},
                       "all-reducing an array (reduce-scatter)")
        mine = self._sum_in_rank_order(parts)
        self._exchange({s: byte_view(mine) for s in range(P) if s != r and b > a},
                       {s: memoryview(flat[bounds[s][0]:bounds[s][1]].view(np.uint8)) for s in range(P)
                        if s != r and bounds[s][1] > bounds[s][0]},
                       "all-reducing an array (all-gather)")
        flat[a:b] = mine
        return buf

    def sum_scalar(self, v: float) -> float:
        """Sum a float over ranks, in rank order (the same on every rank).

        Parameters
        ----------
        v : float
            As for :meth:`Comm.sum_scalar <hpc_pt.comm.Comm.sum_scalar>`.

        Returns
        -------
        float
            The sum, identical on every rank.

        Raises
        ------
        RankAborted
            When another rank failed or the communicator is closed.
        """
        v = float(v)
        if self.size == 1:
            return v
        r, P = self.rank, self.size
        with self._timed("scalar", 8):
            mine = _F64.pack(v)
            bufs = [bytearray(8) for _ in range(P)]
            self._exchange({s: mine for s in range(P) if s != r},
                           {s: memoryview(bufs[s]) for s in range(P) if s != r}, "summing a scalar")
        total = 0.0
        for s in range(P):  # rank order, identical on every rank
            total += v if s == r else _F64.unpack(bufs[s])[0]
        return total

    def alltoallv(self, send: list, recv_counts: list[int]) -> list:
        """Every rank pair's buffers at once; empty buffers are not sent.

        Parameters
        ----------
        send : list of numpy.ndarray
            ``send[s]``: 1-D array for rank ``s``, one per rank (one dtype for the call).
        recv_counts : list of int
            ``recv_counts[s]``: elements rank ``s`` sends to this rank.

        Returns
        -------
        list of numpy.ndarray
            The received 1-D arrays, by source rank.

        Raises
        ------
        ValueError
            When the lists do not have one entry per rank, or this rank's buffer to itself does not match its
            count.
        RankAborted
            When another rank failed or the communicator is closed.
        """
        r, P = self.rank, self.size
        if len(send) != P or len(recv_counts) != P:
            raise ValueError(f"alltoallv needs one buffer and one count per rank ({P})")
        dtype = np.result_type(*[b.dtype for b in send]) if send else np.dtype(np.float64)
        bufs = [np.ascontiguousarray(b, dtype=dtype).reshape(-1) for b in send]
        if bufs[r].size != int(recv_counts[r]):
            raise ValueError(f"alltoallv: rank {r} sends {bufs[r].size} elements to itself but expects "
                             f"{recv_counts[r]}")
        out = [bufs[r].copy() if s == r else np.empty(int(recv_counts[s]), dtype=dtype) for s in range(P)]
        if P > 1:
            sent = int(sum(b.nbytes for s, b in enumerate(bufs) if s != r))
            with self._timed("alltoallv", sent):
                self._exchange({s: byte_view(bufs[s]) for s in range(P) if s != r and bufs[s].size},
                               {s: byte_view(out[s]) for s in range(P) if s != r and out[s].size},
                               "exchanging buffers (alltoallv)")
        return out

    def _bcast_buffer(self, buf: np.ndarray, root: int) -> None:
        with _meter(_COMM_LABEL["bcast"]):
            self._bcast_buf(buf, root)

    def _bcast_buf(self, buf: np.ndarray, root: int) -> None:
        r, P = self.rank, self.size
        if not 0 <= root < P:
            raise ValueError(f"bcast root {root} is not a rank of {P}")
        view = byte_view(buf) if buf.nbytes else memoryview(b"")
        if r == root:
            self._exchange({s: view for s in range(P) if s != r}, {}, f"broadcasting from rank {root}")
        else:
            self._exchange({}, {root: memoryview(buf.reshape(-1).view(np.uint8))}, f"broadcasting from rank {root}")

    def barrier(self) -> None:
        """Wait for every rank (an empty message to and from every peer)."""
        if self.size > 1:
            self._exchange({s: b"" for s in range(self.size) if s != self.rank},
                           {s: memoryview(bytearray(0)) for s in range(self.size) if s != self.rank},
                           "in a barrier")

    @contextmanager
    def phase(self, name: str):
        """Time per label in :attr:`stats` (as every Comm) and the same label on the Dask dashboard.

        The label shows as an activity on the dashboard's Fine Performance Metrics page.

        Parameters
        ----------
        name : str
            As for :meth:`Comm.phase <hpc_pt.comm.Comm.phase>`; also the dashboard label.

        Yields
        ------
        None
            The ``with`` block runs inside the labelled stretch.
        """
        with _meter(name), super().phase(name):
            yield


__all__ = ["INSTALL_HINT", "DaskComm", "JobAborted", "WorkerLost", "load_distributed"]
