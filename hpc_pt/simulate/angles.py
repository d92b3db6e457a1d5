"""Rotation-angle sets (radians).

Seed 001 rotates over [0, pi), seed 002 over [0, 2 pi) "with equal distances"; the golden-angle
sequence (Kohler 2004) spreads any prefix of the acquisition nearly uniformly over the range.
"""
from __future__ import annotations

import math

import numpy as np

ANGLE_KINDS = ("uniform", "golden")
ANGLE_RANGES = (180, 360)
#: 1 / golden ratio: the golden-angle increment as a fraction of the angular range.
GOLDEN_FRACTION = (math.sqrt(5.0) - 1.0) / 2.0


def make_angles(count: int, kind: str = "uniform", range_deg: int = 180) -> np.ndarray:
    """``count`` rotation angles in radians over [0, range) (endpoint excluded).

    ``uniform``: theta_i = i * range / count. ``golden``: theta_i = (i * range * (sqrt(5) - 1) / 2) mod
    range (111.25 deg steps for a 180 deg range, 222.49 deg for 360), all distinct.

    Parameters
    ----------
    count : int
        Number of angles, at least 1.
    kind : {"uniform", "golden"}, optional
        Angle spacing. Default "uniform".
    range_deg : {180, 360}, optional
        The angular range in degrees. Default 180.

    Returns
    -------
    numpy.ndarray
        float64 array of shape (count,), in acquisition order.

    Raises
    ------
    ValueError
        When ``count`` < 1, or ``kind`` or ``range_deg`` is not one of the accepted values.
    """
    count = int(count)
    if count < 1:
        raise ValueError(f"need at least one angle, got {count}")
    if kind not in ANGLE_KINDS:
        raise ValueError(f"unknown angle kind {kind!r}; use one of {ANGLE_KINDS}")
    if range_deg not in ANGLE_RANGES:
        raise ValueError(f"angle range must be one of {ANGLE_RANGES} degrees, got {range_deg}")
    span = math.radians(range_deg)
    i = np.arange(count, dtype=np.float64)
    if kind == "uniform":
        return i * (span / count)
    return np.mod(i * GOLDEN_FRACTION, 1.0) * span
