"""The communicator interface every solver uses, and its serial implementation (layer 1, beside the
backend: solvers type against :class:`Comm` and default to :class:`SerialComm`; the MPI and Dask
implementations are in :mod:`hpc_pt.parallel`).

Data layout (docs/architecture.md §3): measured frames and per-frame variables are sharded by angle (and by
frames within an angle); they never move. The volume is split into slabs of rows along the rotation axis
(:mod:`hpc_pt.parallel.slabs`); projections move between the per-angle and the per-slab layout with one
all-to-all per direction.

A :class:`Comm` offers five collectives, all of them SPMD (every rank calls them in the same order):

* :meth:`Comm.allreduce_sum` - arrays of one shape on every rank (probe-sized sums, small tables);
* :meth:`Comm.sum_scalar` - one float (dot products, objectives);
* :meth:`Comm.bcast` - root's array or scalar;
* :meth:`Comm.alltoallv` - rank r sends ``send[s]`` (a 1-D host array) to rank s and receives what every
  rank sent it (the transposes and halo exchanges are built on it, in :mod:`~hpc_pt.parallel.slabs`);
* :meth:`Comm.barrier`.

Every implementation counts what it sends in :attr:`Comm.stats` (bytes to other ranks and wall time, per
kind of collective), and :meth:`Comm.phase` labels a stretch of solver work ("ptycho", "project", "cg",
"prox") so its time can be reported apart from communication (and, on Dask, shows on the dashboard).
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import math

import numpy as np

from .backend import is_cupy


class CommStats:
    """Bytes sent to other ranks, number of calls and seconds spent, per collective kind, plus seconds per
    labelled compute phase. ``snapshot()`` gives a flat dict; differences of two snapshots give one
    iteration's share."""

    def __init__(self):
        self.bytes: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.phase_seconds: dict[str, float] = {}

    def add(self, kind: str, nbytes: int, seconds: float) -> None:
        """Count one collective call of ``kind``.

        Parameters
        ----------
        kind : str
            The collective ("allreduce", "scalar", "alltoallv", "bcast").
        nbytes : int
            Bytes this rank sent to other ranks in the call.
        seconds : float
            Wall time of the call.
        """
        self.bytes[kind] = self.bytes.get(kind, 0) + int(nbytes)
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.seconds[kind] = self.seconds.get(kind, 0.0) + float(seconds)

    def add_phase(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to the compute phase ``name``.

        Parameters
        ----------
        name : str
            The phase label (e.g. "ptycho", "project", "cg", "prox").
        seconds : float
            Wall time spent in it.
        """
        self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + float(seconds)

    @property
    def bytes_sent(self) -> int:
        """Bytes sent to other ranks, over every collective kind."""
        return int(sum(self.bytes.values()))

    @property
    def comm_seconds(self) -> float:
        """Seconds spent in collectives, over every kind."""
        return float(sum(self.seconds.values()))

    def snapshot(self) -> dict:
        """The counters as a flat dict (differences of two snapshots give one iteration's share).

        Returns
        -------
        dict
            ``comm_bytes`` (:attr:`bytes_sent`), ``comm_time_s`` (:attr:`comm_seconds`), ``comm_bytes_<kind>`` per
            collective kind and ``phase_time_<name>_s`` per compute phase.
        """
        out = {"comm_bytes": self.bytes_sent, "comm_time_s": self.comm_seconds}
        for k, v in self.bytes.items():
            out[f"comm_bytes_{k}"] = v
        for k, v in self.phase_seconds.items():
            out[f"phase_time_{k}_s"] = v
        return out


class Comm:
    """Interface: collective operations over the ranks/workers that each hold one shard.

    Parameters
    ----------
    deterministic : bool
        Reduction mode. False (default): a scalar is summed as one float per rank, so its rounding depends
        on how the rows and angles are split over ranks. True: solvers hand in partial sums per global
        index (volume row, angle) and :meth:`sum_partials` combines them in a way that does not depend on
        the rank count (docs/parallel.md, "Deterministic mode"), so 1, 2, 3, ... ranks give bitwise
        identical volumes whenever every rank holds whole angles.
    """

    rank: int = 0
    size: int = 1
    name: str = "abstract"

    def __init__(self, deterministic: bool = False):
        self.stats = CommStats()
        self.deterministic = bool(deterministic)

    def allreduce_sum(self, x):
        """Sum ``x`` (an array of identical shape on every rank) over ranks; every rank gets the sum.

        Parameters
        ----------
        x : array_like
            NumPy or CuPy array (or NumPy scalar) of the same shape and dtype on every rank.

        Returns
        -------
        numpy.ndarray or cupy.ndarray
            The sum, on the backend of ``x``.
        """
        raise NotImplementedError

    def sum_scalar(self, v: float) -> float:
        """Sum a Python float over ranks.

        Parameters
        ----------
        v : float
            This rank's value.

        Returns
        -------
        float
            The sum, on every rank.
        """
        raise NotImplementedError

    def bcast(self, x, root: int = 0):
        """Root's ``x`` on every rank.

        Arrays (NumPy or CuPy) must have the same shape and dtype on every rank; Python / NumPy scalars (bool, int,
        float, complex) are sent as one-element buffers. Carried by the implementation's :meth:`_bcast_buffer`.

        Parameters
        ----------
        x : bool, int, float, complex, numpy scalar, numpy.ndarray or cupy.ndarray
            The value; only root's contents matter, the other ranks pass a placeholder of the same type (and, for
            arrays, the same shape and dtype).
        root : int, optional
            The rank whose value is sent. Default 0.

        Returns
        -------
        object
            Root's value: a Python scalar of the type of ``x`` (a NumPy scalar for NumPy scalar input), or a new
            C-contiguous array on the backend of ``x``.

        Raises
        ------
        TypeError
            When ``x`` is neither an array nor a scalar.
        """
        if isinstance(x, (bool, int, float, complex, np.generic)):
            buf = np.array([x])
            if self.size > 1:
                self._bcast_buffer(buf, root)
            return type(x)(buf[0]) if not isinstance(x, np.generic) else buf[0]
        gpu = is_cupy(x)
        if isinstance(x, np.ndarray) or gpu:
            if gpu:
                import cupy

                buf = np.ascontiguousarray(cupy.asnumpy(x))
            else:
                buf = np.array(x, copy=True, order="C")
            if self.size > 1:
                t0 = time.perf_counter()
                self._bcast_buffer(buf, root)
                self.stats.add("bcast", buf.nbytes if self.rank == root else 0, time.perf_counter() - t0)
            if gpu:
                import cupy

                return cupy.asarray(buf)
            return buf
        raise TypeError(f"{type(self).__name__}.bcast sends arrays and scalars only, not {type(x).__name__}")

    def _bcast_buffer(self, buf: np.ndarray, root: int) -> None:
        """Overwrite ``buf`` (contiguous, same shape on every rank) with root's contents, in place."""
        raise NotImplementedError

    def alltoallv(self, send: list, recv_counts: list[int]) -> list:
        """Personalised all-to-all.

        Parameters
        ----------
        send : list of numpy.ndarray
            ``send[s]``: 1-D C-contiguous NumPy array for rank ``s`` (one dtype for the whole call, any length
            including 0); one entry per rank.
        recv_counts : list of int
            ``recv_counts[s]``: the number of elements rank ``s`` sends to this rank.

        Returns
        -------
        list of numpy.ndarray
            The received 1-D arrays, by source rank.
        """
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait for every rank."""

    def abort(self, code: int = 2) -> None:
        """Stop every rank of the job (what a rank that failed alone must do).

        Parameters
        ----------
        code : int, optional
            Exit status. Default 2.

        Raises
        ------
        SystemExit
            With ``code`` (this base implementation).
        """
        raise SystemExit(code)

    @contextmanager
    def phase(self, name: str):
        """Label a stretch of compute (time per label in :attr:`stats`).

        Use as ``with comm.phase("cg"): ...``.

        Parameters
        ----------
        name : str
            The label ("ptycho", "project", "cg", "prox", ...).

        Yields
        ------
        None
            The time until the ``with`` block ends is added to ``stats.phase_seconds[name]``.
        """
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stats.add_phase(name, time.perf_counter() - t0)

    def volume_dot(self, a, b) -> float:
        """Re <a, b> of two slab-distributed volumes (local dot product, summed over ranks).

        Parameters
        ----------
        a, b : array_like
            NumPy or CuPy arrays of one shape: this rank's slabs of the two volumes.

        Returns
        -------
        float
            ``Re sum conj(a) b`` over the global volumes, on every rank.
        """
        from .backend import get_xp

        return self.sum_scalar(float(get_xp(a).vdot(a, b).real))

    def sum_partials(self, values, index, n: int) -> float:
        """Sum of partial sums that carry global indices (volume rows, angles), over every rank.

        Parameters
        ----------
        values : array_like
            1-D float array (NumPy or CuPy), this rank's partial sums (may be empty).
        index : array_like
            1-D int array of the same length, their global indices in ``[0, n)``.
        n : int
            The number of global indices.

        Returns
        -------
        float
            The same on every rank. With ``deterministic`` the partials are placed in a float64 vector of
            length ``n`` (zeros elsewhere), summed over ranks (exact: every index has one contributor when
            every rank holds whole angles) and that vector is summed with :func:`math.fsum` (correctly
            rounded, so independent of order): the result depends only on the partials, not on how the
            indices are split over ranks. Otherwise the local partials are summed and the per-rank sums go
            through :meth:`sum_scalar` (one float per rank). Collective: every rank must call it.
        """
        from .backend import to_numpy

        vals = to_numpy(values).astype(np.float64).ravel()  # the partials may be a device array
        if not self.deterministic:
            return self.sum_scalar(math.fsum(vals.tolist()))
        dense = np.zeros(int(n), dtype=np.float64)
        np.add.at(dense, np.asarray(index, dtype=np.int64).ravel(), vals)
        if self.size > 1:
            dense = np.asarray(self.allreduce_sum(dense), dtype=np.float64)
        return math.fsum(dense.tolist())


class SerialComm(Comm):
    """One process holds every shard: reductions are identities.

    Parameters
    ----------
    deterministic : bool
        The reduction mode of :class:`Comm`: with True, :meth:`Comm.sum_partials` and the slab dot products
        follow the order the parallel communicators use, so one rank gives their bitwise result.
    """

    name = "serial"

    def allreduce_sum(self, x):
        """The sum over one rank: ``x`` itself.

        Parameters
        ----------
        x : array_like
            Any array.

        Returns
        -------
        array_like
            ``x`` (the same object, not a copy).
        """
        return x

    def sum_scalar(self, v: float) -> float:
        """The sum over one rank: ``v`` as a float.

        Parameters
        ----------
        v : float
            The value.

        Returns
        -------
        float
            ``float(v)``.
        """
        return float(v)

    def bcast(self, x, root: int = 0):
        """Broadcast from the only rank: ``x`` itself.

        Parameters
        ----------
        x : object
            The value.
        root : int, optional
            Ignored (there is one rank). Default 0.

        Returns
        -------
        object
            ``x`` (the same object, not a copy).
        """
        return x

    def alltoallv(self, send: list, recv_counts: list[int]) -> list:
        """All-to-all on one rank: the one buffer, sent to itself.

        Parameters
        ----------
        send : list of numpy.ndarray
            One 1-D array.
        recv_counts : list of int
            One count, the length of ``send[0]``.

        Returns
        -------
        list of numpy.ndarray
            ``[send[0]]``.

        Raises
        ------
        ValueError
            When ``send`` does not hold exactly one buffer of ``recv_counts[0]`` elements.
        """
        if len(send) != 1 or send[0].size != recv_counts[0]:
            raise ValueError("serial alltoallv: one buffer, sent to itself")
        return [send[0]]

    def volume_dot(self, a, b) -> float:
        """Re <a, b> of two whole volumes (one rank holds them).

        Parameters
        ----------
        a, b : array_like
            NumPy or CuPy arrays of one shape.

        Returns
        -------
        float
            ``Re sum conj(a) b``.
        """
        from .backend import get_xp

        return float(get_xp(a).vdot(a, b).real)


def split_evenly(n: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part ``index`` when ``n`` items are split into ``parts`` nearly equal blocks.

    The first ``n % parts`` blocks hold one item more than the others.

    Parameters
    ----------
    n : int
        Number of items.
    parts : int
        Number of blocks.
    index : int
        Which block, in ``[0, parts)``.

    Returns
    -------
    start, stop : int
        The block's bounds.
    """
    base, extra = divmod(int(n), int(parts))
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def nbytes_of(arrays) -> int:
    """Total bytes of some arrays.

    Parameters
    ----------
    arrays : iterable of array_like
        The arrays (each taken through :func:`numpy.asarray`).

    Returns
    -------
    int
        The sum of their ``nbytes``.
    """
    return int(sum(int(np.asarray(a).nbytes) for a in arrays))


__all__ = ["Comm", "CommStats", "SerialComm", "nbytes_of", "split_evenly"]
