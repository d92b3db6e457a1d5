"""Projector against the analytic line integrals of an ellipse phantom (issue 2 accuracy target)."""
import numpy as np
import pytest

from hpc_pt.operators import Projector

# (x0, y0, a, b, phi, value) on the unit square [-1, 1]^2
ELLIPSES = [(0.1, -0.2, 0.6, 0.3, 0.4, 1.0), (-0.3, 0.25, 0.2, 0.35, -0.7, 0.5), (0.0, 0.0, 0.8, 0.7, 0.0, 0.3)]


def rasterise(n, ss=8):
    """Area-weighted ellipse image: each pixel averages ss x ss sub-samples."""
    sc = n / 2
    t = (np.arange(ss) + 0.5) / ss - 0.5
    c = np.arange(n) - (n - 1) / 2
    X = (c[None, :, None, None] + t[None, None, None, :]) / sc
    Y = (c[:, None, None, None] + t[None, None, :, None]) / sc
    img = np.zeros((n, n))
    for x0, y0, a, b, phi, rho in ELLIPSES:
        xr = (X - x0) * np.cos(phi) + (Y - y0) * np.sin(phi)
        yr = -(X - x0) * np.sin(phi) + (Y - y0) * np.cos(phi)
        img += rho * ((xr / a) ** 2 + (yr / b) ** 2 <= 1).mean(axis=(2, 3))
    return img


def analytic_sinogram(n, angles, n_det, center):
    """Line integrals x cos + y sin = s of the ellipses, averaged over each unit detector bin."""
    sc = n / 2
    s = np.arange(n_det) - center

    def prim(t, r):  # antiderivative of sqrt(r^2 - t^2)
        t = np.clip(t, -r, r)
        return 0.5 * (t * np.sqrt(r * r - t * t) + r * r * np.arcsin(t / r))

    out = np.zeros((len(angles), n_det))
    for x0, y0, a, b, phi, rho in ELLIPSES:
        A, B, X0, Y0 = a * sc, b * sc, x0 * sc, y0 * sc
        for k, th in enumerate(angles):
            r = np.sqrt(A ** 2 * np.cos(th - phi) ** 2 + B ** 2 * np.sin(th - phi) ** 2)
            sp = s - (X0 * np.cos(th) + Y0 * np.sin(th))
            out[k] += rho * 2 * A * B / r ** 2 * (prim(sp + 0.5, r) - prim(sp - 0.5, r))
    return out


def relative_error(n, angles):
    P = Projector(n, 1, angles, dtype=np.complex128)
    p = P.fwd(rasterise(n)[None].astype(complex))[:, 0, :]
    ref = analytic_sinogram(n, angles, n, (n - 1) / 2)
    assert np.abs(p.imag).max() < 1e-9 * np.abs(p.real).max()  # real volume -> real projections
    return np.linalg.norm(p.real - ref) / np.linalg.norm(ref)


def test_projector_error_under_half_percent_and_shrinking():
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False) + 0.05
    errs = [relative_error(n, angles) for n in (32, 64, 128)]
    assert errs[2] < 0.005
    assert errs[0] > errs[1] > errs[2]


def test_half_pixel_centre_disagreement_is_visible():
    """The same phantom with the detector centre off by half a pixel misses the target by far."""
    n = 128
    angles = np.linspace(0, np.pi, 45, endpoint=False)
    P = Projector(n, 1, angles, center=(n - 1) / 2 + 0.5, dtype=np.complex128)
    p = P.fwd(rasterise(n)[None].astype(complex))[:, 0, :].real
    ref = analytic_sinogram(n, angles, n, (n - 1) / 2)
    assert np.linalg.norm(p - ref) / np.linalg.norm(ref) > 0.02


@pytest.mark.parametrize("n, n_det", [(64, 64), (128, 128), (96, 130), (2048, 2048)])
def test_default_sample_count_is_odd_smooth_and_enough(n, n_det):
    """Default M: odd, no fewer than the alias-free minimum, and FFT-friendly (prime factors <= 17)."""
    from hpc_pt.operators.projector import FFT_MAX_PRIME, _largest_prime_factor
    P = Projector(n, 1, np.linspace(0, np.pi, 3, endpoint=False), n_det=n_det)
    assert P.M % 2 == 1
    assert P.M >= P._min_samples()
    assert _largest_prime_factor(P.M) <= FFT_MAX_PRIME
    assert P.M - P._min_samples() < 0.05 * P._min_samples()  # the raise stays small
