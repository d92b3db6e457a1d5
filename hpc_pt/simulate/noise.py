"""Poisson noise with a peak factor eta and the SNR_intensity measure of seed 001 (section 3).

Seed 001: f_{j,theta}(t) ~ Poisson(f^eta_{j,theta}(t)) i.i.d., with f^eta = eta |D_{j,theta}(w, u_g)|^2;
the smaller eta the stronger the noise, and

    SNR_intensity = -10 log10( sum_{j,theta} ||f - f^eta||^2 / sum_{j,theta} ||f^eta||^2 )  (dB).

Because the stored counts are f ~ Poisson(eta |D|^2), a dataset stores the probe scaled by sqrt(eta):
then E[f] = |F(sqrt(eta) w o S_j psi)|^2 exactly (see :func:`hpc_pt.simulate.dataset.simulate_dataset`).
"""
from __future__ import annotations

import math

import numpy as np


def poisson_noise(intensity, eta: float, rng: np.random.Generator) -> np.ndarray:
    """Photon counts f ~ Poisson(eta * intensity) (seed 001), float32, same shape as ``intensity``.

    Parameters
    ----------
    intensity : array_like
        Non-negative clean intensities |D|^2.
    eta : float
        The peak factor, positive.
    rng : numpy.random.Generator
        The random stream.

    Returns
    -------
    numpy.ndarray
        float32 counts of the shape of ``intensity``.

    Raises
    ------
    ValueError
        When ``eta`` is not positive or an intensity is negative.
    """
    if not eta > 0:
        raise ValueError(f"peak factor eta must be positive, got {eta}")
    lam = np.asarray(intensity, dtype=np.float64) * float(eta)
    if np.any(lam < 0):
        raise ValueError("intensities must be non-negative for Poisson noise")
    return rng.poisson(lam).astype(np.float32)


def snr_sums(f_noisy, f_eta) -> tuple[float, float]:
    """(sum |f - f^eta|^2, sum |f^eta|^2) for one batch, accumulated in float64.

    Parameters
    ----------
    f_noisy : array_like
        Noisy counts f.
    f_eta : array_like
        Clean intensities f^eta = eta |D|^2, of the same shape.

    Returns
    -------
    err, ref : float
        The two sums, to be added over batches and passed to :func:`snr_from_sums`.

    Raises
    ------
    ValueError
        When ``f_noisy`` and ``f_eta`` are not of the same shape.
    """
    a = np.asarray(f_noisy, dtype=np.float64)
    b = np.asarray(f_eta, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"noisy and clean intensities differ in shape: {a.shape} vs {b.shape}")
    return float(np.sum((a - b) ** 2)), float(np.sum(b * b))


def snr_from_sums(err: float, ref: float) -> float:
    """-10 log10(err / ref) in dB; +inf for noiseless data.

    Parameters
    ----------
    err : float
        sum |f - f^eta|^2.
    ref : float
        sum |f^eta|^2, positive.

    Returns
    -------
    float
        SNR_intensity in dB (+inf when ``err`` is 0).

    Raises
    ------
    ValueError
        When ``ref`` <= 0 (all-zero clean intensities).
    """
    if ref <= 0:
        raise ValueError("SNR_intensity is undefined for all-zero clean intensities")
    return math.inf if err == 0 else -10.0 * math.log10(err / ref)


def snr_intensity(f_noisy, f_eta) -> float:
    """Seed 001's SNR_intensity in dB of noisy counts ``f_noisy`` against the clean ``f_eta`` = eta |D|^2.

    Either two arrays, or two equally long sequences of arrays (e.g. one per angle) summed over together.

    Parameters
    ----------
    f_noisy : array_like or list of array_like
        Noisy counts f (an array, or a list / tuple of arrays).
    f_eta : array_like or list of array_like
        Clean intensities, with the same structure and shapes.

    Returns
    -------
    float
        SNR_intensity in dB (+inf for noiseless data).

    Raises
    ------
    ValueError
        When the sequences differ in length, an array pair in shape, or the clean intensities are all zero.
    """
    if isinstance(f_noisy, (list, tuple)):
        if len(f_noisy) != len(f_eta):
            raise ValueError(f"{len(f_noisy)} noisy arrays for {len(f_eta)} clean ones")
        parts = [snr_sums(a, b) for a, b in zip(f_noisy, f_eta)]
        return snr_from_sums(sum(p[0] for p in parts), sum(p[1] for p in parts))
    return snr_from_sums(*snr_sums(f_noisy, f_eta))
