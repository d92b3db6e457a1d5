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

   Pixels the probe never lit (summed |w|^2 below ``illum_threshold`` of its peak over every rank's
   angles; default :data:`ILLUM_THRESHOLD_LINEAR` / :data:`ILLUM_THRESHOLD_EXP`) carry no data.
   ``unlit="mask"`` (default) gives them zero weight in the tomography (CGLS fits only the lit rays, each
   with weight min(1, illumination / (``full_weight`` x peak)), so weakly lit, less certain pixels count
   less; FBP and tomopy, which cannot weigh rays, get unlit ones as 0); ``unlit="zero"`` sets them
   to free space x = 0 and fits them like data, which is right only for a sample surrounded by empty
   space (x = 0 there): for seed 001's pure-phase sample (|u| = 1 everywhere, projections about the path
   length) it cost the whole reconstruction (48^3: 5.2 dB, against 18.9 dB from the exact lit rays).
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
4. Crop to the volume rows (``Pad.adj``), move the projections from the per-angle layout to the slab
   layout with one transpose (``shard.space.to_slabs``: every rank then holds its slab's rows of every
   angle) and reconstruct the rank's slab by tomography (:mod:`hpc_pt.solvers.tomo` with ``space.P``:
   CGLS by default, FBP or tomopy on request), which communicates only scalars.

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

from pydantic import Field

import numpy as np

from ..backend import get_xp, to_numpy
from ..comm import Comm
from ..operators.scan import overlap_ratio
from ..operators.scan import probe_diameter_px as probe_diameter
from .base import NO_CHECKPOINTS, Checkpointer, History, Shard, SolverOptions, SolverResult
from .farfield import farfield_pass
from .ptycho2d import METHODS, global_max, solve
from .registry import SolverSpec
from .tomo import TomoOptions, reconstruct


#: default lit-pixel thresholds (summed |w|^2 relative to its peak). Linear model: x = psi directly, and
#: noise-free ptychography recovers weakly lit pixels well; measured on seed 001's pure-phase sample scaled to
#: 64^3 (Airy probe, step 2, 12 angles, binary mask): 1e-2 -> 6.0 dB, 1e-3 -> 13.4, 1e-4 -> 16.8, 1e-5 -> 17.6
#: (APTs: 17.6; with the ``full_weight`` ramp 17.2 dB at 1e-4); Gaussian probe 4.0 / 4.5 / 5.4 dB at 1e-2 /
#: 1e-3 / 1e-4. Exp model: the log and the unwrapped phase
#: of a weakly lit field are unreliable, so only well-lit pixels are kept.
ILLUM_THRESHOLD_LINEAR = 1e-4
ILLUM_THRESHOLD_EXP = 1e-2


class TwoStepOptions(SolverOptions):
    """2-step options: the 2D stage (ptychography per angle), then the tomography (module docstring)."""

    method: str = Field("dm", description="2D ptychography: 'epie', 'dm' or 'ml'")
    iterations: int = Field(100, description="2D ptychography iterations (ePIE: epochs)")
    probe_refine: bool = Field(False, description="refine the shared probe")
    probe_start: int = Field(2, description="first iteration (0-based) with a probe update")
    obj_init: str = Field("ones", description="'ones' (free-space transmission), 'energy' (data-matched constant) or a "
                          "number")
    alpha: float = Field(1.0, description="ePIE object step")
    beta: float = Field(1.0, description="ePIE probe step")
    noise: str = Field("poisson", description="ML likelihood")
    seed: int = Field(0, description="ePIE frame order")
    per_angle: bool = Field(False, description="solve angles one by one instead of as one stack")
    tomo: str = Field("cg", description="'cg', 'fbp' or 'tomopy'")
    tomo_iterations: int = Field(30, description="tomography iterations (CG; tomopy's iterative algorithms)")
    tomo_tol: float = Field(1e-4, description="CG stop: ||normal residual|| <= tol x its start")
    damping: float = Field(0.0, description="CG Tikhonov, relative to ||P^T P||")
    smoothing: float = Field(0.0, description="CG Laplacian, relative to ||P^T P|| / 12")
    fbp_filter: str = Field("ramp", description="FBP filter: ramp, ram-lak, shepp-logan or hann")
    tomopy_algorithm: str = Field("gridrec", description="tomopy algorithm (tomo = tomopy)")
    unwrap: str = Field("auto", description="'auto' (skimage if importable), 'skimage', 'itoh'")
    illum_threshold: float | None = Field(None, description="lit = summed |w|^2 above this x its peak; None: 1e-4 "
                                          "linear, 1e-2 exp")
    min_overlap: float = Field(0.2, description="scan overlap below which the 2-step method warns")
    max_r_factor: float = Field(0.2, description="2D R-factor above which the 2-step method warns")
    support_width: float | None = Field(None, description="sample width (px) around the axis; wider columns are free "
                                        "space")
    full_weight: float = Field(1e-2, description="'mask': rays lit above this x the peak get weight 1, weaker ones "
                               "less (linearly)")
    unlit: str = Field("mask", description="unlit projection pixels: 'mask' (not fitted by the tomography) or 'zero' "
                       "(x = 0)")


#: the history's ``stage`` column: 1 = the 2D ptychography of every angle, 2 = the tomography
STAGES = {1: "ptychography", 2: "tomography"}


def progress_stages(opts: TwoStepOptions) -> list[dict]:
    """How a run with ``opts`` labels its two stages, for progress reports and the stored history.

    Per stage its ``stage`` (the history column's value), ``name`` (``"ptychography (dm)"``, ``"tomography
    (cg)"``), ``label`` for the log, ``total`` iterations (the tomography's is an upper bound: CG may stop
    at ``tomo_tol``; FBP and tomopy report no iterations), the row ``tag`` and the ``key`` column that
    counts the stage's iterations (``iteration`` in stage 1, ``tomo_iteration`` in stage 2).

    Parameters
    ----------
    opts : TwoStepOptions
        The run's options (its method, tomography engine and iteration counts).

    Returns
    -------
    list of dict
        One dict per stage, stage 1 first.
    """
    names = {1: f"{STAGES[1]} ({opts.method})", 2: f"{STAGES[2]} ({opts.tomo})"}
    totals = {1: int(opts.iterations), 2: int(opts.tomo_iterations) if opts.tomo == "cg" else 0}
    keys = {1: "iteration", 2: "tomo_iteration"}
    return [{"stage": s, "name": names[s], "label": f"stage {s}/2, {names[s]}", "total": totals[s],
             "tag": f"{STAGES[s]} iter", "key": keys[s]} for s in (1, 2)]


def _status(callback, text) -> None:
    """Begin (``text``) or end (None) a step of the caller's progress report: ``callback.status``, when the
    callback has one (:mod:`hpc_pt.progress`; the pipeline's does on the reporting rank)."""
    status = getattr(callback, "status", None)
    if status is not None:
        status(text)


def model_positions(pt) -> np.ndarray:
    """Top-left (row, col) positions of a :class:`~hpc_pt.operators.Ptychography` operator's frames.

    Parameters
    ----------
    pt : Ptychography
        The operator.

    Returns
    -------
    np.ndarray
        (F, 2) float64.
    """
    return np.asarray(pt.positions, dtype=np.float64)


def scan_overlap(positions, counts, probe) -> float:
    """Smallest per-angle linear overlap (:func:`hpc_pt.operators.scan.overlap_ratio`); 0.0 if undefined.

    Parameters
    ----------
    positions : array
        (F, 2) positions, concatenated by angle.
    counts : array
        Frames per angle.
    probe : array
        The probe, whose area-equivalent diameter at half maximum is D.

    Returns
    -------
    float
        min over angles of 1 - d_nn / D (module docstring).
    """
    per_angle = np.split(np.asarray(positions), np.cumsum(counts)[:-1])
    value = overlap_ratio(per_angle, max(probe_diameter(probe), 1e-12), reduce="min")
    return 0.0 if np.isnan(value) else value


def unwrap_phase_2d(phase, method: str = "auto", mask=None):
    """2D phase unwrapping of (H, W) (see the module docstring); ``mask`` True = unreliable pixel.

    Parameters
    ----------
    phase : array
        The wrapped phase (H, W).
    method : str
        "auto" (scikit-image when it imports, else Itoh), "skimage" or "itoh".
    mask : array, optional
        (H, W), True where a pixel is unreliable (scikit-image only; masked pixels come back as 0).

    Returns
    -------
    np.ndarray
        The unwrapped phase, float64.

    Raises
    ------
    ImportError
        For "skimage" without scikit-image.
    ValueError
        For an unknown method.
    """
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


def _align_linear(psi, comm: Comm):
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


def _fields_to_projections(psi, lit, model, opts, comm: Comm, space):
    """(A, H, W) object fields -> (A, H, W) projections x on the field, ambiguities resolved (this rank's
    angles; the reductions over angles go through ``comm``)."""
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
    peak = global_max(comm, amp)  # over every rank's angles, as in the serial run
    floor = 1e-6 * peak if peak > 0 else 1e-30
    x = np.zeros(psi.shape, dtype=np.complex128)
    for a in range(psi.shape[0]):
        ph = unwrap_phase_2d(np.angle(psi[a]), opts.unwrap, mask=~lit[a])
        x[a] = (ph - 1j * np.log(np.maximum(amp[a], floor))) / c
    x = np.where(lit, x, 0)
    # free-space band: lit pixels of the volume rows outside the inscribed cylinder
    nz = space.global_shape[0]
    n = opts.support_width if opts.support_width else space.global_shape[1]
    H, W = model.field_shape
    r0 = model.pad.offset[0]
    cols = np.arange(W) - space.P.center
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


def _checkpoints_on(checkpoints: Checkpointer) -> bool:
    """Whether ``checkpoints`` saves at all (then the end of the 2D stage is always saved)."""
    return checkpoints.every > 0 and checkpoints.due(checkpoints.every)


def _prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items() if k not in ("iteration", "history")}


def _unprefixed(prefix: str, st: dict, history_key: str) -> dict:
    out = {k[len(prefix):]: v for k, v in st.items() if k.startswith(prefix)}
    out["history"] = st[history_key]
    return out


def run_twostep(shard: Shard, comm: Comm, opts: TwoStepOptions | None = None, callback=None,
                checkpoints: Checkpointer = NO_CHECKPOINTS) -> SolverResult:
    """Seed 001's 2-step baseline on this rank's shard: ptychography per angle, then tomography on slabs.

    The 2D stage works on the shard's whole angles (per-angle layout); its projections go to the slab layout
    with one ``space.to_slabs``, and the tomography runs on this rank's slab with every angle's rows
    (:mod:`hpc_pt.solvers.tomo`: only scalar sums are communicated); the final R-factor takes P u back to
    the shard's angles with one transpose (``shard.projections``).

    Iterations. The history's rows are numbered by one running ``iteration`` over both stages: rows
    1..``iterations`` are the ptychography iterations (``stage`` 1, ``objective``, ``r_factor``), the rows
    after them the tomography (CG) iterations (``stage`` 2, ``tomo_iteration`` counting from 1,
    ``objective``, ``residual``; FBP and tomopy add none). ``callback(row, u)`` is called after every row:
    ``u`` is None in stage 1 and the volume slab in stage 2. :func:`progress_stages` names the two stages
    (``"ptychography (dm)"``, ``"tomography (cg)"``) for the log and the stored history.

    Checkpoints (``checkpoints``): after row ``k`` when ``checkpoints.due(k)``, plus always at the end of the
    2D stage (row ``iterations``) when checkpoints are on. Inside the 2D stage (stack mode) the state is the
    2D solver's whole loop state (object fields, probe, DM's exit waves / ML's directions and steps /
    ePIE's random state: keys ``ptycho_*``); ``per_angle=True`` solves the angles one after the other and is
    checkpointed only at the end of the stage. From the end of the 2D stage on it is the slab-layout
    projections, the fields, the (rescaled) probe and the ambiguity corrections, plus the CG state
    (``tomo_*``): a resume there skips the 2D stage. A resumed run ends bitwise-equal to an uninterrupted
    one on the CPU.

    ``state`` has the per-angle fields' R-factor, the overlap, the ambiguity corrections and the volume's
    R-factor against the data through the forward model.

    Parameters
    ----------
    shard, comm
        As for :func:`~hpc_pt.solvers.base.run_solver` (the shard holds whole angles).
    opts : TwoStepOptions, optional
        The options (default ``TwoStepOptions()``).
    callback : callable, optional
        ``callback(row, u)`` after every row (see Iterations above).
    checkpoints : Checkpointer
        Where the state goes and where a resumed one comes from (see Checkpoints above).

    Returns
    -------
    SolverResult
        The volume slab, the probe, the history of both stages and ``state``.

    Raises
    ------
    ValueError
        For an unknown ptychography method or unlit-pixel treatment.

    Warns
    -----
    RuntimeWarning
        When the scan overlap is below ``min_overlap``, or the 2D R-factor ends above ``max_r_factor``.
    """
    opts = TwoStepOptions() if opts is None else opts
    if opts.method not in METHODS:
        raise ValueError(f"unknown ptychography method {opts.method!r}; use one of {METHODS}")
    if opts.unlit not in ("mask", "zero"):
        raise ValueError(f"unknown unlit-pixel treatment {opts.unlit!r}; use 'mask' or 'zero'")
    model = shard.model
    sp = shard.space
    pt = model.ptycho
    xp = get_xp(shard.intensities)
    dtype = model.dtype
    A = len(model.angles)
    positions = model_positions(pt)
    counts = np.asarray(model.counts)
    aidx = np.repeat(np.arange(A), counts)
    probe0 = pt.probe.copy()
    st = checkpoints.resume
    stage = st["stage"] if st is not None else "ptycho"
    on = _checkpoints_on(checkpoints)

    overlap = scan_overlap(positions, counts, probe0)
    if overlap < opts.min_overlap:
        warnings.warn(
            f"scan overlap {overlap:.2f} is too low for 2-step reconstruction: per-angle ptychography needs "
            f"overlap >= {opts.min_overlap:.2f} (1 - step / beam diameter {probe_diameter(probe0):.1f} px); "
            "the result will not converge to the object - use the joint solvers (apt) instead",
            RuntimeWarning, stacklevel=2)

    hist = History(st["history"] if st is not None else None)
    if stage == "ptycho":
        psi, probe, probes, t_ptycho = _ptycho_stage(shard, comm, opts, hist, callback, checkpoints, st,
                                                     positions, counts, aidx, probe0)
        final_rf = hist.column("r_factor")[-1] if len(hist) else np.nan
        final_rf = comm.sum_scalar(float(final_rf) * A) / max(comm.sum_scalar(float(A)), 1.0)
        if np.isfinite(final_rf) and final_rf > opts.max_r_factor:
            warnings.warn(f"per-angle ptychography did not converge (R-factor {final_rf:.3f} > "
                          f"{opts.max_r_factor}); the 2-step reconstruction is unreliable (scan overlap "
                          f"{overlap:.2f}); use the joint solvers (apt) instead", RuntimeWarning, stacklevel=2)

        _status(callback, "stage 2/2, tomography: projections from the 2D fields (phase references, lit pixels)")
        # undo the probe / object scale exchange of a refined probe
        if opts.probe_refine and probes is not None:
            n0 = float(np.linalg.norm(to_numpy(probe0)))
            n1 = float(np.linalg.norm(to_numpy(probe)))
            if n0 > 0 and n1 > 0:
                psi = psi * (n1 / n0)
                probe = probe * (n0 / n1)

        # illuminated pixels (with the probe actually used); the threshold is relative to the peak over
        # every rank's angles, as in the serial run
        illum = pt.illumination()
        thr = opts.illum_threshold
        if thr is None:
            thr = ILLUM_THRESHOLD_LINEAR if model.expmap is None else ILLUM_THRESHOLD_EXP
        peak = global_max(comm, illum)
        lit = illum > thr * peak
        x_field, info = _fields_to_projections(psi, lit, model, opts, comm, sp)
        x_field = np.nan_to_num(x_field, nan=0.0, posinf=0.0, neginf=0.0)
        with comm.phase("project"):
            proj = sp.to_slabs(model.pad.adj(xp.asarray(x_field.astype(dtype))))  # (A_all, rows, W)
            weights = None
            if opts.unlit == "mask":
                wfield = np.where(np.asarray(to_numpy(lit), dtype=bool),
                                  np.minimum(np.asarray(to_numpy(illum), dtype=np.float64)
                                                  / (opts.full_weight * peak), 1.0), 0.0)
                weights = sp.to_slabs(model.pad.adj(xp.asarray(wfield.astype(dtype)))).real
        n_ptycho = len(hist)
        if on:
            checkpoints.save({"iteration": n_ptycho, "stage": "tomo", "history": hist.rows, "proj": proj,
                              "weights": weights,
                              "fields": psi, "probe": probe, "info": info, "ptycho_r_factor": final_rf,
                              "ptycho_time_s": t_ptycho, "ptycho_rows": n_ptycho})
        st = None
    else:
        proj, psi, probe = (xp.asarray(st[k]) for k in ("proj", "fields", "probe"))
        weights = None if st.get("weights") is None else xp.asarray(st["weights"])
        info, final_rf = dict(st["info"]), float(st["ptycho_r_factor"])
        t_ptycho, n_ptycho = float(st["ptycho_time_s"]), int(st["ptycho_rows"])

    t_tomo = time.perf_counter()
    topts = TomoOptions(engine=opts.tomo, iterations=opts.tomo_iterations, tol=opts.tomo_tol,
                        damping=opts.damping, smoothing=opts.smoothing, filter=opts.fbp_filter,
                        algorithm=opts.tomopy_algorithm)

    def tomo_cb(row, x):
        vals = {k: v for k, v in row.items() if k not in ("time_s", "iteration")}
        r = hist.append(stage=2, iteration=n_ptycho + row["iteration"], tomo_iteration=row["iteration"], **vals)
        if callback is not None:
            callback(r, x)

    def tomo_ck(state):
        k = state["iteration"]
        if checkpoints.due(n_ptycho + k):
            checkpoints.save({"iteration": n_ptycho + k, "stage": "tomo", "history": hist.rows, "proj": proj,
                              "weights": weights, "fields": psi, "probe": probe, "info": info, "ptycho_r_factor": final_rf,
                              "ptycho_time_s": t_ptycho, "ptycho_rows": n_ptycho,
                              "tomo_history": state["history"], **_prefixed("tomo_", state)})

    resume_tomo = None
    if st is not None and "tomo_history" in st:
        resume_tomo = _unprefixed("tomo_", st, "tomo_history")
        resume_tomo.pop("history_", None)
    _status(callback, None if opts.tomo == "cg" else f"stage 2/2, tomography ({opts.tomo})")
    with comm.phase("tomo"):
        vol, _thist = reconstruct(sp.P, proj, comm, topts, callback=tomo_cb, space=sp, weights=weights,
                                  checkpoints=Checkpointer(1 if on else 0, tomo_ck, resume_tomo))
    vol = xp.nan_to_num(vol)
    t_tomo = time.perf_counter() - t_tomo
    _status(callback, "R-factor of the volume through the forward model")

    # data fit of the final volume through the forward model (seed 001's R-factor): P u at this shard's
    # angles (one transpose)
    with comm.phase("project"):
        x_u = shard.projections(vol.astype(dtype))
    with comm.phase("ptycho"):  # one frame batch of far fields at a time
        ev = farfield_pass(pt, x_u if model.expmap is None else model.expmap.fwd(x_u), shard.intensities,
                           shard.amplitudes, "gaussian")
    num = comm.sum_scalar(ev.abs_misfit)
    _status(callback, None)
    den = comm.sum_scalar(float(shard.amplitudes.sum()))
    state = {"method": opts.method, "overlap": overlap, "ptycho_r_factor": final_rf,
             "r_factor": num / den if den > 0 else float("inf"), "ptycho_time_s": t_ptycho,
             "tomo_time_s": t_tomo, "fields": psi, **info}
    return SolverResult(volume=vol, probe=probe, history=hist, state=state)


def _ptycho_stage(shard, comm: Comm, opts, hist, callback, checkpoints, st, positions, counts, aidx, probe0):
    """The 2D stage: rows of ``hist`` (stage 1), checkpoints inside it (stack mode). Returns
    (psi, probe, probes, seconds)."""
    model = shard.model
    xp = get_xp(shard.intensities)
    dtype = model.dtype
    A = len(model.angles)
    H, W = model.field_shape
    kw = {"probe_refine": opts.probe_refine, "probe_start": opts.probe_start, "obj_init": opts.obj_init,
          "mask": shard.mask, "dtype": dtype, "frame_batch": model.ptycho.frame_batch}  # the run's frame batch
    if opts.method == "epie":
        kw.update(alpha=opts.alpha, beta=opts.beta, seed=opts.seed)
    elif opts.method == "ml":
        kw.update(noise=opts.noise)
    t_ptycho = time.perf_counter() - (float(st["ptycho_time_s"]) if st is not None else 0.0)

    def add_row(row):
        r = hist.append(stage=1, iteration=row["iteration"], objective=row["objective"],
                        r_factor=row["r_factor"], iter_time_s=row.get("iter_time_s", 0.0))
        if callback is not None:
            callback(r, None)

    if opts.per_angle:  # checkpointed only at the end of the stage
        fields, rf = [], []
        probe = probe0
        starts = np.r_[0, np.cumsum(counts)]
        per_hist = []
        with comm.phase("ptycho"):
            for a in range(A):
                sl = slice(int(starts[a]), int(starts[a + 1]))
                kwa = dict(kw)
                if opts.method != "epie":
                    kwa["comm"] = None
                res = solve(opts.method, shard.intensities[sl], positions[sl], probe0, (H, W), opts.iterations,
                            **kwa)
                fields.append(res.obj)
                per_hist.append(res.history)
                rf.append(res.history.column("r_factor")[-1] if len(res.history) else np.nan)
                probe = res.probe
        psi = xp.stack(fields) if fields else xp.zeros((0, H, W), dtype=dtype)
        for k in range(opts.iterations):
            vals = [h.rows[k] for h in per_hist if len(h) > k]
            if vals:
                add_row({"iteration": k + 1, "objective": sum(v["objective"] for v in vals),
                         "r_factor": float(np.mean([v["r_factor"] for v in vals])),
                         "iter_time_s": sum(v.get("iter_time_s", 0.0) for v in vals)})
        return psi, probe, None, time.perf_counter() - t_ptycho

    if opts.method != "epie":
        kw["comm"] = comm

    def ck(state):
        # the end of the stage is saved by the caller, with the projections
        k = state["iteration"]
        if k < opts.iterations and checkpoints.due(k):
            checkpoints.save({"iteration": k, "stage": "ptycho", "history": hist.rows,
                              "ptycho_time_s": time.perf_counter() - t_ptycho,
                              "ptycho_history": state["history"], **_prefixed("ptycho_", state)})

    resume = None
    if st is not None:
        resume = _unprefixed("ptycho_", st, "ptycho_history")
        resume.pop("time_s", None)
    inner = Checkpointer(1 if _checkpoints_on(checkpoints) else 0, ck, resume)
    with comm.phase("ptycho"):
        res = solve(opts.method, shard.intensities, positions, probe0, (A, H, W), opts.iterations,
                    angle_index=aidx, callback=lambda row, _o: add_row(row), checkpoints=inner, **kw)
    return res.obj, res.probe, res.probe, time.perf_counter() - t_ptycho


def _run(shard: Shard, comm: Comm, opts: TwoStepOptions | None = None, callback=None, u0=None,
         checkpoints: Checkpointer = NO_CHECKPOINTS) -> SolverResult:
    """:func:`run_twostep` with the registry's signature (the 2-step method takes no initial volume)."""
    return run_twostep(shard, comm, opts, callback=callback, checkpoints=checkpoints)


SPEC = SolverSpec(name="two-step", options=TwoStepOptions, run=_run, models=("linear", "exp"), default_model=None,
                  generic={"iterations": "iterations", "noise": "noise", "probe_refine": "probe_refine",
                           "support_width": "support_width"},
                  whole_angles=True, deterministic="no", refines_probe=True, takes_u0=False,
                  summary="seed 001's baseline: 2D ptychography per angle, then tomography")

__all__ = [
    "SPEC",
    "STAGES",
    "TwoStepOptions",
    "model_positions",
    "probe_diameter",
    "progress_stages",
    "run_twostep",
    "scan_overlap",
    "unwrap_phase_2d",
]
