"""``hpc-pt info``: what a CXI input holds and how much memory reconstructing it needs (frames not read)."""
from __future__ import annotations

import numpy as np

from .. import conventions as cv
from ..operators.scan import (
    nearest_neighbour_distances,
    overlap_ratio,
    probe_diameter_px,
)
from .cxi import CxiIndex, scan_cxi

__all__ = ["describe", "format_description", "memory_estimate", "rank_memory_estimate", "format_bytes"]

#: complex64 arrays of one frame's size each method keeps for every frame it holds (APT/APTs: the far
#: fields z, their multiplier and the current far field; the 2-step's 2D stage (DM): the exit-wave far
#: fields and their previous iterate; GD and ADMM stream far fields through frame batches)
PER_FRAME_COMPLEX = {"apt": 3, "apts": 3, "two-step": 2, "admm": 0, "gd": 0}
#: complex64 arrays of one angle's object field (H x W) per angle held: projections, exit waves,
#: multipliers, gradients
PER_ANGLE_FIELDS = 4
#: complex64 copies of the volume slab a solver holds (u, the previous u, CG or gradient vectors, prior)
VOLUME_COPIES = 6
#: complex64 arrays of one far-field batch alive at once (far field, its update, the magnitude)
BATCH_COPIES = 3
#: the far-field batch when --frame-batch is not given (hpc_pt.operators.ptycho.FRAME_BATCH_BYTES)
DEFAULT_BATCH_BYTES = 16 << 20


def memory_estimate(n_frames_total: int, frame_shape, field_shape) -> dict:
    """Bytes for the main arrays of a reconstruction (float32 data, complex64 z / multiplier / volume).

    Parameters
    ----------
    n_frames_total : int
        Frames over all angles.
    frame_shape : tuple of int
        (h, w) of a detector frame.
    field_shape : tuple of int
        (nz, n): the volume is (nz, n, n) (the object field's (H, W) as :func:`describe` passes it).

    Returns
    -------
    dict
        ``data`` (float32 frames), ``admm_z_and_multiplier`` (two complex64 arrays per frame), ``volume``
        (complex64) and ``total``, in bytes.
    """
    h, w = frame_shape
    nz, n = field_shape
    data = int(n_frames_total) * h * w * 4
    admm = 2 * int(n_frames_total) * h * w * 8
    volume = int(nz) * n * n * 8
    return {"data": data, "admm_z_and_multiplier": admm, "volume": volume, "total": data + admm + volume}


def rank_memory_estimate(n_frames: int, frame_shape, n_angles: int, field_shape, volume_shape,
                         method: str | None = None, frame_batch: int | None = None) -> dict:
    """Bytes one rank needs for the main arrays of a reconstruction, from the same terms as
    :func:`memory_estimate` (``info``), for the rank's share: ``n_frames`` frames over ``n_angles`` angles
    and a volume slab of ``volume_shape`` (rows, n, n).

    Parameters
    ----------
    n_frames, n_angles : int
        Frames and angles this rank holds.
    frame_shape, field_shape : (int, int)
        Detector frame (h, w) and object field (H, W).
    volume_shape : (int, int, int)
        This rank's volume slab.
    method : str, optional
        Reconstruction method (its per-frame state, :data:`PER_FRAME_COMPLEX`); None: ADMM's.
    frame_batch : int, optional
        Frames per far-field batch (``--frame-batch``; default 16 MiB of complex64 far field).

    Returns
    -------
    dict
        ``data`` (float32 frames), ``amplitudes`` (their square root), ``per_frame_state``,
        ``far_field_batch``, ``fields`` (per-angle object fields), ``volume`` (the slab's working copies)
        and ``total``, all in bytes.
    """
    h, w = (int(v) for v in frame_shape)
    H, W = (int(v) for v in field_shape)
    F, px = int(n_frames), h * w
    batch = int(frame_batch) if frame_batch else max(1, DEFAULT_BATCH_BYTES // (px * 8))
    terms = {
        "data": F * px * 4,
        "amplitudes": F * px * 4,
        "per_frame_state": PER_FRAME_COMPLEX.get(method or "admm", 2) * F * px * 8,
        "far_field_batch": BATCH_COPIES * min(batch, max(F, 1)) * px * 8,
        "fields": PER_ANGLE_FIELDS * int(n_angles) * H * W * 8,
        "volume": VOLUME_COPIES * int(np.prod(volume_shape)) * 8,
    }
    terms["total"] = sum(terms.values())
    return terms


def format_bytes(n: float) -> str:
    """``1.5 GiB``: a byte count in binary units.

    Parameters
    ----------
    n : float
        Bytes.

    Returns
    -------
    str
        ``"<n> B"`` below 1 KiB, else one decimal in KiB, MiB, GiB or TiB.
    """
    return _bytes(n)


def describe(path_or_index, **scan_kwargs) -> dict:
    """Summary of a CXI file / directory (metadata only; no frame is read). See :func:`format_description`.

    ``overlap_ratio`` = 1 - (median nearest-neighbour probe-centre distance) / (probe FWHM), where the FWHM
    is estimated from the illumination amplitude (:func:`hpc_pt.operators.scan.probe_diameter_px`); None when
    no angle has two frames. ``probe`` says where the probe comes from; a file without one has
    ``probe_fwhm_px`` NaN and no overlap.

    Parameters
    ----------
    path_or_index : CxiIndex or str or path-like
        An index, or a path to scan.
    **scan_kwargs
        Options of :func:`hpc_pt.io.cxi.scan_cxi` (used only when a path is given).

    Returns
    -------
    dict
        ``path``, ``n_angles``, ``angles_deg``, ``frames_per_angle``, ``frames_total``, ``detector_shape``,
        ``frame_dtype``, ``energy_ev``, ``wavelength_m``, ``detector_distance_m``, ``detector_pixel_m``,
        ``sample_pixel_m``, ``field_shape``, ``rotation_centre`` and ``rotation_centre_source`` ("default"
        or "file"), ``has_mask``, ``probe``, ``probe_fwhm_px``, ``median_step_px``, ``overlap_ratio`` and
        ``memory`` (:func:`memory_estimate`).

    Raises
    ------
    InputError
        When a path is given and :func:`~hpc_pt.io.cxi.scan_cxi` refuses it.
    """
    idx = path_or_index if isinstance(path_or_index, CxiIndex) else scan_cxi(path_or_index, **scan_kwargs)
    nf = [int(v) for v in idx.n_frames]
    # a file without a probe: no FWHM (nor overlap) until read_cxi / reconstruct estimate one from the frames
    fwhm = probe_diameter_px(idx.probe) if idx.probe is not None else float("nan")
    if idx.probe is None:
        probe_note = "none in file; will be estimated from the data"
    else:
        probe_note = "estimated from the data" if idx.attrs.get("probe_source") == "estimated" else "in file"
    positions = [e.positions for e in idx.entries]
    dists = [nearest_neighbour_distances(p) for p in positions]
    nn = float(np.median(np.concatenate(dists))) if any(d.size for d in dists) else float("nan")
    overlap = None
    if np.isfinite(fwhm) and fwhm > 0 and np.isfinite(nn):
        overlap = overlap_ratio(positions, fwhm)
    return {
        "path": idx.path,
        "n_angles": idx.n_angles,
        "angles_deg": [float(a) for a in idx.angles_deg],
        "frames_per_angle": nf,
        "frames_total": int(sum(nf)),
        "detector_shape": list(idx.frame_shape),
        "frame_dtype": idx.frame_dtype,
        "energy_ev": idx.energy_ev,
        "wavelength_m": cv.wavelength_m(idx.energy_ev),
        "detector_distance_m": idx.detector_distance_m,
        "detector_pixel_m": list(idx.detector_pixel_m),
        "sample_pixel_m": idx.pixel_m,
        "field_shape": list(idx.field_shape),
        "rotation_centre": (idx.field_shape[1] - 1) / 2.0 if idx.rotation_centre is None else idx.rotation_centre,
        "rotation_centre_source": "default" if idx.rotation_centre is None else "file",
        "has_mask": idx.mask is not None,
        "probe": probe_note,
        "probe_fwhm_px": fwhm,
        "median_step_px": nn,
        "overlap_ratio": overlap,
        "memory": memory_estimate(sum(nf), idx.frame_shape, idx.field_shape),
    }


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _angles_text(a) -> str:
    if not a:
        return "-"
    if len(a) <= 6:
        return ", ".join(f"{v:g}" for v in a)
    return f"{a[0]:g}, {a[1]:g}, ... {a[-1]:g} (step {np.median(np.diff(a)):g})"


def format_description(d: dict) -> str:
    """Human-readable two-column table of :func:`describe`'s output.

    Parameters
    ----------
    d : dict
        :func:`describe`'s output (an optional ``rotation_centre_estimate`` is shown too).

    Returns
    -------
    str
        One line per row, labels left-aligned.
    """
    nf = d["frames_per_angle"]
    rows = [
        ("input", d["path"]),
        ("angles", f"{d['n_angles']}  [{_angles_text(d['angles_deg'])}] deg"),
        ("frames", f"{d['frames_total']} total, per angle min {min(nf)} / max {max(nf)}" if nf else "0"),
        ("detector", f"{d['detector_shape'][0]} x {d['detector_shape'][1]} ({d['frame_dtype']})"
                     f"{', masked' if d['has_mask'] else ''}"),
        ("energy", f"{d['energy_ev']:.6g} eV (wavelength {d['wavelength_m'] * 1e9:.4g} nm)"),
        ("detector distance", f"{d['detector_distance_m']:.6g} m"),
        ("detector pixel", f"{d['detector_pixel_m'][0] * 1e6:.4g} x {d['detector_pixel_m'][1] * 1e6:.4g} um"),
        ("sample pixel", f"{d['sample_pixel_m'] * 1e9:.4g} nm"),
        ("object field", f"{d['field_shape'][0]} x {d['field_shape'][1]} px"),
        ("rotation centre", f"column {d['rotation_centre']:.2f} ("
                            + ("from the file" if d.get("rotation_centre_source") == "file" else "(W - 1) / 2")
                            + ")" + ("" if "rotation_centre_estimate" not in d else
                                     f"; estimated from the frames: {d['rotation_centre_estimate']:.2f}")),
        ("probe", d.get("probe", "in file")),
        ("probe FWHM", f"{d['probe_fwhm_px']:.3g} px" if np.isfinite(d["probe_fwhm_px"]) else "n/a"),
        ("median step", f"{d['median_step_px']:.3g} px"),
        ("overlap", "n/a" if d["overlap_ratio"] is None else f"{d['overlap_ratio']:.2f}"),
    ]
    m = d["memory"]
    rows += [
        ("memory: data", _bytes(m["data"])),
        ("memory: ADMM z + multiplier", _bytes(m["admm_z_and_multiplier"])),
        ("memory: volume", _bytes(m["volume"])),
        ("memory: total", _bytes(m["total"])),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
