"""Scan geometry shared by the simulator, the file summary and the solvers: beam diameter and overlap."""
from __future__ import annotations

import math

import numpy as np

from ..backend import to_numpy


def probe_diameter_px(probe) -> float:
    """Beam diameter of a probe array: the diameter of the disc whose area equals the area where
    |w| >= max|w| / 2 (the amplitude FWHM for a Gaussian, the diameter for a disc); NaN for a zero probe.

    Parameters
    ----------
    probe : array (m1, m2), NumPy or CuPy

    Returns
    -------
    float
        The diameter in pixels.
    """
    a = np.abs(to_numpy(probe))
    peak = float(a.max()) if a.size else 0.0
    if peak <= 0:
        return float("nan")
    return 2.0 * math.sqrt(float(np.count_nonzero(a >= peak / 2.0)) / math.pi)


def nearest_neighbour_distances(positions) -> np.ndarray:
    """Distance from each position to its nearest other position (pixels); empty for < 2 positions.

    Parameters
    ----------
    positions : array (F, 2)

    Returns
    -------
    numpy.ndarray (F,) or (0,)
    """
    from scipy.spatial import cKDTree

    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if pos.shape[0] < 2:
        return np.zeros(0)
    d, _ = cKDTree(pos).query(pos, k=2)
    return d[:, 1]


def overlap_ratio(positions_per_angle, beam_diameter_px: float, reduce: str = "median") -> float:
    """Linear overlap 1 - d_nn / D (Bunk et al., Ultramicroscopy 108, 481 (2008)): d_nn the median
    nearest-neighbour distance between probe positions of the same angle, D the beam diameter.

    ``positions_per_angle`` is one (F, 2) array or a list of them. ``reduce="median"`` pools every angle's
    distances; ``"min"`` returns the worst angle's overlap. Negative values mean gaps between beams (seed
    001's 32-px step with a 14-px FWHM gives 1 - 32/14 = -1.29); NaN when no angle has two positions.

    Parameters
    ----------
    positions_per_angle : array (F, 2) or list of such arrays
    beam_diameter_px : float
        D, positive (:func:`probe_diameter_px`).
    reduce : {"median", "min"}

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If ``beam_diameter_px`` is not positive.
    """
    if not beam_diameter_px > 0:
        raise ValueError(f"beam diameter must be positive, got {beam_diameter_px}")
    one_scan = isinstance(positions_per_angle, np.ndarray) and positions_per_angle.ndim == 2
    sets = [positions_per_angle] if one_scan else list(positions_per_angle)
    dists = [d for d in (nearest_neighbour_distances(p) for p in sets) if d.size]
    if not dists:
        return float("nan")
    if reduce == "min":
        return float(min(1.0 - np.median(d) / beam_diameter_px for d in dists))
    return float(1.0 - np.median(np.concatenate(dists)) / beam_diameter_px)
