"""Geometry pitfalls of data from other simulators and facilities: the rotation centre (given, stored,
estimated), odd-sized object fields, a probe stored at another intensity scale, frames stored without the
fftshift, and truth volumes inside arbitrary HDF5 files."""
from __future__ import annotations

import copy
import os
import sys

import h5py
import numpy as np
import pytest

from hpc_pt.cli import main
from hpc_pt.errors import InputError
from hpc_pt.io import read_cxi, scan_cxi, write_cxi
from hpc_pt.io.cxi import FIELD_ATTR, P_AXIS, P_DATA, dc_mass
from hpc_pt.metrics import evaluate
from hpc_pt.operators import ForwardModel, Projector, dot_test
from hpc_pt.pipeline import ReconConfig, build_shard, reconstruct
from hpc_pt.simulate import SimulationConfig, simulate_dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from threadcomm import run_threads  # noqa: E402

# 16^3 Shepp-Logan in a 26-pixel field, dense noise-free raster; the rotation axis 3 px right of the centre
SMALL = dict(size=16, angles=12, probe_size=8, probe_fwhm=2.5, step=2, field_pad=5)
C0 = (16 + 2 * 5 - 1) / 2.0
OFFSET = 3.0
# exponential model: 16^3 wires, 360 degrees, free space around the sample
EXP = dict(phantom="wires", size=16, angles=12, angle_range=360, probe_size=8, probe_fwhm=2.5, step=2,
           field_pad=4, model="exp")


@pytest.fixture(scope="module")
def offset_ds():
    return simulate_dataset(SimulationConfig(**SMALL, rotation_centre=C0 + OFFSET))


@pytest.fixture(scope="module")
def exp_ds():
    return simulate_dataset(SimulationConfig(**EXP))


def snr(res, ds):
    return evaluate(res.volume, ds.truth["volume"])["snr_db"]


# ------------------------------------------------------------------------------------------------------
# 1. rotation centre
# ------------------------------------------------------------------------------------------------------

def test_offset_centre_projector_is_adjoint_and_shifts_the_detector():
    n, W, nz = 12, 20, 2
    angles = np.linspace(0, np.pi, 7, endpoint=False)
    c = (W - 1) / 2 + 3.0
    P = Projector(n, nz, angles, n_det=W, center=c, dtype=np.complex128)
    assert dot_test(P) < 1e-10
    rng = np.random.default_rng(0)
    u = rng.standard_normal((nz, n, n)) + 1j * rng.standard_normal((nz, n, n))
    # the same Fourier sampling for both (the default M depends on the centre's reach)
    ref = Projector(n, nz, angles, n_det=W, dtype=np.complex128, oversample=3).fwd(u)
    moved = Projector(n, nz, angles, n_det=W, center=c, dtype=np.complex128, oversample=3).fwd(u)
    # the centre is a shift of the detector coordinate s: bin k + 3 now sees what bin k saw
    assert np.linalg.norm(moved[..., 3:] - ref[..., :-3]) < 1e-6 * np.linalg.norm(ref)


def test_right_centre_beats_the_wrong_one_and_round_trips_through_cxi(offset_ds, tmp_path):
    path = tmp_path / "off.h5"
    write_cxi(offset_ds, path)
    with h5py.File(path, "r") as f:
        assert abs(f["entry_1"][P_AXIS][()] / offset_ds.geometry.pixel_m - OFFSET) < 1e-9
    idx = scan_cxi(path)
    assert abs(idx.rotation_centre - (C0 + OFFSET)) < 1e-9
    right = reconstruct(str(path), method="apt", iterations=30)  # the file's centre
    wrong = reconstruct(offset_ds, method="apt", iterations=30, rotation_centre=C0)
    given = reconstruct(offset_ds, method="apt", iterations=30, rotation_centre=C0 + OFFSET)
    assert abs(snr(given, offset_ds) - snr(right, offset_ds)) < 0.5
    assert snr(right, offset_ds) > snr(wrong, offset_ds) + 8.0, (snr(right, offset_ds), snr(wrong, offset_ds))
    # measured 21.0 dB against 1.4 dB


def test_flipped_translations_flip_the_axis(offset_ds, tmp_path):
    path = tmp_path / "off.h5"
    write_cxi(offset_ds, path)
    idx = scan_cxi(path, flip_translations=True)
    assert abs(idx.rotation_centre - (C0 - OFFSET)) < 1e-9


def test_auto_centre_finds_a_3px_offset(offset_ds, capsys):
    from hpc_pt.calibrate import estimate_rotation_centre

    from hpc_pt.parallel import SerialComm

    shard = build_shard(offset_ds, "linear", centre=C0)
    est = estimate_rotation_centre(shard, SerialComm(deterministic=True))  # the reconstruction's mode
    assert abs(est["centre"] - (C0 + OFFSET)) < 0.5, est  # measured 15.44 (offset +2.94)
    assert abs(shard.space.P.center - est["centre"]) < 1e-12
    res = reconstruct(offset_ds, method="apts", iterations=2, rotation_centre="auto")
    assert abs(res.state["rotation_centre"] - est["centre"]) < 1e-6
    assert "rotation centre: estimated column" in capsys.readouterr().err


def test_auto_centre_on_thread_ranks_matches_serial(offset_ds):
    """MPI-style run: every rank takes part in every trial and ends with the serial estimate."""
    serial = reconstruct(offset_ds, method="gd", model="linear", iterations=2, rotation_centre="auto")
    results = run_threads(2, lambda comm: reconstruct(offset_ds, method="gd", model="linear", iterations=2,
                                                      rotation_centre="auto", comm=comm))
    assert results[0].state["rotation_centre"] == results[1].state["rotation_centre"]  # one decision
    # the ranks' sums run in another order (float32 rounding): measured 0.002 px from the serial estimate
    assert abs(results[0].state["rotation_centre"] - serial.state["rotation_centre"]) < 0.05
    assert np.linalg.norm(results[0].volume - serial.volume) < 1e-2 * np.linalg.norm(serial.volume)


def test_rotation_centre_settings_are_validated(offset_ds, tmp_path, capsys):
    assert ReconConfig.build({"rotation_centre": "auto"}).rotation_centre == "auto"
    assert ReconConfig.build({"rotation-centre": 12.5}).rotation_centre == 12.5
    with pytest.raises(InputError, match="rotation_centre"):
        ReconConfig.build({"rotation_centre": "middle"})
    path = tmp_path / "off.h5"
    write_cxi(offset_ds, path)
    rc = main(["reconstruct", str(path), "--method", "apts", "--iterations", "1", "--rotation-centre", "left",
               "--out", str(tmp_path / "r.zarr")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --rotation-centre")
    assert not (tmp_path / "r.zarr").exists()
    with pytest.raises(InputError, match="rotation_centre"):  # outside the 26-pixel field
        SimulationConfig.build({**SMALL, "rotation_centre": 40.0})
    for centre in ("999", "-3"):  # a column outside the object field: one line, nothing written
        rc = main(["reconstruct", str(path), "--method", "apts", "--iterations", "1", "--rotation-centre", centre,
                   "--out", str(tmp_path / "r.zarr")])
        err = capsys.readouterr().err.strip().splitlines()
        errors = [ln for ln in err if ln.startswith("error:")]
        assert rc == 2 and len(errors) == 1 and "outside the" in errors[0], err
        assert not (tmp_path / "r.zarr").exists()


def test_cli_reconstruct_logs_and_records_the_centre(offset_ds, tmp_path, capsys):
    import zarr

    path = tmp_path / "off.h5"
    write_cxi(offset_ds, path)
    out = tmp_path / "r.zarr"
    assert main(["reconstruct", str(path), "--method", "apts", "--iterations", "1", "--rotation-centre", "14.5",
                 "--out", str(out), "--quiet"]) == 0
    state = zarr.open_group(str(out), mode="r").attrs["solver_state"]
    assert abs(state["rotation_centre"] - 14.5) < 1e-9 and abs(state["rotation_centre_offset_px"] - 2.0) < 1e-9
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "rotation centre" in text and "15.50 (from the file)" in text


# ------------------------------------------------------------------------------------------------------
# 2. odd-sized fields
# ------------------------------------------------------------------------------------------------------

def _drop_field_attr(path):
    with h5py.File(path, "r+") as f:
        del f.attrs[FIELD_ATTR]


def test_odd_field_is_inferred_exactly(tmp_path):
    """A 61-pixel field written by a simulator that does not record it: the reader infers 61 (not 62) from
    the translations, every window lands on its integer position, and the truth's forward model matches
    the stored frames."""
    cfg = SimulationConfig(size=21, angles=3, probe_size=8, probe_fwhm=2.5, step=4, field_pad=20)
    ds = simulate_dataset(cfg)
    assert ds.geometry.field_shape == (61, 61)
    path = tmp_path / "odd.h5"
    write_cxi(ds, path)
    _drop_field_attr(path)
    idx = scan_cxi(path)
    assert idx.field_shape == (61, 61)
    for e, a in zip(idx.entries, ds.angles):
        assert np.array_equal(e.positions, a.positions)
        assert np.array_equal(e.positions, np.round(e.positions))
    back = read_cxi(path)
    fm = ForwardModel(ds.truth["volume"].shape, back.angles_rad, back.probe, [a.positions for a in back.angles],
                      back.geometry.field_shape)
    model = fm.intensity(ds.truth["volume"])
    data = np.concatenate([a.frames for a in back.angles])
    misfit = np.linalg.norm(model - data) / np.linalg.norm(data)
    assert misfit < 0.01, misfit  # measured 0 (the even 62-pixel field the reader used to pick: 9.3%)
    # --field-shape overrides: a 63-pixel field puts every window one pixel further in
    wide = scan_cxi(path, field_shape=(63, 63))
    assert np.array_equal(wide.entries[0].positions, ds.angles[0].positions + 1)


def test_field_shape_flag_and_its_errors(tmp_path, capsys):
    cfg = SimulationConfig(size=9, angles=2, probe_size=6, probe_fwhm=2.0, step=3, field_pad=4)
    ds = simulate_dataset(cfg)
    path = tmp_path / "odd.h5"
    write_cxi(ds, path)
    _drop_field_attr(path)
    assert main(["info", str(path), "--json", "--field-shape", "19,19"]) == 0
    assert '"field_shape": [19, 19]' in capsys.readouterr().out
    for bad, words in (("17", "two positive integers"), ("9,9", "--field-shape")):
        assert main(["info", str(path), "--field-shape", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_subpixel_scans_keep_an_even_field():
    from hpc_pt.conventions import field_for_translations, field_parity

    assert field_parity([0.3, 1.7], 8) is None
    tr = np.array([[0.3e-8, 0.0, 0.0], [-2.1e-8, 1.2e-8, 0.0]])
    H, W = field_for_translations(tr, (8, 8), 1e-8)
    assert H % 2 == 0 and W % 2 == 0


# ------------------------------------------------------------------------------------------------------
# 3. probe at another intensity scale
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["gd", "admm"])
def test_probe_scaled_by_an_unknown_factor_is_rescaled(exp_ds, tmp_path, method, capsys):
    scaled = copy.copy(exp_ds)
    scaled.probe = (exp_ds.probe / np.sqrt(1000.0)).astype(np.complex64)
    path = tmp_path / "scaled.h5"
    write_cxi(scaled, path)
    ref = reconstruct(exp_ds, method=method, iterations=30)
    assert "probe rescaled" not in capsys.readouterr().err
    res = reconstruct(str(path), method=method, iterations=30)
    err = capsys.readouterr().err
    assert err.count("probe rescaled by") == 1
    assert abs(res.state["probe_scale"] - np.sqrt(1000.0)) < 0.05 * np.sqrt(1000.0)
    assert np.all(np.isfinite(res.volume))
    assert snr(res, exp_ds) > snr(ref, exp_ds) - 0.5, (snr(res, exp_ds), snr(ref, exp_ds))
    # measured: gd 5.06 / 5.06 dB, admm 8.28 / 8.30 dB (without the rescale: 0.34 dB, admm diverges)


# ------------------------------------------------------------------------------------------------------
# 4. frames stored without the fftshift
# ------------------------------------------------------------------------------------------------------

def _unshift_frames(path):
    """Rewrite every entry's frames with DC at index 0 (what a writer that forgot the fftshift stores)."""
    with h5py.File(path, "r+") as f:
        for name in [k for k in f if k.startswith("entry_")]:
            d = f[name][P_DATA]
            d[...] = np.fft.ifftshift(d[()], axes=(-2, -1))


def test_unshifted_frames_are_refused_and_fftshift_fixes_them(exp_ds, tmp_path, capsys):
    path = tmp_path / "unshifted.h5"
    write_cxi(exp_ds, path)
    centre, corners = dc_mass(h5py.File(path, "r")["entry_1"][P_DATA][()])
    assert centre > 10 * corners  # the format: the diffraction peak at the centre
    _unshift_frames(path)
    with pytest.raises(InputError, match="--fftshift"):
        scan_cxi(path)
    for cmd in ("info", "validate"):
        assert main([cmd, str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pass --fftshift" in err[0], err
    fixed = read_cxi(path, fftshift=True)
    for a, b in zip(fixed.angles, exp_ds.angles):
        assert np.allclose(a.frames, b.frames, rtol=1e-6, atol=1e-6 * float(b.frames.max()))
    assert main(["validate", str(path), "--fftshift"]) == 0
    capsys.readouterr()
    # a correct file with --fftshift is refused the other way round
    good = tmp_path / "good.h5"
    write_cxi(exp_ds, good)
    assert main(["info", str(good), "--fftshift"]) == 2
    assert "drop --fftshift" in capsys.readouterr().err
    out = tmp_path / "r.zarr"
    assert main(["reconstruct", str(path), "--method", "gd", "--iterations", "2", "--fftshift", "--quiet",
                 "--out", str(out)]) == 0


# ------------------------------------------------------------------------------------------------------
# 5. evaluate --truth FILE.h5:/group/volume
# ------------------------------------------------------------------------------------------------------

def test_evaluate_truth_from_an_hdf5_dataset(offset_ds, tmp_path, capsys):
    import json

    from hpc_pt.io import write_volume

    recon = tmp_path / "r.zarr"
    truth = offset_ds.truth["volume"]
    rng = np.random.default_rng(3)
    noisy = (truth + 0.05 * rng.standard_normal(truth.shape)).astype(np.complex64)
    write_volume(recon, noisy, 1e-8)
    h5 = tmp_path / "facility.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("sample/reference/volume", data=truth)
        f.create_dataset("sample/flat", data=np.zeros(4))
    assert main(["evaluate", str(recon), "--truth", f"{h5}:/sample/reference/volume", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = evaluate(noisy, truth)
    assert got["truth_shape"] == list(truth.shape)
    assert abs(got["snr_db"] - want["snr_db"]) < 1e-3 and np.isfinite(got["snr_db"])
    for inner, words in (("/sample/missing", "does not exist"), ("/sample", "is a group"),
                         ("/sample/flat", "(nz, n, n)")):
        assert main(["evaluate", str(recon), "--truth", f"{h5}:{inner}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
