"""Illumination (probe) functions w, complex64 (m1, m2), centred at the continuous point (m1/2, m2/2),
i.e. index coordinate ((m1 - 1)/2, (m2 - 1)/2) (hpc_pt.conventions: a window's centre is t + m/2).

Seed 001 (section 3, Fig. 1(b)): 64 x 64 probe with an amplitude FWHM of 14 pixels. The text gives no
profile. A Gaussian of that FWHM falls below 1e-3 of its peak amplitude 22 px from its centre and to
5e-7 at the window's edge (32 px), so most of the 64 px window is dark; a focused X-ray beam is the far
field of a finite (circular) aperture, an Airy pattern whose r^(-3/2) amplitude tails reach across the
whole window (:func:`airy_probe`, 5% of the peak amplitude at the window's edge for FWHM 14). Both are
available; see docs/solvers.md, "Seed 001's probe and sample".
Seed 002 (section 3.1): circular probe of 15 pixels (150 nm) diameter, constant phase, 63 x 63 detector.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..operators.scan import probe_diameter_px as _shared_diameter

#: dataset paths searched in HDF5 / CXI probe files, in order
PROBE_DATASETS = ("probe", "entry_1/instrument_1/source_1/illumination", "entry_1/probe")
#: sub-samples per pixel and axis for the soft edge of :func:`disc_probe`
DISC_SUPERSAMPLE = 8


def _centred_coords(m: int) -> np.ndarray:
    """Index offsets from the probe centre (m - 1)/2."""
    return np.arange(m, dtype=np.float64) - (m - 1) / 2.0


def _checked_coords(m, fwhm_px) -> np.ndarray:
    """:func:`_centred_coords` of ``int(m)`` after the checks of :func:`gaussian_probe` and :func:`airy_probe`."""
    if int(m) < 1:
        raise ValueError(f"probe size must be positive, got {m}")
    if not fwhm_px > 0:
        raise ValueError(f"probe FWHM must be positive, got {fwhm_px} px")
    return _centred_coords(int(m))


def gaussian_probe(m: int, fwhm_px: float) -> np.ndarray:
    """Gaussian probe: amplitude exp(-4 ln2 r^2 / fwhm^2) (amplitude FWHM ``fwhm_px``, peak 1), flat phase.

    Seed 001 uses m = 64, fwhm = 14. Shape (m, m), complex64.

    Parameters
    ----------
    m : int
        Window edge in pixels, positive.
    fwhm_px : float
        Amplitude FWHM in pixels, positive.

    Returns
    -------
    numpy.ndarray
        complex64 array of shape (m, m), centred at index ((m - 1)/2, (m - 1)/2).

    Raises
    ------
    ValueError
        When ``m`` or ``fwhm_px`` is not positive.
    """
    c = _checked_coords(m, fwhm_px)
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    return np.exp(-4.0 * math.log(2.0) * r2 / float(fwhm_px) ** 2).astype(np.complex64)


#: x at which the Airy amplitude 2 J1(x) / x falls to one half (solved numerically, 10 digits)
AIRY_HALF_AMPLITUDE_X = 2.2150893677


def airy_probe(m: int, fwhm_px: float) -> np.ndarray:
    """Airy probe: amplitude 2 J1(k r) / (k r) (peak 1, amplitude FWHM ``fwhm_px``), flat phase.

    The focus of a lens or zone plate with a circular pupil (far field of a uniformly lit disc). The amplitude
    falls to one half at k r = 2.2151, so k = 2 x 2.2151 / fwhm; its first zero is at k r = 3.8317
    (1.73 fwhm / 2) and its rings decay as (k r)^(-3/2), so the beam lights the whole m x m window weakly
    (seed 001: m = 64, fwhm = 14 gives 5% of the peak amplitude, 0.25% intensity, at 32 px). Shape (m, m),
    complex64; the sign changes between rings are kept (the real amplitude of the Airy function).

    Parameters
    ----------
    m : int
        As for :func:`gaussian_probe`.
    fwhm_px : float
        As for :func:`gaussian_probe`.

    Returns
    -------
    numpy.ndarray
        complex64 array of shape (m, m), real-valued, centred at index ((m - 1)/2, (m - 1)/2).

    Raises
    ------
    ValueError
        As for :func:`gaussian_probe`.
    """
    from scipy.special import j1

    c = _checked_coords(m, fwhm_px)
    x = (2.0 * AIRY_HALF_AMPLITUDE_X / float(fwhm_px)) * np.hypot(c[:, None], c[None, :])
    safe = np.where(x > 0, x, 1.0)
    return np.where(x > 0, 2.0 * j1(safe) / safe, 1.0).astype(np.complex64)


def disc_probe(m: int, diameter_px: float) -> np.ndarray:
    """Circular probe of constant amplitude 1 and constant phase inside ``diameter_px``.

    Seed 002: 15 px in a 63 x 63 frame; each edge pixel holds the fraction of its area inside the disc
    (8 x 8 sub-samples).

    Parameters
    ----------
    m : int
        Window edge in pixels, positive.
    diameter_px : float
        Disc diameter in pixels, positive.

    Returns
    -------
    numpy.ndarray
        complex64 array of shape (m, m), values in [0, 1], centred at index ((m - 1)/2, (m - 1)/2).

    Raises
    ------
    ValueError
        When ``m`` or ``diameter_px`` is not positive.
    """
    m = int(m)
    if m < 1:
        raise ValueError(f"probe size must be positive, got {m}")
    if not diameter_px > 0:
        raise ValueError(f"probe diameter must be positive, got {diameter_px} px")
    s = DISC_SUPERSAMPLE
    sub = (np.arange(m * s) + 0.5) / s - 0.5 - (m - 1) / 2.0  # sub-sample offsets from the centre
    inside = (sub[:, None] ** 2 + sub[None, :] ** 2) <= (diameter_px / 2.0) ** 2
    frac = inside.reshape(m, s, m, s).mean(axis=(1, 3))
    return frac.astype(np.complex64)


def probe_diameter_px(probe) -> float:
    """Beam diameter of a probe (see :func:`hpc_pt.operators.scan.probe_diameter_px`); ValueError if zero.

    Parameters
    ----------
    probe : array_like
        The probe, (m1, m2), NumPy or CuPy.

    Returns
    -------
    float
        The diameter in pixels of the disc whose area is that where ``|w| >= max|w| / 2``.

    Raises
    ------
    ValueError
        When the probe is zero everywhere.
    """
    d = _shared_diameter(probe)
    if not math.isfinite(d):
        raise ValueError("the probe is zero everywhere; cannot estimate its diameter")
    return d


def _check_probe(arr, where: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"probe in {where} has shape {arr.shape}; a single 2D (m1, m2) probe is needed, "
                         "so save one probe mode as a 2D array")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"probe in {where} has non-numeric dtype {arr.dtype}; save a complex 2D array")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"probe in {where} contains NaN or infinite values; fix the probe array")
    if not np.any(arr != 0):
        raise InputError(f"probe in {where} is zero everywhere; save the actual illumination")
    return arr.astype(np.complex64)


def load_probe(path) -> np.ndarray:
    """Read a probe: a ``.npy`` array, or an HDF5/CXI file with dataset ``probe`` or
    ``/entry_1/instrument_1/source_1/illumination`` (CXI). Returns complex64 (m1, m2).

    Raises :class:`hpc_pt.errors.InputError` naming the problem and the fix when the file is missing,
    unreadable or holds no usable 2D probe. HDF5 datasets are searched in the order of
    :data:`PROBE_DATASETS` (``entry_1/probe`` last); a (1, m1, m2) array counts as one 2D probe.

    Parameters
    ----------
    path : str or path-like
        The ``.npy`` file, or any other suffix for an HDF5 / CXI file.

    Returns
    -------
    numpy.ndarray
        complex64 array of shape (m1, m2).

    Raises
    ------
    InputError
        When the file is missing or unreadable, holds no probe dataset, or its probe is not 2D, not numeric,
        not finite or zero everywhere.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"probe file {p} does not exist; give the path of a .npy or HDF5/CXI probe file")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"cannot read probe file {p} as .npy ({exc}); save it with numpy.save") from exc
        return _check_probe(arr, str(p))
    import h5py

    try:
        f = h5py.File(p, "r")
    except Exception as exc:
        raise InputError(f"cannot open probe file {p} ({exc}); give a .npy file or an HDF5/CXI file") from exc
    with f:
        for name in PROBE_DATASETS:
            if name in f and isinstance(f[name], h5py.Dataset):
                return _check_probe(f[name][()], f"{p}:/{name}")
    raise InputError(f"no probe dataset in {p}; store the probe at /probe or at "
                     "/entry_1/instrument_1/source_1/illumination")
