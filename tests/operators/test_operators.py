"""Dot tests, slow references and accuracy checks for every operator (docs/architecture.md §5)."""
import numpy as np
import pytest

from hpc_pt.operators import (
    ExpMap,
    ForwardModel,
    Gradient,
    Pad,
    Projector,
    Ptychography,
    divergence,
    dot_test,
    gradient,
    laplacian,
    tv_value,
)

TOL = {np.complex64: 1e-6, np.complex128: 1e-12}
DTYPES = [np.complex64, np.complex128]


def crand(rng, shape, dtype=np.complex128):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


# ---------------------------------------------------------------- dot tests
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("angles", [np.linspace(0, np.pi, 7, endpoint=False),
                                    np.random.default_rng(0).uniform(0, 2 * np.pi, 11)])
def test_projector_dot(dtype, angles):
    P = Projector(24, 3, angles, n_det=30, center=15.7, dtype=dtype)
    assert dot_test(P, seed=1) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fractional", [False, True])
def test_ptychography_dot(dtype, fractional, rng):
    probe = crand(rng, (8, 8), dtype)
    pos = rng.uniform(0, 20, (25, 2))
    if not fractional:
        pos = np.round(pos)
    P = Ptychography(probe, pos, (3, 29, 29), angle_index=rng.integers(0, 3, 25), dtype=dtype)
    assert P.fractional == fractional
    assert dot_test(P, seed=2) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_and_pad_dot(dtype):
    assert dot_test(Gradient((5, 6, 7), dtype=dtype), seed=3) <= TOL[dtype]
    assert dot_test(Pad((2, 5, 7), (9, 11), (2, 3), dtype), seed=4) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_model_linear_part_dot(dtype, rng):
    """The linear chain Ptycho o Pad o P (seed 001's D without the modulus) is adjoint as a whole."""
    angles = np.linspace(0, np.pi, 4, endpoint=False)
    probe = crand(rng, (8, 8), dtype)
    positions = [np.array([[0, 0], [4, 6.5], [10, 12]]), np.array([[2, 3]]), np.array([[5, 5], [0, 12]]),
                 np.array([[1.25, 0.5]])]
    M = ForwardModel((10, 20, 20), angles, probe, positions, (18, 20), model="linear", dtype=dtype)
    chain = M.ptycho @ M.pad @ M.projector
    assert (chain.shape_in, chain.shape_out, chain.dtype) == ((10, 20, 20), M.ptycho.shape_out, np.dtype(dtype))
    u = crand(rng, chain.shape_in, dtype)
    assert np.array_equal(chain.fwd(u), M.farfield(u))
    assert dot_test(chain, seed=5) <= TOL[dtype]


# ---------------------------------------------------------------- slow references
def slow_projector(u, angles, n_det, center, M):
    """Direct double sum of the Fourier-slice model (no NUFFT, no FFT)."""
    nz, n, _ = u.shape
    x = np.arange(n) - (n - 1) / 2
    m = np.arange(M) - (M - 1) // 2
    w = 2 * np.pi * m / M
    s = np.arange(n_det) - center
    out = np.zeros((len(angles), nz, n_det), complex)
    for a, th in enumerate(angles):
        for k in range(n_det):
            for i in range(n):
                for j in range(n):
                    t = x[j] * np.cos(th) + x[i] * np.sin(th)
                    kern = np.exp(1j * w * (s[k] - t)).sum() / M
                    out[a, :, k] += u[:, i, j] * kern
    return out


def test_projector_matches_slow_reference(rng):
    angles = np.array([0.0, 0.4, 1.3, 2.9, 4.0])
    u = crand(rng, (2, 6, 6))
    P = Projector(6, 2, angles, n_det=8, center=3.2, dtype=np.complex128)
    ref = slow_projector(u, angles, 8, 3.2, P.M)
    assert np.linalg.norm(P.fwd(u) - ref) / np.linalg.norm(ref) < 1e-10


def test_projector_detector_wider_than_the_volume(rng):
    """A small volume in a wide field (seed 002: 64^3 in a 112-pixel field) keeps every detector bin."""
    u = rng.standard_normal((2, 16, 16)).astype(np.complex128)
    P = Projector(16, 2, [0.0, np.pi / 2], n_det=64, dtype=np.complex128)
    p = P.fwd(u)
    assert p.shape == (2, 2, 64) and P.M > 64
    c = (64 - 16) // 2  # the volume's columns sit in the middle of the detector
    assert np.allclose(p[0, :, c:c + 16], u.sum(axis=1), atol=1e-9)
    assert np.allclose(p[0, :, :c], 0, atol=1e-9) and np.allclose(p[1, :, c:c + 16], u.sum(axis=2), atol=1e-9)
    assert dot_test(P) <= 1e-12


def test_projector_axis_aligned_angles_are_exact_sums(rng):
    """theta = 0 integrates along y (sums over rows), theta = pi/2 along x, theta = pi mirrors theta = 0."""
    u = rng.standard_normal((3, 16, 16)).astype(np.complex128)
    P = Projector(16, 3, [0.0, np.pi / 2, np.pi], dtype=np.complex128)
    p = P.fwd(u)
    assert np.allclose(p[0], u.sum(axis=1), atol=1e-9)
    assert np.allclose(p[1], u.sum(axis=2), atol=1e-9)
    assert np.allclose(p[2], u.sum(axis=1)[:, ::-1], atol=1e-9)


def slow_ptycho(probe, positions, aidx, field):
    out = []
    m1, m2 = probe.shape
    for (r, c), a in zip(positions, aidx):
        r0, c0 = int(np.floor(r)), int(np.floor(c))
        fr, fc = r - r0, c - c0
        win = np.zeros((m1, m2), complex)
        for i in range(m1):
            for j in range(m2):
                v = (1 - fr) * (1 - fc) * field[a, r0 + i, c0 + j]
                if fc:
                    v += (1 - fr) * fc * field[a, r0 + i, c0 + j + 1]
                if fr:
                    v += fr * (1 - fc) * field[a, r0 + i + 1, c0 + j]
                if fr and fc:
                    v += fr * fc * field[a, r0 + i + 1, c0 + j + 1]
                win[i, j] = v
        out.append(np.fft.fft2(probe * win, norm="ortho"))
    return np.array(out)


def test_ptychography_matches_slow_reference(rng):
    probe = crand(rng, (5, 5))
    pos = np.array([[0, 0], [3.5, 1.25], [6, 7], [2.75, 0.0], [7, 7]])
    aidx = np.array([0, 1, 1, 0, 1])
    field = crand(rng, (2, 12, 12))
    P = Ptychography(probe, pos, (2, 12, 12), angle_index=aidx, dtype=np.complex128)
    assert np.allclose(P.fwd(field), slow_ptycho(probe, pos, aidx, field), atol=1e-12)


def test_ptychography_illumination_is_sum_of_probe_intensity(rng):
    probe = crand(rng, (4, 4))
    P = Ptychography(probe, np.array([[0, 0], [2, 2]]), (8, 8), dtype=np.complex128)
    W = P.illumination()
    ref = np.zeros((8, 8))
    ref[:4, :4] += abs(probe) ** 2
    ref[2:6, 2:6] += abs(probe) ** 2
    assert np.allclose(W, ref)


def test_ptychography_rejects_windows_outside_field():
    probe = np.ones((4, 4), complex)
    with pytest.raises(ValueError, match="outside"):
        Ptychography(probe, np.array([[0, 0], [5, 0.5]]), (8, 8))
    with pytest.raises(ValueError, match="outside"):
        Ptychography(probe, np.array([[4, 4.5]]), (8, 8))  # the interpolation needs column 8


def test_gradient_matches_numpy_diff(rng):
    u = crand(rng, (4, 5, 6))
    g = gradient(u)
    for ax in range(3):
        d = np.diff(u, axis=ax)
        sl = [slice(None)] * 3
        sl[ax] = slice(0, -1)
        assert np.allclose(g[ax][tuple(sl)], d)
        sl[ax] = -1
        assert np.all(g[ax][tuple(sl)] == 0)
    assert np.allclose(divergence(g), laplacian(u))


def test_tv_value_of_a_step():
    u = np.zeros((4, 4, 4), complex)
    u[:, :, 2:] = 3.0  # a plane step of height 3 across 16 voxels
    assert tv_value(u) == pytest.approx(3.0 * 16)


# ---------------------------------------------------------------- nonlinear map
@pytest.mark.parametrize("c", [0.7, 25.0])
def test_expmap_finite_difference_gradient(rng, c):
    """Gradient of L(x) = ||exp(i c x) - d||^2 by vjp matches central finite differences."""
    E = ExpMap(c)
    x = 0.05 * crand(rng, (6, 7))
    d = crand(rng, (6, 7))

    def loss(x):
        return float(np.sum(np.abs(E.fwd(x) - d) ** 2))

    g = E.vjp(x, 2 * (E.fwd(x) - d))  # dL = Re<g, dx>
    for _ in range(3):
        v = crand(rng, x.shape)
        h = 1e-6
        fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
        assert np.vdot(g, v).real == pytest.approx(fd, rel=1e-6)
    dx = crand(rng, x.shape)
    fd_dir = (E.fwd(x + 1e-7 * dx) - E.fwd(x - 1e-7 * dx)) / 2e-7
    assert np.allclose(E.jvp(x, dx), fd_dir, rtol=1e-6, atol=1e-6)
    # jvp and vjp are adjoint
    w = crand(rng, x.shape)
    assert np.vdot(w, E.jvp(x, dx)) == pytest.approx(np.vdot(E.vjp(x, w), dx), rel=1e-12)


def test_expmap_physics_signs():
    """delta > 0 advances the phase, beta > 0 attenuates."""
    E = ExpMap(2.0)
    psi = E.fwd(np.array([0.1 + 0.0j, 0.0 + 0.1j]))
    assert np.angle(psi[0]) == pytest.approx(0.2)
    assert abs(psi[1]) == pytest.approx(np.exp(-0.2))


@pytest.mark.parametrize("fractional", [True, False])
def test_normal_stencil_equals_normal_operator(fractional):
    """N = sum_j S_j^T |w|^2 S_j as nine maps (Ptychography.normal_stencil) applied by apply_stencil equals
    the composition patches_adj(|w|^2 patches(x)), also when the rows are cut in two with halos (the slab
    layout); integer positions leave only the centre map (the illumination)."""
    from hpc_pt.operators import Ptychography, apply_stencil

    rng = np.random.default_rng(3)
    A, H, W = 3, 20, 22
    probe = rng.standard_normal((6, 6)) + 1j * rng.standard_normal((6, 6))
    pos = rng.uniform(0, 13, (12, 2))
    if not fractional:
        pos = np.round(pos)
    pt = Ptychography(probe, pos, (A, H, W), angle_index=np.repeat(np.arange(A), 4), dtype=np.complex128)
    x = rng.standard_normal((A, H, W)) + 1j * rng.standard_normal((A, H, W))
    ref = pt.patches_adj(np.abs(probe) ** 2 * pt.patches(x))
    maps = pt.normal_stencil()
    assert np.abs(apply_stencil(maps, x) - ref).max() < 1e-13 * np.abs(ref).max()
    top = apply_stencil(maps[:, :, :8], x[:, :8], None, x[:, 8])
    bottom = apply_stencil(maps[:, :, 8:], x[:, 8:], x[:, 7], None)
    assert np.abs(np.concatenate([top, bottom], axis=1) - ref).max() < 1e-13 * np.abs(ref).max()
    off = np.abs(maps[[0, 1, 2, 3, 5, 6, 7, 8]]).max()
    assert (off > 0) == fractional
    if not fractional:
        assert np.allclose(maps[4], pt.illumination(), atol=1e-12)


@pytest.mark.parametrize("fractional", [False, True])
def test_ptychography_frame_batches_match_one_stack(fractional):
    """Frame batches (Ptychography.batches) give the whole stack's far fields, adjoint, illumination and
    normal stencil; the batched operator passes the dot test and each batch's adjoint adds into ``out``."""
    rng = np.random.default_rng(5)
    A, H, W = 3, 21, 23
    probe = crand(rng, (6, 6))
    pos = rng.uniform(0, 14, (17, 2))
    if not fractional:
        pos = np.round(pos)
    aidx = np.sort(rng.integers(0, A, 17))
    whole = Ptychography(probe, pos, (A, H, W), angle_index=aidx, dtype=np.complex128)
    batched = Ptychography(probe, pos, (A, H, W), angle_index=aidx, dtype=np.complex128, frame_batch=5)
    assert [(s.start, s.stop) for s in batched.batches()] == [(0, 5), (5, 10), (10, 15), (15, 17)]
    assert len(whole.batches()) == 1
    x = crand(rng, (A, H, W))
    y = crand(rng, (17, 6, 6))
    assert np.abs(batched.fwd(x) - whole.fwd(x)).max() < 1e-12
    ref = whole.adj(y)
    assert np.abs(batched.adj(y) - ref).max() < 1e-12 * np.abs(ref).max()
    acc = np.zeros((A, H, W), complex)
    for sl in batched.batches():
        assert np.abs(batched.fwd(x, sl) - whole.fwd(x)[sl]).max() < 1e-12
        batched.adj(y[sl], sl, out=acc)
    assert np.abs(acc - ref).max() < 1e-12 * np.abs(ref).max()
    fresh = Ptychography(probe, pos, (A, H, W), angle_index=aidx, dtype=np.complex128, frame_batch=5)
    assert np.allclose(fresh.illumination(), whole.illumination(), atol=1e-12)
    # every field pixel sums its windows in frame order whatever the batches (CPU kernels): the same bits
    assert np.array_equal(fresh.adj(y), ref) and np.array_equal(acc, ref)
    assert np.allclose(batched.normal_stencil(), whole.normal_stencil(), atol=1e-12)
    assert dot_test(batched, seed=4) <= TOL[np.complex128]
    with pytest.raises(ValueError, match="frame_batch"):
        Ptychography(probe, pos, (A, H, W), angle_index=aidx, frame_batch=0)


@pytest.mark.parametrize("fractional", [False, True])
def test_ptychography_frame_subsets(fractional, rng):
    """An index array of frames (ePIE's compact batches) selects exactly those windows, and the subset's
    adjoint is its adjoint (accumulated into ``out``)."""
    probe = (rng.standard_normal((7, 7)) + 1j * rng.standard_normal((7, 7))).astype(np.complex128)
    pos = rng.uniform(0, 20, size=(25, 2)) if fractional else rng.integers(0, 20, size=(25, 2))
    P = Ptychography(probe, pos, (3, 29, 29), angle_index=rng.integers(0, 3, 25), dtype=np.complex128)
    psi = rng.standard_normal(P.shape_in) + 1j * rng.standard_normal(P.shape_in)
    sel = np.array([17, 3, 9, 11])
    assert np.allclose(P.patches(psi, frames=sel), P.patches(psi)[sel], rtol=0, atol=1e-13)
    y = rng.standard_normal((4, 7, 7)) + 1j * rng.standard_normal((4, 7, 7))
    base = rng.standard_normal(P.shape_in) + 1j * rng.standard_normal(P.shape_in)
    out = base.copy()
    P.patches_adj(y, frames=sel, out=out)
    lhs, rhs = np.vdot(y, P.patches(psi, frames=sel)), np.vdot(out - base, psi)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
