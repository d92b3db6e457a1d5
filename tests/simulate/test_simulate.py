"""Tests of hpc_pt.simulate: phantoms, probes, scans, angles, noise, configuration and dataset assembly."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hpc_pt.conventions import k_dz, sample_pixel_size_m
from hpc_pt.errors import InputError
from hpc_pt.simulate import (
    MATERIALS,
    SimulationConfig,
    airy_probe,
    disc_probe,
    fermat_scan,
    gaussian_probe,
    iter_intensities,
    load_probe,
    make_angles,
    overlap_ratio,
    poisson_noise,
    probe_diameter_px,
    random_ellipsoids,
    raster_scan,
    refractive_index,
    scan_for_angle,
    shepp_logan_3d,
    simulate_dataset,
    snr_intensity,
    wire_phantom,
)
from hpc_pt.simulate.scans import nearest_neighbour_distances

# --- phantoms ----------------------------------------------------------------------------------------

def test_shepp_logan_range_pure_phase_and_symmetry():
    u = shepp_logan_3d(32)
    assert u.shape == (32, 32, 32) and u.dtype == np.complex64
    assert u.real.min() >= 0.0 and u.real.max() <= 1.0
    assert np.all(u.imag == 0)
    # the skull shell (value exactly 1: the two outer ellipsoids) is centred: mirror-symmetric in x and z
    shell = np.abs(u.real - 1.0) < 1e-6
    assert shell.sum() > 20
    assert np.array_equal(shell, shell[::-1]) and np.array_equal(shell, shell[:, :, ::-1])
    # partial-volume edges: values strictly between the plateaus exist (supersampled rasterisation)
    vals = u.real[(u.real > 0.21) & (u.real < 0.99)]
    assert vals.size > 0
    # outside the inscribed cylinder (rotation axis = axis 0) the phantom is empty
    c = np.arange(32) - 15.5
    outside = (c[:, None] ** 2 + c[None, :] ** 2) > 16.0 ** 2
    assert np.all(u[:, outside] == 0)


def test_shepp_logan_nz_is_central_slab():
    full = shepp_logan_3d(32)
    slab = shepp_logan_3d(32, nz=16)
    np.testing.assert_allclose(slab, full[8:24], atol=1e-6)


def test_wire_phantom_has_the_four_materials():
    u = wire_phantom(32, energy_ev=5000.0, voxel_m=10e-9)
    assert u.shape == (32, 32, 32) and u.dtype == np.complex64
    assert np.all(u.real >= 0) and np.all(u.imag >= 0)
    expected = [refractive_index(m.formula, m.density_g_cm3, 5000.0) for m in MATERIALS]
    for (delta, beta), m in zip(expected, MATERIALS):
        full = np.isclose(u.real, delta, rtol=1e-5, atol=0) & np.isclose(u.imag, beta, rtol=1e-5, atol=0)
        assert full.sum() >= 20, f"too few voxels of {m.formula}"
    # four distinct materials
    assert len({round(d, 12) for d, _ in expected}) == 4
    # wires along the rotation axis and horizontal ones: the support varies along z and within slices
    support = np.abs(u) > 0
    assert 0.02 < support.mean() < 0.5


def test_refractive_index_signs_and_gold():
    delta, beta = refractive_index("Au", 19.32, 5000.0)
    assert delta == pytest.approx(1.21e-4, rel=0.02) and beta == pytest.approx(2.62e-5, rel=0.02)
    for m in MATERIALS:
        d, b = refractive_index(m.formula, m.density_g_cm3, 5000.0)
        assert d > 0 and b > 0
    assert [m.density_g_cm3 for m in MATERIALS] == [19.32, 21.45, 5.606, 4.23]
    with pytest.raises(InputError):
        refractive_index("Xx9", 1.0, 5000.0)


def test_random_ellipsoids_reproducible_and_nonnegative():
    a = random_ellipsoids(24, 6, seed=3)
    b = random_ellipsoids(24, 6, seed=3)
    c = random_ellipsoids(24, 6, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.complex64 and np.all(a.real >= 0) and np.all(a.imag >= 0)
    assert a.real.max() > 0 and a.imag.max() > 0
    assert random_ellipsoids(24, 6, seed=3, nz=10).shape == (10, 24, 24)


# --- probes ------------------------------------------------------------------------------------------

def test_gaussian_probe_fwhm_and_centre():
    w = gaussian_probe(63, 14.0)
    assert w.shape == (63, 63) and w.dtype == np.complex64
    assert abs(w[31, 31]) == pytest.approx(1.0) and np.all(w.imag == 0)
    prof = np.abs(w[31])
    # amplitude is 1/2 at 7 px from the centre
    x = np.arange(63) - 31.0
    assert np.interp(7.0, x[31:], prof[31:]) == pytest.approx(0.5, abs=1e-6)
    # even size: centre at index (m-1)/2 -> symmetric under flips
    w2 = gaussian_probe(64, 14.0)
    np.testing.assert_allclose(w2, w2[::-1, ::-1])
    assert probe_diameter_px(w2) == pytest.approx(14.0, rel=0.05)


def test_airy_probe_fwhm_zero_and_tails():
    from scipy.special import j1

    w = airy_probe(63, 14.0)
    assert w.shape == (63, 63) and w.dtype == np.complex64 and np.all(w.imag == 0)
    prof = w.real[31, 31:]
    assert prof[0] == pytest.approx(1.0)
    assert np.interp(7.0, np.arange(32), prof) == pytest.approx(0.5, abs=1e-4)  # amplitude FWHM 14 px
    k = 2 * 2.2150893677 / 14.0
    np.testing.assert_allclose(prof, [2 * j1(k * r) / (k * r) if r else 1.0 for r in range(32)], atol=1e-6)
    first_zero = 3.8317059702 / k  # first dark ring, then a negative lobe
    i = int(np.ceil(first_zero))
    assert prof[i - 1] > 0 > prof[i + 1]
    # unlike the Gaussian of the same FWHM, the rings light the window's edge (seed 001: 64 px window)
    assert np.abs(w[31]).max() == pytest.approx(1.0) and np.abs(w[31, :3]).max() > 1e-2
    assert np.abs(gaussian_probe(63, 14.0)[31, :3]).max() < 1e-5
    with pytest.raises(ValueError, match="FWHM"):
        airy_probe(16, 0.0)


def test_disc_probe_area_and_soft_edge():
    w = disc_probe(63, 15.0)
    assert w.dtype == np.complex64 and np.all(w.imag == 0)
    assert w.real.sum() == pytest.approx(math.pi * 7.5 ** 2, rel=0.01)
    assert abs(w[31, 31] - 1.0) < 1e-6 and abs(w[0, 0]) < 1e-6
    assert np.any((w.real > 0.05) & (w.real < 0.95))
    assert probe_diameter_px(w) == pytest.approx(15.0, rel=0.03)


def test_load_probe_formats_and_errors(tmp_path):
    import h5py

    w = gaussian_probe(16, 5.0) * np.exp(1j * 0.3)
    np.save(tmp_path / "p.npy", w)
    np.testing.assert_array_equal(load_probe(tmp_path / "p.npy"), w.astype(np.complex64))
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["probe"] = w
    np.testing.assert_array_equal(load_probe(tmp_path / "p.h5"), w.astype(np.complex64))
    with h5py.File(tmp_path / "p.cxi", "w") as f:
        f["entry_1/instrument_1/source_1/illumination"] = w
    np.testing.assert_array_equal(load_probe(tmp_path / "p.cxi"), w.astype(np.complex64))

    with pytest.raises(InputError, match="does not exist"):
        load_probe(tmp_path / "missing.npy")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["other"] = w
    with pytest.raises(InputError, match="no probe dataset.*illumination"):
        load_probe(tmp_path / "empty.h5")
    np.save(tmp_path / "bad.npy", np.ones((2, 3, 4)))
    with pytest.raises(InputError, match="2D"):
        load_probe(tmp_path / "bad.npy")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="cannot open"):
        load_probe(tmp_path / "junk.h5")


# --- scans -------------------------------------------------------------------------------------------

def test_raster_counts_and_coverage():
    p = raster_scan((128, 128), (64, 64), 32)
    assert len(p) == 9
    assert sorted(set(p[:, 0])) == [0.0, 32.0, 64.0]
    assert len(raster_scan((128, 128), (64, 64), 4)) == 289
    # non-periodic boundary: the last window is flush with the far edge, every pixel covered
    p = raster_scan((100, 90), (30, 20), 18)  # step <= window: no gaps
    assert p[:, 0].max() == 70 and p[:, 1].max() == 70
    cover = np.zeros((100, 90), bool)
    for r, c in p.astype(int):
        cover[r:r + 30, c:c + 20] = True
    assert cover.all()
    with pytest.raises(ValueError):
        raster_scan((16, 16), (32, 32), 4)


def test_scan_for_angle_shifts_start():
    p0 = scan_for_angle("raster", (128, 128), (64, 64), 32, 0, 1.0)
    p3 = scan_for_angle("raster", (128, 128), (64, 64), 32, 3, 1.0)
    p33 = scan_for_angle("raster", (128, 128), (64, 64), 32, 33, 1.0)
    assert tuple(p0[0]) == (0.0, 0.0) and tuple(p3[0]) == (3.0, 3.0)
    assert tuple(p33[0]) == (1.0, 1.0)  # (33 * 1) mod 32
    assert p3.max() == 64.0  # still reaches the far edge
    pf = scan_for_angle("fermat", (96, 96), (16, 16), 6, 2, 1.0)
    assert pf.min() >= 0 and pf.max() <= 80


def test_fermat_spacing_and_inside():
    H, W, m, step = 160, 140, 16, 6.0
    p = fermat_scan((H, W), (m, m), step)
    assert len(p) > 100
    assert p[:, 0].min() >= 0 and p[:, 1].min() >= 0
    assert p[:, 0].max() <= H - m and p[:, 1].max() <= W - m
    d = nearest_neighbour_distances(p)
    assert abs(np.median(d) - step) < 0.2 * step
    assert abs(d.mean() - step) < 0.2 * step


def test_overlap_ratio():
    # 15-px beam (seed 002): steps 4 and 10 on fields that fit the grid exactly
    assert overlap_ratio(raster_scan((63, 63), (15, 15), 4), 15.0) == pytest.approx(11 / 15)
    assert overlap_ratio(raster_scan((125, 125), (15, 15), 10), 15.0) == pytest.approx(1 / 3)
    assert overlap_ratio(raster_scan((128, 128), (64, 64), 32), 14.0) == pytest.approx(1 - 32 / 14)
    assert overlap_ratio(np.zeros((1, 2)), 15.0) == 0.0


# --- angles and noise --------------------------------------------------------------------------------

def test_angles_uniform_and_golden():
    a = make_angles(12, "uniform", 180)
    np.testing.assert_allclose(a, np.arange(12) * np.pi / 12)
    b = make_angles(8, "uniform", 360)
    assert b[-1] < 2 * np.pi and np.allclose(np.diff(b), np.pi / 4)
    for rng in (180, 360):
        g = make_angles(500, "golden", rng)
        assert g.min() >= 0 and g.max() < np.radians(rng)
        assert len(np.unique(np.round(g, 12))) == 500
        # golden prefixes are spread out: the largest gap of the first 20 is < 3x the uniform gap
        s = np.sort(np.append(g[:20], np.radians(rng) + g[0]))
        assert np.diff(s).max() < 3 * np.radians(rng) / 20
    with pytest.raises(ValueError):
        make_angles(4, "random", 180)


def test_poisson_noise_statistics_and_snr():
    rng = np.random.default_rng(0)
    flat = np.full((64, 128, 128), 5.0, dtype=np.float32)
    f = poisson_noise(flat, 2.0, rng)
    assert f.dtype == np.float32 and np.all(f == np.round(f))
    assert f.mean() == pytest.approx(10.0, rel=0.01) and f.var() == pytest.approx(10.0, rel=0.02)
    # SNR_intensity = -10 log10(sum var / sum mean^2) = 10 log10(lambda) on a flat field
    snrs = []
    for eta in (100.0, 10.0):
        f_eta = flat * eta
        snrs.append(snr_intensity(poisson_noise(flat, eta, rng), f_eta))
    assert snrs[0] == pytest.approx(10 * math.log10(500.0), abs=0.1)
    assert snrs[0] - snrs[1] == pytest.approx(10.0, abs=0.2)
    # list form sums over angles
    assert snr_intensity([flat[:2], flat[2:4]], [flat[:2], flat[2:4]]) == math.inf
    with pytest.raises(ValueError):
        poisson_noise(flat, 0.0, rng)


# --- configuration -----------------------------------------------------------------------------------

def _toml(d: dict) -> str:
    lines = []
    for k, v in d.items():
        if v is None:
            continue
        lines.append(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"')
    return "\n".join(lines) + "\n"


def test_config_yaml_and_toml_round_trip(tmp_path):
    import yaml

    cfg = SimulationConfig(phantom="wires", size=32, angles=7, angle_range=360, angle_kind="golden",
                           probe_size=15, probe_fwhm=6.0, probe_kind="disc", step=4.0, scan="fermat",
                           per_angle_offset=1.0, field_pad=4, model="exp", noise="poisson", peak=0.1, seed=5)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"simulate": cfg.to_dict()}))
    assert SimulationConfig.from_file(tmp_path / "a.yaml") == cfg
    (tmp_path / "b.yml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert SimulationConfig.from_file(tmp_path / "b.yml") == cfg
    (tmp_path / "c.toml").write_text("[simulate]\n" + _toml(cfg.to_dict()))
    assert SimulationConfig.from_file(tmp_path / "c.toml") == cfg
    (tmp_path / "d.toml").write_text(_toml(cfg.to_dict()).replace("angle_range", "angle-range"))
    assert SimulationConfig.from_file(tmp_path / "d.toml") == cfg
    assert SimulationConfig() == SimulationConfig.from_file(_write(tmp_path / "e.yaml", ""))


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, pattern", [
    ("size: 32\nbogus_key: 3\n", r"unknown key 'bogus_key'"),
    ("size: 4\n", r"size: must be >= 8"),
    ("phantom: cube\n", r"phantom: .*shepp-logan"),
    ("peak: 0\n", r"peak: must be > 0"),
    ("angle_range: 90\n", r"angle_range"),
    ("size: 16\nprobe_size: 64\n", r"probe_size 64 exceeds the object field 16"),
    ("probe_kind: file\n", r"needs probe_file"),
    ("size: [1, 2\n", r"cannot parse"),
])
def test_config_errors_are_one_line_input_errors(tmp_path, text, pattern):
    with pytest.raises(InputError, match=pattern) as exc:
        SimulationConfig.from_file(_write(tmp_path / "bad.yaml", text))
    assert "\n" not in str(exc.value)


def test_config_overrides(tmp_path):
    path = _write(tmp_path / "o.toml", "[simulate]\nsize = 32\nprobe_size = 16\nstep = 8.0\n")
    cfg = SimulationConfig.from_file(path, {"step": 4.0, "noise": "poisson"})
    assert (cfg.size, cfg.step, cfg.noise) == (32, 4.0, "poisson")
    assert SimulationConfig.build({"size": 16, "probe_size": 8}).size == 16
    with pytest.raises(InputError, match="command-line options: angles"):
        SimulationConfig.build({"angles": 0})


def test_config_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        SimulationConfig.from_file(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="cannot parse"):
        SimulationConfig.from_file(_write(tmp_path / "bad.toml", "size = = 3\n"))
    with pytest.raises(InputError, match="unknown type"):
        SimulationConfig.from_file(_write(tmp_path / "c.json", "{}"))
    with pytest.raises(InputError, match="unknown key 'extra'"):
        SimulationConfig.from_file(_write(tmp_path / "e.toml", "[simulate]\nextra = 1\n"))


# --- dataset assembly --------------------------------------------------------------------------------

def _reference_frame(volume, probe, angle_index, pos, pad, model, c):
    """Slow explicit reference: projection by summation (angle 0 integrates along y, pi/2 along x),
    padding, exp map, one window at an integer position, probe product, orthonormal np.fft.fft2."""
    nz, n, _ = volume.shape
    proj = volume.astype(np.complex128).sum(axis=1 if angle_index == 0 else 2)  # (nz, n)
    H = W = n + 2 * pad
    field = np.zeros((H, W), dtype=np.complex128)
    field[pad:pad + nz, pad:pad + n] = proj
    if model == "exp":
        field = np.exp(1j * c * field)
    r, col = (int(v) for v in pos)
    m1, m2 = probe.shape
    d = np.fft.fft2(probe.astype(np.complex128) * field[r:r + m1, col:col + m2], norm="ortho")
    return np.abs(d) ** 2


@pytest.mark.parametrize("model", ["linear", "exp"])
def test_simulate_dataset_matches_explicit_reference(model):
    cfg = SimulationConfig(phantom="ellipsoids", size=24, angles=2, angle_range=180, probe_size=16,
                           probe_fwhm=6.0, step=5.0, field_pad=2, model=model, voxel_nm=0.02, seed=1)
    calls = []
    ds = simulate_dataset(cfg, progress=lambda done, total: calls.append((done, total)),
                          max_frames_per_batch=30)
    assert calls[-1] == (2, 2) and len(calls) >= 2  # batches of angles
    assert len(ds.angles) == 2 and [a.angle_deg for a in ds.angles] == pytest.approx([0.0, 90.0])
    u = ds.truth["volume"]
    c = ds.truth["k_dz"]
    assert c == pytest.approx(k_dz(cfg.energy_ev, cfg.voxel_m))
    assert 0.1 < c * np.abs(u).max() < 2  # the exp model sees O(1) phases here
    for ai, a in enumerate(ds.angles):
        assert a.frames.dtype == np.float32 and a.frames.shape[1:] == (16, 16)
        assert a.positions.dtype == np.float64
        for j in (0, len(a.frames) // 2, len(a.frames) - 1):
            ref = _reference_frame(u, ds.truth["probe"], ai, a.positions[j], 2, model, c)
            np.testing.assert_allclose(a.frames[j], ref, rtol=2e-3, atol=2e-4 * ref.max())


def test_exp_model_free_space_gives_probe_diffraction():
    probe = gaussian_probe(16, 5.0)
    vol = np.zeros((12, 12, 12), np.complex64)
    angles = make_angles(3, "uniform", 180)
    pos = [raster_scan((20, 20), (16, 16), 2) for _ in angles]
    out = list(iter_intensities(vol, probe, angles, pos, (20, 20), model="exp", c=100.0))
    frames = np.concatenate([f for _, _, f in out])
    expected = np.abs(np.fft.fft2(probe.astype(np.complex128), norm="ortho")) ** 2
    assert frames.shape == (3 * 9, 16, 16)
    np.testing.assert_allclose(frames, np.broadcast_to(expected, frames.shape), rtol=1e-4,
                               atol=1e-6 * expected.max())
    # Parseval: each frame's total equals the probe's energy
    assert frames.sum(axis=(1, 2)) == pytest.approx(np.sum(np.abs(probe) ** 2), rel=1e-4)


def test_poisson_dataset_scaling_geometry_and_attrs():
    cfg = SimulationConfig(phantom="shepp-logan", size=24, angles=3, probe_size=16, probe_fwhm=6.0, step=4.0,
                           noise="poisson", peak=50.0, seed=2)
    clean = simulate_dataset(cfg.model_copy(update={"noise": "none"}))
    noisy = simulate_dataset(cfg)
    # stored probe = sqrt(eta) w, so E[f] = |F(probe S psi)|^2; the truth keeps w
    np.testing.assert_allclose(noisy.probe, noisy.truth["probe"] * np.sqrt(50.0), rtol=1e-6)
    np.testing.assert_allclose(clean.probe, noisy.probe, rtol=1e-6)
    f = np.concatenate([a.frames for a in noisy.angles])
    f_eta = np.concatenate([a.frames for a in clean.angles])
    assert np.all(f == np.round(f)) and f.min() >= 0
    assert f.sum() == pytest.approx(f_eta.sum(), rel=0.01)
    snr = noisy.attrs["snr_intensity_db"]
    assert snr == pytest.approx(snr_intensity(f, f_eta), abs=1e-6) and snr == noisy.truth["snr_intensity_db"]
    assert clean.attrs["snr_intensity_db"] is None
    # reproducible by seed
    again = simulate_dataset(cfg)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(noisy.angles, again.angles))
    # geometry: the sample-plane pixel equals the voxel
    g = noisy.geometry
    assert g.field_shape == (24, 24) and g.pixel_m == pytest.approx(10e-9)
    assert sample_pixel_size_m(g.energy_ev, g.detector_distance_m, g.detector_pixel_m[0], 16) == \
        pytest.approx(10e-9)
    assert noisy.attrs["overlap"] == pytest.approx(1 - 4 / probe_diameter_px(noisy.truth["probe"]))
    assert noisy.attrs["size"] == 24 and noisy.attrs["noise"] == "poisson"
    assert noisy.truth["model"] == "linear" and noisy.truth["field_pad"] == 0


def test_wires_disc_config_seed002_style():
    cfg = SimulationConfig(phantom="wires", size=16, angles=3, angle_range=360, probe_kind="disc",
                           probe_size=9, probe_fwhm=5.0, step=3.0, per_angle_offset=1.0, model="exp")
    ds = simulate_dataset(cfg)
    assert [a.angle_deg for a in ds.angles] == pytest.approx([0.0, 120.0, 240.0])
    assert [tuple(a.positions[0]) for a in ds.angles] == [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)]
    assert all(np.isfinite(a.frames).all() and a.frames.min() >= 0 for a in ds.angles)
    # a Fermat scan: fractional positions (bilinear windows), several frames per angle
    fermat = simulate_dataset(cfg.model_copy(update={"scan": "fermat", "step": 2.0}))
    assert all(len(a.frames) >= 3 for a in fermat.angles)
    assert not np.allclose(fermat.angles[0].positions, np.round(fermat.angles[0].positions))


def test_file_probe_dataset(tmp_path):
    np.save(tmp_path / "w.npy", disc_probe(10, 6.0))
    cfg = SimulationConfig(size=16, angles=1, probe_kind="file", probe_file=tmp_path / "w.npy", step=3.0)
    ds = simulate_dataset(cfg)
    assert ds.frame_shape == (10, 10) and ds.attrs["probe_shape"] == [10, 10]
    assert ds.attrs["probe_file"] == str(tmp_path / "w.npy")
    np.save(tmp_path / "big.npy", disc_probe(20, 6.0))
    with pytest.raises(InputError, match="exceeds"):
        simulate_dataset(cfg.model_copy(update={"probe_file": tmp_path / "big.npy"}))


def test_phase_object_sample():
    """seed 001's pure-phase sample: u = exp(i phi s), |u| = 1 everywhere, phase = phi x the phantom."""
    from hpc_pt.simulate import SimulationConfig, simulate_dataset
    from hpc_pt.simulate.dataset import make_phantom

    cfg = SimulationConfig(size=16, angles=2, probe_size=8, probe_fwhm=3, step=4, phase_object_rad=1.5)
    u = make_phantom(cfg)
    s = make_phantom(SimulationConfig(size=16, angles=2, probe_size=8, probe_fwhm=3, step=4))
    assert np.allclose(np.abs(u), 1, atol=1e-6)
    assert np.allclose(np.angle(u), 1.5 * s.real, atol=1e-5)
    ds = simulate_dataset(cfg)
    assert np.allclose(ds.truth["volume"], u)
    with pytest.raises(ValueError, match="pure-phase sample"):
        SimulationConfig(size=16, model="exp", phase_object_rad=1.0)
