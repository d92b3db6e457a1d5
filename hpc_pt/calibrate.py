"""Calibrations estimated from the measured frames before a reconstruction starts (pipeline layer).

Two quantities a facility's file may get wrong or leave out, both estimated collectively (every rank
takes part and gets the same answer, so they work unchanged under MPI and Dask):

* The rotation centre: the object-field column of the rotation axis. A misplaced axis makes the
  projections at different angles mutually inconsistent, so no volume fits all the frames: the data
  misfit a short reconstruction reaches is smallest at the true centre.
  :func:`estimate_rotation_centre` searches that misfit coarse-to-fine (a grid over the search range, then
  halving steps around the best centre, then a parabola through the last three points). It works for
  180- and 360-degree scans, dense and sparse, linear and exponential models, because it asks only
  whether one volume explains every frame. Each trial is ``iterations`` iterations of full-gradient
  descent from free space (the cheapest method that handles both models): about 15 trials, so about
  15 x ``iterations`` iterations in all.
* The probe's intensity scale (exponential model): where the beam misses the sample the exit wave has
  modulus 1, so by Parseval (orthonormal FFT) a frame's total count equals the probe's power
  ``sum |F(w)|^2`` over the valid detector pixels; frames through a sample hold less. The 95th
  percentile of the frame totals over that power is the factor the probe's intensity is off by
  (:func:`probe_intensity_ratio`); :func:`calibrate_probe_scale` rescales the probe when it is off by more
  than ``PROBE_SCALE_TOLERANCE``. In the linear model free space gives no signal and the probe's scale only
  rescales the volume, so nothing is done there.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import get_xp, to_numpy

#: relative deviation of the probe's intensity scale from the data's beyond which the probe is rescaled
PROBE_SCALE_TOLERANCE = 0.05
#: percentile of the frame totals (over the probe power) taken as the unobstructed beam's
PROBE_SCALE_PERCENTILE = 95.0
#: histogram of log10(frame total / probe power) used to find that percentile across ranks
_LOG_RANGE, _LOG_BINS = (-12.0, 12.0), 24000


def set_rotation_centre(shard, centre: float) -> None:
    """Rebuild ``shard``'s projectors (the slab's ``space.P`` the solvers use, and the forward model's)
    with the rotation axis at field column ``centre``."""
    from .operators.projector import Projector

    for owner, attr in ((shard.space, "P"), (shard.model, "projector")):
        P = getattr(owner, attr)
        setattr(owner, attr, Projector(P.n, P.nz, P.angles, n_det=P.n_det, center=float(centre), dtype=P.dtype,
                                       gpu=P.gpu))


def centre_misfit(shard, comm, centre: float, iterations: int) -> float:
    """The R-factor (over every rank's frames) that ``iterations`` iterations of full-gradient descent from
    free space reach with the rotation axis at ``centre``. Leaves ``shard`` set to ``centre``."""
    from .solvers.gd import GDOptions, run_gd

    set_rotation_centre(shard, centre)
    res = run_gd(shard, comm, GDOptions(iterations=int(iterations)))
    rf = res.history.column("r_factor")
    return float(rf[-1]) if rf.size and np.isfinite(rf[-1]) else math.inf


def estimate_rotation_centre(shard, comm=None, iterations: int | None = None, search_px: float | None = None,
                             tol_px: float = 0.25, log=None) -> dict:
    """Estimate the rotation axis's field column from the frames (module docstring), collectively.

    Parameters
    ----------
    shard : this rank's :class:`~hpc_pt.solvers.base.Shard` (any centre; it is left at the estimate).
    comm : the run's communicator (default: one process).
    iterations : GD iterations per trial (default 10 for the linear model, 20 for the exponential one,
        whose misfit falls more slowly).
    search_px : half-width of the searched range around the field centre (W - 1) / 2, pixels (default
        max(4, W / 8)).
    tol_px : the halving steps stop at this spacing; the parabola then refines within it.
    log : optional callable taking one line of text per trial.

    Returns
    -------
    dict with ``centre`` (field column), ``offset_px`` (from (W - 1) / 2), ``default`` ((W - 1) / 2),
    ``trials`` (list of [centre, R-factor], in evaluation order), ``iterations``.
    """
    from .comm import SerialComm

    comm = comm or SerialComm()
    W = shard.space.n_det
    c0 = (W - 1) / 2.0
    if iterations is None:
        iterations = 10 if shard.model.expmap is None else 20
    R = float(search_px) if search_px is not None else max(4.0, W / 8.0)
    seen: dict[float, float] = {}

    def f(c: float) -> float:
        c = round(float(c), 6)
        if c not in seen:
            seen[c] = centre_misfit(shard, comm, c, iterations)
            if log is not None:
                log(f"rotation centre {c:.3f} (offset {c - c0:+.3f} px): R-factor {seen[c]:.5g}")
        return seen[c]

    step = R / 4.0
    grid = [c0 + k * step for k in range(-4, 5)]
    best = min(grid, key=f)
    while step > tol_px:
        step /= 2.0
        best = min((best - step, best, best + step), key=f)
    # parabola through the best point and its neighbours at +-step (squared misfits: quadratic near the minimum)
    y = np.array([f(best - step), f(best), f(best + step)]) ** 2
    curv = y[0] - 2 * y[1] + y[2]
    centre = best
    if np.all(np.isfinite(y)) and curv > 0:
        centre = best + 0.5 * step * (y[0] - y[2]) / curv
        centre = float(np.clip(centre, best - step, best + step))
    set_rotation_centre(shard, centre)
    return {"centre": float(centre), "offset_px": float(centre - c0), "default": c0,
            "trials": [[c, r] for c, r in seen.items()], "iterations": int(iterations)}


def probe_intensity_ratio(shard, comm=None, percentile: float = PROBE_SCALE_PERCENTILE) -> float:
    """Measured over predicted free-space frame power: the ``percentile`` of the frame totals (valid
    pixels) divided by ``sum |F(w)|^2`` over the valid pixels (orthonormal FFT), over every rank's frames.
    NaN when there are no frames or the probe has no power."""
    from .comm import SerialComm

    comm = comm or SerialComm()
    f = shard.intensities
    xp = get_xp(f)
    probe = shard.model.ptycho.probe
    far = xp.abs(xp.fft.fft2(probe, norm="ortho")) ** 2
    if shard.mask is not None:
        f = f * shard.mask[None]
        far = far * shard.mask
    power = float(far.sum())
    totals = to_numpy(f.reshape(f.shape[0], -1).sum(axis=1)).astype(np.float64)
    if not power > 0:
        return math.nan
    lo, hi = _LOG_RANGE
    with np.errstate(divide="ignore"):
        logs = np.log10(np.maximum(totals, 0) / power)
    logs = np.clip(np.where(np.isfinite(logs), logs, lo), lo, hi)
    hist = np.histogram(logs, bins=_LOG_BINS, range=_LOG_RANGE)[0].astype(np.float64)
    hist = comm.allreduce_sum(hist)
    n = hist.sum()
    if n == 0:
        return math.nan
    k = int(np.searchsorted(np.cumsum(hist), percentile / 100.0 * n))
    edges = np.linspace(lo, hi, _LOG_BINS + 1)
    return float(10 ** (0.5 * (edges[min(k, _LOG_BINS - 1)] + edges[min(k, _LOG_BINS - 1) + 1])))


def calibrate_probe_scale(shard, comm=None, tolerance: float = PROBE_SCALE_TOLERANCE) -> float:
    """Rescale the exponential model's probe to the data's intensity scale when they differ by more than
    ``tolerance`` (relative, in intensity); returns the amplitude factor applied (1.0 when none: within
    tolerance, linear model, or no usable frames)."""
    if shard.model.expmap is None:
        return 1.0
    ratio = probe_intensity_ratio(shard, comm)
    if not (np.isfinite(ratio) and ratio > 0) or abs(ratio - 1.0) <= tolerance:
        return 1.0
    factor = math.sqrt(ratio)
    pt = shard.model.ptycho
    pt.probe = pt.probe * pt.probe.dtype.type(factor)
    return factor
