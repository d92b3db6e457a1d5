"""Scan patterns: float (row, col) TOP-LEFT corners of the m1 x m2 probe window in an (H, W) object field
(hpc_pt.conventions), and the overlap they give.

Seed 001 (section 3): "a single grid scan with non-periodical boundary at every rotation angle", steps of
32 and 4 pixels with a 64 x 64 probe (FWHM 14) on a 128-pixel field. Seed 002 (section 3.1): steps of 4 and
10 pixels with a 15-pixel disc probe, and the starting point shifted by 1 pixel per angle "to achieve a
spiral scanning pattern". A Fermat spiral (golden-angle) scan is offered as the usual alternative that
avoids raster-grid periodicity artefacts.
"""
from __future__ import annotations

import math

import numpy as np

from ..operators.scan import nearest_neighbour_distances  # noqa: F401  (re-exported)
from ..operators.scan import overlap_ratio as _shared_overlap

SCAN_KINDS = ("raster", "fermat")
#: median nearest-neighbour distance of the golden-angle Fermat spiral r_i = sqrt(i), theta_i = i * golden
#: angle (measured over 2,000 points; 1.67 - 1.69 for any count above 30)
FERMAT_NN = 1.688
GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
_EPS = 1e-9


def _axis_positions(length: int, m: int, step: float, offset: float) -> np.ndarray:
    """offset, offset + step, ... while <= length - m, then length - m if not reached (non-periodic)."""
    last = length - m
    if last < 0:
        raise ValueError(f"a {m}-pixel probe does not fit a {length}-pixel field")
    if not step > 0:
        raise ValueError(f"scan step must be positive, got {step}")
    if offset < 0:
        raise ValueError(f"scan offset must be non-negative, got {offset}")
    count = math.floor((last - offset) / step + _EPS) + 1 if offset <= last + _EPS else 0
    t = offset + step * np.arange(max(count, 0), dtype=np.float64)
    if t.size == 0 or t[-1] < last - _EPS:
        t = np.append(t, float(last))
    return t


def raster_scan(field_hw, probe_shape, step: float, offset=(0.0, 0.0)) -> np.ndarray:
    """Raster (grid) scan with non-periodic boundary, row-major: (F, 2) float64 top-left positions.

    Along each axis of length L with probe size m: t = offset, offset + step, ... while t <= L - m, and
    L - m appended when the last one falls short, so the windows reach the far edge of the field.
    E.g. field 128, probe 64: step 32 -> 0, 32, 64 (9 frames); step 4 -> 17 x 17 = 289 frames.
    The first ``offset`` pixels of each axis are not covered when ``offset`` > 0.

    Parameters
    ----------
    field_hw : tuple of int
        (H, W) of the object field.
    probe_shape : tuple of int
        (m1, m2) of the probe window.
    step : float or tuple of float
        Step in pixels, positive: one for both axes or (row step, column step).
    offset : float or tuple of float, optional
        Start in pixels, non-negative: one for both axes or (row, column). Default (0, 0).

    Returns
    -------
    numpy.ndarray
        float64 array (F, 2) of (row, col) top-left positions, rows varying slowest.

    Raises
    ------
    ValueError
        When the probe does not fit the field, or ``step`` is not positive or ``offset`` negative.
    """
    H, W = (int(s) for s in field_hw)
    m1, m2 = (int(s) for s in probe_shape)
    if np.isscalar(step):
        step = (float(step), float(step))
    if np.isscalar(offset):
        offset = (float(offset), float(offset))
    rows = _axis_positions(H, m1, float(step[0]), float(offset[0]))
    cols = _axis_positions(W, m2, float(step[1]), float(offset[1]))
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1)


def fermat_scan(field_hw, probe_shape, step: float, shift=(0.0, 0.0)) -> np.ndarray:
    """Golden-angle Fermat spiral of probe centres around the field centre (plus ``shift``).

    Only windows inside the field are kept: (F, 2) float64 top-left positions.

    Centres c_i = centre + a sqrt(i) (cos(i g), sin(i g)), g the golden angle, with a = step / FERMAT_NN so
    that the median nearest-neighbour distance is ``step`` (a ~ 0.95 step / sqrt(pi): each point covers
    an area ~ step^2).

    Parameters
    ----------
    field_hw, probe_shape : tuple of int
        As for :func:`raster_scan`.
    step : float
        Median nearest-neighbour distance in pixels, positive.
    shift : tuple of float, optional
        (row, col) offset of the spiral centre from the field centre (H/2, W/2). Default (0, 0).

    Returns
    -------
    numpy.ndarray
        float64 array (F, 2) of (row, col) top-left positions, in spiral order.

    Raises
    ------
    ValueError
        When the probe does not fit the field or ``step`` is not positive.
    """
    H, W = (int(s) for s in field_hw)
    m1, m2 = (int(s) for s in probe_shape)
    if H < m1 or W < m2:
        raise ValueError(f"a {m1}x{m2} probe does not fit a {H}x{W} field")
    if not step > 0:
        raise ValueError(f"scan step must be positive, got {step}")
    a = float(step) / FERMAT_NN
    cy, cx = H / 2.0 + float(shift[0]), W / 2.0 + float(shift[1])
    reach = math.hypot(max(cy, H - cy), max(cx, W - cx))
    count = math.ceil((reach / a) ** 2) + 1
    i = np.arange(count, dtype=np.float64)
    r, phi = a * np.sqrt(i), i * GOLDEN_ANGLE
    pos = np.stack([cy + r * np.sin(phi) - m1 / 2.0, cx + r * np.cos(phi) - m2 / 2.0], axis=1)
    # snap float noise so that windows touching an edge are kept
    pos[np.abs(pos) < _EPS] = 0.0
    keep = ((pos[:, 0] >= 0) & (pos[:, 0] <= H - m1) & (pos[:, 1] >= 0) & (pos[:, 1] <= W - m2))
    return pos[keep]


def scan_for_angle(kind: str, field_hw, probe_shape, step: float, angle_index: int,
                   per_angle_offset: float = 0.0) -> np.ndarray:
    """The scan of angle ``angle_index``, its start shifted by o = (angle_index x per_angle_offset) mod step.

    The shift applies along both axes (seed 002 shifts the start by 1 pixel per angle to get a spiral pattern
    over angles). Raster: the grid starts at (o, o). Fermat: the spiral centre moves by (o, o).

    Parameters
    ----------
    kind : {"raster", "fermat"}
        The scan pattern.
    field_hw : tuple of int
        (H, W) of the object field.
    probe_shape : tuple of int
        (m1, m2) of the probe window.
    step : float
        Scan step in pixels (:func:`raster_scan`, :func:`fermat_scan`).
    angle_index : int
        Index of the angle in acquisition order.
    per_angle_offset : float, optional
        Start shift per angle in pixels. Default 0.

    Returns
    -------
    numpy.ndarray
        float64 array (F, 2) of (row, col) top-left positions.

    Raises
    ------
    ValueError
        For an unknown ``kind``, or as :func:`raster_scan` / :func:`fermat_scan`.
    """
    o = math.fmod(angle_index * float(per_angle_offset), float(step)) if per_angle_offset else 0.0
    if kind == "raster":
        return raster_scan(field_hw, probe_shape, step, offset=(o, o))
    if kind == "fermat":
        return fermat_scan(field_hw, probe_shape, step, shift=(o, o))
    raise ValueError(f"unknown scan kind {kind!r}; use one of {SCAN_KINDS}")


def overlap_ratio(positions, beam_diameter_px: float) -> float:
    """Linear overlap 1 - d_nn / D of one scan (:func:`hpc_pt.operators.scan.overlap_ratio`).

    0.0 for fewer than two positions. Seed 002 labels its 4- and 10-pixel steps with a 15-pixel beam "30%
    and 70% of overlap"; under this (Bunk et al.) definition they are 73% and 33%, so the labels appear
    swapped.

    Parameters
    ----------
    positions : array_like
        (F, 2) positions of one angle (or a list of such arrays, pooled as the shared function does).
    beam_diameter_px : float
        The beam diameter D in pixels, positive (:func:`probe_diameter_px`).

    Returns
    -------
    float
        The overlap; negative values mean gaps between the beams.

    Raises
    ------
    ValueError
        When ``beam_diameter_px`` is not positive.
    """
    value = _shared_overlap(positions, beam_diameter_px)
    return 0.0 if math.isnan(value) else value
