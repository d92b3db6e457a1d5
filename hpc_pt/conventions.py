"""Every convention of hpc-pt, fixed once (docs/architecture.md §1, docs/conventions.md); tests/foundations/test_conventions.py checks each.

* FFT: orthonormal (``norm="ortho"``), DC at index 0, no fftshift in the model (detector frames stored
  with DC at index 0 in memory; CXI files hold them fftshifted, DC at the centre, like detectors do).
* Volume axes: (z, y, x); axis 0 is the vertical rotation axis. Each horizontal slice u[z] is an
  independent 2D Radon problem.
* Angles: radians inside hpc-pt, degrees in files. A projection at angle theta integrates along the
  lines x cos(theta) + y sin(theta) = s (so theta = 0 integrates along y, i.e. over rows of a slice).
* Rotation centre: pixel-centre coordinate (W - 1) / 2 of a W-wide object field unless given.
* Pixel coordinates: pixel k covers the continuous interval [k, k+1); its centre is k + 0.5 continuous,
  or index coordinate k. A probe window with top-left index t covers [t, t + m); its centre is t + m/2.
* Scan positions inside solvers: (row, col) of each window's top-left corner in its angle's object field
  (float, sub-pixel allowed). In files: translations in metres of the probe centre relative to the rotation
  axis (x: horizontal, across the beam; y: vertical, along the rotation axis; z: along the beam), so
  x = (t_col + m/2 - W/2) * pixel_size and y = (t_row + m/2 - H/2) * pixel_size.
  Facilities that record the sample stage instead of the probe position flip the sign (``flip=True``).
* Units: metres and electron-volts (joules for CXI energy) in files; pixels inside solvers.
* Forward models: ``linear`` (Rytov, seed 001): psi = P u; ``exp`` (projection approximation, seeds
  000/002): psi = exp(i k dz P u), k = 2 pi / wavelength, dz = voxel size, u = delta + i beta.
"""
from __future__ import annotations

import math

import numpy as np

H_PLANCK = 6.62607015e-34  # J s
C_LIGHT = 299792458.0  # m / s
E_CHARGE = 1.602176634e-19  # J / eV


def wavelength_m(energy_ev: float) -> float:
    """Photon wavelength in metres for an energy in eV (lambda = h c / E)."""
    return H_PLANCK * C_LIGHT / (energy_ev * E_CHARGE)


def ev_to_joule(energy_ev: float) -> float:
    return energy_ev * E_CHARGE


def joule_to_ev(energy_j: float) -> float:
    return energy_j / E_CHARGE


def sample_pixel_size_m(energy_ev: float, distance_m: float, det_pixel_m: float, n_det: int) -> float:
    """Far-field sample-plane pixel size: lambda z / (n_det * detector pixel)."""
    return wavelength_m(energy_ev) * distance_m / (n_det * det_pixel_m)


def detector_distance_for(energy_ev: float, pixel_m: float, det_pixel_m: float, n_det: int) -> float:
    """Detector distance that makes the sample-plane pixel equal ``pixel_m`` (inverse of the above)."""
    return pixel_m * n_det * det_pixel_m / wavelength_m(energy_ev)


def k_dz(energy_ev: float, voxel_m: float) -> float:
    """The exp model's phase factor per voxel, 2 pi dz / lambda (dimensionless)."""
    return 2 * math.pi * voxel_m / wavelength_m(energy_ev)


def positions_to_translations(positions, probe_shape, field_shape, pixel_m: float, flip: bool = False):
    """Top-left (row, col) pixel positions -> (frames, 3) translations (x, y, z) in metres."""
    pos = np.asarray(positions, dtype=np.float64)
    m1, m2 = probe_shape
    H, W = field_shape[-2:]
    t = np.zeros((pos.shape[0], 3))
    t[:, 0] = (pos[:, 1] + m2 / 2 - W / 2) * pixel_m
    t[:, 1] = (pos[:, 0] + m1 / 2 - H / 2) * pixel_m
    return -t if flip else t


def field_parity(offsets_px, m: int, tol: float = 1e-3) -> int | None:
    """Parity (0 even, 1 odd) of the field size that puts windows with centre offsets ``offsets_px`` (probe
    centre relative to the field centre, pixels) at integer top-left positions, or None when the offsets
    are not on one integer grid (sub-pixel scans: any size works).

    From ``t = offset - m/2 + size/2``: ``t`` is an integer for every frame exactly when ``offset - m/2``
    has one fractional part, 0 (even size) or 1/2 (odd size)."""
    v = np.asarray(offsets_px, dtype=np.float64).ravel() - m / 2.0
    if v.size == 0:
        return 0
    for parity in (0, 1):
        r = v + parity / 2.0
        if np.all(np.abs(r - np.round(r)) < tol):
            return parity
    return None


def field_for_translations(translations, probe_shape, pixel_m: float):
    """Smallest (H, W) field, centred on the rotation axis, that holds every probe window.

    Each size has the parity that keeps integer scans at integer window positions (:func:`field_parity`:
    an odd-sized field for a scan written on one, e.g. 61 pixels), and is even for sub-pixel scans."""
    tr = np.asarray(translations, dtype=np.float64)
    out = []
    for col, m in ((1, probe_shape[0]), (0, probe_shape[1])):
        off = tr[:, col] / pixel_m if tr.size else np.zeros(0)
        half = float(np.max(np.abs(off))) + m / 2 if off.size else m / 2
        parity = field_parity(off, m) or 0
        size = int(math.ceil(2 * half - 1e-6))
        if size % 2 != parity:
            size += 1
        out.append(size)
    return out[0], out[1]


def translations_to_positions(translations, probe_shape, field_shape, pixel_m: float, flip: bool = False):
    """(frames, 3) translations in metres -> top-left (row, col) pixel positions in the field."""
    tr = np.asarray(translations, dtype=np.float64)
    if flip:
        tr = -tr
    m1, m2 = probe_shape
    H, W = field_shape[-2:]
    pos = np.empty((tr.shape[0], 2))
    pos[:, 1] = tr[:, 0] / pixel_m - m2 / 2 + W / 2
    pos[:, 0] = tr[:, 1] / pixel_m - m1 / 2 + H / 2
    # snap values within float noise of an integer, so integral scans stay integral after a round trip
    r = np.round(pos)
    close = np.abs(pos - r) < 1e-6
    pos[close] = r[close]
    return pos


#: photon energies hpc-pt accepts in files: visible light (ptychography with a HeNe laser, 1.96 eV) to
#: hard X-rays; a value outside is a unit mistake (CXI stores joules)
PLAUSIBLE_ENERGY_EV = (1.0, 1e6)
#: sample-detector distances (metres): a micrometre (synthetic geometries with sub-nm voxels) to a long beamline
PLAUSIBLE_DISTANCE_M = (1e-6, 200.0)
#: detector pixel sizes (metres), sub-micrometre CCD pixels to centimetre-sized ones
PLAUSIBLE_DETECTOR_PIXEL_M = (1e-7, 1e-2)


def _unit_guess(value: float, factors: tuple[tuple[str, float], ...], lo: float, hi: float) -> str | None:
    """The unit (name) whose conversion factor brings ``value`` into [lo, hi], or None."""
    for name, factor in factors:
        if lo <= value * factor <= hi:
            return name
    return None


def implausible_geometry(energy_j: float, distance_m: float, det_pixel_m) -> str | None:
    """A one-line description of an implausible file geometry and the likely unit mistake, or None.

    Parameters
    ----------
    energy_j : float
        Photon energy as stored in the file (CXI: joules).
    distance_m : float
        Sample-detector distance as stored (metres).
    det_pixel_m : (float, float)
        Detector pixel sizes (x, y) as stored (metres).

    Returns
    -------
    str or None
        ``"<what is wrong>; <how to fix it>"`` for the first value outside :data:`PLAUSIBLE_ENERGY_EV`,
        :data:`PLAUSIBLE_DISTANCE_M` or :data:`PLAUSIBLE_DETECTOR_PIXEL_M`, naming the unit the value
        looks stored in (an energy in eV or keV, a length in mm or um); None when all are plausible.
    """
    ev = joule_to_ev(energy_j)
    lo, hi = PLAUSIBLE_ENERGY_EV
    if not lo <= ev <= hi:
        unit = _unit_guess(energy_j, (("eV", 1.0), ("keV", 1e3)), 10.0, hi) if ev > hi else None
        what = (f"energy {energy_j:.6g} J ({ev:.3g} eV) is not a photon energy ({lo:g} eV to {hi:g} eV)")
        if unit is not None:
            scale = 1.0 if unit == "eV" else 1e3
            return (f"{what}: it looks stored in {unit}; store joules ({energy_j:g} {unit} = "
                    f"{ev_to_joule(energy_j * scale):.6g} J, eV x {E_CHARGE})")
        return f"{what}; store the photon energy in joules (eV x {E_CHARGE})"
    for what, v, (lo, hi) in (("detector distance", distance_m, PLAUSIBLE_DISTANCE_M),
                              ("x_pixel_size", det_pixel_m[0], PLAUSIBLE_DETECTOR_PIXEL_M),
                              ("y_pixel_size", det_pixel_m[1], PLAUSIBLE_DETECTOR_PIXEL_M)):
        if lo <= v <= hi:
            continue
        unit = _unit_guess(v, (("mm", 1e-3), ("um", 1e-6)), lo, hi) if v > hi else None
        text = f"{what} {v:.6g} m is outside {lo:g} m to {hi:g} m"
        if unit is not None:
            scale = 1e-3 if unit == "mm" else 1e-6
            return f"{text}: it looks stored in {unit}; store metres ({v:g} {unit} = {v * scale:.6g} m)"
        return f"{text}; store it in metres"
    return None


def radian_angles_warning(angles_deg) -> str | None:
    """``warning: ...`` when three or more rotation angles (degrees, as files store them) all lie within
    +-2 pi without all being equal: they look like radians. None otherwise."""
    a = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if a.size < 3 or np.ptp(a) == 0 or np.max(np.abs(a)) > 2 * np.pi + 1e-9:
        return None
    return (f"warning: all {a.size} rotation angles lie within +-2 pi ({a.min():.4g} to {a.max():.4g} deg): they "
            "look like radians, but files store degrees; convert them with numpy.degrees if so")
