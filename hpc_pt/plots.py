"""Figure written next to every reconstruction: central slices of the volume and the convergence history.

Layout of the PNG (:func:`recon_figure`, built by :func:`make_figure`):

* left, two rows of three images: the central z (y-x plane), y (z-x plane) and x (z-y plane) slices of
  the real part (row 1) and imaginary part (row 2) of ``u``, on axes in physical units (nm or um, from
  the voxel size; coordinates relative to the volume centre, i.e. the rotation axis for x and y), each
  titled with its slice index; one colour bar per row, labelled with the quantity and its unit. For the
  exponential model the rows are delta and beta (refractive-index decrement and absorption index, both
  dimensionless); for the linear (Rytov) model they are Re u and Im u of the dimensionless sample whose
  sum along the beam is the complex transmission (docs/conventions.md), not refractive-index values.
  Values far from 1 (delta ~ 1e-6) are shown in units of a power of ten named in the label.
* right, one panel per convergence quantity found in the history (objective, R-factor, ADMM residuals,
  tomography residual, relative change), each on its own (log where the values allow) axis; only
  finite points are drawn, and a history with a ``stage`` column (2-step: ptychography, then
  tomography) gets one line per stage.
* title: the caller's title, the final R-factor (the caller's, else the history's last stage's; none if
  that stage has none) and, when the truth is known, the seed-001 SNR (:func:`truth_snr_db`).

The figure is a plain :class:`matplotlib.figure.Figure` (no pyplot state, no backend switching).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["make_figure", "recon_figure", "truth_snr_db", "part_labels", "length_unit", "PANELS",
           "SNR_MAX_VOXELS", "STAGE_NAMES"]

# (panel title, y-axis label, ((history column, legend label or None), ...)); one panel each
PANELS = (
    ("objective (data term + prior)", "objective", (("objective", None),)),
    ("R-factor  \u03a3| |D| \u2212 \u221af | / \u03a3\u221af", "R-factor", (("r_factor", None),)),
    ("ADMM residuals", "norm", (("primal_residual", "primal"), ("dual_residual", "dual"))),
    ("tomography CG residual (relative)", "residual", (("residual", None),)),
    ("relative change of u", "\u2016\u0394u\u2016 / \u2016u\u2016", (("rel_change", None),)),
)
STAGE_NAMES = {1: "2D ptychography", 2: "tomography"}
SNR_MAX_VOXELS = 256 ** 3  # the SNR's alignment is an FFT cross-correlation: kept to volumes where it is cheap


def length_unit(extent_m: float) -> tuple[str, float]:
    """(unit label, metres -> unit factor) for axes spanning ``extent_m`` metres: nm below 2 um, else um."""
    return ("nm", 1e9) if extent_m < 2e-6 else ("\u00b5m", 1e6)


def part_labels(model: str | None) -> tuple[str, str]:
    """Colour-bar labels (quantity and unit) of the real and imaginary parts of u for ``model``."""
    if model == "exp":
        return ("\u03b4, refractive-index decrement (dimensionless)",
                "\u03b2, absorption index (dimensionless)")
    if model == "linear":
        return ("Re u, linear (Rytov) model (dimensionless)", "Im u, linear (Rytov) model (dimensionless)")
    return ("\u03b4 = Re u (dimensionless)", "\u03b2 = Im u (dimensionless)")


def truth_snr_db(volume, truth, max_voxels: int = SNR_MAX_VOXELS) -> float | None:
    """Seed-001 SNR in dB (:func:`hpc_pt.metrics.snr_db`, aligned) of ``volume`` against ``truth``.

    A volume larger than the truth is centre-cropped to it first, as ``hpc-pt evaluate`` does. Returns
    None when there is no truth (None), it is not a 3D volume no larger than ``volume``, or ``volume``
    has more than ``max_voxels`` voxels (the alignment then costs more than a figure annotation should).
    """
    from .metrics import centre_crop, snr_db

    if truth is None or volume is None:
        return None
    vol, g = np.asarray(volume), np.asarray(truth)
    if vol.ndim != 3 or g.ndim != 3 or vol.size > max_voxels or any(a < b for a, b in zip(vol.shape, g.shape)):
        return None
    return float(snr_db(centre_crop(vol, g.shape), g))


def _cuts(volume, slices):
    """[(axis name, index, length, 2D plane, (horizontal axis, vertical axis))] of the three cuts."""
    if isinstance(volume, dict):
        xy, xz, yz = (np.asarray(volume[k]) for k in ("xy", "xz", "yz"))
        nz, ny, nx = xz.shape[0], xy.shape[0], xy.shape[1]
        iz, iy, ix = slices if slices is not None else (nz // 2, ny // 2, nx // 2)
    else:
        vol = np.asarray(volume)
        if vol.ndim != 3:
            raise ValueError(f"volume has shape {vol.shape}; the figure needs a 3D (nz, n, n) volume")
        nz, ny, nx = vol.shape
        iz, iy, ix = slices if slices is not None else (nz // 2, ny // 2, nx // 2)
        xy, xz, yz = vol[iz], vol[:, iy], vol[:, :, ix]
    return [("z", iz, nz, xy, ("x", "y")), ("y", iy, ny, xz, ("x", "z")), ("x", ix, nx, yz, ("y", "z"))]


def _limits(planes) -> tuple[float, float]:
    """Robust common colour limits (0.5 / 99.5 percentiles of the finite values) of ``planes``."""
    vals = np.concatenate([p[np.isfinite(p)].ravel() for p in planes])
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, [0.5, 99.5]))
    if not hi > lo:
        pad = max(abs(lo), 1.0) * 1e-6
        lo, hi = lo - pad, hi + pad
    return lo, hi


def _power_of_ten(lo: float, hi: float) -> int:
    """Exponent e to show values in units of 10^e on a colour bar (0 unless they are below 1e-2 or above 1e4)."""
    big = max(abs(lo), abs(hi))
    if not (np.isfinite(big) and big > 0):
        return 0
    e = int(math.floor(math.log10(big)))
    return e if e < -2 or e > 4 else 0


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _history_lines(history: dict, column: str):
    """[(stage or None, iterations, values)] of the finite points of ``column``, one entry per stage."""
    v = np.asarray(history.get(column, []), dtype=float).ravel()
    if v.size == 0:
        return []
    it = np.asarray(history.get("iteration", np.arange(1, v.size + 1)), dtype=float).ravel()[: v.size]
    if it.size < v.size:
        it = np.arange(1, v.size + 1, dtype=float)
    stage = history.get("stage")
    stages = np.asarray(stage, dtype=float).ravel()[: v.size] if stage is not None else None
    if stages is None or stages.size < v.size or np.unique(stages[np.isfinite(stages)]).size < 2:
        ok = np.isfinite(v) & np.isfinite(it)
        return [(None, it[ok], v[ok])] if ok.any() else []
    out = []
    for s in np.unique(stages[np.isfinite(stages)]):
        ok = (stages == s) & np.isfinite(v) & np.isfinite(it)
        if ok.any():
            out.append((int(s), it[ok], v[ok]))
    return out


def _final_value(history: dict, column: str) -> float | None:
    """Last finite value of ``column`` in the last stage of the history (None if that stage has none)."""
    lines = _history_lines(history, column)
    if not lines:
        return None
    stage = history.get("stage")
    if stage is not None:
        st = np.asarray(stage, dtype=float).ravel()
        st = st[np.isfinite(st)]
        if st.size and lines[-1][0] is not None and lines[-1][0] != int(st.max()):
            return None  # e.g. the 2-step R-factor belongs to its 2D stage, not to the final volume
    return float(lines[-1][2][-1])


def make_figure(volume, history: dict, title: str = "", voxel_size_m: float | None = None,
                model: str | None = None, snr_db: float | None = None, slices=None,
                stage_names: dict | None = None, r_factor: float | None = None):
    """The reconstruction figure as a :class:`matplotlib.figure.Figure` (see the module docstring).

    Parameters
    ----------
    volume : ndarray or dict
        The (nz, n, n) complex volume u, or its three planes {"xy": (n, n), "xz": (nz, n), "yz": (nz, n)}
        (what a slab-distributed run gathers).
    history : dict
        {column: 1D array} of the solver history; columns absent or all-NaN get no panel.
    title : str
        First part of the figure title.
    voxel_size_m : float, optional
        Voxel edge in metres; the image axes are then in nm or um, else in voxels.
    model : {"linear", "exp"}, optional
        Forward model, for the colour-bar quantities (see :func:`part_labels`).
    snr_db : float, optional
        SNR against the ground truth (e.g. :func:`truth_snr_db`), shown in the title.
    slices : (iz, iy, ix), optional
        Slice indices of ``volume`` (default the central ones; for a dict, the indices it was cut at).
    stage_names : dict, optional
        {stage value: name} for the legend of a history with a ``stage`` column (default
        :data:`STAGE_NAMES`, the 2-step method's).
    r_factor : float, optional
        The final volume's R-factor, quoted in the title; default: the last finite ``r_factor`` of the
        history's last stage (the 2-step history's R-factors are its 2D stage's, so it passes this).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cuts = _cuts(volume, slices)
    panels = []
    for ptitle, ylabel, cols in PANELS:
        lines = [(lab, st, it, v) for col, lab in cols for st, it, v in _history_lines(history, col)]
        if lines:
            panels.append((ptitle, ylabel, lines))

    fig = Figure(figsize=(15.0, max(7.0, 1.75 * len(panels) + 0.8)), dpi=100, layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[3.0, 1.3], wspace=0.02)

    nz, ny, nx = cuts[0][2], cuts[1][2], cuts[2][2]
    n_axis = {"z": nz, "y": ny, "x": nx}
    if voxel_size_m is not None and np.isfinite(voxel_size_m) and voxel_size_m > 0:
        unit, k = length_unit(max(n_axis.values()) * voxel_size_m)
        step = voxel_size_m * k
    else:
        unit, step = "voxels", 1.0

    def extent(h_axis, v_axis):  # pixel k covers [k, k+1); coordinates relative to the volume centre
        nh, nv = n_axis[h_axis], n_axis[v_axis]
        return (-nh / 2 * step, nh / 2 * step, nv / 2 * step, -nv / 2 * step)

    ratios = [float(np.clip(c[3].shape[1] / max(c[3].shape[0], 1), 0.5, 3.0)) for c in cuts]  # flat volumes too
    img_axes = left.subplots(2, 3, gridspec_kw={"width_ratios": ratios})
    for row, (fn, label) in enumerate(zip((np.real, np.imag), part_labels(model))):
        planes = [np.asarray(fn(c[3]), dtype=float) for c in cuts]
        lo, hi = _limits(planes)
        e = _power_of_ten(lo, hi)
        if e:  # show e.g. delta ~ 1e-6 as 0..5 "x 10^-6" in the label rather than an offset text
            planes = [p / 10.0 ** e for p in planes]
            lo, hi = lo / 10.0 ** e, hi / 10.0 ** e
            label = label.replace("(dimensionless)", f"(\u00d710{str(e).translate(_SUPERSCRIPT)}, dimensionless)")
        im = None
        for col, ((axis, idx, n, _, (h, v)), plane) in enumerate(zip(cuts, planes)):
            ax = img_axes[row, col]
            im = ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, extent=extent(h, v), interpolation="nearest")
            centre = (idx - (n - 1) / 2) * step
            ax.set_title(f"{axis} index {idx} (0\u2013{n - 1}), {axis} = {centre:.3g} {unit}", fontsize=9)
            ax.set_xlabel(f"{h} ({unit})", fontsize=9)
            ax.set_ylabel(f"{v} ({unit})", fontsize=9)
            ax.tick_params(labelsize=8)
        cb = left.colorbar(im, ax=list(img_axes[row]), shrink=0.9, pad=0.02)
        cb.set_label(label, fontsize=9)
        cb.ax.tick_params(labelsize=8)
    left.suptitle("central slices (z: rotation axis)", fontsize=10)

    names = {int(k): str(v) for k, v in (stage_names or STAGE_NAMES).items()}
    if panels:
        conv = right.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (ptitle, ylabel, lines) in zip(conv, panels):
            vals = np.concatenate([v for *_, v in lines])
            pos = vals[vals > 0]
            use_log = vals.size > 0 and pos.size == vals.size and pos.max() > 20 * pos.min()
            for lab, st, it, v in lines:
                sname = None if st is None else f"stage {st}: {names[st]}" if st in names else f"stage {st}"
                name = ", ".join(x for x in (lab, sname) if x)
                ax.plot(it, v, lw=1.4, marker="." if it.size <= 30 else None, ms=4, label=name or None)
            if use_log:
                ax.set_yscale("log")
            ax.set_title(ptitle, fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.35)
            if use_log:
                ax.grid(alpha=0.12, which="minor")
            if any(lab or st is not None for lab, st, *_ in lines):
                ax.legend(fontsize=7, frameon=False)
        conv[-1].set_xlabel("iteration", fontsize=9)
        conv[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        right.suptitle("convergence", fontsize=10)
    else:
        ax = right.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no convergence history", ha="center", va="center", fontsize=10)

    parts = [title] if title else []
    rf = r_factor if r_factor is not None and math.isfinite(r_factor) else _final_value(history, "r_factor")
    if rf is not None:
        parts.append(f"final R-factor {rf:.3g}")
    if snr_db is not None and not math.isnan(snr_db):
        parts.append(f"SNR {snr_db:.1f} dB vs ground truth")
    if parts:
        fig.suptitle("  |  ".join(parts), fontsize=12)
    return fig


def recon_figure(volume, history: dict, path, title: str = "", voxel_size_m: float | None = None,
                 model: str | None = None, snr_db: float | None = None, slices=None,
                 stage_names: dict | None = None, r_factor: float | None = None, dpi: int = 100) -> str:
    """Write :func:`make_figure`'s figure to ``path`` as PNG; returns ``str(path)``.

    ``path`` may be an open binary file or a path (the pipeline passes a temporary file it renames).
    The other parameters are those of :func:`make_figure`.
    """
    fig = make_figure(volume, history, title=title, voxel_size_m=voxel_size_m, model=model, snr_db=snr_db,
                      slices=slices, stage_names=stage_names, r_factor=r_factor)
    fig.savefig(path, dpi=dpi, format="png")
    return str(path)
