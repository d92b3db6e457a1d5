"""Compiled window kernels of the CPU ptychography operator (:class:`hpc_pt.operators.ptycho.Ptychography`).

One pass over each window does everything between the field and the FFT:

* :func:`gather` writes ``w o S_j psi`` of a batch of frames into the FFT's input buffer: the window cut at an
  integer position, or bilinearly interpolated at a fractional one (four taps per pixel, in the same pass),
  times the probe;
* :func:`scatter` adds ``S_j^T (conj(w) o v_j)`` of a batch of frames into the field: the probe multiply and
  the adjoint of the interpolation are applied per window row on the fly, and each field pixel is updated
  once per window that covers it.

Why compiled kernels (issue 17, measured on the 2-core development machine, 3,468 frames of 64 x 64
complex64, batch FFTs ~70 ms): the NumPy operator spent 70 ms in the adjoint's scatter (a sparse
matrix-vector product, 12 bytes of kept matrix per window pixel), 20 ms in the strided gather, ~10 ms per probe
multiply, and the sub-pixel path made four more passes over the frame stack (160 ms each way). A per-frame
Python loop of slice adds needs ~50 ms for the scatter alone (interpreter and slicing cost per frame). Numba
(a maintained, widely used JIT for NumPy code, wheels on PyPI for every platform NumPy has) compiles these loops
to memory-speed code; the kernels are cached on disk after their first compilation (``cache=True``), and are
``nogil`` so ranks that run as threads (:class:`hpc_pt.comm.ThreadComm`) and the split below run concurrently.

Order of summation. :func:`scatter` visits frames in the order given (the operator passes frame order) and,
within a frame, field pixels row by row, so every field pixel sums its windows' contributions in frame order
whatever the frame batches, the threads or the ranks: the field is the same bit for bit. Threads split the
*field rows* (each thread updates only the rows in its range, for every frame), never the frames, so no
partial fields are reduced and the result does not depend on the thread count.

Arithmetic matches the NumPy expressions of the previous operator: the interpolation is
``t = g0 + (g1 - g0) * f`` along columns then rows; its adjoint ``(p - p f) + p' f`` with ``p'`` the
neighbour.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def gather(field, aidx, ipos, fy, fx, frames, probe, use_probe, out):  # pragma: no cover - compiled
    """out[k] = w o S_f field for f = frames[k] (``use_probe`` False: without w).

    Parameters
    ----------
    field : complex array (A, H, W)
    aidx : int64 (F,)
        Angle of every frame.
    ipos : int64 (F, 2)
        Integer part (floor) of every position.
    fy, fx : real (F,)
        Fractional parts of the positions (0: that axis needs no interpolation).
    frames : int64 (n,)
        The frames to gather, in output order.
    probe : complex (m1, m2)
    use_probe : bool
    out : complex (n, m1, m2)
        Written in full.
    """
    m1, m2 = out.shape[1], out.shape[2]
    for k in range(frames.shape[0]):
        f = frames[k]
        a, r, c = aidx[f], ipos[f, 0], ipos[f, 1]
        wy, wx = fy[f], fx[f]
        if wy == 0 and wx == 0:  # integer position: a copy (times the probe)
            for i in range(m1):
                src, dst, pp = field[a, r + i, c:c + m2], out[k, i], probe[i]
                if use_probe:
                    for j in range(m2):
                        dst[j] = src[j] * pp[j]
                else:
                    for j in range(m2):
                        dst[j] = src[j]
            continue
        # bilinear taps; an axis without a fractional part reads its own pixel twice (weight 0, exact)
        dy = 1 if wy != 0 else 0
        dx = 1 if wx != 0 else 0
        for i in range(m1):
            s00, s01 = field[a, r + i, c:c + m2], field[a, r + i, c + dx:c + dx + m2]
            s10, s11 = field[a, r + i + dy, c:c + m2], field[a, r + i + dy, c + dx:c + dx + m2]
            dst, pp = out[k, i], probe[i]
            for j in range(m2):
                t0 = s00[j] + (s01[j] - s00[j]) * wx
                t1 = s10[j] + (s11[j] - s10[j]) * wx
                v = t0 + (t1 - t0) * wy
                dst[j] = v * pp[j] if use_probe else v


@njit(nogil=True, cache=True)
def scatter(vals, aidx, ipos, fy, fx, frames, cprobe, use_probe, field, row_lo, row_hi):  # pragma: no cover
    """field[rows row_lo..row_hi-1] += S_f^T (conj(w) o vals[k]) for f = frames[k], in the order of frames.

    Parameters
    ----------
    vals : complex (n, m1, m2)
        One value array per frame of ``frames``.
    aidx, ipos, fy, fx, frames
        As for :func:`gather`.
    cprobe : complex (m1, m2)
        The probe's conjugate (``use_probe`` False: not applied).
    use_probe : bool
    field : complex array (A, H, W)
        Updated in place, only in field rows row_lo <= row < row_hi (of every angle).
    row_lo, row_hi : int
    """
    m1, m2 = vals.shape[1], vals.shape[2]
    cur = np.zeros(m2, dtype=field.dtype)  # p[i] = conj(w) o vals of window row i (0 past the window)
    prev = np.zeros(m2, dtype=field.dtype)  # p[i - 1]
    tb = np.zeros(m2 + 2, dtype=field.dtype)  # t of one row with a zero on either side
    for k in range(frames.shape[0]):
        f = frames[k]
        a, r, c = aidx[f], ipos[f, 0], ipos[f, 1]
        wy, wx = fy[f], fx[f]
        if wy == 0 and wx == 0:  # integer position: one add per window pixel
            for i in range(max(row_lo - r, 0), min(row_hi - r, m1)):
                src, dst, pp = vals[k, i], field[a, r + i, c:c + m2], cprobe[i]
                if use_probe:
                    for j in range(m2):
                        dst[j] += src[j] * pp[j]
                else:
                    for j in range(m2):
                        dst[j] += src[j]
            continue
        dy = 1 if wy != 0 else 0
        dx = 1 if wx != 0 else 0
        i0, i1 = max(row_lo - r, 0), min(row_hi - r, m1 + dy)
        if i0 >= i1:  # no row of this window in row_lo..row_hi
            continue
        for j in range(m2):  # p[i0 - 1]
            if i0 > 0:
                cur[j] = vals[k, i0 - 1, j] * cprobe[i0 - 1, j] if use_probe else vals[k, i0 - 1, j]
            else:
                cur[j] = 0
        for i in range(i0, i1):
            cur, prev = prev, cur
            for j in range(m2):  # p[i] (0 past the window)
                if i < m1:
                    cur[j] = vals[k, i, j] * cprobe[i, j] if use_probe else vals[k, i, j]
                else:
                    cur[j] = 0
            # t[i] = (p[i] - p[i] wy) + p[i-1] wy: the adjoint of the row interpolation
            for j in range(m2):
                tb[j + 1] = (cur[j] - cur[j] * wy) + prev[j] * wy
            # g[l] = (t[l] - t[l] wx) + t[l-1] wx: the adjoint of the column interpolation
            dst = field[a, r + i, c:c + m2 + dx]
            if dx:
                for j in range(m2 + 1):
                    dst[j] += (tb[j + 1] - tb[j + 1] * wx) + tb[j] * wx
            else:
                for j in range(m2):
                    dst[j] += tb[j + 1]
