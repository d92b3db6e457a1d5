"""Compiled far-field step of APT / APTs on CPUs: Step 2's z-prox, Step 3's multiplier and the monitors, one pass.

Per detector pixel of every frame (seed 001 Eqs. 7, 8 and 10, Yang et al., docs/references.md):

* ``zt = D_j u - Lambda2_j``, ``z_j = prox_{G, r2}(zt)`` (pAGM amplitude or pIPM Poisson closed form, the
  phase of ``zt``, invalid pixels keep ``zt``: :func:`hpc_pt.solvers.prox.prox_amplitude` /
  :func:`~hpc_pt.solvers.prox.prox_poisson`);
* ``Lambda2_j += z_j - D_j u``;
* per frame, in float64: the primal residual ``sum |z - D u|^2``, the data objective ``sum G(|D u|)`` over
  valid pixels (:func:`~hpc_pt.solvers.prox.frame_objective`) and the R-factor numerator
  ``sum | |D u| - sqrt f |`` over valid pixels.

Why (issue 17, seed 001's size, 3,468 frames of 64^2, 2-core development machine): the NumPy expressions
of these steps made about fifteen passes over the 14 M-pixel frame stack, 0.6 s of an APT iteration whose
FFT + projector floor is 0.7 s. One compiled pass reads D u, Lambda2 and the data once and writes z and
Lambda2 once: 80 ms (pAGM) and 82 ms (pIPM) on one thread at that size (measured 2026-12-04). Pixel
arithmetic is float32 like the arrays (fastmath without the no-NaN / no-Inf assumptions), sums float64;
pIPM's objective takes one logarithm per pixel, f log(i / f), and none where f = 0. Threads take disjoint
ranges of frames; each frame's sums run in pixel order on one thread, so the per-frame partials (and the
deterministic reductions built on them, :func:`~hpc_pt.solvers.base.per_frame_total`) do not depend on
the thread count or the frame split. CuPy arrays keep the expression path in :mod:`hpc_pt.solvers.apt`.
"""
from __future__ import annotations


import numpy as np
from numba import njit

from ..backend import cpu_threads, run_split

#: frames x pixels below which one thread does the pass (thread start-up would cost more than it saves)
SPLIT_PIXELS = 1 << 18


@njit(nogil=True, cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _far_field_step(du, lam, sqrt_f, f, mask, r, poisson, z, primal, obj, rnum, lo, hi):  # pragma: no cover
    m1, m2 = du.shape[1], du.shape[2]
    rr = np.float32(r)
    c4 = np.float32(4.0 * (1.0 + r))
    inv2 = np.float32(1.0 / (2.0 * (1.0 + r)))
    inv1 = np.float32(1.0 / (1.0 + r))
    tiny = np.float32(1e-30)
    half = np.float32(0.5)
    zero = np.float32(0.0)
    for k in range(lo, hi):
        p = 0.0
        o = 0.0
        rn = 0.0
        for i in range(m1):
            for j in range(m2):
                d = du[k, i, j]
                zt = d - lam[k, i, j]
                zr, zi = zt.real, zt.imag
                mag = np.sqrt(zr * zr + zi * zi)
                s = sqrt_f[k, i, j]
                fi = f[k, i, j]
                if poisson:
                    rm = rr * mag
                    rho = (rm + np.sqrt(rm * rm + c4 * fi)) * inv2
                else:
                    rho = (s + rr * mag) * inv1
                scale = rho / mag if mag > zero else zero
                if mask[i, j]:
                    wr = zr * scale if mag > zero else rho
                    wi = zi * scale
                else:
                    wr, wi = zr, zi
                z[k, i, j] = complex(wr, wi)
                er = wr - d.real
                ei = wi - d.imag
                lam[k, i, j] = complex(lam[k, i, j].real + er, lam[k, i, j].imag + ei)
                p += float(er * er + ei * ei)
                if mask[i, j]:
                    m = np.sqrt(d.real * d.real + d.imag * d.imag)
                    if poisson:
                        ii = m * m
                        g = ii - fi
                        if fi > zero:  # f log(i / f): one logarithm, none for zero counts
                            g -= fi * np.log(max(ii, tiny) / fi)
                        o += float(half * g)
                    else:
                        o += float(half * (m - s) * (m - s))
                    rn += float(abs(m - s))
        primal[k] = p
        obj[k] = o
        rnum[k] = rn


def far_field_step(du, lam, sqrt_f, f, r: float, mask=None, metric: str = "gaussian"):
    """One compiled pass of Step 2 (z-prox), Step 3 (Lambda2 update) and the per-frame monitors.

    Parameters
    ----------
    du : numpy.ndarray
        D u, complex (F, m1, m2).
    lam : numpy.ndarray
        Lambda2, complex (F, m1, m2), C-contiguous; updated in place to ``Lambda2 + z - D u``.
    sqrt_f, f : numpy.ndarray
        Measured amplitudes and intensities (F, m1, m2); ``f`` is read only for ``metric="poisson"``.
    r : float
        The z-prox penalty r2.
    mask : numpy.ndarray, optional
        (m1, m2) bool, True where a detector pixel is valid (None: all).
    metric : str
        "gaussian" (pAGM) or "poisson" (pIPM).

    Returns
    -------
    z : numpy.ndarray
        The prox, like ``du``.
    primal, objective, r_numerator : numpy.ndarray
        float64 (F,): per frame ``sum |z - D u|^2`` (all pixels), ``sum G(|D u|)`` and
        ``sum | |D u| - sqrt f |`` (valid pixels).
    """
    n = du.shape[0]
    if not lam.flags.c_contiguous:
        raise ValueError("Lambda2 must be C-contiguous to be updated in place")
    du = np.ascontiguousarray(du)
    sqrt_f = np.ascontiguousarray(sqrt_f)
    poisson = metric != "gaussian"
    f = np.ascontiguousarray(f) if poisson else sqrt_f
    valid = (np.ones(du.shape[1:], dtype=np.bool_) if mask is None
             else np.ascontiguousarray(np.broadcast_to(mask, du.shape[1:]), dtype=np.bool_))
    z = np.empty_like(du)
    primal, obj, rnum = (np.zeros(n, dtype=np.float64) for _ in range(3))
    threads = cpu_threads() if du.size >= SPLIT_PIXELS else 1

    def part(lo, hi):
        _far_field_step(du, lam, sqrt_f, f, valid, float(r), poisson, z, primal, obj, rnum, lo, hi)

    run_split(part, n, threads)
    return z, primal, obj, rnum


@njit(nogil=True, cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _farfield_reduce(z, f, sqrt_f, mask, poisson, grad, obj, mis, lo, hi):  # pragma: no cover - compiled
    m1, m2 = z.shape[1], z.shape[2]
    tiny = np.float32(1e-30)
    floor = np.float32(np.sqrt(np.finfo(np.float32).tiny))
    half = np.float32(0.5)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for k in range(lo, hi):
        o = 0.0
        ms = 0.0
        for i in range(m1):
            for j in range(m2):  # the sums: the same code with and without ``grad``, so the same bits
                w = z[k, i, j]
                mag2 = w.real * w.real + w.imag * w.imag
                mag = np.sqrt(mag2)
                s = sqrt_f[k, i, j]
                fi = f[k, i, j]
                if mask[i, j]:
                    if poisson:
                        g = mag2 - fi
                        if fi > zero:
                            g -= fi * np.log(max(mag2, tiny) / fi)
                        o += float(half * g)
                    else:
                        o += float(half * (mag - s) * (mag - s))
                    ms += float(abs(mag - s))
            if not grad:
                continue
            for j in range(m2):  # the residual over the row, still in cache
                w = z[k, i, j]
                zr, zi = w.real, w.imag
                mag2 = zr * zr + zi * zi
                if not mask[i, j]:
                    z[k, i, j] = complex(zero, zero)
                elif poisson:
                    c = one - f[k, i, j] / max(mag2, floor)
                    z[k, i, j] = complex(zr * c, zi * c)
                elif mag2 > zero:
                    c = one - sqrt_f[k, i, j] / np.sqrt(mag2)
                    z[k, i, j] = complex(zr * c, zi * c)
                else:
                    z[k, i, j] = complex(zr - sqrt_f[k, i, j], zi)
        obj[k] = o
        mis[k] = ms


def farfield_reduce(z, f, sqrt_f, mask=None, metric: str = "gaussian", grad: bool = False):
    """Per-frame data objective and R-factor numerator of far fields ``z``, and (``grad``) their residual.

    One compiled pass per batch for :func:`hpc_pt.solvers.farfield.farfield_pass` on CPUs: the values of
    :func:`~hpc_pt.solvers.prox.frame_objective`, ``sum | |z| - sqrt f |`` over valid pixels and, with
    ``grad``, :func:`~hpc_pt.solvers.prox.data_residual` written over ``z`` in place.

    Parameters
    ----------
    z : numpy.ndarray
        The far fields (F, m1, m2), complex64, C-contiguous; overwritten by the residual with ``grad``.
    f, sqrt_f : numpy.ndarray
        Measured intensities and amplitudes (F, m1, m2).
    mask : numpy.ndarray, optional
        (m1, m2), True where a detector pixel is valid.
    metric : str
        "gaussian" or "poisson".
    grad : bool
        Write the residual over ``z``.

    Returns
    -------
    objective, misfit : numpy.ndarray
        float64 (F,) per frame.
    """
    n = z.shape[0]
    if z.dtype != np.complex64 or not z.flags.c_contiguous:
        raise ValueError("farfield_reduce works on C-contiguous complex64 far fields")
    f = np.ascontiguousarray(f, dtype=np.float32)
    sqrt_f = np.ascontiguousarray(sqrt_f, dtype=np.float32)
    valid = (np.ones(z.shape[1:], dtype=np.bool_) if mask is None
             else np.ascontiguousarray(np.broadcast_to(mask, z.shape[1:]), dtype=np.bool_))
    obj, mis = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64)
    threads = cpu_threads() if z.size >= SPLIT_PIXELS else 1

    def part(lo, hi):
        _farfield_reduce(z, f, sqrt_f, valid, metric != "gaussian", bool(grad), obj, mis, lo, hi)

    run_split(part, n, threads)
    return obj, mis


@njit(nogil=True, cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _tv_step(gu, lam1, thresh, p, primal, tv, lo, hi):  # pragma: no cover - compiled
    ny, nx = gu.shape[2], gu.shape[3]
    th = np.float32(thresh)
    zero = np.float32(0.0)
    for r in range(lo, hi):
        pr = 0.0
        t = 0.0
        for i in range(ny):
            for j in range(nx):
                g0, g1, g2 = gu[0, r, i, j], gu[1, r, i, j], gu[2, r, i, j]
                a0, a1, a2 = g0 - lam1[0, r, i, j], g1 - lam1[1, r, i, j], g2 - lam1[2, r, i, j]
                mag = np.sqrt(a0.real * a0.real + a0.imag * a0.imag + a1.real * a1.real + a1.imag * a1.imag
                              + a2.real * a2.real + a2.imag * a2.imag)
                sc = max(mag - th, zero) / mag if mag > zero else zero
                q0, q1, q2 = a0 * sc, a1 * sc, a2 * sc
                p[0, r, i, j], p[1, r, i, j], p[2, r, i, j] = q0, q1, q2
                e0, e1, e2 = q0 - g0, q1 - g1, q2 - g2
                lam1[0, r, i, j] += e0
                lam1[1, r, i, j] += e1
                lam1[2, r, i, j] += e2
                pr += float(e0.real * e0.real + e0.imag * e0.imag + e1.real * e1.real + e1.imag * e1.imag
                            + e2.real * e2.real + e2.imag * e2.imag)
                t += float(np.sqrt(g0.real * g0.real + g0.imag * g0.imag + g1.real * g1.real + g1.imag * g1.imag
                                   + g2.real * g2.real + g2.imag * g2.imag))
        primal[r] = pr
        tv[r] = t


def tv_step(gu, lam1, thresh: float):
    """APT's TV splitting in one compiled pass: Step 2's p, Step 3's Lambda1 and two per-row sums.

    Per voxel (seed 001 Eqs. 9-10): ``p = soft_threshold(grad u - Lambda1, thresh)`` (isotropic, the
    values of :func:`~hpc_pt.solvers.prox.prox_tv`), ``Lambda1 += p - grad u``; per volume row, in float64:
    ``sum |p - grad u|^2`` (the primal residual's TV part) and ``sum |grad u|`` (TV(u), seed 001 Eq. 3, as
    :meth:`hpc_pt.parallel.SlabSpace.tv_value` would recompute it from u). Threads take disjoint rows.

    Parameters
    ----------
    gu : numpy.ndarray
        grad u, complex64 (3, rows, n, n), C-contiguous.
    lam1 : numpy.ndarray
        Lambda1, like ``gu``; updated in place.
    thresh : float
        lambda / r1.

    Returns
    -------
    p : numpy.ndarray
        Like ``gu``.
    primal_rows, tv_rows : numpy.ndarray
        float64 (rows,).
    """
    for name, a in (("grad u", gu), ("Lambda1", lam1)):
        if a.dtype != np.complex64 or not a.flags.c_contiguous or a.ndim != 4 or a.shape[0] != 3:
            raise ValueError(f"tv_step: {name} must be a C-contiguous complex64 (3, rows, n, n) array")
    rows = gu.shape[1]
    p = np.empty_like(gu)
    primal, tv = np.zeros(rows, dtype=np.float64), np.zeros(rows, dtype=np.float64)
    threads = cpu_threads() if gu.size >= SPLIT_PIXELS else 1

    def part(lo, hi):
        _tv_step(gu, lam1, float(thresh), p, primal, tv, lo, hi)

    run_split(part, rows, threads)
    return p, primal, tv
