"""Proximal maps of seed 001 (Algorithm 1, Step 2), with the derivations the extracted text garbles.

Data metrics (seed 001 Eq. 2, eps = 0), per detector pixel with measured f >= 0 and model z:
    pAGM (Gaussian amplitude):   G(z) = 1/2 (|z| - sqrt f)^2
    pIPM (Poisson intensity):    G(z) = 1/2 (|z|^2 - f log |z|^2)

z-prox: argmin_z G(z) + r/2 |z - zt|^2. Both G depend on |z| only, so the minimiser has the phase of zt
and a modulus rho solving a 1D problem:
    pAGM: (rho - sqrt f) + r (rho - |zt|) = 0          =>  rho = (sqrt f + r |zt|) / (1 + r)
    pIPM: rho - f / rho + r (rho - |zt|) = 0
          => (1 + r) rho^2 - r |zt| rho - f = 0        =>  rho = (r |zt| + sqrt(r^2 |zt|^2 + 4 (1 + r) f)) / (2 (1 + r))
(the positive root; the other is negative). Where zt = 0 the phase is arbitrary: we take 1.
Masked (invalid) detector pixels carry no data term, so there z = zt.

TV prox (isotropic, seed 001 Step 2): argmin_p lam/r ||p||_{2,1} + 1/2 ||p - pt||^2 is the vector soft
threshold p = max(0, |pt| - lam/r) pt / |pt| with |pt| the Euclidean norm over the three gradient
components (and real/imaginary parts) at each voxel.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp

METRICS = ("gaussian", "poisson")


def _unit_phase(zt, mag, xp):
    safe = xp.where(mag > 0, mag, 1)
    return xp.where(mag > 0, zt / safe, 1)


def prox_amplitude(zt, sqrt_f, r: float, mask=None):
    """pAGM z-prox (seed 001 Step 2, first case): argmin_z G(z) + r/2 |z - zt|^2 per detector pixel.

    rho = (sqrt f + r |zt|) / (1 + r), with the phase of zt (module docstring).

    Parameters
    ----------
    zt : array
        The prox's argument (F, m1, m2), complex.
    sqrt_f : array
        sqrt f, the measured amplitudes.
    r : float
        The penalty.
    mask : array, optional
        (m1, m2), True where a detector pixel is valid; invalid ones keep z = zt.

    Returns
    -------
    array
        z, of ``zt``'s shape.
    """
    xp = get_xp(zt)
    mag = xp.abs(zt)
    rho = (sqrt_f + r * mag) / (1 + r)
    z = rho * _unit_phase(zt, mag, xp)
    return z if mask is None else xp.where(mask, z, zt)


def prox_poisson(zt, f, r: float, mask=None):
    """pIPM z-prox (seed 001 Step 2, second case), per detector pixel.

    The positive root rho = (r |zt| + sqrt(r^2 |zt|^2 + 4 (1 + r) f)) / (2 (1 + r)), with the phase of zt.

    Parameters
    ----------
    zt, r, mask
        As for :func:`prox_amplitude`.
    f : array
        The measured intensities.

    Returns
    -------
    array
        The prox, shaped like ``zt``.
    """
    xp = get_xp(zt)
    mag = xp.abs(zt)
    rho = (r * mag + xp.sqrt((r * mag) ** 2 + 4 * (1 + r) * f)) / (2 * (1 + r))
    z = rho * _unit_phase(zt, mag, xp)
    return z if mask is None else xp.where(mask, z, zt)


def frame_objective(model_mag, f, sqrt_f, metric: str, mask=None):
    """Per-frame sums of G, shape (F,), for the model moduli ``model_mag``.

    Seed 001 Eq. 2 with eps = 0; pIPM shifted by the constant that makes it zero at |z|^2 = f.

    Parameters
    ----------
    model_mag : array
        |z|, the model's far-field moduli (F, m1, m2).
    f : array
        The measured intensities, of that shape.
    sqrt_f : array
        Their square roots.
    metric : str
        "gaussian" (pAGM); any other value: "poisson" (pIPM).
    mask : array, optional
        (m1, m2), True where a detector pixel is valid.

    Returns
    -------
    array
        (F,) the sum of G over each frame's valid pixels.
    """
    xp = get_xp(model_mag)
    if metric == "gaussian":
        g = 0.5 * (model_mag - sqrt_f) ** 2
    else:
        i = model_mag ** 2
        tiny = 1e-30
        g = 0.5 * (i - f - f * (xp.log(xp.maximum(i, tiny)) - xp.log(xp.maximum(f, tiny))))
    if mask is not None:
        g = g * mask
    return g.reshape(g.shape[0], -1).sum(axis=1)


def data_objective(model_mag, f, sqrt_f, metric: str, mask=None) -> float:
    """sum G over all pixels of all frames (see :func:`frame_objective`).

    Parameters
    ----------
    model_mag, f, sqrt_f, metric, mask
        As for :func:`frame_objective`.

    Returns
    -------
    float
        The data objective of these frames.
    """
    return float(frame_objective(model_mag, f, sqrt_f, metric, mask).sum())


def data_residual(z, f, sqrt_f, metric: str, mask=None):
    """2 dG/d conj(z) per detector pixel: z - sqrt(f) z/|z| (amplitude) or z - f z/|z|^2 (Poisson).

    Where z = 0 the amplitude residual takes phase 1 (the subgradient choice of :mod:`.prox`); the
    Poisson one floors |z|^2 at sqrt(smallest normal float) (1e-19 in float32), a constant, so the result
    does not depend on how frames are spread over ranks.

    Parameters
    ----------
    z : array
        The model's far fields (F, m1, m2).
    f, sqrt_f, metric, mask
        As for :func:`frame_objective`.

    Returns
    -------
    array
        The residual, of ``z``'s dtype (0 at invalid pixels).
    """
    xp = get_xp(z)
    mag2 = z.real ** 2 + z.imag ** 2
    if metric == "gaussian":
        mag = xp.sqrt(mag2)
        unit = xp.where(mag > 0, z / xp.where(mag > 0, mag, 1), 1)
        g = z - sqrt_f * unit
    else:
        floor = float(np.sqrt(np.finfo(mag2.dtype).tiny))
        g = z - f * z / xp.maximum(mag2, floor)
    if mask is not None:
        g = g * mask
    return g.astype(z.dtype, copy=False)


def prox_tv(pt, thresh: float):
    """Isotropic vector soft-thresholding of a (3, ...) field (TV prox, seed 001 Step 2).

    Parameters
    ----------
    pt : array
        The field (3, ...): the gradient's three components at each voxel.
    thresh : float
        lam / r.

    Returns
    -------
    array
        max(0, |pt| - thresh) pt / |pt|, the norm taken over the components (and real / imaginary parts).
    """
    xp = get_xp(pt)
    mag = xp.sqrt((xp.abs(pt) ** 2).sum(axis=0))
    scale = xp.maximum(mag - thresh, 0) / xp.where(mag > 0, mag, 1)
    return pt * scale[None]


def pixel_sum(x, mask=None) -> float:
    """Sum of ``x`` (F, m1, m2) over valid detector pixels only (``mask`` True = valid).

    Parameters
    ----------
    x : array
        Per-pixel values of the frames.
    mask : array, optional
        (m1, m2); None: every pixel.

    Returns
    -------
    float
        The sum (this rank's only).
    """
    return float((x * mask).sum() if mask is not None else x.sum())
