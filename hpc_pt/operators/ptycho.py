"""Far-field ptychography operator: D_j psi = F(w o S_j psi) (seed 001 Eq. 1, without the modulus).

``S_j`` cuts the probe-sized window at scan position j out of the object field with bilinear sub-pixel
interpolation, ``w`` is the probe, ``F`` the orthonormal 2D FFT (DC at index 0, no fftshift).
All frames of all angles are processed in batched gather / FFT / scatter: positions may be ragged
across angles because frames are addressed by a flat (angle, row, col) index.

Frame batches. ``fwd``, ``adj``, ``patches`` and ``patches_adj`` take an optional ``frames`` slice, one of
:meth:`Ptychography.batches` (consecutive frame ranges of at most ``frame_batch`` frames, by default as many
as fit in ``FRAME_BATCH_BYTES`` of complex far field). A solver that loops over the batches holds only one
batch of far-field-sized temporaries instead of every frame's (:func:`hpc_pt.solvers.farfield.farfield_pass`);
without ``frames`` the whole stack is processed batch by batch all the same (the forward writes each batch
into the output and transforms it in place).

CPU kernels (:mod:`._windows`): the gather with the probe multiply and the bilinear sub-pixel interpolation is
one compiled pass per window into the FFT's buffer, and the adjoint's probe multiply, interpolation adjoint
and overlap-add one compiled pass into the field, summing each field pixel's windows in frame order (the same
field whatever the frame batches, threads or ranks). Nothing the size of the frame stack is allocated besides
the forward's result, and no scatter matrix is kept. The GPU path gathers and scatters through flat index
arrays (``cupyx.scatter_add``).

Position convention (docs/conventions.md): ``positions[f] = (row, col)`` of the window's top-left corner
in the object field of its angle, in pixels, float. A window covers rows row .. row + m1 - 1 (plus one more
row when the position is fractional, for the interpolation), and must lie inside the field.
"""
from __future__ import annotations

import numpy as np

from ..backend import asarray_on, cpu_threads, fft2c, get_xp, ifft2c, is_cupy, run_split, scatter_add
from .base import LinearOperator, check_shape


def validate_positions(positions, probe_shape, field_shape) -> None:
    """Raise ValueError if any window (with its interpolation margin) leaves the object field.

    Parameters
    ----------
    positions : array (F, 2)
        Top-left (row, col) of each window, pixels, float.
    probe_shape : (int, int)
        (m1, m2).
    field_shape : tuple of int
        (H, W) or (A, H, W); only the last two entries are used.

    Raises
    ------
    ValueError
        If ``positions`` is not (F, 2), holds NaN or infinite values, or puts a window outside the field.
    """
    pos = np.asarray(positions, dtype=np.float64)
    H, W = field_shape[-2:]
    m1, m2 = probe_shape
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must have shape (frames, 2), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions contain NaN or infinite values")
    lo_ok = (pos >= 0).all(axis=1)
    need = np.ceil(pos) + np.array([m1, m2])  # last index touched + 1
    hi_ok = (need[:, 0] <= H) & (need[:, 1] <= W)
    bad = np.flatnonzero(~(lo_ok & hi_ok))
    if bad.size:
        f = int(bad[0])
        raise ValueError(
            f"{bad.size} scan positions put the {m1}x{m2} probe window outside the {H}x{W} object field "
            f"(first: frame {f} at row {pos[f, 0]:.2f}, col {pos[f, 1]:.2f})")


#: default size of one frame batch: this many bytes of complex far field (64 x 64 complex64: 512 frames).
#: benchmarks/memory.py (2 cores, 4,200 frames of 63 x 63): batches of 512 frames peaked at 0.12-0.18 x the
#: one-batch allocation and ran 0.71-0.82 x its time (cache-sized temporaries); 2,048 frames: 0.49-0.52 x, 0.89-1.0 x
FRAME_BATCH_BYTES = 1 << 24

#: CPU kernels split across threads from this many window pixels of a call on (below it one thread)
KERNEL_SPLIT_PIXELS = 1 << 18


def _kernels():
    """The compiled window kernels (:mod:`._windows`), imported on first use: importing Numba takes ~0.2 s,
    which commands that never touch a CPU ptychography operator (``hpc-pt --help``, GPU runs) do not pay."""
    from . import _windows

    return _windows


def frame_slices(n_frames: int, batch: int) -> list:
    """Consecutive slices of at most ``batch`` frames covering 0..n_frames (one empty slice for none).

    Parameters
    ----------
    n_frames : int
    batch : int
        Most frames per slice (values below 1 count as 1).

    Returns
    -------
    list of slice
    """
    batch = max(int(batch), 1)
    if n_frames <= 0:
        return [slice(0, 0)]
    return [slice(a, min(a + batch, n_frames)) for a in range(0, n_frames, batch)]


class Ptychography(LinearOperator):
    """psi field (H, W) or (A, H, W) -> far-field frames (F, m1, m2).

    Parameters
    ----------
    probe : complex array (m1, m2).
    positions : (F, 2) top-left (row, col) of each window, pixels, float.
    field_shape : (H, W) for one angle or (A, H, W) for a stack of angles.
    angle_index : (F,) int, the angle (first field axis) of each frame; required when A is given.
    dtype : complex64 or complex128.
    frame_batch : frames per batch (module docstring); None: as many as fit in ``FRAME_BATCH_BYTES``.

    The operator runs on the probe's backend: a CuPy probe takes CuPy fields.

    Raises
    ------
    ValueError
        For windows outside the field (:func:`validate_positions`), a missing or inconsistent
        ``angle_index``, or ``frame_batch`` < 1.
    """

    def __init__(self, probe, positions, field_shape, angle_index=None, dtype=np.complex64, frame_batch=None):
        self.dtype = np.dtype(dtype)
        xp = get_xp(probe)
        self._probe = probe.astype(self.dtype, copy=False)
        m1, m2 = probe.shape
        field_shape = tuple(int(s) for s in field_shape)
        stacked = len(field_shape) == 3
        A = field_shape[0] if stacked else 1
        H, W = field_shape[-2:]
        pos = np.asarray(positions, dtype=np.float64)
        validate_positions(pos, (m1, m2), field_shape)
        F = pos.shape[0]
        if angle_index is None:
            if stacked and A != 1:
                raise ValueError("angle_index is required when the field is a stack of angles")
            aidx = np.zeros(F, dtype=np.int64)
        else:
            aidx = np.asarray(angle_index, dtype=np.int64).ravel()
            if aidx.shape[0] != F:
                raise ValueError(f"angle_index has {aidx.shape[0]} entries for {F} positions")
            if F and (aidx.min() < 0 or aidx.max() >= A):
                raise ValueError(f"angle_index out of range 0..{A - 1}")
        self.field_shape = field_shape
        self.positions = pos  # (F, 2) top-left (row, col), host copy
        self.angle_index = aidx  # (F,) angle of each frame, host copy
        self.shape_in = field_shape
        self.shape_out = (F, m1, m2)
        ipos = np.floor(pos).astype(np.int64)
        frac = pos - ipos
        self.fractional = bool(np.any(frac != 0))
        # Fractional scans gather (m1+1) x (m2+1) integer windows and interpolate inside them; taps with
        # zero weight may point one past a field edge, so indices are clipped (their weight is exactly 0).
        e = 1 if self.fractional else 0
        self._win = (m1 + e, m2 + e)
        self._ipos, self._aidx, self._A, self._HW = ipos, aidx, A, (H, W)
        self._size = int(np.prod(field_shape))
        self._xp = xp
        rdt = np.float32 if self.dtype == np.complex64 else np.float64
        if is_cupy(probe):  # flat gather / scatter indices and (F, 1, 1) weights on the device
            self._fy = asarray_on(frac[:, 0].astype(rdt)[:, None, None], probe)
            self._fx = asarray_on(frac[:, 1].astype(rdt)[:, None, None], probe)
            self._idx = asarray_on(self._flat_index(), probe)
        else:  # the compiled kernels' per-frame tables (:mod:`._windows`)
            self._fy = np.ascontiguousarray(frac[:, 0], dtype=rdt)
            self._fx = np.ascontiguousarray(frac[:, 1], dtype=rdt)
            self._ipos = np.ascontiguousarray(ipos)
            self._aidx = np.ascontiguousarray(aidx)
            self._idx = None
        if frame_batch is None:
            frame_batch = FRAME_BATCH_BYTES // (m1 * m2 * self.dtype.itemsize)
        if int(frame_batch) < 1:
            raise ValueError(f"frame_batch must be at least 1 frame, got {frame_batch}")
        self.frame_batch = int(frame_batch)

    @property
    def probe(self):
        """The probe w (m1, m2) of ``dtype``; assigning a new one casts it to ``dtype``."""
        return self._probe

    @probe.setter
    def probe(self, value):
        self._probe = value.astype(self.dtype, copy=False)

    @property
    def n_frames(self) -> int:
        """F, the number of frames of every angle together."""
        return self.shape_out[0]

    def batches(self) -> list:
        """The frame batches (slices) that ``frames=`` accepts, in order, covering every frame.

        Returns
        -------
        list of slice
        """
        return frame_slices(self.n_frames, self.frame_batch)

    def _frames(self, frames):
        """``frames`` as a slice of whole frames (None: all), or as an int64 index array (a subset of frames
        in any order, e.g. one of ePIE's compact batches)."""
        if frames is None:
            return slice(0, self.n_frames)
        if not isinstance(frames, slice):
            return np.asarray(frames, dtype=np.int64).ravel()
        start, stop, step = frames.indices(self.n_frames)
        if step != 1:
            raise ValueError("frames must be a contiguous slice of frames")
        return slice(start, stop)

    @staticmethod
    def _on_device(sl, like):
        """A frame selection for indexing arrays on ``like``'s backend (an index array moves there)."""
        return sl if isinstance(sl, slice) else get_xp(like).asarray(sl)

    def _flat_index(self, frames=None):
        """(F_b, w1, w2) flat field index of every window pixel of the frames (clipped at the end: those
        taps weigh 0)."""
        sl = self._frames(frames)
        H, W = self._HW
        w1, w2 = self._win
        base = self._aidx[sl] * (H * W) + self._ipos[sl, 0] * W + self._ipos[sl, 1]
        grid = np.arange(w1)[:, None] * W + np.arange(w2)[None, :]
        return np.minimum(base[:, None, None] + grid[None], self._size - 1)

    # -- window extraction S_j and its adjoint -------------------------------------------------------
    def patches(self, psi, frames=None):
        """S_j psi for every frame (F, m1, m2), or for the frames of one batch (``frames``).

        Parameters
        ----------
        psi : array of shape ``shape_in``
        frames : slice or array of int, optional
            A contiguous range of frames (one of :meth:`batches`) or the indices of a subset; None: all.

        Returns
        -------
        array (F_b, m1, m2)
            The (interpolated) windows of the frames.
        """
        sl = self._frames(frames)
        if not is_cupy(psi):
            return self._gather(psi, sl, use_probe=False)
        dsl = self._on_device(sl, psi)
        g = psi.reshape(-1)[self._idx[dsl]]
        if not self.fractional:
            return g
        # separable bilinear interpolation: along columns, then along rows
        t = g[:, :, 1:] - g[:, :, :-1]
        t *= self._fx[dsl]
        t += g[:, :, :-1]
        out = t[:, 1:] - t[:, :-1]
        out *= self._fy[dsl]
        out += t[:, :-1]
        return out

    def _frame_ids(self, sl):
        """The frames of a selection as a host int64 index array (the kernels' ``frames``)."""
        if isinstance(sl, slice):
            return np.arange(sl.start, sl.stop, dtype=np.int64)
        return np.ascontiguousarray(sl, dtype=np.int64)

    def _field3(self, psi):
        """The field as a C-contiguous (A, H, W) array of ``dtype`` (a view when it already is one)."""
        return np.ascontiguousarray(np.asarray(psi).reshape((self._A,) + self._HW), dtype=self.dtype)

    def _threads(self, n_frames: int) -> int:
        """Kernel threads for ``n_frames`` frames: :func:`hpc_pt.backend.cpu_threads`, or 1 below
        ``KERNEL_SPLIT_PIXELS`` window pixels (thread start-up would cost more than it saves)."""
        return cpu_threads() if n_frames * self._win[0] * self._win[1] >= KERNEL_SPLIT_PIXELS else 1

    def _gather(self, psi, sl, use_probe: bool, out=None):
        """CPU: (w o) S_j psi of the frames in ``sl`` in one compiled pass (:func:`._windows.gather`);
        threads take disjoint ranges of frames."""
        ids = self._frame_ids(sl)
        if out is None:
            out = np.empty((ids.size,) + self.shape_out[1:], dtype=self.dtype)
        field = self._field3(psi)

        def part(lo, hi):
            _kernels().gather(field, self._aidx, self._ipos, self._fy, self._fx, ids[lo:hi], self._probe,
                            use_probe, out[lo:hi])

        run_split(part, ids.size, self._threads(ids.size))
        return out

    def _scatter(self, vals, sl, field, use_probe: bool):
        """CPU: field (A, H, W) += S_j^T ((conj w) o vals_j) of the frames in ``sl``, one compiled pass
        (:func:`._windows.scatter`); threads take disjoint ranges of field rows, each for every frame, so
        every pixel still sums its windows in frame order."""
        vals = np.ascontiguousarray(vals, dtype=self.dtype)
        cprobe = np.conj(self._probe)
        ids = self._frame_ids(sl)

        def part(lo, hi):
            _kernels().scatter(vals, self._aidx, self._ipos, self._fy, self._fx, ids, cprobe, use_probe, field,
                             lo, hi)

        run_split(part, self._HW[0], self._threads(ids.size))

    def patches_adj(self, patches, frames=None, out=None):
        """Sum_j S_j^T patches_j into a zero field (accumulating overlaps), or into ``out`` (added to it).

        Without ``frames`` ``patches`` holds every frame (on the GPU the sum runs batch by batch); with
        ``frames`` (one of :meth:`batches`, or an index array) it holds those frames.

        Parameters
        ----------
        patches : array (F_b, m1, m2)
        frames : slice or array of int, optional
            The frames ``patches`` holds (None: all; a range or an index array, as in :meth:`patches`).
        out : array of shape ``shape_in``, optional
            C-contiguous field of ``dtype`` to add into.

        Returns
        -------
        array of shape ``shape_in``
            The field (``out`` when given).
        """
        xp = get_xp(patches)
        if out is not None and not (out.flags.c_contiguous and out.dtype == self.dtype):
            raise ValueError(f"out must be a C-contiguous {self.dtype} field to accumulate into")
        if not is_cupy(patches):
            field = np.zeros(self.field_shape, dtype=self.dtype) if out is None else out
            self._scatter(patches, self._frames(frames), field.reshape((self._A,) + self._HW), False)
            return field
        field = xp.zeros(self._size, dtype=self.dtype) if out is None else out.reshape(-1)
        if frames is None and len(self.batches()) > 1:  # one batch of interpolation temporaries at a time
            for sl in self.batches():
                self._scatter_gpu(patches[sl], sl, field)
        else:
            self._scatter_gpu(patches, self._frames(frames), field)
        return field.reshape(self.field_shape)

    def _scatter_gpu(self, patches, sl, field):
        """GPU: field (flat) += S^T patches for the frames in ``sl``."""
        xp = get_xp(patches)
        dsl = self._on_device(sl, patches)
        if self.fractional:  # adjoint of the separable interpolation in :meth:`patches`
            F, (w1, w2) = patches.shape[0], self._win
            a = patches * self._fy[dsl]
            t = xp.empty((F, w1, w2 - 1), dtype=self.dtype)
            t[:, :-1] = patches - a
            t[:, -1] = 0
            t[:, 1:] += a
            b = t * self._fx[dsl]
            g = xp.empty((F, w1, w2), dtype=self.dtype)
            g[:, :, :-1] = t - b
            g[:, :, -1] = 0
            g[:, :, 1:] += b
        else:
            g = patches
        scatter_add(field, self._idx[dsl].ravel(), g.ravel())

    # -- full operator ---------------------------------------------------------------------------------
    def _batch_shape(self, frames):
        sl = self._frames(frames)
        return (sl.stop - sl.start,) + self.shape_out[1:]

    def fwd(self, psi, frames=None):
        """Far field F(w o S_j psi) of every frame (F, m1, m2), or of one batch's frames (``frames``).

        Parameters
        ----------
        psi : array of shape ``shape_in``
        frames : slice, optional
            One of :meth:`batches` (None: all frames).

        Returns
        -------
        array (F_b, m1, m2) of ``dtype``
        """
        check_shape(psi, self.shape_in, "Ptychography.fwd")
        if is_cupy(psi):
            w = self.patches(psi, frames).astype(self.dtype, copy=False)
            w *= self.probe
            return fft2c(w, overwrite=True).astype(self.dtype, copy=False)
        sl = self._frames(frames)
        out = np.empty(self._batch_shape(sl), dtype=self.dtype)
        field = self._field3(psi)
        for b in frame_slices(out.shape[0], self.frame_batch):  # gather + probe, then the FFT in place
            ob = out[b]
            self._gather(field, slice(sl.start + b.start, sl.start + b.stop), True, ob)
            res = fft2c(ob, overwrite=True)
            if not np.shares_memory(res, ob):
                ob[...] = res
        return out

    def adj(self, y, frames=None, out=None):
        """Sum_j S_j^T (conj(w) o F^H y_j): (F, m1, m2) -> field; with ``frames`` y holds one batch's
        frames, and with ``out`` the result is added to that field (returned).

        Parameters
        ----------
        y : array (F_b, m1, m2)
            Far fields of all frames, or of the frames of ``frames``.
        frames : slice, optional
            One of :meth:`batches` (None: all frames).
        out : array of shape ``shape_in``, optional
            C-contiguous field of ``dtype`` to add into.

        Returns
        -------
        array of shape ``shape_in``
        """
        check_shape(y, self._batch_shape(frames), "Ptychography.adj")
        if out is not None and not (out.flags.c_contiguous and out.dtype == self.dtype):
            raise ValueError(f"out must be a C-contiguous {self.dtype} field to accumulate into")
        if frames is None and len(self.batches()) > 1:  # one batch of temporaries at a time
            xp = self._xp
            field = xp.zeros(self.field_shape, dtype=self.dtype) if out is None else out
            for sl in self.batches():
                self.adj(y[sl], sl, field)
            return field
        if is_cupy(y):
            t = ifft2c(y)
            t *= self._xp.conj(self.probe)
            return self.patches_adj(t, frames, out)
        field = np.zeros(self.field_shape, dtype=self.dtype) if out is None else out
        self._scatter(ifft2c(y), self._frames(frames), field.reshape((self._A,) + self._HW), True)
        return field

    def illumination(self):
        """W = sum_j S_j^T |w|^2, the probe intensity summed over the scan (seed 001 Algorithm 1).

        Returns
        -------
        real array of shape ``shape_in``
        """
        return self.normal_apply(None).real

    def normal_apply(self, field):
        """N field = sum_j S_j^T |w|^2 S_j field, batch by batch (``field`` None: a field of ones, so N 1 is
        the illumination).

        Parameters
        ----------
        field : array of shape ``shape_in``, or None

        Returns
        -------
        array of shape ``shape_in`` of ``dtype``
        """
        xp = self._xp
        w2 = xp.abs(self.probe) ** 2
        out = xp.zeros(self.field_shape, dtype=self.dtype)
        for sl in self.batches():
            n = sl.stop - sl.start
            if field is None:
                p = xp.broadcast_to(w2, (n,) + w2.shape).astype(self.dtype)
            else:
                p = w2 * self.patches(field, sl)
            self.patches_adj(p, sl, out)
        return out

    def normal_stencil(self):
        """The normal operator N = sum_j S_j^T |w|^2 S_j of every angle as a 3x3 stencil.

        With bilinear sub-pixel windows a field pixel q couples only to q + d, d in {-1, 0, 1}^2, so
        (N x)[q] = sum_d M_d[q] x[q + d] (:func:`apply_stencil`). Returns ``maps`` (9, A, H, W), real,
        d ordered as ``STENCIL_OFFSETS``; for integer positions only the centre map (the illumination)
        is non-zero. Computed exactly by probing N with nine combs of spacing 3: for every q exactly one
        comb point lies within +-1 of q, so (N comb)[q] is one matrix entry N[q, q + d].

        Returns
        -------
        real array (9, A, H, W)
            ``maps[k]``: the coupling of every pixel q to q + STENCIL_OFFSETS[k].
        """
        xp = self._xp
        A, (H, W) = self._A, self._HW
        maps = xp.zeros((9, A, H, W), dtype=np.float32 if self.dtype == np.complex64 else np.float64)
        ys, xs = np.arange(H), np.arange(W)
        for sy in range(3):
            for sx in range(3):
                comb = np.zeros((H, W), dtype=self.dtype)
                comb[sy::3, sx::3] = 1
                field = xp.broadcast_to(asarray_on(comb, self.probe), self.shape_in)
                y = self.normal_apply(xp.ascontiguousarray(field)).real
                dy = ((sy - ys + 1) % 3) - 1  # comb point q + d within +-1 of q
                dx = ((sx - xs + 1) % 3) - 1
                for k, (oy, ox) in enumerate(STENCIL_OFFSETS):
                    sel = asarray_on(((dy == oy)[:, None] & (dx == ox)[None, :]), self.probe)
                    maps[k] += xp.where(sel[None], y, 0)
        return maps


#: (row, column) offsets d of :meth:`Ptychography.normal_stencil`'s maps; index 4 is the centre
STENCIL_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def apply_stencil(maps, x, below=None, above=None):
    """(N x)[a, q] = sum_d maps[d, a, q] x[a, q + d] for x (A, R, W) (rows R of a larger field).

    ``below`` / ``above`` (A, W): the field rows just before / after x's rows (zeros when None: the field's
    edge); columns outside [0, W) are zero. With only the centre map (``maps`` of length 1) this is a
    pixel-wise product and the halos are not needed.

    Parameters
    ----------
    maps : array (9, A, R, W) or (1, A, R, W)
        Rows of :meth:`Ptychography.normal_stencil` matching x's rows.
    x : array (A, R, W)
    below, above : array (A, W), optional

    Returns
    -------
    array (A, R, W)
    """
    xp = get_xp(x)
    if maps.shape[0] == 1:
        return maps[0] * x
    A, R, W = x.shape
    ext = xp.zeros((A, R + 2, W + 2), dtype=x.dtype)
    ext[:, 1:-1, 1:-1] = x
    if below is not None:
        ext[:, 0, 1:-1] = below
    if above is not None:
        ext[:, -1, 1:-1] = above
    out = xp.zeros_like(x)
    for k, (dy, dx) in enumerate(STENCIL_OFFSETS):
        out += maps[k] * ext[:, 1 + dy:1 + dy + R, 1 + dx:1 + dx + W]
    return out


def intensity(farfield):
    """|D psi|^2 per detector pixel.

    Parameters
    ----------
    farfield : complex array

    Returns
    -------
    real array of the same shape
    """
    xp = get_xp(farfield)
    return xp.abs(farfield) ** 2
