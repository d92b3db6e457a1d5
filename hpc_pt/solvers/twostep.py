"""The 2-step baseline of seed 001 (Table 1): 2D ptychography per angle, then tomography.

Pipeline on this rank's shard (its angles are ``shard.model.angles``, its frames concatenated by angle with
counts ``shard.model.counts``):

1. Ptychography (:mod:`hpc_pt.solvers.ptycho2d`: ``epie``, ``dm`` or ``ml``) of every local angle's object
   field psi_a (H, W). The angles are independent 2D problems; they are solved together as one (A, H, W)
   stack through the shard's own :class:`~hpc_pt.operators.Ptychography` layout, sharing the probe
   (which is one physical probe; refined, its update sums over all angles and, for DM and ML, over ranks).
   ``per_angle=True`` solves them one after the other instead.
2. Fields -> projections x_a on the field:

   * ``linear`` (Rytov, seed 001): psi = Pad(P u), so x = psi.
   * ``exp``: psi = exp(i c x), so x = log(psi) / (i c) = (unwrapped arg psi - i log|psi|) / c. The phase is
     unwrapped in 2D with scikit-image's ``unwrap_phase`` (Herraez et al. 2002, reliability-sorted) when
     scikit-image imports, else by the Itoh method along columns then rows (``numpy.unwrap``; correct when
     the phase changes by less than pi between neighbours along those paths). |psi| is floored at 1e-6
     of its maximum so the log stays finite.

   Pixels the probe never lit (summed |w|^2 below ``illum_threshold`` of its peak) carry no data; they are
   set to free space (x = 0).
3. The per-angle ambiguity. Ptychography fixes psi_a only up to a global phase factor e^{i phi_a}
   (and, with a refined probe, a scale exchanged with the probe, which is undone by rescaling each
   solution to the initial probe's norm).

   * ``linear``: e^{i phi_a} multiplies the whole projection. Every row z of a projection sums to the mass
     of slice z whatever the angle (sum_s p_theta(z, s) = sum_{x,y} u(z, y, x)), so the row-sum vectors
     r_a (one value per volume row) are all the same vector up to e^{i phi_a}. The common reference v is
     the principal eigenvector of C = sum_a r_a r_a^H (nz x nz, summed over ranks with
     ``comm.allreduce_sum``, so every rank gets the same v), with its own phase fixed so that sum(v) is
     real and positive; each angle is rotated by phi_a = arg <r_a, v>. This uses every row of every angle
     (no single reference angle whose errors propagate).
   * ``exp``: e^{i phi_a} adds the constant phi_a / c to Re x_a (and a refined probe's scale adds a
     constant to Im x_a). Free space has x = 0, so each angle's complex offset is the mean of x_a over its
     free-space band: lit pixels of the volume rows whose column is outside the sample's support
     (|col - centre| > n/2 + 1, n = ``support_width``, default the volume width; the pipeline sets it from
     the simulated sample size), which needs free space around the sample. Without such a band the offsets
     are aligned by mass conservation instead (equal field sums over the volume rows for every angle,
     relative to the mean over angles; the common offset then stays undetermined).
4. Crop to the volume rows (``Pad.adj``) and reconstruct the volume by tomography
   (:mod:`hpc_pt.solvers.tomo`: CGLS by default, FBP or tomopy on request).

Overlap check. Per-angle ptychography needs overlapping illumination. The linear overlap
1 - d_nn / D (d_nn: median nearest-neighbour distance of the positions of an angle, D: the probe's
area-equivalent diameter at half maximum amplitude) below ``min_overlap`` (default 0.2; seed 001's
step 32 with a 14-px beam is -1.29) raises a ``RuntimeWarning`` that the overlap is too low for 2-step
reconstruction; the pipeline still runs and returns a finite volume, and warns again if the per-angle
ptychography ends with an R-factor above ``max_r_factor``.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..backend import get_xp, to_numpy
from ..operators.scan import overlap_ratio
from ..operators.scan import probe_diameter_px as probe_diameter
from .base import History, Shard, SolverResult
from .ptycho2d import METHODS, solve
from .tomo import TomoOptions, reconstruct


@dataclass
class TwoStepOptions:
    method: str = "dm"  # 2D ptychography: "epie", "dm" or "ml"
    iterations: int = 100  # ptychography iterations (ePIE: epochs)
    probe_refine: bool = False
    probe_start: int = 2
    obj_init: str = "ones"  # "ones" (free-space transmission), "energy" (data-matched constant) or a number
    alpha: float = 1.0  # ePIE object step
    beta: float = 1.0  # ePIE probe step
    noise: str = "poisson"  # ML likelihood
    seed: int = 0  # ePIE frame order
    per_angle: bool = False  # solve angles one by one instead of as one stack
    tomo: str = "cg"  # "cg", "fbp" or "tomopy"
    tomo_iterations: int = 30
    tomo_tol: float = 1e-4
    damping: float = 0.0  # CG Tikhonov, relative to ||P^T P||
    smoothing: float = 0.0  # CG Laplacian, relative to ||P^T P|| / 12
    fbp_filter: str = "ramp"
    tomopy_algorithm: str = "gridrec"
    unwrap: str = "auto"  # "auto" (skimage if importable), "skimage", "itoh"
    illum_threshold: float = 1e-2
    min_overlap: float = 0.2
    max_r_factor: float = 0.2
    support_width: float | None = None  # sample width (px) around the axis; wider columns are free space


def model_positions(pt) -> np.ndarray:
    """Top-left (row, col) positions of a :class:`~hpc_pt.operators.Ptychography` operator's frames."""
    return np.asarray(pt.positions, dtype=np.float64)


def scan_overlap(positions, counts, probe) -> float:
    """Smallest per-angle linear overlap (:func:`hpc_pt.operators.scan.overlap_ratio`); 0.0 if undefined."""
    per_angle = np.split(np.asarray(positions), np.cumsum(counts)[:-1])
    value = overlap_ratio(per_angle, max(probe_diameter(probe), 1e-12), reduce="min")
    return 0.0 if np.isnan(value) else value


def unwrap_phase_2d(phase, method: str = "auto", mask=None):
    """2D phase unwrapping of (H, W) (see the module docstring); ``mask`` True = unreliable pixel."""
    if method in ("auto", "skimage"):
        try:
            from skimage.restoration import unwrap_phase
        except ImportError:
            if method == "skimage":
                raise ImportError("unwrap='skimage' needs scikit-image; pip install scikit-image") from None
        else:
            ph = np.asarray(phase, dtype=np.float64)
            if mask is not None and mask.any() and not mask.all():
                out = unwrap_phase(np.ma.masked_array(ph, mask=mask))
                return np.ma.filled(out, 0.0)
            return unwrap_phase(ph)
    elif method != "itoh":
        raise ValueError(f"unknown unwrap method {method!r}; use 'auto', 'skimage' or 'itoh'")
    ph = np.unwrap(np.asarray(phase, dtype=np.float64), axis=0)
    return np.unwrap(ph, axis=1)


def _align_linear(psi, comm):
    """Rotate each angle's field by the phase that aligns its row sums with the common reference."""
    r = psi.sum(axis=-1)  # (A, rows)
    C = comm.allreduce_sum(np.einsum("ai,aj->ij", r, np.conj(r)))
    _w, V = np.linalg.eigh(C)
    v = V[:, -1]
    s = v.sum()
    if abs(s) > 0:
        v = v * np.conj(s) / abs(s)
    z = np.conj(r) @ v  # <r_a, v>
    phase = np.where(np.abs(z) > 0, z / np.where(np.abs(z) > 0, np.abs(z), 1), 1)
    return psi * phase[:, None, None], np.angle(phase)


def _fields_to_projections(psi, lit, model, opts, comm):
    """(A, H, W) object fields -> (A, H, W) projections x on the field, ambiguities resolved."""
    psi = np.asarray(to_numpy(psi)).astype(np.complex128)
    lit = np.asarray(to_numpy(lit), dtype=bool)
    info = {}
    if model.expmap is None:
        psi = np.where(lit, psi, 0)
        x, phases = _align_linear(psi, comm)
        info["phase_offsets_rad"] = phases.tolist()
        return x, info
    c = model.expmap.c
    amp = np.abs(psi)
    floor = 1e-6 * float(amp.max()) if amp.size and amp.max() > 0 else 1e-30
    x = np.zeros(psi.shape, dtype=np.complex128)
    for a in range(psi.shape[0]):
        ph = unwrap_phase_2d(np.angle(psi[a]), opts.unwrap, mask=~lit[a])
        x[a] = (ph - 1j * np.log(np.maximum(amp[a], floor))) / c
    x = np.where(lit, x, 0)
    # free-space band: lit pixels of the volume rows outside the inscribed cylinder
    nz = model.volume_shape[0]
    n = opts.support_width if opts.support_width else model.volume_shape[1]
    H, W = model.field_shape
    r0 = model.pad.offset[0]
    cols = np.arange(W) - model.projector.center
    band = np.zeros((H, W), dtype=bool)
    band[r0:r0 + nz] = (np.abs(cols) > n / 2.0 + 1)[None, :]
    offs = []
    for a in range(x.shape[0]):
        sel = band & lit[a]
        if sel.sum() >= max(4, nz):
            off = x[a][sel].mean()
            x[a] = np.where(lit[a], x[a] - off, 0)
            offs.append(off)
        else:
            offs.append(None)
    if any(o is None for o in offs):
        # mass conservation: equal sums over the volume rows, relative to the mean over all angles
        rows = slice(r0, r0 + nz)
        sums = np.array([x[a, rows][lit[a, rows]].sum() for a in range(x.shape[0])])
        npix = np.array([max(int(lit[a, rows].sum()), 1) for a in range(x.shape[0])])
        n_all = comm.sum_scalar(float(len(sums)))
        mean = (comm.sum_scalar(float(sums.real.sum())) + 1j * comm.sum_scalar(float(sums.imag.sum()))) / n_all
        for a in range(x.shape[0]):
            off = (sums[a] - mean) / npix[a]
            x[a] = np.where(lit[a], x[a] - off, 0)
        info["offset_method"] = "mass-conservation"
    else:
        info["offset_method"] = "free-space-band"
    return x, info


def run_twostep(shard: Shard, comm, opts: TwoStepOptions | None = None, callback=None) -> SolverResult:
    """Seed 001's 2-step baseline on this rank's shard: ptychography per angle, then tomography.

    Returns a :class:`SolverResult` whose history holds the ptychography iterations (``stage`` 1,
    ``objective``, ``r_factor``) followed by the tomography iterations (``stage`` 2, ``objective``,
    ``residual``); ``callback(row, volume)`` is called after every tomography iteration. ``state`` has
    the per-angle fields' R-factor, the overlap, the ambiguity corrections and the volume's R-factor
    against the data through the forward model.
    """
    opts = TwoStepOptions() if opts is None else opts
    if opts.method not in METHODS:
        raise ValueError(f"unknown ptychography method {opts.method!r}; use one of {METHODS}")
    model = shard.model
    pt = model.ptycho
    xp = get_xp(shard.intensities)
    dtype = model.dtype
    A = len(model.angles)
    H, W = model.field_shape
    positions = model_positions(pt)
    counts = np.asarray(model.counts)
    aidx = np.repeat(np.arange(A), counts)
    probe0 = pt.probe.copy()

    overlap = scan_overlap(positions, counts, probe0)
    if overlap < opts.min_overlap:
        warnings.warn(
            f"scan overlap {overlap:.2f} is too low for 2-step reconstruction: per-angle ptychography needs "
            f"overlap >= {opts.min_overlap:.2f} (1 - step / beam diameter {probe_diameter(probe0):.1f} px); "
            "the result will not converge to the object - use the joint solvers (apt) instead",
            RuntimeWarning, stacklevel=2)

    kw = {"probe_refine": opts.probe_refine, "probe_start": opts.probe_start, "obj_init": opts.obj_init,
              "mask": shard.mask, "dtype": dtype}
    if opts.method == "epie":
        kw.update(alpha=opts.alpha, beta=opts.beta, seed=opts.seed)
    elif opts.method == "ml":
        kw.update(noise=opts.noise)
    hist = History()
    t_ptycho = time.perf_counter()
    if opts.per_angle:
        fields, rf = [], []
        probe = probe0
        starts = np.r_[0, np.cumsum(counts)]
        per_hist = []
        for a in range(A):
            sl = slice(int(starts[a]), int(starts[a + 1]))
            kwa = dict(kw)
            if opts.method != "epie":
                kwa["comm"] = None
            res = solve(opts.method, shard.intensities[sl], positions[sl], probe0, (H, W), opts.iterations, **kwa)
            fields.append(res.obj)
            per_hist.append(res.history)
            rf.append(res.history.column("r_factor")[-1] if len(res.history) else np.nan)
            probe = res.probe
        psi = xp.stack(fields) if fields else xp.zeros((0, H, W), dtype=dtype)
        for k in range(opts.iterations):
            vals = [h.rows[k] for h in per_hist if len(h) > k]
            if vals:
                hist.append(stage=1, iteration=k + 1, objective=sum(v["objective"] for v in vals),
                            r_factor=float(np.mean([v["r_factor"] for v in vals])))
        probes = None
    else:
        if opts.method != "epie":
            kw["comm"] = comm
        res = solve(opts.method, shard.intensities, positions, probe0, (A, H, W), opts.iterations,
                    angle_index=aidx, **kw)
        psi, probe = res.obj, res.probe
        for row in res.history.rows:
            hist.append(stage=1, iteration=row["iteration"], objective=row["objective"],
                        r_factor=row["r_factor"])
        probes = probe
    t_ptycho = time.perf_counter() - t_ptycho
    final_rf = hist.column("r_factor")[-1] if len(hist) else np.nan
    final_rf = comm.sum_scalar(float(final_rf) * A) / max(comm.sum_scalar(float(A)), 1.0)
    if np.isfinite(final_rf) and final_rf > opts.max_r_factor:
        warnings.warn(f"per-angle ptychography did not converge (R-factor {final_rf:.3f} > "
                      f"{opts.max_r_factor}); the 2-step reconstruction is unreliable (scan overlap "
                      f"{overlap:.2f}); use the joint solvers (apt) instead", RuntimeWarning, stacklevel=2)

    # undo the probe / object scale exchange of a refined probe
    if opts.probe_refine and probes is not None:
        n0 = float(np.linalg.norm(to_numpy(probe0)))
        n1 = float(np.linalg.norm(to_numpy(probe)))
        if n0 > 0 and n1 > 0:
            psi = psi * (n1 / n0)
            probe = probe * (n0 / n1)

    # illuminated pixels (with the probe actually used)
    illum = pt.illumination()
    lit = illum > opts.illum_threshold * float(illum.max()) if illum.size else illum > 0
    x_field, info = _fields_to_projections(psi, lit, model, opts, comm)
    x_field = np.nan_to_num(x_field, nan=0.0, posinf=0.0, neginf=0.0)
    proj = model.pad.adj(xp.asarray(x_field.astype(dtype)))

    t_tomo = time.perf_counter()
    topts = TomoOptions(engine=opts.tomo, iterations=opts.tomo_iterations, tol=opts.tomo_tol,
                        damping=opts.damping, smoothing=opts.smoothing, filter=opts.fbp_filter,
                        algorithm=opts.tomopy_algorithm)

    def tomo_cb(row, x):
        r = hist.append(stage=2, **{k: v for k, v in row.items() if k != "time_s"})
        if callback is not None:
            callback(r, x)

    vol, _thist = reconstruct(model.projector, proj, comm, topts, callback=tomo_cb)
    vol = xp.nan_to_num(vol)
    t_tomo = time.perf_counter() - t_tomo

    # data fit of the final volume through the forward model (seed 001's R-factor)
    d = model.farfield(vol.astype(dtype))
    num = comm.sum_scalar(float(xp.abs(xp.abs(d) - shard.amplitudes).sum()))
    den = comm.sum_scalar(float(shard.amplitudes.sum()))
    state = {"method": opts.method, "overlap": overlap, "ptycho_r_factor": final_rf,
             "r_factor": num / den if den > 0 else float("inf"), "ptycho_time_s": t_ptycho,
             "tomo_time_s": t_tomo, "fields": psi, **info}
    return SolverResult(volume=vol, probe=probe, history=hist, state=state)


__all__ = [
    "TwoStepOptions",
    "model_positions",
    "probe_diameter",
    "run_twostep",
    "scan_overlap",
    "unwrap_phase_2d",
]
