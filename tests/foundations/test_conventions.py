"""One test per convention of hpc_pt/conventions.py."""
import numpy as np
import pytest

from hpc_pt import conventions as cv
from hpc_pt.backend import fft2c, ifft2c
from hpc_pt.operators import Projector, Ptychography


def test_fft_is_orthonormal_with_dc_at_index_zero(rng):
    x = rng.standard_normal((3, 8, 8)) + 1j * rng.standard_normal((3, 8, 8))
    X = fft2c(x)
    assert np.allclose(np.linalg.norm(X), np.linalg.norm(x))  # Parseval
    assert np.allclose(X[:, 0, 0], x.sum(axis=(1, 2)) / 8)  # DC at index 0, scaled 1/sqrt(N)
    assert np.allclose(ifft2c(X), x)


def test_rotation_axis_is_volume_axis_0():
    u = np.zeros((5, 8, 8), complex)
    u[2, 3, 4] = 1.0
    p = Projector(8, 5, np.linspace(0, np.pi, 6, endpoint=False), n_det=64, center=31.5,
                  dtype=np.complex128).fwd(u)
    assert np.allclose(p[:, [0, 1, 3, 4], :], 0, atol=1e-12)  # only row z = 2 sees the voxel
    # its mass arrives there (up to the band-limited interpolation's tails beyond the detector)
    assert np.allclose(p[:, 2, :].sum(axis=1).real, 1.0, atol=0.03)


def test_theta_sign_and_rotation_centre():
    """A voxel at x = +2, y = 0 lands at s = +2 for theta = 0 and s = -2 for theta = pi; a voxel at
    y = +2 lands at s = +2 for theta = pi/2. Moving the centre moves the trace by the same bins."""
    n = 16
    c = (n - 1) / 2
    u = np.zeros((1, n, n), complex)
    u[0, int(c + 0.5), int(c + 0.5) + 2] = 1.0  # x = 2.5, y = 0.5 in pixel coordinates
    angles = np.array([0.0, np.pi / 2, np.pi])
    p = Projector(n, 1, angles, dtype=np.complex128).fwd(u)[:, 0, :].real
    s = np.arange(n) - c
    peak = s[np.argmax(p, axis=1)]
    assert peak.tolist() == [2.5, 0.5, -2.5]
    p2 = Projector(n, 1, angles, n_det=n, center=c + 3, dtype=np.complex128).fwd(u)[:, 0, :].real
    assert (np.argmax(p2, axis=1) - np.argmax(p, axis=1)).tolist() == [3, 3, 3]


def test_position_origin_is_window_top_left():
    field = np.zeros((10, 10), complex)
    field[0, 0] = 1.0
    P = Ptychography(np.ones((4, 4), complex), np.array([[0.0, 0.0]]), (10, 10), dtype=np.complex128)
    assert np.allclose(P.patches(field)[0, 0, 0], 1.0)
    assert np.allclose(P.patches(field)[0].sum(), 1.0)


def test_translation_round_trip_and_units():
    pos = np.array([[0.0, 0.0], [32, 64], [64, 64], [3.5, 10.25]])
    px = 10e-9
    tr = cv.positions_to_translations(pos, (64, 64), (128, 128), px)
    # the window at (32, 32) would be centred on the axis: x = y = 0
    assert np.allclose(cv.positions_to_translations([[32, 32]], (64, 64), (128, 128), px), 0)
    assert np.allclose(tr[1], [32 * px, 0, 0])  # x is horizontal (columns), y vertical (rows)
    assert np.allclose(cv.translations_to_positions(tr, (64, 64), (128, 128), px), pos)
    flipped = cv.positions_to_translations(pos, (64, 64), (128, 128), px, flip=True)
    assert np.allclose(cv.translations_to_positions(flipped, (64, 64), (128, 128), px, flip=True), pos)
    assert cv.field_for_translations(tr, (64, 64), px) == (128, 128)


def test_energy_wavelength_and_pixel_size():
    assert cv.wavelength_m(5000.0) == pytest.approx(2.4797e-10, rel=1e-4)
    z = cv.detector_distance_for(5000.0, 10e-9, 75e-6, 63)
    assert cv.sample_pixel_size_m(5000.0, z, 75e-6, 63) == pytest.approx(10e-9)
    assert cv.k_dz(5000.0, 10e-9) == pytest.approx(2 * np.pi * 10e-9 / 2.4797e-10, rel=1e-4)
    assert cv.joule_to_ev(cv.ev_to_joule(8000.0)) == pytest.approx(8000.0)
