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

__all__ = ["describe", "format_description", "memory_estimate"]


def memory_estimate(n_frames_total: int, frame_shape, field_shape) -> dict:
    """Bytes for the main arrays of a reconstruction (float32 data, complex64 z / multiplier / volume)."""
    h, w = frame_shape
    nz, n = field_shape
    data = int(n_frames_total) * h * w * 4
    admm = 2 * int(n_frames_total) * h * w * 8
    volume = int(nz) * n * n * 8
    return {"data": data, "admm_z_and_multiplier": admm, "volume": volume, "total": data + admm + volume}


def describe(path_or_index, **scan_kwargs) -> dict:
    """Summary of a CXI file / directory (metadata only; no frame is read). See :func:`format_description`.

    ``overlap_ratio`` = 1 - (median nearest-neighbour probe-centre distance) / (probe FWHM), where the FWHM
    is estimated from the illumination amplitude (:func:`hpc_pt.operators.scan.probe_diameter_px`); None when no angle has two frames.
    ``probe`` says where the probe comes from; a file without one has ``probe_fwhm_px`` NaN and no overlap.
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
    """Human-readable two-column table of :func:`describe`'s output."""
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
