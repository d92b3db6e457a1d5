"""Metrics: seed 001 SNR (optimal complex scale and integer shift), R-factor, NRMSE, PSNR, SSIM."""
import math

import numpy as np
import pytest

from hpc_pt.errors import InputError
from hpc_pt.metrics import (
    align,
    centre_crop,
    evaluate,
    nrmse,
    psnr_db,
    r_factor,
    snr_db,
    ssim,
)


def cplx(rng, shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def smooth_volume(rng, shape=(16, 16, 16)):
    from scipy import ndimage

    def field():
        v = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0, mode="wrap")
        return v / v.std()

    return field() + 0.3j * field()


# ----------------------------------------------------------------------------------------------- SNR


def test_snr_exact_match_is_at_the_rounding_floor(rng):
    # the optimal complex scale is computed, so an exact match leaves float64 rounding (+inf only when it
    # happens to cancel exactly: library versions differ), never a finite SNR below ~250 dB
    g = cplx(rng, (8, 8, 8))
    assert snr_db(g, g) > 250
    assert snr_db((0.3 - 2j) * np.roll(g, (1, -3, 2), axis=(0, 1, 2)), g) > 250  # float64 rounding only


def test_snr_invariant_to_complex_scale_and_circular_shift(rng):
    g = smooth_volume(rng)
    u = g + 0.2 * cplx(rng, g.shape)
    ref = snr_db(u, g)
    assert 5 < ref < 40
    shift = (3, -5, 7)
    v = (2.5 * np.exp(1.1j)) * np.roll(u, shift, axis=(0, 1, 2))
    assert snr_db(v, g) == pytest.approx(ref, abs=1e-9)
    zeta, T, aligned = align(v, g)
    assert T == shift  # u_T(t) = v(t + T) undoes the roll
    assert zeta == pytest.approx(align(u, g)[0] / (2.5 * np.exp(1.1j)), rel=1e-10)
    np.testing.assert_allclose(aligned, align(u, g)[2], atol=1e-10)


def test_snr_max_shift_limits_the_search(rng):
    g = smooth_volume(rng, (12, 12))
    v = np.roll(g, (4, 0), axis=(0, 1))
    assert snr_db(v, g, max_shift=4) > 250  # exact up to the rounding of the scale
    assert snr_db(v, g, max_shift=2) < snr_db(v, g, max_shift=4)
    assert align(v, g, max_shift=0)[1] == (0, 0)


def test_snr_matches_formula_for_known_noise(rng):
    """u = u_g + n with white noise of known power: SNR = 10 log10(P_signal / P_noise) up to sampling."""
    n = 64
    g = cplx(rng, (n, n, n))  # signal power 2 per voxel
    sigma = 0.1
    noise = sigma * cplx(rng, g.shape)  # noise power 2 sigma^2 per voxel
    s = snr_db(g + noise, g, max_shift=0)
    expected = 10 * math.log10(2 / (2 * sigma ** 2))  # 20 dB
    assert s == pytest.approx(expected, abs=0.1)
    # exact closed form at T = 0: zeta = <u, g> / ||u||^2, SNR = -10 log10(||zeta u - g||^2 / ||g||^2)
    u = g + noise
    zeta = np.vdot(u, g) / np.vdot(u, u)
    exact = -10 * math.log10(np.sum(np.abs(zeta * u - g) ** 2) / np.sum(np.abs(g) ** 2))
    assert snr_db(u, g) == pytest.approx(exact, abs=1e-10)
    # the seed's printed denominator ||zeta u||^2: SNR_paper = -10 log10(e / (1 - e))
    e = 10 ** (-exact / 10)
    assert snr_db(u, g, denominator="paper") == pytest.approx(-10 * math.log10(e / (1 - e)), abs=1e-9)


def test_snr_shape_mismatch():
    with pytest.raises(InputError, match="differs from truth shape"):
        snr_db(np.ones((4, 4)), np.ones((4, 5)))


# ------------------------------------------------------------------------------------------ R-factor


def test_r_factor_zero_for_exact_data(rng):
    D = cplx(rng, (5, 8, 8))
    f = np.abs(D) ** 2
    assert r_factor(D, f) == pytest.approx(0, abs=1e-12)
    assert r_factor([D[:2], D[2:]], [f[:2], f[2:]]) == pytest.approx(0, abs=1e-12)  # ragged lists


def test_r_factor_hand_example():
    amp = np.array([[1.0, 2.0], [3.0, 0.0]])
    f = np.array([[1.0, 9.0], [4.0, 1.0]])  # sqrt f = 1, 3, 2, 1
    # |1-1| + |2-3| + |3-2| + |0-1| = 3; sum sqrt f = 7
    assert r_factor(amp, f) == pytest.approx(3 / 7)
    assert r_factor([amp[:1], amp[1:]], [f[:1], f[1:]]) == pytest.approx(3 / 7)
    with pytest.raises(InputError, match="differs from measured shape"):
        r_factor(amp, f[:1])


# ------------------------------------------------------------------------------------ NRMSE / PSNR


def test_nrmse_and_psnr():
    g = np.array([0.0, 1.0, 2.0, 3.0])
    r = g + np.array([0.0, 0.5, 0.0, -0.5])
    assert nrmse(r, g) == pytest.approx(math.sqrt(0.5) / math.sqrt(14))
    assert psnr_db(r, g) == pytest.approx(10 * math.log10(9 / (0.5 / 4)))
    assert psnr_db(g, g) == math.inf
    gc = g * np.exp(0.3j)
    assert psnr_db(gc + 0.1, gc) == pytest.approx(10 * math.log10(9 / 0.01))  # range of |truth|


# ---------------------------------------------------------------------------------------------- SSIM


def test_ssim_identity_and_degradation(rng):
    g = smooth_volume(rng).real
    assert ssim(g, g) == pytest.approx(1.0, abs=1e-12)
    s = ssim(g + 0.3 * g.std() * rng.standard_normal(g.shape), g)
    assert isinstance(s, float) and 0 < s < 1
    s2 = ssim(g + 1.0 * g.std() * rng.standard_normal(g.shape), g)
    assert s2 < s
    g2 = g[0]
    assert ssim(g2, g2) == pytest.approx(1.0)  # 2D
    assert ssim(g2 + 0.1, g2) < 1


def test_ssim_constant_images_analytic():
    """Constant images: variances and covariance vanish, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1)."""
    a, b, R = 0.2, 0.5, 1.0
    C1 = (0.01 * R) ** 2
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    got = ssim(np.full((20, 20), a), np.full((20, 20), b), data_range=R)
    assert got == pytest.approx(expected, rel=1e-12)


def test_ssim_complex_reports_parts(rng):
    g = smooth_volume(rng)
    r = g + 0.05 * cplx(rng, g.shape)
    s = ssim(r, g)
    assert set(s) == {"real", "imag", "mean"}
    assert s["mean"] == pytest.approx((s["real"] + s["imag"]) / 2)
    assert 0 < s["imag"] < s["real"] < 1  # imaginary part is weaker, so noise hurts it more


def test_ssim_matches_skimage(rng):
    metrics = pytest.importorskip("skimage.metrics")
    g = smooth_volume(rng, (24, 24)).real
    r = g + 0.2 * rng.standard_normal(g.shape)
    R = g.max() - g.min()
    ref = metrics.structural_similarity(r, g, data_range=R, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
    assert ssim(r, g) == pytest.approx(ref, abs=1e-6)  # same algorithm; room for library-version rounding


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_centre_crops_and_reports(rng):
    g = smooth_volume(rng, (8, 8, 8))
    big = np.zeros((8, 12, 12), complex)
    big[:, 2:10, 2:10] = g
    np.testing.assert_array_equal(centre_crop(big, g.shape), g)
    out = evaluate(big, g)
    # an exact match up to the rounding of the optimal complex scale: complex128 leaves ~1e-15 relative
    # error (~300 dB; 315.7 dB with numpy 2.4 / scipy 1.17, +inf with older versions)
    assert out["snr_db"] > 200 and out["nrmse"] < 1e-9 and out["ssim"] == pytest.approx(1)
    assert {"ssim_real", "ssim_imag", "psnr_db", "shift", "zeta_abs", "snr_db_paper"} <= set(out)
    noisy = evaluate(g + 0.05 * cplx(rng, g.shape), g)
    assert 0 < noisy["snr_db"] < math.inf and 0 < noisy["nrmse"] < 1
    real = evaluate(g.real + 0.01, g.real)
    assert "ssim_real" not in real and real["ssim"] < 1
    with pytest.raises(InputError, match="smaller than"):
        evaluate(g[:4], g)


def test_evaluate_text_explains_scale_and_crop(rng):
    """`hpc-pt evaluate`'s text says what the SNR aligned, which block was compared, and warns when the
    stored values are off in scale (a linear-model run with an estimated probe)."""
    from hpc_pt.workflows import format_metrics

    g = smooth_volume(rng, (8, 8, 8))
    big = np.zeros((8, 12, 12), complex)
    big[:, 2:10, 2:10] = g / 3.0  # a third of the truth's values
    m = evaluate(big, g)
    m["recon_shape"], m["truth_shape"] = list(big.shape), list(g.shape)
    text = format_metrics(m)
    assert "central 8x8x8 block of the 8x12x12" in text
    assert "scale-free" in text and "|zeta| 3" in text
    assert "note: the stored values are 0.333x the truth's scale" in text
    same = evaluate(g, g)
    assert "note:" not in format_metrics(same) and "central" not in format_metrics(same)
