"""End-to-end CLI: simulate -> info / validate -> evaluate, and one test per bad-input case
(one-line error naming the problem, exit code 2, nothing written)."""
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from hpc_pt.cli import main

SMALL = ["--size", "24", "--angles", "3", "--probe-size", "12", "--probe-fwhm", "5", "--step", "6",
         "--quiet"]


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "good.h5"
    assert main(["simulate", *SMALL, "--noise", "poisson", "--peak", "1.0", "--out", str(out)]) == 0
    return out


def run_error(capsys, argv):
    """Run the CLI in-process; return (exit code, stderr lines)."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def corrupt(good_file, tmp_path, edit):
    bad = tmp_path / "bad.h5"
    shutil.copy(good_file, bad)
    with h5py.File(bad, "r+") as f:
        edit(f)
    return bad


def assert_one_line_error(code, err, *words):
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    for w in words:
        assert w.lower() in err[0].lower(), err[0]


def test_simulate_info_validate_round_trip(good_file, capsys):
    assert main(["info", str(good_file), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_angles"] == 3 and d["detector_shape"] == [12, 12]
    assert d["frames_total"] == sum(d["frames_per_angle"]) > 0
    assert d["memory"]["total"] > 0
    assert main(["validate", str(good_file)]) == 0
    assert "valid" in capsys.readouterr().out


def test_simulate_from_config_file(tmp_path, capsys):
    cfg = tmp_path / "sim.toml"
    cfg.write_text('phantom = "ellipsoids"\nsize = 16\nangles = 2\nprobe_size = 8\nprobe_fwhm = 3\nstep = 4\n')
    out = tmp_path / "c.h5"
    assert main(["simulate", "--config", str(cfg), "--angles", "4", "--quiet", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_angles"] == 4  # the flag overrides the file


def test_exit_code_from_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hpc_pt", "info", str(tmp_path / "missing.h5")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "missing.h5" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- bad inputs, one test each
def test_missing_file(capsys, tmp_path):
    assert_one_line_error(*run_error(capsys, ["info", str(tmp_path / "nope.h5")]), "nope.h5")


def test_not_hdf5(capsys, tmp_path):
    p = tmp_path / "text.h5"
    p.write_text("not an hdf5 file\n")
    assert_one_line_error(*run_error(capsys, ["info", str(p)]), "hdf5")


def test_missing_cxi_key(good_file, capsys, tmp_path):
    bad = corrupt(good_file, tmp_path, lambda f: f.__delitem__("entry_2/instrument_1/source_1/energy"))
    assert_one_line_error(*run_error(capsys, ["info", str(bad)]), "energy")


@pytest.mark.parametrize("value, word", [(np.nan, "nan"), (-5.0, "negative")])
def test_nan_or_negative_intensities(good_file, capsys, tmp_path, value, word):
    def edit(f):
        d = f["entry_3/data_1/data"]
        frame = d[1]
        frame[2, 3] = value
        d[1] = frame

    bad = corrupt(good_file, tmp_path, edit)
    assert_one_line_error(*run_error(capsys, ["validate", str(bad)]), word, "entry_3")


def test_frames_positions_mismatch(good_file, capsys, tmp_path):
    def edit(f):
        t = f["entry_1/sample_1/geometry_1/translation"][()]
        del f["entry_1/sample_1/geometry_1/translation"]
        f["entry_1/sample_1/geometry_1/translation"] = t[:-1]

    bad = corrupt(good_file, tmp_path, edit)
    assert_one_line_error(*run_error(capsys, ["info", str(bad)]), "entry_1", "translation")


def test_positions_outside_field(good_file, capsys, tmp_path):
    def edit(f):
        f.attrs["hpc_pt_field_shape"] = np.array([12, 12])  # a field smaller than the scan

    bad = corrupt(good_file, tmp_path, edit)
    assert_one_line_error(*run_error(capsys, ["info", str(bad)]), "outside")


def test_probe_shape_differs_from_frames(good_file, capsys, tmp_path):
    def edit(f):
        for name in [k for k in f if k.startswith("entry_")]:
            del f[f"{name}/instrument_1/source_1/illumination"]
            f[f"{name}/instrument_1/source_1/illumination"] = np.ones((10, 10), np.complex64)

    bad = corrupt(good_file, tmp_path, edit)
    assert_one_line_error(*run_error(capsys, ["info", str(bad)]), "probe")


def test_duplicate_angles(good_file, capsys, tmp_path):
    def edit(f):
        f["entry_3/sample_1/tomography_angle_deg"][()] = f["entry_1/sample_1/tomography_angle_deg"][()]

    bad = corrupt(good_file, tmp_path, edit)
    assert_one_line_error(*run_error(capsys, ["info", str(bad)]), "duplicate", "entry_1", "entry_3")


def test_unwritable_output_path(capsys, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "x.h5"
    assert_one_line_error(*run_error(capsys, ["simulate", *SMALL, "--out", str(out)]), "cannot write")
    assert not out.parent.exists()


def test_existing_output_is_not_damaged(good_file, capsys, tmp_path):
    target = tmp_path / "keep.h5"
    shutil.copy(good_file, target)
    before = target.read_bytes()
    assert_one_line_error(*run_error(capsys, ["simulate", *SMALL, "--out", str(target)]), "--force")
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.h5"]  # no temporary file left behind


def test_bad_option_value_writes_nothing(capsys, tmp_path):
    out = tmp_path / "x.h5"
    assert_one_line_error(*run_error(capsys, ["simulate", *SMALL, "--phantom", "banana", "--out", str(out)]),
                          "phantom")
    assert not out.exists()


def test_bad_probe_file_writes_nothing(capsys, tmp_path):
    out = tmp_path / "x.h5"
    code, err = run_error(capsys, ["simulate", *SMALL, "--probe-kind", "file", "--probe-file",
                                   str(tmp_path / "missing_probe.npy"), "--out", str(out)])
    assert_one_line_error(code, err, "missing_probe.npy")
    assert not out.exists()


def test_reconstruct_refuses_before_reading_any_frame(good_file, tmp_path, capsys, monkeypatch):
    """An existing output, an unknown prior or a bad option is refused from the metadata alone: the frames
    are not read first (on a real scan that read takes minutes; a few sample frames for the checks may be)."""
    import hpc_pt.io.cxi as cxi
    import hpc_pt.pipeline as pipeline

    def no_reads(*args, **kwargs):
        raise AssertionError("the frames were read before the settings were checked")

    for name in ("build_shard", "build_rank_shard"):
        monkeypatch.setattr(pipeline, name, no_reads)
    monkeypatch.setattr(cxi, "read_cxi", no_reads)
    (tmp_path / "r.zarr").mkdir()
    cases = [(["--out", str(tmp_path / "r.zarr")], "already exists"),
             (["--out", str(tmp_path / "s.zarr"), "--method", "admm", "--prior", "banana"], "banana"),
             (["--out", str(tmp_path / "s.zarr"), "--option", "nonsense=3"], "nonsense")]
    for extra, words in cases:
        code, err = run_error(capsys, ["reconstruct", str(good_file), "--iterations", "2", "--quiet", *extra])
        errors = [e for e in err if e.startswith("error:")]
        assert code == 2 and len(errors) == 1 and words in errors[0], err
    assert not (tmp_path / "s.zarr").exists()
