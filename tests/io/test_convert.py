"""``hpc-pt convert`` (NumPy arrays + a description file, NXcxi_ptycho NeXus) and probe-less inputs.

Each reader is tested by a round trip: a tiny simulated dataset is exported to the foreign layout here (frames
as a detector records them, positions in physical units, stage signs, ...), converted back, and compared
with the original; ``hpc-pt validate`` must pass on the result.
"""
import json
import math
import os
import re

import h5py
import numpy as np
import pytest

from hpc_pt import conventions as cv
from hpc_pt.cli import main
from hpc_pt.errors import InputError
from hpc_pt.io import describe, read_cxi, scan_cxi, write_cxi
from hpc_pt.io.convert import convert, parse_quantity
from hpc_pt.metrics import evaluate
from hpc_pt.pipeline import reconstruct
from hpc_pt.simulate import SimulationConfig, gaussian_probe, simulate_dataset
from hpc_pt.simulate.probe_init import estimate_probe, fit_far_field

TINY = dict(size=16, angles=6, probe_size=8, probe_fwhm=3, step=3, field_pad=3, per_angle_offset=1)


EVEN = {k: v for k, v in TINY.items() if k != "per_angle_offset"}  # the same frame count at every angle


@pytest.fixture(scope="module")
def tiny():
    return simulate_dataset(SimulationConfig(**TINY))


@pytest.fixture(scope="module")
def even():
    return simulate_dataset(SimulationConfig(**EVEN))


def translations(ds, a):
    g = ds.geometry
    return cv.positions_to_translations(ds.angles[a].positions, ds.frame_shape, g.field_shape, g.pixel_m)


def recorded(frames):
    """Frames as a detector records them: DC at the centre."""
    return np.fft.fftshift(np.asarray(frames), axes=(-2, -1))


def assert_same_scan(ds, path, y_shift_ok=True):
    """The converted file holds the original frames, angles, geometry and translations."""
    back = read_cxi(path)
    assert len(back.angles) == len(ds.angles)
    g0, g1 = ds.geometry, back.geometry
    assert math.isclose(g1.energy_ev, g0.energy_ev, rel_tol=1e-9)
    assert math.isclose(g1.detector_distance_m, g0.detector_distance_m, rel_tol=1e-9)
    assert np.allclose(g1.detector_pixel_m, g0.detector_pixel_m, rtol=1e-9)
    assert math.isclose(g1.pixel_m, g0.pixel_m, rel_tol=1e-9)
    offsets = []
    for a, (a0, a1) in enumerate(zip(ds.angles, back.angles)):
        assert abs(a1.angle_deg - a0.angle_deg) < 1e-9
        np.testing.assert_allclose(a1.frames, a0.frames, rtol=1e-6, atol=0)
        t0 = translations(ds, a)
        t1 = cv.positions_to_translations(a1.positions, back.frame_shape, g1.field_shape, g1.pixel_m)
        np.testing.assert_allclose(t1[:, 0], t0[:, 0], rtol=0, atol=1e-6 * g0.pixel_m)
        offsets.append(t1[:, 1] - t0[:, 1])
    off = np.concatenate(offsets)  # the reader centres the scanned height range: one constant y shift
    assert np.ptp(off) < 1e-6 * g0.pixel_m
    if not y_shift_ok:
        assert abs(off[0]) < 1e-6 * g0.pixel_m
    return back


def write_toml(path, **items):
    lines = []
    for k, v in items.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def geometry_keys(ds):
    g = ds.geometry
    return dict(energy=f"{g.energy_ev / 1000:.12g} keV", detector_distance=f"{g.detector_distance_m * 1000:.12g} mm",
                detector_pixel=f"{g.detector_pixel_m[0] * 1e6:.12g} um")


# --------------------------------------------------------------------------------------------------
# numpy source
# --------------------------------------------------------------------------------------------------

def test_numpy_stack_with_angle_index_round_trip(tiny, tmp_path, capsys):
    """One (frames, h, w) stack with an angle index, positions in um in a CSV, angles in radians."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(tiny.angles)), tiny.n_frames)
    slots = labels[rng.permutation(labels.size)]  # the angles' frames interleaved, each angle's in order
    order = np.empty(labels.size, dtype=np.int64)
    for a in range(len(tiny.angles)):
        order[slots == a] = np.flatnonzero(labels == a)
    frames = np.concatenate([recorded(a.frames) for a in tiny.angles])[order]
    idx = np.repeat(np.arange(len(tiny.angles)), tiny.n_frames)[order]
    xy = np.concatenate([translations(tiny, a)[:, :2] for a in range(len(tiny.angles))])[order] * 1e6
    np.save(tmp_path / "frames.npy", frames.astype(np.float32))
    np.save(tmp_path / "index.npy", idx)
    np.savetxt(tmp_path / "pos.csv", xy, delimiter=",", header="x_um,y_um", comments="")
    np.save(tmp_path / "angles.npy", np.deg2rad([a.angle_deg for a in tiny.angles]))
    spec = write_toml(tmp_path / "scan.toml", frames="frames.npy", angle_index="index.npy", angles="angles.npy",
                      angles_unit="rad", positions="pos.csv", positions_unit="um", **geometry_keys(tiny))
    out = tmp_path / "scan.cxi"
    assert main(["convert", str(spec), "--out", str(out)]) == 0
    assert_same_scan(tiny, out)
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0
    text = capsys.readouterr().out
    assert "valid" in text and "none in file; will be estimated from the data" in text


def test_numpy_model_and_sample_width_are_recorded_and_used(even, tmp_path, capsys):
    """`model` and `sample_width` land in the file: reconstruct then uses the data's model and a volume of the
    sample's width (not the field's), as it does for a simulated file; a width wider than the field is refused."""
    from hpc_pt.io import scan_cxi
    from hpc_pt.pipeline import volume_shape_for

    frames = np.stack([recorded(a.frames) for a in even.angles])
    np.save(tmp_path / "frames.npy", frames.astype(np.float32))
    np.save(tmp_path / "pos.npy", np.stack([translations(even, a)[:, :2] for a in range(len(even.angles))]))
    np.save(tmp_path / "angles.npy", [a.angle_deg for a in even.angles])
    keys = dict(frames="frames.npy", angles="angles.npy", angles_unit="deg", positions="pos.npy",
                positions_unit="m", model="exp", **geometry_keys(even))
    field_w = even.geometry.field_shape[1]
    width_m = (field_w - 6) * even.geometry.pixel_m
    spec = write_toml(tmp_path / "scan.toml", sample_width=f"{width_m * 1e9:.6f} nm", **keys)
    out = tmp_path / "scan.cxi"
    assert main(["convert", str(spec), "--out", str(out)]) == 0
    idx = scan_cxi(str(out))
    assert idx.attrs["model"] == "exp" and idx.attrs["size"] == field_w - 6
    assert volume_shape_for(idx)[1] == field_w - 6
    px = write_toml(tmp_path / "px.toml", sample_width="9 px", **keys)
    assert main(["convert", str(px), "--out", str(tmp_path / "px.cxi")]) == 0
    assert scan_cxi(str(tmp_path / "px.cxi")).attrs["size"] == 9
    capsys.readouterr()
    wide = write_toml(tmp_path / "wide.toml", sample_width=f"{field_w + 5} px", **keys)
    assert main(["convert", str(wide), "--out", str(tmp_path / "wide.cxi")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sample_width" in err[0] and not (tmp_path / "wide.cxi").exists()


def test_numpy_per_angle_files_stage_positions_in_pixels_with_probe_and_mask(tiny, tmp_path):
    """Per-angle files (glob), sample-stage positions in sample pixels (yx columns), probe and mask given."""
    mask = np.ones(tiny.frame_shape, dtype=np.uint8)
    mask[0, 1] = 0  # recorded layout
    for a, ang in enumerate(tiny.angles):
        f = recorded(ang.frames).copy()
        f[:, 0, 1] = 7.0  # a bad pixel: set to 0 by the conversion
        np.save(tmp_path / f"frames_{a:03d}.npy", f)
        t = translations(tiny, a)[:, :2] / tiny.geometry.pixel_m
        np.save(tmp_path / f"pos_{a:03d}.npy", -t[:, ::-1])  # stage = -probe, columns (y, x)
    np.save(tmp_path / "probe.npy", tiny.probe)
    np.save(tmp_path / "mask.npy", mask)
    spec = write_toml(tmp_path / "scan.toml", frames="frames_*.npy", angles=[a.angle_deg for a in tiny.angles],
                      angles_unit="deg", positions="pos_*.npy", positions_unit="px", positions_columns="yx",
                      positions_are="sample", probe="probe.npy", mask="mask.npy", **geometry_keys(tiny))
    out = tmp_path / "scan.cxi"
    convert(spec, out)
    expect = simulate_dataset(SimulationConfig(**TINY))
    valid = np.fft.ifftshift(mask != 0)
    for a in expect.angles:
        a.frames[:, ~valid] = 0.0
    back = assert_same_scan(expect, out)
    np.testing.assert_allclose(back.probe, tiny.probe, rtol=1e-6)
    assert np.array_equal(back.mask, valid)
    assert describe(str(out))["probe"] == "in file"


def test_numpy_4d_stack_off_centre_beam_is_cropped(even, tmp_path):
    """A 4D stack recorded on a larger detector with the direct beam off its centre: cropped back."""
    m = even.frame_shape[0]
    big = np.zeros((len(even.angles), even.n_frames.max(), m + 5, m + 3), dtype=np.float32)
    assert len(set(even.n_frames)) == 1
    r0, c0 = 0, 3  # the original window: rows 0.., cols 3.. (DC at (m//2, 3 + m//2)); the largest even
    # window centred on that beam is the original one
    for a, ang in enumerate(even.angles):
        big[a, :, r0:r0 + m, c0:c0 + m] = recorded(ang.frames)
    np.save(tmp_path / "stack.npy", big)
    pos = np.stack([translations(even, a)[:, :2] * 1e9 for a in range(len(even.angles))])
    np.savez(tmp_path / "meta.npz", positions=pos, angles=[a.angle_deg for a in even.angles])
    spec = write_toml(tmp_path / "stack.toml", frames="stack.npy", positions="meta.npz:positions",
                      positions_unit="nm", angles="meta.npz:angles", angles_unit="degree",
                      beam_centre=[r0 + m // 2, c0 + m // 2], **geometry_keys(even))
    out = tmp_path / "scan.cxi"
    convert(spec, out, fmt="numpy")
    assert_same_scan(even, out)


@pytest.mark.parametrize("change, words", [
    ({"energy": 5.0}, "has no unit"),
    ({"energy": "5 parsec"}, "unknown energy unit"),
    ({"positions_unit": "furlong"}, "unknown length unit"),
    ({"angles_unit": None}, "missing key 'angles_unit'"),
    ({"frames": "nothere.npy"}, "does not exist"),
    ({"positions": "short.npy"}, "positions"),
    ({"angle_index": None}, "angle_index"),
    ({"typo_key": 1}, "unknown key 'typo_key'"),
    ({"crop": 40}, "does not fit"),
    ({"frames": "frames.npy:x"}, "does not exist"),
])
def test_numpy_bad_inputs_fail_with_one_line(tiny, tmp_path, capsys, change, words):
    frames = np.concatenate([recorded(a.frames) for a in tiny.angles])
    np.save(tmp_path / "frames.npy", frames)
    np.save(tmp_path / "index.npy", np.repeat(np.arange(len(tiny.angles)), tiny.n_frames))
    xy = np.concatenate([translations(tiny, a)[:, :2] for a in range(len(tiny.angles))])
    np.save(tmp_path / "pos.npy", xy)
    np.save(tmp_path / "short.npy", xy[:-1])
    items = dict(frames="frames.npy", angle_index="index.npy", angles=[a.angle_deg for a in tiny.angles],
                 angles_unit="deg", positions="pos.npy", positions_unit="m", **geometry_keys(tiny))
    items.update(change)
    items = {k: v for k, v in items.items() if v is not None}
    spec = write_toml(tmp_path / "scan.toml", **items)
    out = tmp_path / "out.cxi"
    out.write_bytes(b"keep")  # an existing file: refused without --force, never damaged
    assert main(["convert", str(spec), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and words in err, err
    assert out.read_bytes() == b"keep"
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_existing_output_is_refused_without_force(tiny, tmp_path, capsys):
    np.save(tmp_path / "f.npy", recorded(tiny.angles[0].frames))
    np.save(tmp_path / "p.npy", translations(tiny, 0))
    spec = write_toml(tmp_path / "s.toml", frames="f.npy", angles=[0.0], angles_unit="deg", positions="p.npy",
                      positions_unit="m", **geometry_keys(tiny))
    out = tmp_path / "o.cxi"
    out.write_bytes(b"old")
    assert main(["convert", str(spec), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert main(["convert", str(spec), "--out", str(out), "--force"]) == 0
    assert len(read_cxi(out).angles) == 1


def test_parse_quantity_units():
    assert math.isclose(parse_quantity("8 keV", "energy", "e"), 8000.0)
    assert math.isclose(parse_quantity("1.281741e-15 J", "energy", "e"), 1.281741e-15 / cv.E_CHARGE)
    assert math.isclose(parse_quantity("75 um", "length", "p"), 75e-6)
    assert math.isclose(parse_quantity("3.5 mm", "length", "p"), 3.5e-3)
    assert math.isclose(parse_quantity("1 rad", "angle", "a"), 180 / math.pi)
    with pytest.raises(InputError, match="no unit"):
        parse_quantity(3.0, "length", "p")


# --------------------------------------------------------------------------------------------------
# NeXus NXcxi_ptycho source
# --------------------------------------------------------------------------------------------------

def write_nxcxi(ds, path, raster=None, angles_as="rotation_angle", transposed=False, with_mask=None):
    """``ds`` in the NXcxi_ptycho layout, one NXentry per angle: frames as recorded (optionally (x, y) and as
    an (nx, ny, h, w) raster), sample-motor translations in um, photon energy in keV on beam_1, the storage
    ring's energy on source_1 (must be ignored), distance in mm, pixel sizes in um."""
    g = ds.geometry
    with h5py.File(path, "w") as f:
        f.create_dataset("cxi_version", data=150)
        for k, a in enumerate(ds.angles):
            e = f.create_group(f"entry_{k + 1}")
            e.attrs["NX_class"] = "NXentry"
            e["definition"] = "NXcxi_ptycho"
            e["title"] = f"angle {k}"
            inst = e.create_group("instrument_1")
            inst.attrs["NX_class"] = "NXinstrument"
            src = inst.create_group("source_1")
            src["name"] = "storage ring"
            src["energy"] = 3.0e9  # eV of the electrons: not the photon energy
            src["energy"].attrs["units"] = "eV"
            beam = inst.create_group("beam_1")
            beam["incident_beam_energy"] = g.energy_ev / 1000
            beam["incident_beam_energy"].attrs["units"] = "keV"
            det = inst.create_group("detector_1")
            det.attrs["NX_class"] = "NXdetector"
            fr = recorded(a.frames).astype(np.float32)
            if transposed:
                fr = np.swapaxes(fr, -1, -2)
            tr = -translations(ds, k) * 1e6  # sample stage = -probe, um
            if raster is not None:
                fr = fr.reshape(raster + fr.shape[-2:])
            det["data"] = fr
            det["translation"] = tr
            det["translation"].attrs["units"] = "um"
            det["distance"] = g.detector_distance_m * 1e3
            det["distance"].attrs["units"] = "mm"
            xp, yp = g.detector_pixel_m
            det["x_pixel_size"] = (yp if transposed else xp) * 1e6
            det["x_pixel_size"].attrs["units"] = "um"
            det["y_pixel_size"] = (xp if transposed else yp) * 1e6
            det["y_pixel_size"].attrs["units"] = "um"
            if with_mask is not None:
                det["pixel_mask"] = with_mask.astype(np.uint32)
            d1 = e.create_group("data_1")
            d1["data"] = h5py.SoftLink(f"/entry_{k + 1}/instrument_1/detector_1/data")
            s1 = e.create_group("sample_1")
            s1.attrs["NX_class"] = "NXsample"
            s1.create_group("geometry_1")["translation"] = h5py.SoftLink(
                f"/entry_{k + 1}/instrument_1/detector_1/translation")
            t = s1.create_group("transformations")
            t.attrs["NX_class"] = "NXtransformations"
            t["x"] = tr[:, 0]
            t["x"].attrs["units"] = "um"
            t["y"] = tr[:, 1]
            t["y"].attrs["units"] = "um"
            if angles_as == "rotation_angle":
                s1["rotation_angle"] = np.deg2rad(a.angle_deg)
                s1["rotation_angle"].attrs["units"] = "rad"
            elif angles_as == "transformation":
                t["theta"] = a.angle_deg
                t["theta"].attrs["units"] = "deg"
                t["theta"].attrs["transformation_type"] = "rotation"
                t["theta"].attrs["vector"] = [0.0, 1.0, 0.0]


def test_nexus_round_trip(tiny, tmp_path, capsys):
    src = tmp_path / "scan.nxs"
    write_nxcxi(tiny, src)
    out = tmp_path / "scan.cxi"
    assert main(["convert", str(src), "--out", str(out)]) == 0
    assert_same_scan(tiny, out)
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0
    assert "valid" in capsys.readouterr().out


def test_nexus_raster_transposed_rotation_transform_and_pixel_mask(even, tmp_path):
    """(nx, ny, h, w) raster data stored (x, y), the angle as a rotation transformation, a NeXus pixel_mask
    (non-zero = bad)."""
    n = int(even.n_frames[0])
    assert all(int(c) == n for c in even.n_frames) and n % 2 == 0
    pm = np.zeros(even.frame_shape, dtype=np.uint32)
    pm[2, 5] = 1  # recorded (x, y) layout: row 5, col 2 of the converted frames
    src = tmp_path / "raster.nxs"
    write_nxcxi(even, src, raster=(2, n // 2), angles_as="transformation", transposed=True, with_mask=pm)
    out = tmp_path / "raster.cxi"
    assert main(["convert", str(src), "--out", str(out), "--transpose-frames"]) == 0
    expect = simulate_dataset(SimulationConfig(**EVEN))
    valid = np.fft.ifftshift(pm.T == 0)
    for a in expect.angles:
        a.frames[:, ~valid] = 0.0
    back = assert_same_scan(expect, out)
    assert np.array_equal(back.mask, valid)


def test_nexus_missing_angle_and_units_fail_with_one_line(tiny, tmp_path, capsys):
    src = tmp_path / "noangle.nxs"
    write_nxcxi(tiny, src, angles_as=None)
    out = tmp_path / "o.cxi"
    assert main(["convert", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no rotation angle" in err and len(err.strip().splitlines()) == 1
    # angles given in a description file complete the file
    cfg = write_toml(tmp_path / "angles.toml", angles=[a.angle_deg for a in tiny.angles], angles_unit="deg")
    assert main(["convert", str(src), "--config", str(cfg), "--out", str(out)]) == 0
    assert_same_scan(tiny, out)
    with h5py.File(src, "a") as f:
        del f["entry_2/instrument_1/detector_1/translation"].attrs["units"]
        del f["entry_1/instrument_1/beam_1/incident_beam_energy"]
    assert main(["convert", str(src), "--config", str(cfg), "--out", str(tmp_path / "o2.cxi")]) == 2
    err = capsys.readouterr().err
    assert "photon energy" in err and "storage ring" in err
    with h5py.File(src, "a") as f:
        f["entry_1/instrument_1/beam_1/incident_beam_energy"] = 5.0
        f["entry_1/instrument_1/beam_1/incident_beam_energy"].attrs["units"] = "keV"
    assert main(["convert", str(src), "--config", str(cfg), "--out", str(tmp_path / "o2.cxi")]) == 2
    err = capsys.readouterr().err
    assert "entry_2" in err and "no units attribute" in err
    assert not (tmp_path / "o2.cxi").exists()


# --------------------------------------------------------------------------------------------------
# probe estimation and probe-less files
# --------------------------------------------------------------------------------------------------

def test_far_field_fit_recovers_a_gaussian_beam():
    for m, fwhm in ((16, 3.5), (64, 14.0), (24, 6.0)):
        w = gaussian_probe(m, fwhm) * 3.0
        pattern = np.abs(np.fft.fft2(w, norm="ortho")) ** 2
        fit = fit_far_field(pattern)
        assert abs(fit.fwhm_px / fwhm - 1) < 0.05, (m, fit)
        assert abs(fit.power / np.sum(np.abs(w) ** 2) - 1) < 1e-6
        # a masked band of pixels: the power is filled in from the fitted lobe
        mask = np.ones((m, m), dtype=bool)
        mask[0, 1:3] = mask[1:3, 0] = False
        masked = fit_far_field(np.where(mask, pattern, 0.0), mask)
        assert abs(masked.power / fit.power - 1) < 0.02 and abs(masked.fwhm_px / fwhm - 1) < 0.1
        est = estimate_probe(pattern)
        assert est.shape == (m, m) and est.dtype == np.complex64
        assert abs(np.sum(np.abs(est) ** 2) / fit.power - 1) < 1e-5
    with pytest.raises(ValueError):
        fit_far_field(np.zeros((8, 8)))


PROBELESS = dict(size=16, angles=12, probe_size=8, probe_fwhm=3, step=2, field_pad=3)


def test_probeless_file_reconstructs_with_estimated_probe(tmp_path, capsys):
    """Measured (60 APT iterations): true probe 22.5 dB; estimated probe without refinement 13.9 dB; estimated
    and refined (switched on automatically) 22.6 dB. The bound: within 3 dB of the true probe."""
    ds = simulate_dataset(SimulationConfig(**PROBELESS))
    truth = ds.truth["volume"]
    true_snr = evaluate(reconstruct(ds, method="apt", iterations=60).volume, truth)["snr_db"]
    ds.probe = None
    ds.truth = None
    path = tmp_path / "noprobe.cxi"
    write_cxi(ds, path)
    with h5py.File(path) as f:
        assert "illumination" not in f["entry_1/instrument_1/source_1"]
    assert scan_cxi(path).probe is None
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^probe\s+none in file; will be estimated from the data$", text, re.M), text
    assert re.search(r"^probe FWHM\s+n/a$", text, re.M), text
    d = describe(str(path))
    assert d["probe"] == "none in file; will be estimated from the data" and d["overlap_ratio"] is None
    res = reconstruct(str(path), method="apt", iterations=60)
    assert res.config.probe_refine  # turned on for an estimated probe
    snr = evaluate(res.volume, truth)["snr_db"]
    assert snr > true_snr - 3.0, (snr, true_snr)
    back = read_cxi(path)  # the in-memory path estimates the same probe
    assert back.attrs["probe_source"] == "estimated"
    mean = np.mean(np.concatenate([a.frames for a in back.angles]), axis=0)
    assert abs(fit_far_field(mean).fwhm_px / PROBELESS["probe_fwhm"] - 1) < 0.15  # measured 2.86 px for 3
    assert abs(np.sum(np.abs(back.probe) ** 2) / mean.sum() - 1) < 1e-4  # power = mean frame intensity
    assert np.argmax(np.abs(back.probe)) == np.ravel_multi_index((3, 3), back.probe.shape)  # centred


def test_numpy_corner_dc_frames_and_rotation_axis_offset(tiny, tmp_path):
    """Frames already ifftshifted (DC at [0, 0]) and positions measured from a stage origin 2.5 um left of
    the rotation axis: both undone by frames_dc = "corner" and rotation_axis_x."""
    frames = np.stack([a.frames for a in tiny.angles[:1]])  # DC at index 0, one angle
    np.save(tmp_path / "f.npy", frames)
    xy = translations(tiny, 0)[:, :2] * 1e6 + np.array([2.5, 0.0])
    np.save(tmp_path / "p.npy", xy[None])
    spec = write_toml(tmp_path / "s.toml", frames="f.npy", positions="p.npy", positions_unit="um",
                      rotation_axis_x=2.5, frames_dc="corner", angles=[tiny.angles[0].angle_deg], angles_unit="deg",
                      **geometry_keys(tiny))
    back = read_cxi(convert(spec, tmp_path / "o.cxi"))
    np.testing.assert_allclose(back.angles[0].frames, tiny.angles[0].frames, rtol=1e-6, atol=0)
    g = back.geometry
    t = cv.positions_to_translations(back.angles[0].positions, back.frame_shape, g.field_shape, g.pixel_m)
    np.testing.assert_allclose(t[:, 0], translations(tiny, 0)[:, 0], rtol=0, atol=1e-6 * g.pixel_m)


def test_positions_unit_off_by_a_thousand_is_warned(even, tmp_path, capsys):
    """Positions written in um but declared nm convert (the user may mean it) with one `warning:` line naming
    the likely unit mistake; the right unit gives no warning."""
    frames = np.stack([recorded(a.frames) for a in even.angles])
    np.save(tmp_path / "frames.npy", frames.astype(np.float32))
    um = np.stack([translations(even, a)[:, :2] for a in range(len(even.angles))]) * 1e6
    np.save(tmp_path / "pos.npy", um)
    np.save(tmp_path / "angles.npy", [a.angle_deg for a in even.angles])
    keys = dict(frames="frames.npy", angles="angles.npy", angles_unit="deg", positions="pos.npy",
                **geometry_keys(even))
    good = write_toml(tmp_path / "good.toml", positions_unit="um", **keys)
    assert main(["convert", str(good), "--out", str(tmp_path / "good.cxi")]) == 0
    assert "warning" not in capsys.readouterr().err
    bad = write_toml(tmp_path / "bad.toml", positions_unit="nm", **keys)
    assert main(["convert", str(bad), "--out", str(tmp_path / "bad.cxi")]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning: ") and "positions unit 1000x too small" in err[0], err
