"""The slab-decomposed volume (docs/architecture.md §3): rows along the rotation axis split over the ranks.

A horizontal slab's projections at every angle depend only on that slab, so with the volume in slabs the
tomography operator, its adjoint and every CG iteration of the u-updates are local; the only
communication inside CG is scalar dot products (:meth:`Comm.volume_dot`) and one-row halos for the
finite differences and the ptychographic normal operator's +-1 row stencil. Between the per-angle layout
of the frames (ptychography: each rank holds its angles' full projections) and the per-slab layout
(tomography: each rank holds every angle's projection rows of its slab) the projections move with one
``alltoallv`` per direction (:meth:`SlabSpace.to_slabs`, :meth:`SlabSpace.to_angles`).

Bytes per transpose (complex64, A angles, N_z x W projections, P ranks, whole angles): every projection
value leaves its rank unless the angle's holder also owns the row, so
``8 * sum_r A_r (N_z - rows_r) * W`` bytes cross the network in each direction, about
``8 A N_z W (P - 1) / P``; an angle split over k ranks is sent by each of them (``to_slabs`` sums the
parts) and received by each of them (``to_angles``). :func:`transpose_bytes` evaluates the exact formula,
tests check it against the counters.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp, is_cupy, leading_sums, to_numpy


def _transport(comm, x):
    """``x`` as the collective will carry it: device arrays stay on the device when the communicator takes
    device buffers (CUDA-aware MPI), otherwise they are staged through pinned host memory."""
    if not is_cupy(x) or getattr(comm, "device_buffers", False):
        return x
    return pinned_copy(x)


def pinned_copy(x) -> np.ndarray:
    """Host copy of a CuPy array in page-locked memory (fast device-to-host transfer).

    Parameters
    ----------
    x : cupy.ndarray
        The device array.

    Returns
    -------
    numpy.ndarray
        A host array of the same shape and dtype, backed by pinned memory.
    """
    import cupy

    mem = cupy.cuda.alloc_pinned_memory(max(int(x.nbytes), 1))
    h = np.frombuffer(mem, dtype=x.dtype, count=x.size).reshape(x.shape)
    x.get(out=h)
    return h


def slab_bounds(nz: int, size: int, align: int = 1) -> list[tuple[int, int]]:
    """[z0, z1) of every rank: ``nz`` rows in blocks of ``align`` rows, the blocks split as evenly as possible.

    ``align`` is the Zarr chunk height, so no two ranks write one chunk. Every rank gets at least one block.

    Parameters
    ----------
    nz : int
        Rows of the volume.
    size : int
        Number of ranks.
    align : int, optional
        Rows per block (values below 1 count as 1). Default 1.

    Returns
    -------
    list of tuple of int
        ``(z0, z1)`` per rank, contiguous and covering ``[0, nz)``.

    Raises
    ------
    ValueError
        When there are fewer blocks than ranks.
    """
    nz, size, align = int(nz), int(size), max(1, int(align))
    nblocks = -(-nz // align)
    if nblocks < size:
        raise ValueError(f"a volume of {nz} rows in blocks of {align} cannot give each of {size} ranks a slab; "
                         "use fewer ranks or a taller volume")
    base, extra = divmod(nblocks, size)
    out, b = [], 0
    for r in range(size):
        nb = base + (1 if r < extra else 0)
        out.append((min(b * align, nz), min((b + nb) * align, nz)))
        b += nb
    return out


def chunk_rows(nz: int, n: int, size: int, itemsize: int = 8, max_chunk_bytes: int = 64 << 20) -> int:
    """Zarr chunk height (rows) for a (nz, n, n) volume on ``size`` ranks.

    An equal share of rows per rank, divided until one chunk holds at most ``max_chunk_bytes``.

    Parameters
    ----------
    nz : int
        Rows of the volume.
    n : int
        Edge of a row (n x n).
    size : int
        Number of ranks.
    itemsize : int, optional
        Bytes per element. Default 8 (complex64).
    max_chunk_bytes : int, optional
        Largest chunk in bytes. Default 64 MiB.

    Returns
    -------
    int
        Rows per chunk, at least 1.
    """
    k = 1
    while True:
        rows = max(1, -(-int(nz) // (int(size) * k)))
        if rows == 1 or rows * n * n * itemsize <= max_chunk_bytes:
            return rows
        k += 1


def transpose_bytes(rank_angles: list[list[int]], bounds: list[tuple[int, int]], row_len: int,
                    itemsize: int = 8) -> int:
    """Bytes one transpose (either direction) sends between ranks.

    Rank r's angles' rows outside its own slab, summed over ranks (the module docstring's formula).

    Parameters
    ----------
    rank_angles : list of list of int
        For every rank, the angles its shard holds.
    bounds : list of tuple of int
        ``(z0, z1)`` of every rank's slab (:func:`slab_bounds`).
    row_len : int
        Elements of one projection row (the detector width W).
    itemsize : int, optional
        Bytes per element. Default 8 (complex64).

    Returns
    -------
    int
        Bytes.
    """
    nz = bounds[-1][1]
    return int(sum(len(a) * (nz - (z1 - z0)) * row_len * itemsize
                   for a, (z0, z1) in zip(rank_angles, bounds)))


def halo_bytes(bounds: list[tuple[int, int]], row_elems: int, itemsize: int = 8) -> int:
    """Bytes of one halo exchange: every interior slab boundary moves one row each way.

    Parameters
    ----------
    bounds : list of tuple of int
        ``(z0, z1)`` of every rank's slab.
    row_elems : int
        Elements of one row.
    itemsize : int, optional
        As for :func:`transpose_bytes`.

    Returns
    -------
    int
        Bytes.
    """
    return int(2 * (len(bounds) - 1) * row_elems * itemsize)


class SlabSpace:
    """This rank's slab of the volume and the operators that act on it.

    Parameters
    ----------
    comm : Comm
        A :class:`~hpc_pt.parallel.Comm`.
    angles : array_like
        Every angle of the dataset (radians), in global order.
    rank_angles : list of list of int
        For every rank, the global indices of the angles its shard holds, in the order of its shard's
        projections (an angle split over ranks appears in several lists).
    volume_shape : tuple of int
        Global (nz, n, n).
    n_det : int
        Detector width of the projections (the object field).
    center : float, optional
        Rotation-axis position of the projections (the object field); default (n_det - 1) / 2.
    dtype : dtype_like, optional
        Complex dtype of the projector. Default complex64.
    gpu : bool, optional
        Build the projector's cufinufft plans (CuPy inputs). Default False.
    align : int, optional
        Slab boundaries are multiples of ``align`` rows. Default 1.

    Raises
    ------
    ValueError
        When ``rank_angles`` does not have one list per rank, or the volume has too few rows for the ranks.
    """

    def __init__(self, comm, angles, rank_angles, volume_shape, n_det, center=None, dtype=np.complex64,
                 gpu=False, align: int = 1):
        from ..operators.projector import Projector

        self.comm = comm
        self.angles = np.asarray(angles, dtype=np.float64).ravel()
        self.rank_angles = [list(map(int, a)) for a in rank_angles]
        if len(self.rank_angles) != comm.size:
            raise ValueError(f"{len(self.rank_angles)} angle lists for {comm.size} ranks")
        self.global_shape = tuple(int(s) for s in volume_shape)
        nz, n, _ = self.global_shape
        self.bounds = slab_bounds(nz, comm.size, align)
        self.z0, self.z1 = self.bounds[comm.rank]
        self.shape = (self.z1 - self.z0, n, n)
        self.n_det = int(n_det)
        self.dtype = np.dtype(dtype)
        self.my_angles = self.rank_angles[comm.rank]
        self.P = Projector(n, self.shape[0], self.angles, n_det=self.n_det, center=center, dtype=self.dtype,
                           gpu=gpu, deterministic=getattr(comm, "deterministic", False))

    # -- layout helpers --------------------------------------------------------------------------------
    @property
    def n_angles(self) -> int:
        """Number of angles of the dataset (all ranks together)."""
        return len(self.angles)

    @property
    def angle_shape(self) -> tuple[int, int, int]:
        """Shape of this rank's projections in the per-angle layout."""
        return (len(self.my_angles), self.global_shape[0], self.n_det)

    @property
    def slab_proj_shape(self) -> tuple[int, int, int]:
        """Shape of this rank's projections in the per-slab layout."""
        return (self.n_angles, self.shape[0], self.n_det)

    def zeros(self, dtype=None, like=None):
        """A zero slab of this rank's shape (rows, n, n).

        Parameters
        ----------
        dtype : dtype_like, optional
            Default the space's dtype.
        like : array_like, optional
            An array whose backend (NumPy or CuPy) the slab takes; default NumPy.

        Returns
        -------
        numpy.ndarray or cupy.ndarray
            Zeros of shape ``self.shape``.
        """
        xp = get_xp(like) if like is not None else np
        return xp.zeros(self.shape, dtype=dtype or self.dtype)

    def local(self, full):
        """This rank's slab of a global volume (a copy).

        Parameters
        ----------
        full : array_like
            The global volume (nz, n, n), NumPy or CuPy.

        Returns
        -------
        array_like
            ``full[z0:z1]``, copied.
        """
        return full[self.z0:self.z1].copy()

    # -- transposes --------------------------------------------------------------------------------------
    def to_slabs(self, x):
        """Per-angle (A_r, N_z, W) -> per-slab (A, rows_r, W); parts of an angle held by several ranks are summed.

        One ``alltoallv``.

        Parameters
        ----------
        x : array_like
            This rank's projections in the per-angle layout (:attr:`angle_shape`), NumPy or CuPy.

        Returns
        -------
        array_like
            This slab's rows of every angle (:attr:`slab_proj_shape`), on the backend of ``x`` (``x`` itself on
            one rank holding every angle).
        """
        comm = self.comm
        if comm.size == 1:
            if list(self.my_angles) == list(range(self.n_angles)):
                return x
        xp = get_xp(x)
        h = _transport(comm, x)
        tp = get_xp(h)
        send = [tp.ascontiguousarray(h[:, z0:z1]).reshape(-1) for z0, z1 in self.bounds]
        rows, W = self.shape[0], self.n_det
        counts = [len(a) * rows * W for a in self.rank_angles]
        recv = comm.alltoallv(send, counts)
        out = xp.zeros(self.slab_proj_shape, dtype=h.dtype)
        for src, buf in enumerate(recv):
            blk = xp.asarray(buf).reshape(len(self.rank_angles[src]), rows, W)
            for i, a in enumerate(self.rank_angles[src]):
                out[a] += blk[i]
        return out

    def to_angles(self, q):
        """Per-slab (A, rows_r, W) -> per-angle (A_r, N_z, W), every holder of an angle getting all of it.

        One ``alltoallv``.

        Parameters
        ----------
        q : array_like
            This slab's rows of every angle (:attr:`slab_proj_shape`), NumPy or CuPy.

        Returns
        -------
        array_like
            This rank's projections (:attr:`angle_shape`), on the backend of ``q`` (``q`` itself on one rank
            holding every angle).
        """
        comm = self.comm
        if comm.size == 1 and list(self.my_angles) == list(range(self.n_angles)):
            return q
        xp = get_xp(q)
        h = _transport(comm, q)
        tp = get_xp(h)
        send = [tp.ascontiguousarray(h[a]).reshape(-1) for a in self.rank_angles]
        W = self.n_det
        counts = [len(self.my_angles) * (z1 - z0) * W for z0, z1 in self.bounds]
        recv = comm.alltoallv(send, counts)
        out = xp.empty(self.angle_shape, dtype=h.dtype)
        for src, buf in enumerate(recv):
            z0, z1 = self.bounds[src]
            out[:, z0:z1] = xp.asarray(buf).reshape(len(self.my_angles), z1 - z0, W)
        return out

    # -- tomography ---------------------------------------------------------------------------------------
    def project(self, u):
        """P u at this rank's angles, per-angle layout (A_r, N_z, W): local projection + one transpose.

        Parameters
        ----------
        u : array_like
            This rank's slab of the volume.

        Returns
        -------
        array_like
            The projections of the global volume at this rank's angles.
        """
        return self.to_angles(self.P.fwd(u))

    def backproject(self, y):
        """P^T y summed over every rank's angles, on this rank's slab: one transpose + local adjoint.

        Parameters
        ----------
        y : array_like
            This rank's projections, per-angle layout (A_r, N_z, W).

        Returns
        -------
        array_like
            This rank's slab (rows, n, n) of the adjoint applied to every rank's projections.
        """
        return self.P.adj(self.to_slabs(y))

    # -- halos and finite differences -------------------------------------------------------------------
    def halo(self, x, axis: int = 0):
        """(row before the slab, row after it) of the global array that ``x`` is this rank's slab of.

        Along ``axis`` (the rows axis: 0 for volumes, 1 for slab-layout projections); zeros at the volume's ends.
        One ``alltoallv`` moving one row to each neighbour.

        Parameters
        ----------
        x : array_like
            This rank's slab, NumPy or CuPy.
        axis : int, optional
            The rows axis. Default 0.

        Returns
        -------
        lo, hi : array_like
            The previous slab's last row and the next slab's first row (``x`` without ``axis``), on the backend
            of ``x``.
        """
        xp = get_xp(x)
        comm = self.comm
        first = _transport(comm, xp.ascontiguousarray(xp.take(x, 0, axis=axis)))
        last = _transport(comm, xp.ascontiguousarray(xp.take(x, x.shape[axis] - 1, axis=axis)))
        tp = get_xp(first)
        zero = tp.zeros_like(first)
        if comm.size == 1:
            lo, hi = zero, zero
        else:
            r, P = comm.rank, comm.size
            empty = tp.zeros(0, dtype=first.dtype)
            send = [empty] * P
            counts = [0] * P
            if r > 0:
                send[r - 1] = first.reshape(-1)
                counts[r - 1] = first.size
            if r < P - 1:
                send[r + 1] = last.reshape(-1)
                counts[r + 1] = first.size
            recv = comm.alltoallv(send, counts)
            lo = recv[r - 1].reshape(first.shape) if r > 0 else zero
            hi = recv[r + 1].reshape(first.shape) if r < P - 1 else zero
        return xp.asarray(lo), xp.asarray(hi)

    def with_halo(self, x, halo: int | None):
        """This rank's slab ``x`` of the global volume extended by up to ``halo`` rows of the neighbouring slabs.

        On each side, whatever ranks hold them; None: every row, the whole volume. Returns (block, lo),
        ``block[lo:lo + rows]`` being ``x``. One ``alltoallv`` when there is more than one rank and halo != 0
        (the same on every rank, so the collective is SPMD).

        Parameters
        ----------
        x : array_like
            This rank's slab (rows, ...), NumPy or CuPy.
        halo : int or None
            Rows wanted on each side (fewer at the volume's ends); None: the whole volume.

        Returns
        -------
        block : array_like
            The extended block, on the backend of ``x`` (``x`` itself on one rank or with ``halo`` 0).
        lo : int
            Index of ``x``'s first row in ``block``.
        """
        from ..backend import is_cupy, to_numpy

        space, comm = self, self.comm
        nz = space.global_shape[0]
        h = nz if halo is None else min(int(halo), nz)
        if comm.size == 1 or h == 0:
            return x, 0
        xp, gpu = get_xp(x), is_cupy(x)
        hx = to_numpy(x)
        row = int(np.prod(hx.shape[1:]))

        def wanted(r):  # [lo, hi) rows rank r needs (its own included)
            z0, z1 = space.bounds[r]
            return max(0, z0 - h), min(nz, z1 + h)

        send, counts = [], []
        for s, (z0s, z1s) in enumerate(space.bounds):
            lo, hi = wanted(s)
            a, b = max(lo, space.z0), min(hi, space.z1)
            if s == comm.rank or b <= a:
                send.append(np.zeros(0, dtype=hx.dtype))
            else:
                send.append(np.ascontiguousarray(hx[a - space.z0:b - space.z0]).reshape(-1))
            lo_me, hi_me = wanted(comm.rank)
            n_rows = 0 if s == comm.rank else max(0, min(hi_me, z1s) - max(lo_me, z0s))
            counts.append(n_rows * row)
        recv = comm.alltoallv(send, counts)
        parts = [buf.reshape((-1,) + hx.shape[1:]) for buf in recv[:comm.rank]]
        lo = int(sum(p.shape[0] for p in parts))
        parts.append(hx)
        parts += [buf.reshape((-1,) + hx.shape[1:]) for buf in recv[comm.rank + 1:]]
        block = np.concatenate(parts, axis=0)
        return (xp.asarray(block) if gpu else block), lo

    def gradient(self, u):
        """Forward differences (3, rows, n, n) of the global volume on this slab.

        Neumann at the volume's ends, as :func:`hpc_pt.operators.gradient`; the z difference of the last row uses
        the next slab's first row (halo). Collective.

        Parameters
        ----------
        u : array_like
            This rank's slab (rows, n, n).

        Returns
        -------
        array_like
            The gradient (3, rows, n, n), z component first.
        """
        from ..operators import gradient

        g = gradient(u)
        if self.z1 < self.global_shape[0]:
            _, hi = self.halo(u)
            g[0, -1] = hi - u[-1]
        elif self.comm.size > 1:
            self.halo(u)  # collective: every rank takes part
        return g

    def divergence(self, g):
        """-grad^H of the global gradient field, on this slab (halo: the previous slab's last z row).

        Collective.

        Parameters
        ----------
        g : array_like
            This rank's slab of a gradient field, (3, rows, n, n).

        Returns
        -------
        array_like
            The divergence (rows, n, n), bitwise the serial result's rows on any slab split.
        """
        from ..operators import divergence

        gz = g[0]
        if self.comm.size > 1:
            lo, _ = self.halo(gz)
        first, last = self.z0 == 0, self.z1 == self.global_shape[0]
        if first and last:
            return divergence(g)
        # The neighbours' rows are put where the whole volume has them, so every row's terms are added in
        # the serial order (bitwise the serial result on any slab split): the previous slab's last z
        # difference before the first row, and a zero row after the last one (the slab's last z difference
        # is an interior one: it counts, divergence() would drop it).
        xp = get_xp(g)
        parts = [g]
        if not first:
            before = xp.zeros((3, 1) + g.shape[2:], dtype=g.dtype)
            before[0, 0] = lo
            parts.insert(0, before)
        if not last:
            parts.append(xp.zeros((3, 1) + g.shape[2:], dtype=g.dtype))
        d = divergence(xp.concatenate(parts, axis=1))
        return d[(0 if first else 1):(None if last else -1)]

    def laplacian(self, u):
        """div grad u of the global volume, on this slab (collective).

        Parameters
        ----------
        u : array_like
            As for :meth:`gradient`.

        Returns
        -------
        array_like
            ``self.divergence(self.gradient(u))``.
        """
        return self.divergence(self.gradient(u))

    def tv_value(self, u) -> float:
        """Isotropic TV of the global volume (seed 001 Eq. 3), summed over slabs.

        Per row in the communicator's deterministic mode. Collective.

        Parameters
        ----------
        u : array_like
            This rank's slab, as for :meth:`gradient`.

        Returns
        -------
        float
            sum_voxels |grad u| over the global volume, on every rank.
        """
        xp = get_xp(u)
        g = self.gradient(u)
        tv = xp.sqrt((xp.abs(g) ** 2).sum(axis=0))
        if getattr(self.comm, "deterministic", False):
            return self.sum_rows(tv)
        return self.comm.sum_scalar(float(tv.sum()))

    def sum_rows(self, x) -> float:
        """Sum over the global volume of ``x``, a real array whose first axis is this slab's rows.

        In the communicator's mode: deterministic, one float64 partial per global row combined by
        :meth:`Comm.sum_partials` (the same bits on any number of ranks); otherwise the slab's sum through
        ``sum_scalar``. Collective.

        Parameters
        ----------
        x : array_like
            Real array (rows, ...), NumPy or CuPy.

        Returns
        -------
        float
            The global sum, on every rank.
        """
        if not getattr(self.comm, "deterministic", False):
            return self.comm.sum_scalar(float(x.sum()))
        return self.comm.sum_partials(leading_sums(x), np.arange(self.z0, self.z1), self.global_shape[0])

    def dot(self, a, b) -> float:
        """Re <a, b> of two slab volumes over the global volume (a collective).

        Deterministic mode: per-row float64 partials (:meth:`sum_rows`), so the value does not depend on the slab
        split; otherwise the communicator's :meth:`~hpc_pt.parallel.Comm.volume_dot`.

        Parameters
        ----------
        a, b : array_like
            This rank's slabs of the two volumes, one shape.

        Returns
        -------
        float
            The dot product, on every rank.
        """
        if not getattr(self.comm, "deterministic", False):
            return self.comm.volume_dot(a, b)
        xp = get_xp(a)
        return self.sum_rows((xp.conj(a) * b).real)

    # -- whole volumes ----------------------------------------------------------------------------------
    def allgather(self, u):
        """The global volume on every rank (for small volumes: results returned by the Python API).

        Parameters
        ----------
        u : array_like
            This rank's slab (rows, n, n), NumPy or CuPy.

        Returns
        -------
        numpy.ndarray
            The global volume (nz, n, n), on the host.
        """
        h = to_numpy(u)
        if self.comm.size == 1:
            return h
        P = self.comm.size
        send = [np.ascontiguousarray(h).reshape(-1)] * P
        n2 = self.global_shape[1] * self.global_shape[2]
        recv = self.comm.alltoallv(send, [(z1 - z0) * n2 for z0, z1 in self.bounds])
        return np.concatenate([b.reshape(-1, *self.global_shape[1:]) for b in recv], axis=0)

    def gather_rows(self, u, rows) -> np.ndarray:
        """Global rows ``rows`` (any order) of the volume, on every rank: small, for figures.

        Collective on several ranks.

        Parameters
        ----------
        u : array_like
            This rank's slab (rows, n, n).
        rows : iterable of int
            Global row indices.

        Returns
        -------
        numpy.ndarray
            (len(rows), n, n), on the host.
        """
        h = to_numpy(u)
        rows = [int(z) for z in rows]
        out = np.zeros((len(rows),) + self.global_shape[1:], dtype=h.dtype)
        for i, z in enumerate(rows):
            if self.z0 <= z < self.z1:
                out[i] = h[z - self.z0]
        return self.comm.allreduce_sum(out) if self.comm.size > 1 else out

    def gather_plane(self, u, axis: int, index: int) -> np.ndarray:
        """A central plane through the global volume (axis 1 or 2 cuts every slab), on every rank.

        Collective on several ranks.

        Parameters
        ----------
        u : array_like
            This rank's slab (rows, n, n).
        axis : int
            1 or 2: the axis the plane is perpendicular to.
        index : int
            The plane's index along ``axis``.

        Returns
        -------
        numpy.ndarray
            (nz, n) plane, on the host.
        """
        h = to_numpy(u)
        out = np.zeros((self.global_shape[0],) + tuple(s for i, s in enumerate(self.global_shape[1:], 1)
                                                        if i != axis), dtype=h.dtype)
        out[self.z0:self.z1] = np.take(h, int(index), axis=axis)
        return self.comm.allreduce_sum(out) if self.comm.size > 1 else out


__all__ = ["SlabSpace", "chunk_rows", "halo_bytes", "slab_bounds", "transpose_bytes"]
