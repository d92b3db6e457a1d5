"""An initial probe estimated from the measured frames, for files that hold none.

Model: a flat-phase Gaussian beam centred in the window, whose far field matches the central lobe of the
mean diffraction pattern, and whose power matches the mean frame's total intensity.

* Width. A probe of amplitude ``exp(-r^2 / (2 sigma^2))`` (``r`` in sample pixels) has the far-field
  intensity ``exp(-4 pi^2 sigma^2 |f|^2)`` with ``f`` in cycles per pixel (detector pixel ``q`` along an
  ``m``-pixel axis is ``f = q / m``). The central lobe of the mean pattern (the connected pixels around
  DC above ``LOBE_FRACTION`` of its peak) gives the intensity-weighted second moment of ``|f|``; for a
  Gaussian lobe ``exp(-|f|^2 / (2 s^2))`` cut at that level it is ``2 s^2 g`` (``g`` corrects for the
  cut), so ``sigma = 1 / (2 sqrt(2) pi s)`` and the amplitude FWHM is ``2 sqrt(2 ln 2) sigma``.
  Scattering by the sample widens the pattern only outside that lobe for the weak objects ptycho-
  tomography images. A focused aperture (Airy beam: a flat disc of radius R in the far field) gets the
  Gaussian of the same second moment, FWHM 0.49 / R instead of the Airy beam's 0.70 / R (R in cycles per
  pixel); probe refinement corrects the rest.
* Power. With the orthonormal FFT (hpc_pt.conventions) ``sum |F(w o)|^2 = sum |w o|^2``, so for a
  transmission |o| ~ 1 the probe power ``sum |w|^2`` is the mean frame's total intensity; masked detector
  pixels are filled from the fitted lobe. (For the linear model the sample amplitude sets the scale: probe
  and volume then trade a constant factor, which the solvers' energy-matched start absorbs.)

The estimate is a starting point: its phase is flat and its shape Gaussian, so reconstruct with probe
refinement (APT, APTs, two-step: ``--probe-refine``, switched on automatically for such files).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["LOBE_FRACTION", "ProbeFit", "fit_far_field", "estimate_probe", "gaussian_window"]

#: the fitted central lobe holds the pixels (connected to DC) above this fraction of its peak
LOBE_FRACTION = 0.05
#: FWHM = this factor times sigma for a Gaussian
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class ProbeFit:
    """Result of :func:`fit_far_field`.

    Parameters
    ----------
    fwhm_px, power, lobe_pixels
        The attributes below, in this order.

    Attributes
    ----------
    fwhm_px : float
        Amplitude FWHM of the Gaussian probe in sample-plane pixels.
    power : float
        Probe power ``sum |w|^2`` (the mean frame's total intensity, masked pixels filled from the fit).
    lobe_pixels : int
        Detector pixels used in the fit.
    """

    fwhm_px: float
    power: float
    lobe_pixels: int


def _frequency_sq(shape) -> np.ndarray:
    m1, m2 = shape
    fy = np.fft.fftfreq(m1)[:, None]
    fx = np.fft.fftfreq(m2)[None, :]
    return fy ** 2 + fx ** 2


def fit_far_field(mean_pattern, mask=None, lobe_fraction: float = LOBE_FRACTION) -> ProbeFit:
    """Fit a Gaussian beam to the central lobe of a mean diffraction pattern.

    Parameters
    ----------
    mean_pattern : array_like, (m1, m2)
        Mean of the measured frames, DC at index ``[0, 0]`` (hpc-pt's in-memory layout).
    mask : array_like of bool, (m1, m2), optional
        True for valid detector pixels (same layout); invalid pixels are left out of the fit and their
        intensity is taken from the fitted lobe for the power.
    lobe_fraction : float
        Pixels connected to DC above this fraction of the lobe's peak are fitted.

    Returns
    -------
    ProbeFit
        The fitted FWHM, the power and the number of pixels fitted.

    Raises
    ------
    ValueError
        When the pattern is not 2D, the mask's shape differs, the pattern is not finite, holds no positive
        intensity, or has no central peak to fit.
    """
    from scipy import ndimage

    img = np.asarray(mean_pattern, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"the mean pattern must be 2D, got shape {img.shape}")
    valid = np.ones(img.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if valid.shape != img.shape:
        raise ValueError(f"mask shape {valid.shape} differs from the pattern shape {img.shape}")
    if not np.all(np.isfinite(img[valid])):
        raise ValueError("the mean diffraction pattern holds NaN or infinite values")
    good = valid & (img > 0)
    if not np.any(good):
        raise ValueError("the frames hold no positive intensity")
    f2 = _frequency_sq(img.shape)
    # the lobe's peak: the brightest valid pixel near DC (within the inner quarter of frequencies)
    near = good & (f2 <= 0.0625)
    peak = float(img[near].max()) if np.any(near) else float(img[good].max())
    # central lobe: the connected region (in the centred layout) around the peak above the threshold
    shifted = np.fft.fftshift(good & (img >= lobe_fraction * peak))
    labels, _ = ndimage.label(shifted)
    centre_idx = np.unravel_index(np.argmax(np.where(np.fft.fftshift(near), np.fft.fftshift(img), -np.inf)),
                                  img.shape)
    lobe = np.fft.ifftshift(labels == labels[centre_idx]) & good
    n = int(np.count_nonzero(lobe))
    if n < 3:  # a beam wider than the window: fall back to every positive pixel near DC
        lobe = near
        n = int(np.count_nonzero(lobe))
    if n < 3:
        raise ValueError("the mean diffraction pattern has fewer than 3 usable pixels around its centre")
    # intensity-weighted second moment of |f| over the lobe; for a Gaussian exp(-|f|^2 / (2 s^2)) cut at
    # c = lobe_fraction of its peak it is 2 s^2 g(c), g(c) = (1 - c (1 + ln(1/c))) / (1 - c)
    wts = img[lobe]
    moment = float(np.sum(wts * f2[lobe]) / np.sum(wts))
    c = float(lobe_fraction)
    g = (1.0 - c * (1.0 + math.log(1.0 / c))) / (1.0 - c) if 0 < c < 1 else 1.0
    if not (math.isfinite(moment) and moment > 0):
        raise ValueError("the mean diffraction pattern has no central peak to fit (zero width)")
    s2 = moment / (2.0 * g)
    sigma = 1.0 / (2.0 * math.pi * math.sqrt(2.0 * s2))
    model = peak * np.exp(-f2 / (2.0 * s2))
    power = float(img[valid].sum() + model[~valid].sum())
    return ProbeFit(float(FWHM_PER_SIGMA * sigma), power, n)


def gaussian_window(shape, fwhm_px: float, power: float) -> np.ndarray:
    """Flat-phase Gaussian probe scaled to a given power.

    Amplitude FWHM ``fwhm_px``, centred at index ((m1 - 1)/2, (m2 - 1)/2) of an (m1, m2) window (hpc-pt's
    probe centre), scaled to ``sum |w|^2 = power``. complex64.

    Parameters
    ----------
    shape : tuple of int
        (m1, m2) of the window.
    fwhm_px : float
        Amplitude FWHM in pixels, positive.
    power : float
        ``sum |w|^2`` of the result.

    Returns
    -------
    numpy.ndarray
        complex64 array of shape ``shape`` = (m1, m2), with ``sum |w|^2 = power``.

    Raises
    ------
    ValueError
        When ``fwhm_px`` is not positive.
    """
    m1, m2 = (int(v) for v in shape)
    if not fwhm_px > 0:
        raise ValueError(f"probe FWHM must be positive, got {fwhm_px}")
    sigma = fwhm_px / FWHM_PER_SIGMA
    cy = np.arange(m1, dtype=np.float64) - (m1 - 1) / 2.0
    cx = np.arange(m2, dtype=np.float64) - (m2 - 1) / 2.0
    amp = np.exp(-(cy[:, None] ** 2 + cx[None, :] ** 2) / (2.0 * sigma ** 2))
    amp *= math.sqrt(power / float(np.sum(amp ** 2)))
    return amp.astype(np.complex64)


def estimate_probe(mean_pattern, mask=None, lobe_fraction: float = LOBE_FRACTION) -> np.ndarray:
    """Initial probe from a mean diffraction pattern (DC at index 0).

    The Gaussian of :func:`fit_far_field`, sampled like the frames (same (m1, m2)), complex64.

    Parameters
    ----------
    mean_pattern : array_like, (m1, m2)
        Mean of the measured frames, DC at index ``[0, 0]``.
    mask : array_like of bool, (m1, m2), optional
        True for valid detector pixels.
    lobe_fraction : float, optional
        As :func:`fit_far_field`. Default :data:`LOBE_FRACTION`.

    Returns
    -------
    numpy.ndarray
        complex64 array of shape (m1, m2) (:func:`gaussian_window`).

    Raises
    ------
    ValueError
        As :func:`fit_far_field`.
    """
    fit = fit_far_field(mean_pattern, mask, lobe_fraction)
    return gaussian_window(np.shape(mean_pattern), fit.fwhm_px, fit.power)
