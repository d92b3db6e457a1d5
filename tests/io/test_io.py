"""CXI / Zarr / provenance / summary tests on tiny hand-built datasets (no dependency on hpc_pt.simulate)."""
import hashlib
import json
import os
import shlex
import shutil
import sys

import h5py
import numpy as np
import pytest
import zarr

from hpc_pt import conventions as cv
from hpc_pt.data import AngleData, Dataset, Geometry
from hpc_pt.errors import InputError
from hpc_pt.io import cxi as cxi_mod
from hpc_pt.io import (
    describe,
    file_checksum,
    format_description,
    provenance,
    read_cxi,
    read_frames,
    read_truth,
    read_volume,
    scan_cxi,
    write_cxi,
    write_volume,
    zarr_store,
)
from hpc_pt.operators.scan import probe_diameter_px as probe_fwhm_px

M = 16  # probe / frame size
FIELD = (32, 40)
ENERGY = 8000.0
DET_PIX = 75e-6
PIX = 10e-9


def make_dataset(rng, n_frames=(5, 3), angles=(0.0, 30.0), mask=True, truth=True, step=6):
    dist = cv.detector_distance_for(ENERGY, PIX, DET_PIX, M)
    geo = Geometry(energy_ev=ENERGY, detector_distance_m=dist, detector_pixel_m=(DET_PIX, DET_PIX),
                   pixel_m=cv.sample_pixel_size_m(ENERGY, dist, DET_PIX, M), field_shape=FIELD)
    grid = np.array([(r, c) for r in range(0, FIELD[0] - M + 1, step) for c in range(0, FIELD[1] - M + 1, step)],
                    dtype=np.float64)
    data = []
    for k, (nf, ang) in enumerate(zip(n_frames, angles)):
        pos = grid[(np.arange(nf) * 2 + k) % len(grid)].copy()
        pos[0] += (0.25, 0.5)  # one sub-pixel position
        frames = rng.random((nf, M, M)).astype(np.float32) * 100
        frames[:, 0, 0] = 1000 + k  # a "DC" marker at index 0
        data.append(AngleData(angle_deg=float(ang), frames=frames, positions=pos))
    yy, xx = np.mgrid[:M, :M] - (M - 1) / 2
    probe = (np.exp(-(yy ** 2 + xx ** 2) / 18.0) * np.exp(1j * 0.1 * xx)).astype(np.complex64)
    m = np.ones((M, M), bool)
    m[3, 5] = False
    tr = {"volume": (rng.random((FIELD[0], FIELD[1], FIELD[1])) + 1j).astype(np.complex64),
          "model": "linear", "noise": {"kind": "poisson", "eta": 1e3}} if truth else None
    return Dataset(angles=data, probe=probe, geometry=geo, mask=m if mask else None, truth=tr,
                   attrs={"seed": 7, "scan": "grid"})


@pytest.fixture
def ds(rng):
    return make_dataset(rng)


@pytest.fixture
def cxi_file(ds, tmp_path):
    p = tmp_path / "d.cxi"
    write_cxi(ds, p, command="hpc-pt simulate --out d.cxi")
    return p


def assert_same(a: Dataset, b: Dataset):
    assert len(a.angles) == len(b.angles)
    for x, y in zip(a.angles, b.angles):
        assert x.angle_deg == y.angle_deg
        np.testing.assert_array_equal(x.frames, y.frames)
        assert y.frames.dtype == np.float32
        np.testing.assert_allclose(x.positions, y.positions, atol=1e-9)
    np.testing.assert_array_equal(a.probe, b.probe)
    assert b.geometry.field_shape == a.geometry.field_shape
    assert b.geometry.energy_ev == pytest.approx(a.geometry.energy_ev, rel=1e-12)
    assert b.geometry.pixel_m == pytest.approx(a.geometry.pixel_m, rel=1e-12)
    assert b.geometry.detector_distance_m == pytest.approx(a.geometry.detector_distance_m, rel=1e-12)


def listing(d):
    return sorted(os.listdir(d))


# ---------------------------------------------------------------------------------------------- CXI


def test_cxi_round_trip(ds, cxi_file):
    back = read_cxi(cxi_file, load_truth=True)
    assert_same(ds, back)
    np.testing.assert_array_equal(back.mask, ds.mask)
    assert back.attrs == ds.attrs
    np.testing.assert_array_equal(back.truth["volume"], ds.truth["volume"])
    assert back.truth["model"] == "linear" and back.truth["noise"]["eta"] == 1e3
    assert read_cxi(cxi_file).truth is None  # readers ignore the truth group by default
    assert list(back.n_frames) == [5, 3]  # ragged


def test_cxi_layout_on_disk(ds, cxi_file):
    with h5py.File(cxi_file, "r") as f:
        assert int(f["cxi_version"][()]) == 160
        assert json.loads(f.attrs["config"]) == ds.attrs
        assert f.attrs["command"] == "hpc-pt simulate --out d.cxi"
        assert "hpc_pt_truth" in f
        assert sorted(k for k in f if k.startswith("entry_")) == ["entry_1", "entry_2"]
        d = f["entry_1/data_1/data"]
        assert d.dtype == np.float32 and d.shape == (5, M, M)
        # stored fftshifted: the DC marker sits at the centre
        assert d[0, M // 2, M // 2] == 1000
        np.testing.assert_array_equal(d[1], np.fft.fftshift(ds.angles[0].frames[1]))
        t = f["entry_1/sample_1/geometry_1/translation"][()]
        np.testing.assert_allclose(t, cv.positions_to_translations(ds.angles[0].positions, (M, M), FIELD, PIX))
        np.testing.assert_array_equal(f["entry_1/data_1/translation"][()], t)  # CXI soft link
        assert f["entry_2/sample_1/tomography_angle_deg"][()] == 30.0
        assert f["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(cv.ev_to_joule(ENERGY))
        assert f["entry_1/instrument_1/detector_1/x_pixel_size"][()] == DET_PIX
        p = f["entry_1/instrument_1/source_1/illumination"]
        assert p.dtype == np.complex64
        np.testing.assert_array_equal(p[()], ds.probe)  # real-space: not shifted
        mk = f["entry_1/instrument_1/detector_1/mask"][()]
        assert mk.dtype == np.uint8
        np.testing.assert_array_equal(mk, np.fft.fftshift(ds.mask).astype(np.uint8))


def test_cxi_computed_field_without_attr(ds, cxi_file):
    """An external file (no hpc_pt_field_shape attr) gets the smallest even field holding every window,
    centred on the rotation axis horizontally and on the middle of the scanned heights vertically."""
    with h5py.File(cxi_file, "a") as f:
        del f.attrs["hpc_pt_field_shape"]
    back = read_cxi(cxi_file)
    all_t = np.concatenate([cv.positions_to_translations(a.positions, (M, M), FIELD, PIX) for a in ds.angles])
    y0 = 0.5 * (all_t[:, 1].min() + all_t[:, 1].max())
    fs = cv.field_for_translations(all_t - [0, y0, 0], (M, M), PIX)
    assert back.geometry.field_shape == fs
    off = (np.array(fs) - np.array(FIELD)) / 2 - np.array([y0 / PIX, 0.0])
    for a, b in zip(ds.angles, back.angles):
        np.testing.assert_allclose(b.positions, a.positions + off, atol=1e-9)
    # an explicit field_shape wins
    assert read_cxi(cxi_file, field_shape=(48, 48)).geometry.field_shape == (48, 48)


def test_absolute_stage_heights_do_not_inflate_the_field(ds, cxi_file):
    """A 50 um vertical stage offset (facilities record absolute heights) leaves the field unchanged."""
    with h5py.File(cxi_file, "a") as f:
        del f.attrs["hpc_pt_field_shape"]
    before = read_cxi(cxi_file).geometry.field_shape
    with h5py.File(cxi_file, "a") as f:
        for name in [k for k in f if k.startswith("entry_")]:
            t = f[f"{name}/sample_1/geometry_1/translation"]
            v = t[()]
            v[:, 1] += 50e-6
            t[...] = v
    assert read_cxi(cxi_file).geometry.field_shape == before


def test_cxi_directory_form(rng, tmp_path):
    ds = make_dataset(rng, n_frames=(4, 2, 3), angles=(0.0, 60.0, 120.0))
    d = tmp_path / "scans"
    d.mkdir()
    # two files: the first holds angles 0 and 1 (two entries), the second angle 2; names give the order
    write_cxi(Dataset(angles=ds.angles[2:], probe=ds.probe, geometry=ds.geometry, mask=ds.mask), d / "b.cxi")
    write_cxi(Dataset(angles=ds.angles[:2], probe=ds.probe, geometry=ds.geometry, mask=ds.mask), d / "a.cxi")
    (d / "notes.txt").write_text("ignored")
    back = read_cxi(d)
    assert_same(ds, back)
    idx = scan_cxi(d)
    assert [e.label for e in idx.entries] == ["a.cxi:entry_1", "a.cxi:entry_2", "b.cxi:entry_1"]


def _rewrite_translations(path, fn):
    with h5py.File(path, "a") as f:
        for name in [k for k in f if k.startswith("entry_")]:
            g = f[name]["sample_1/geometry_1"]
            t = g["translation"][()]
            del g["translation"]
            g["translation"] = fn(t)


def test_cxi_translation_layout_3_by_frames(ds, cxi_file):
    _rewrite_translations(cxi_file, lambda t: t.T.copy())
    assert_same(ds, read_cxi(cxi_file))  # auto
    assert_same(ds, read_cxi(cxi_file, translation_layout="3,frames"))
    with pytest.raises(InputError, match="translation_layout"):
        read_cxi(cxi_file, translation_layout="frames,3")


def test_cxi_translation_ambiguous_3x3_taken_as_frames_by_3(rng, tmp_path):
    ds = make_dataset(rng, n_frames=(3, 3))
    write_cxi(ds, tmp_path / "a.cxi")
    assert_same(ds, read_cxi(tmp_path / "a.cxi"))


def test_cxi_flip_translations(ds, cxi_file):
    _rewrite_translations(cxi_file, lambda t: -t)  # a facility recording the sample stage
    assert_same(ds, read_cxi(cxi_file, flip_translations=True))


def test_cxi_partial_reads(ds, cxi_file):
    idx = scan_cxi(cxi_file)
    assert idx.n_angles == 2 and idx.angles_deg == [0.0, 30.0] and list(idx.n_frames) == [5, 3]
    assert idx.frame_shape == (M, M) and idx.frame_dtype == "float32"
    np.testing.assert_array_equal(read_frames(idx, 0, 1, 4), ds.angles[0].frames[1:4])
    np.testing.assert_array_equal(read_frames(cxi_file, 1), ds.angles[1].frames)
    sub = read_cxi(cxi_file, select_angles=[1], frames_slice=(1, 3))
    assert len(sub.angles) == 1 and sub.angles[0].angle_deg == 30.0
    np.testing.assert_array_equal(sub.angles[0].frames, ds.angles[1].frames[1:3])
    np.testing.assert_allclose(sub.angles[0].positions, ds.angles[1].positions[1:3])
    with pytest.raises(InputError, match="out of range"):
        read_frames(idx, 5)


# ----------------------------------------------------------------------------------- bad input files


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_cxi(tmp_path / "nope.cxi")


def test_not_hdf5(tmp_path):
    p = tmp_path / "x.cxi"
    p.write_text("hello")
    with pytest.raises(InputError, match="not an HDF5 file"):
        read_cxi(p)


def test_no_entries(tmp_path):
    p = tmp_path / "x.cxi"
    with h5py.File(p, "w") as f:
        f["foo"] = 1
    with pytest.raises(InputError, match="no /entry_N"):
        read_cxi(p)


@pytest.mark.parametrize("key", ["data_1/data", "instrument_1/detector_1/distance", "sample_1/tomography_angle_deg",
                                 "instrument_1/source_1/energy"])  # no illumination: estimated (test_convert.py)
def test_missing_key(cxi_file, key):
    with h5py.File(cxi_file, "a") as f:
        del f["entry_1/" + key]
        if key == "sample_1/geometry_1/translation":
            del f["entry_1/data_1/translation"]
    with pytest.raises(InputError, match=f"missing CXI dataset /entry_1/{key}"):
        read_cxi(cxi_file)


def test_missing_translation(cxi_file):
    with h5py.File(cxi_file, "a") as f:
        del f["entry_2/sample_1/geometry_1/translation"]
    with pytest.raises(InputError, match="missing CXI dataset /entry_2/sample_1/geometry_1/translation"):
        read_cxi(cxi_file)


def test_nan_and_negative_intensities(cxi_file):
    with h5py.File(cxi_file, "a") as f:
        d = f["entry_2/data_1/data"]
        d[1, 2, 3] = np.nan
        d[2, 0, 0] = -1
        d[2, 0, 1] = -2
    with pytest.raises(InputError) as ei:
        read_cxi(cxi_file)
    msg = str(ei.value)
    assert "entry_2" in msg and "1 NaN" in msg and "2 negative" in msg and "mask" in msg
    read_frames(cxi_file, 0)  # other angles still readable


def test_frames_translations_mismatch(cxi_file):
    _rewrite_translations(cxi_file, lambda t: t[:-1])
    with pytest.raises(InputError, match="entry_1: 5 frames but 4 translations; the translation dataset must have "
                                         "one row per frame"):
        read_cxi(cxi_file)


def test_bad_translation_shape(cxi_file):
    _rewrite_translations(cxi_file, lambda t: t[:, :2])
    with pytest.raises(InputError, match=r"\(frames, 3\) or \(3, frames\)"):
        read_cxi(cxi_file)


def test_positions_outside_given_field(cxi_file):
    with pytest.raises(InputError, match="outside the 20x20 object field.*larger field_shape"):
        read_cxi(cxi_file, field_shape=(20, 20))


def test_probe_shape_mismatch(cxi_file):
    with h5py.File(cxi_file, "a") as f:
        del f["entry_1/instrument_1/source_1/illumination"]
        f["entry_1/instrument_1/source_1/illumination"] = np.ones((8, 8), np.complex64)
    with pytest.raises(InputError, match=r"entry_1: probe \(illumination\) shape \(8, 8\) differs from the frame"):
        read_cxi(cxi_file)


def test_mask_shape_mismatch(cxi_file):
    with h5py.File(cxi_file, "a") as f:
        del f["entry_1/instrument_1/detector_1/mask"]
        f["entry_1/instrument_1/detector_1/mask"] = np.ones((8, 8), np.uint8)
    with pytest.raises(InputError, match=r"entry_1: mask shape \(8, 8\) differs"):
        read_cxi(cxi_file)


def test_duplicate_angles(cxi_file):
    with h5py.File(cxi_file, "a") as f:
        f["entry_2/sample_1/tomography_angle_deg"][()] = 0.0
    with pytest.raises(InputError, match="duplicate angle 0 deg in entry_1 and entry_2"):
        read_cxi(cxi_file)


@pytest.mark.parametrize("key,value,word", [
    ("instrument_1/source_1/energy", 0.0, "energy"),
    ("instrument_1/detector_1/distance", -1.0, "detector distance"),
    ("instrument_1/detector_1/x_pixel_size", 0.0, "x_pixel_size"),
    ("instrument_1/detector_1/y_pixel_size", np.nan, "y_pixel_size"),
])
def test_non_positive_geometry(cxi_file, key, value, word):
    with h5py.File(cxi_file, "a") as f:
        f["entry_2/" + key][()] = value
    with pytest.raises(InputError, match=f"entry_2: {word} is .*positive"):
        read_cxi(cxi_file)


def test_inconsistent_geometry_between_entries(cxi_file):
    with h5py.File(cxi_file, "a") as f:
        f["entry_2/instrument_1/detector_1/distance"][()] = 2 * f["entry_1/instrument_1/detector_1/distance"][()]
    with pytest.raises(InputError, match="share one energy"):
        read_cxi(cxi_file)


def test_empty_directory(tmp_path):
    with pytest.raises(InputError, match="no CXI files"):
        read_cxi(tmp_path)


# ----------------------------------------------------------------------------------------- writing


def test_overwrite_refused_original_intact(ds, cxi_file):
    before = cxi_file.read_bytes()
    with pytest.raises(InputError, match="--force"):
        write_cxi(ds, cxi_file)
    assert cxi_file.read_bytes() == before
    assert listing(cxi_file.parent) == ["d.cxi"]
    ds.angles[0].frames[:] = 1
    write_cxi(ds, cxi_file, overwrite=True)
    np.testing.assert_array_equal(read_frames(cxi_file, 0), 1)


def test_failure_mid_write_leaves_nothing(ds, cxi_file, monkeypatch):
    before = cxi_file.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cxi_mod, "_write_truth", boom)
    with pytest.raises(RuntimeError):
        write_cxi(ds, cxi_file.parent / "new.cxi")
    with pytest.raises(RuntimeError):
        write_cxi(ds, cxi_file, overwrite=True)
    assert listing(cxi_file.parent) == ["d.cxi"]
    assert cxi_file.read_bytes() == before


def test_write_bad_dataset_leaves_nothing(ds, tmp_path):
    ds.angles[1].frames = ds.angles[1].frames[:, :8, :8]
    with pytest.raises(InputError, match="angle 1: frames have shape .*match the probe"):
        write_cxi(ds, tmp_path / "x.cxi")
    assert listing(tmp_path) == []


def test_unwritable_directory(ds, tmp_path):
    with pytest.raises(InputError, match="cannot write .*x.cxi: .*; choose a writable --out path"):
        write_cxi(ds, tmp_path / "no" / "such" / "dir" / "x.cxi")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(InputError, match="choose a writable --out path"):
                write_cxi(ds, ro / "x.cxi")
        finally:
            ro.chmod(0o700)
        assert listing(ro) == []


# ------------------------------------------------------------------------------------------- summary


def test_describe(ds, cxi_file):
    d = describe(cxi_file)
    assert d["n_angles"] == 2 and d["angles_deg"] == [0.0, 30.0]
    assert d["frames_per_angle"] == [5, 3] and d["frames_total"] == 8
    assert d["detector_shape"] == [M, M] and d["field_shape"] == list(FIELD)
    assert d["energy_ev"] == pytest.approx(ENERGY)
    assert d["wavelength_m"] == pytest.approx(cv.wavelength_m(ENERGY))
    assert d["sample_pixel_m"] == pytest.approx(PIX)
    mem = d["memory"]
    assert mem["data"] == 8 * M * M * 4
    assert mem["admm_z_and_multiplier"] == 2 * 8 * M * M * 8
    assert mem["volume"] == FIELD[0] * FIELD[1] * FIELD[1] * 8
    assert mem["total"] == mem["data"] + mem["admm_z_and_multiplier"] + mem["volume"]
    assert 0 < d["probe_fwhm_px"] < M
    text = format_description(d)
    assert "overlap" in text and "memory: total" in text and "8 total" in text


def test_overlap_ratio_on_a_grid(rng, tmp_path):
    ds = make_dataset(rng, n_frames=(6, 6), step=4, truth=False)
    yy, xx = np.mgrid[:M, :M] - (M - 1) / 2
    ds.probe = (np.hypot(yy, xx) <= 5).astype(np.complex64)  # a disc: FWHM = equal-area diameter
    fwhm = probe_fwhm_px(ds.probe)
    assert fwhm == pytest.approx(2 * np.sqrt(np.count_nonzero(np.abs(ds.probe)) / np.pi))
    assert 9.5 < fwhm < 11
    for a in ds.angles:
        a.positions = np.array([(r, c) for r in (0, 4) for c in (0, 4, 8)], float)
    write_cxi(ds, tmp_path / "g.cxi")
    d = describe(tmp_path / "g.cxi")
    assert d["median_step_px"] == pytest.approx(4.0)
    assert d["overlap_ratio"] == pytest.approx(1 - 4.0 / fwhm)


# ---------------------------------------------------------------------------------------------- Zarr


def test_zarr_round_trip_and_metadata(rng, tmp_path, cxi_file):
    vol = (rng.standard_normal((6, 8, 8)) + 1j * rng.standard_normal((6, 8, 8))).astype(np.complex64)
    out = tmp_path / "r.zarr"
    write_volume(out, vol, 10e-9, attrs={"solver": "admm", "iterations": np.int64(3)}, chunks_z=4,
                 command=["hpc-pt", "reconstruct", "d.cxi"], config={"lam": 0.1}, input_path=cxi_file)
    g = zarr.open(str(out), mode="r")  # plain zarr
    np.testing.assert_array_equal(g["volume"][...], vol)
    assert g["volume"].dtype == np.complex64
    assert g["volume"].chunks == (4, 8, 8)
    np.testing.assert_array_equal(g["0"][...], vol.real)
    np.testing.assert_array_equal(g["beta"][...], vol.imag)
    assert g["0"].dtype == np.float32 and g["1"].shape == (3, 4, 4)
    np.testing.assert_allclose(g["1"][0, 0, 0], vol.real[:2, :2, :2].mean(), rtol=1e-5)
    a = g.attrs.asdict()
    ome = a["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [x["name"] for x in ms["axes"]] == ["z", "y", "x"]
    assert all(x["type"] == "space" and x["unit"] == "nanometer" for x in ms["axes"])
    assert [d["path"] for d in ms["datasets"]] == ["0", "1"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([10, 10, 10])
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == pytest.approx([20, 20, 20])
    assert a["voxel_size_m"] == 10e-9
    assert a["units"]["volume"] == "dimensionless (delta + i beta)"
    assert a["solver"] == "admm" and a["iterations"] == 3
    prov = a["provenance"]
    assert prov["input_sha256"] == hashlib.sha256(cxi_file.read_bytes()).hexdigest()
    assert prov["command"] == "hpc-pt reconstruct d.cxi" and prov["config"] == {"lam": 0.1}
    assert prov["hpc_pt_version"] and prov["numpy_version"] == np.__version__
    zarr.open_consolidated(str(out), mode="r")  # consolidated metadata present
    v2, a2 = read_volume(out)
    np.testing.assert_array_equal(v2, vol)
    assert a2["voxel_size_m"] == 10e-9
    assert listing(tmp_path) == ["d.cxi", "r.zarr"]


def test_zarr_default_chunks():
    assert zarr_store.default_chunks_z((1000, 512, 512)) == 8  # 16 MiB / (512*512*8 B)
    assert zarr_store.default_chunks_z((3, 4096, 4096)) == 1
    assert zarr_store.default_chunks_z((4, 8, 8)) == 4


def test_zarr_micrometer_units(tmp_path):
    write_volume(tmp_path / "v.zarr", np.zeros((2, 4, 4), np.complex64), 2e-6)
    ms = zarr.open(str(tmp_path / "v.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    assert ms["axes"][0]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([2, 2, 2])


def test_zarr_overwrite_refused_and_failure_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "v.zarr"
    write_volume(out, np.ones((2, 4, 4), np.complex64), 1e-8)
    with pytest.raises(InputError, match="--force"):
        write_volume(out, np.zeros((2, 4, 4), np.complex64), 1e-8)
    assert read_volume(out)[0][0, 0, 0] == 1

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(zarr_store.zarr, "consolidate_metadata", boom)
    with pytest.raises(RuntimeError):
        write_volume(out, np.zeros((2, 4, 4), np.complex64), 1e-8, overwrite=True)
    with pytest.raises(RuntimeError):
        write_volume(tmp_path / "w.zarr", np.zeros((2, 4, 4), np.complex64), 1e-8)
    assert listing(tmp_path) == ["v.zarr"]
    assert read_volume(out)[0][0, 0, 0] == 1
    monkeypatch.undo()
    write_volume(out, np.zeros((2, 4, 4), np.complex64), 1e-8, overwrite=True)
    assert read_volume(out)[0][0, 0, 0] == 0
    assert listing(tmp_path) == ["v.zarr"]


def test_zarr_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="3D"):
        write_volume(tmp_path / "a.zarr", np.zeros((4, 4)), 1e-8)
    with pytest.raises(InputError, match="positive"):
        write_volume(tmp_path / "a.zarr", np.zeros((2, 4, 4)), 0.0)
    with pytest.raises(InputError, match="cannot write .*writable --out"):
        write_volume(tmp_path / "no" / "dir" / "a.zarr", np.zeros((2, 4, 4)), 1e-8)
    with pytest.raises(InputError, match="no such Zarr store"):
        read_volume(tmp_path / "missing.zarr")
    assert listing(tmp_path) == []


# ---------------------------------------------------------------------------------------- provenance


def test_provenance_and_checksum(tmp_path):
    p = tmp_path / "f.bin"
    data = os.urandom(3 * (1 << 20) + 123)  # several 1 MiB blocks
    p.write_bytes(data)
    assert file_checksum(p) == hashlib.sha256(data).hexdigest()
    rec = provenance(input_path=p, config={"a": (1, 2)})
    assert rec["command"] == shlex.join(sys.argv)
    assert rec["input_sha256"] == hashlib.sha256(data).hexdigest()
    assert rec["config"] == {"a": [1, 2]}
    assert rec["timestamp_utc"].endswith("+00:00") and rec["hostname"] and rec["python_version"]
    json.dumps(rec)
    # directory checksum changes with any file's content
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(p, d / "a.cxi")
    c1 = file_checksum(d)
    (d / "a.cxi").write_bytes(b"x")
    assert file_checksum(d) != c1


def test_read_truth_none_without_group(rng, tmp_path):
    ds = make_dataset(rng, truth=False)
    write_cxi(ds, tmp_path / "a.cxi")
    assert read_truth(tmp_path / "a.cxi") is None
