"""The bad-input battery: every user error is one ``error:`` line on stderr with exit code 2, leaves
nothing behind in the output location and changes no existing file (inputs and earlier results are
compared by sha256 before and after). Plus the divergence guard, the memory check and the warnings."""
import hashlib
import os
import shutil

import h5py
import numpy as np
import pytest

from hpc_pt.cli import main

SMALL = ["--size", "16", "--angles", "3", "--probe-size", "8", "--probe-fwhm", "3", "--step", "4", "--quiet"]
E_CHARGE = 1.602176634e-19


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A small linear (Poisson) CXI file and a finished reconstruction of it."""
    d = tmp_path_factory.mktemp("bad_inputs_src")
    good = d / "good.h5"
    assert main(["simulate", *SMALL, "--noise", "poisson", "--peak", "10", "--out", str(good)]) == 0
    assert main(["reconstruct", str(good), "--iterations", "1", "--out", str(d / "done.zarr"), "--quiet"]) == 0
    return d


def _entries(f):
    return [k for k in f if k.startswith("entry_")]


def _edit(d, edit):
    """good.h5 edited in place (the case's own copy)."""
    with h5py.File(d / "good.h5", "r+") as f:
        for e in _entries(f):
            edit(f[e])


def _set(path, value_of):
    def edit(e):
        ds = e[path]
        ds[...] = value_of(ds[()])
    return edit


def _zero_frames(e):
    e["data_1/data"][...] = 0


def _zero_mask(e):
    e["instrument_1/detector_1/mask"] = np.zeros(e["data_1/data"].shape[1:], np.uint8)


def _write(name, data):
    def make(d):
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return make


def _npy(name, arr, **kw):
    def make(d):
        np.save(d / name, arr, **kw)
    return make


def make_huge(path, fill=0.0, frames=250_000, angles=4, det=1024):
    """A CXI file declaring angles x frames x det x det float32 frames (10^6 x 1024^2 = 3.8 TiB) whose chunks
    are never written: it takes ~40 kB of disk, every frame reads as ``fill``."""
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 160
        for k in range(angles):
            g = f.create_group(f"entry_{k + 1}")
            g.create_dataset("data_1/data", shape=(frames, det, det), dtype="f4", chunks=(1, det, det),
                             fillvalue=fill)
            g.create_dataset("sample_1/geometry_1/translation", shape=(frames, 3), dtype="f8", chunks=(4096, 3),
                             fillvalue=0.0)
            g["sample_1/tomography_angle_deg"] = 45.0 * k
            g["instrument_1/source_1/energy"] = 8000 * E_CHARGE
            g.create_dataset("instrument_1/source_1/illumination", shape=(det, det), dtype="c8",
                             chunks=(det, det), fillvalue=1 + 0j)
            g["instrument_1/detector_1/distance"] = 5.0
            g["instrument_1/detector_1/x_pixel_size"] = 75e-6
            g["instrument_1/detector_1/y_pixel_size"] = 75e-6


def _unreadable(monkeypatch, d):
    """Permission denied on good.h5: real with chmod for a normal user; as root (where permissions do not
    apply) the operating system's refusal is reproduced by the open() the reader makes."""
    target = str(d / "good.h5")
    if os.geteuid() != 0:
        os.chmod(target, 0)
        return
    import builtins

    real_open = builtins.open

    def fake_open(file, *a, **k):
        if os.path.abspath(os.fspath(file)) == target if isinstance(file, (str, os.PathLike)) else False:
            raise PermissionError(13, "Permission denied", target)
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)


REC = ["reconstruct", "{good}", "--iterations", "2", "--quiet", "--out", "{out}"]

#: id -> (argv, setup(d) or None, words the error line must contain, patch(monkeypatch, d) or None)
CASES = {
    "zero-frames-and-mask-validate": (["validate", "{good}"], lambda d: _edit(d, lambda e: (_zero_frames(e), _zero_mask(e))),
                                      ["mask", "no pixel valid"], None),
    "zero-frames-and-mask-reconstruct": (REC, lambda d: _edit(d, lambda e: (_zero_frames(e), _zero_mask(e))),
                                         ["mask"], None),
    "zero-frames-validate": (["validate", "{good}"], lambda d: _edit(d, _zero_frames), ["every frame is zero"], None),
    "zero-frames-reconstruct": (REC, lambda d: _edit(d, _zero_frames), ["every frame is zero"], None),
    "zero-mask-info": (["info", "{good}"], lambda d: _edit(d, _zero_mask), ["mask"], None),
    "yaml-syntax-reconstruct": (REC + ["--config", "{d}/c.yaml"], _write("c.yaml", "method: apt\niterations: [1, 2\n"),
                                ["c.yaml", "syntax"], None),
    "yaml-syntax-simulate": (["simulate", *SMALL, "--config", "{d}/c.yaml", "--out", "{out}"],
                             _write("c.yaml", "size: {16\n"), ["c.yaml", "syntax"], None),
    "nul-bytes-yaml": (REC + ["--config", "{d}/c.yaml"], _write("c.yaml", b"method: apt\x00\n"), ["NUL"], None),
    "nul-bytes-toml-simulate": (["simulate", *SMALL, "--config", "{d}/c.toml", "--out", "{out}"],
                                _write("c.toml", b"size = 16\x00\n"), ["NUL"], None),
    "not-utf8-config": (REC + ["--config", "{d}/c.yaml"], _write("c.yaml", b"method: \xff\xfe\n"), ["UTF-8"], None),
    "duplicate-yaml-keys-reconstruct": (REC + ["--config", "{d}/c.yaml"], _write("c.yaml", "iterations: 3\niterations: 5\n"),
                                        ["iterations", "twice"], None),
    "duplicate-yaml-keys-simulate": (["simulate", *SMALL, "--config", "{d}/c.yaml", "--out", "{out}"],
                                     _write("c.yaml", "seed: 1\nangles: 3\nseed: 2\n"), ["seed", "twice"], None),
    "duplicate-toml-keys": (REC + ["--config", "{d}/c.toml"], _write("c.toml", "iterations = 3\niterations = 5\n"),
                            ["c.toml"], None),
    "config-not-a-table": (REC + ["--config", "{d}/c.yaml"], _write("c.yaml", "- 1\n- 2\n"), ["table"], None),
    "unreadable-input": (["info", "{good}"], None, ["permission"], _unreadable),
    "workers-negative": (["reconstruct", "{good}", "--backend", "dask", "--workers", "-1", "--out", "{out}"], None,
                         ["--workers -1"], None),
    "workers-zero": (["reconstruct", "{good}", "--backend", "dask", "--workers", "0", "--out", "{out}"], None,
                     ["--workers 0"], None),
    "init-pickled-npy": (REC + ["--init", "{d}/u0.npy"], _npy("u0.npy", np.array([{"a": 1}], dtype=object),
                                                               allow_pickle=True), ["u0.npy", "plain .npy"], None),
    "init-garbage-npy": (REC + ["--init", "{d}/u0.npy"], _write("u0.npy", b"\x93NUMPY garbage bytes"),
                         ["u0.npy", "plain .npy"], None),
    "init-strings-npy": (REC + ["--init", "{d}/u0.npy"], _npy("u0.npy", np.full((16, 16, 16), "ab")),
                         ["u0.npy", "numeric"], None),
    "init-nan-volume": (REC + ["--init", "{d}/u0.npy"], _npy("u0.npy", np.full((16, 16, 16), np.nan, np.complex64)),
                        ["u0.npy", "NaN"], None),
    "init-text-file": (REC + ["--init", "{d}/u0.txt"], _write("u0.txt", "0 0 0\n"), ["u0.txt", "Zarr"], None),
    "declared-huge-reconstruct": (["reconstruct", "{d}/huge.h5", "--quiet", "--out", "{out}"],
                                  lambda d: make_huge(d / "huge.h5"), ["per rank", "ranks", "--frame-batch", "--device"],
                                  None),
    "declared-huge-validate-nan": (["validate", "{d}/huge.h5"], lambda d: make_huge(d / "huge.h5", fill=np.nan),
                                   ["NaN", "entry_1"], None),
    "zero-probe": (REC, lambda d: _edit(d, _set("instrument_1/source_1/illumination", lambda p: 0 * p)),
                   ["probe", "zero everywhere"], None),
    "nan-probe": (["info", "{good}"], lambda d: _edit(d, _set("instrument_1/source_1/illumination",
                                                             lambda p: np.where(np.abs(p) == np.abs(p).max(), np.nan, p))),
                  ["probe", "NaN"], None),
    "penalty-inf": (REC + ["--penalty", "inf"], None, ["penalty", "finite"], None),
    "penalty-nan": (REC + ["--penalty", "nan"], None, ["penalty", "finite"], None),
    "prior-weight-inf": (REC + ["--prior-weight", "inf"], None, ["prior_weight", "finite"], None),
    "option-inf": (REC + ["--option", "r2=inf"], None, ["r2", "finite"], None),
    "energy-in-ev": (["info", "{good}"], lambda d: _edit(d, _set("instrument_1/source_1/energy", lambda v: v / E_CHARGE)),
                     ["energy", "stored in eV"], None),
    "energy-in-kev": (["validate", "{good}"], lambda d: _edit(d, _set("instrument_1/source_1/energy",
                                                                     lambda v: v / E_CHARGE / 1e3)),
                      ["energy", "stored in keV"], None),
    "distance-in-mm": (REC, lambda d: _edit(d, _set("instrument_1/detector_1/distance", lambda v: 0 * v + 5000.0)),
                       ["distance", "stored in mm"], None),
    "pixel-in-um": (["info", "{good}"], lambda d: _edit(d, _set("instrument_1/detector_1/x_pixel_size", lambda v: v * 1e6)),
                    ["x_pixel_size", "stored in um"], None),
    "pixel-in-mm": (["info", "{good}"], lambda d: _edit(d, _set("instrument_1/detector_1/y_pixel_size", lambda v: v * 1e3)),
                    ["y_pixel_size", "stored in mm"], None),
    "simulate-implausible-geometry": (["simulate", *SMALL, "--voxel-nm", "1e7", "--out", "{out}"], None,
                                      ["detector distance"], None),
    "diverging-run": (["reconstruct", "{good}", "--method", "gd", "--model", "linear", "--iterations", "3",
                       "--option", "step=1e30", "--option", "line_search=false", "--quiet", "--out", "{out}"], None,
                      ["iteration 1", "objective", "diverged"], None),
    "diverging-run-over-existing-result": (["reconstruct", "{good}", "--method", "gd", "--model", "linear",
                                            "--iterations", "3", "--option", "step=1e30", "--option",
                                            "line_search=false", "--quiet", "--force", "--out", "{d}/done.zarr"],
                                           None, ["iteration 1", "diverged"], None),
}


def _snapshot(root) -> dict:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, sources, tmp_path, capsys, monkeypatch):
    argv, setup, words, patch = CASES[case]
    d = tmp_path / "case"
    shutil.copytree(sources, d)
    if setup is not None:
        setup(d)
    before = _snapshot(d)
    if patch is not None:
        patch(monkeypatch, d)
    out = d / ("out.h5" if argv[0] == "simulate" else "out.zarr")
    args = [a.format(good=d / "good.h5", out=out, d=d) for a in argv]
    code = main(args)
    monkeypatch.undo()
    if os.geteuid() != 0:
        os.chmod(d / "good.h5", 0o644)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w.lower() in err[0].lower(), err[0]
    assert _snapshot(d) == before  # nothing left behind, nothing changed


def test_battery_size():
    assert len(CASES) >= 30


# ---------------------------------------------------------------- warnings (exit 0)
def test_radian_angles_warn_once(sources, tmp_path, capsys):
    bad = tmp_path / "rad.h5"
    shutil.copy(sources / "good.h5", bad)
    with h5py.File(bad, "r+") as f:
        for e in _entries(f):
            ds = f[e]["sample_1/tomography_angle_deg"]
            ds[()] = np.deg2rad(ds[()])
    assert main(["info", str(bad)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "radians" in err[0]
    assert main(["info", str(sources / "good.h5")]) == 0  # 0, 60, 120 degrees: no warning
    assert capsys.readouterr().err.strip() == ""


# ---------------------------------------------------------------- the divergence guard
def test_diverged_row_names_iteration_and_quantity():
    from hpc_pt.errors import DivergedError, InputError
    from hpc_pt.pipeline import check_finite_row

    check_finite_row({"iteration": 3, "objective": 1.0, "r_factor": 0.2})
    check_finite_row({"iteration": 40, "stage": 2, "objective": 1.0})  # a tomography row has no R-factor
    with pytest.raises(DivergedError) as exc:
        check_finite_row({"iteration": 34, "objective": 2.0, "r_factor": float("nan")}, "admm")
    assert isinstance(exc.value, InputError)
    assert exc.value.iteration == 34 and exc.value.quantity == "r_factor"
    assert "iteration 34" in str(exc.value) and "r-factor is nan" in str(exc.value)
    assert exc.value.all_ranks  # every rank raises at the same row (reduced quantities): no rank waits


def test_nan_probe_in_memory_stops_at_first_iteration(sources, tmp_path):
    """The Python API: a Dataset whose probe holds a NaN runs into the guard, which writes no volume."""
    from hpc_pt.errors import DivergedError
    from hpc_pt.io import read_cxi
    from hpc_pt.pipeline import reconstruct

    ds = read_cxi(sources / "good.h5")
    ds.probe = ds.probe.copy()
    ds.probe[0, 0] = np.nan
    out = tmp_path / "r.zarr"
    with pytest.raises(DivergedError) as exc:
        reconstruct(ds, out=out, method="apt", iterations=3)
    assert exc.value.iteration == 1
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- the memory check
def test_memory_check_refuses_before_reading(sources, tmp_path, monkeypatch):
    """A declared-huge input is refused from its metadata: read_frames is never called."""
    from hpc_pt.errors import InputError
    from hpc_pt.io import cxi
    from hpc_pt.pipeline import ReconConfig, reconstruct

    make_huge(tmp_path / "huge.h5")
    calls = []
    real = cxi.read_frames
    monkeypatch.setattr(cxi, "read_frames", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.raises(InputError, match="per rank"):
        reconstruct(str(tmp_path / "huge.h5"), config=ReconConfig(method="gd", model="exp", init="zeros"))
    assert calls == []


def test_memory_limit_from_environment(sources, tmp_path, capsys, monkeypatch):
    from hpc_pt.io import describe
    from hpc_pt.pipeline import ReconConfig, check_memory, memory_available
    from hpc_pt.parallel import plan_shards
    from hpc_pt.io.cxi import scan_cxi

    good = sources / "good.h5"
    idx = scan_cxi(good)
    est = check_memory(idx, ReconConfig(), plan_shards(idx.n_frames, 1))  # a normal run is not refused
    avail, _where = memory_available("cpu")
    assert avail is None or est["total"] < avail
    # the same data term `hpc-pt info` prints
    assert est["data"] == describe(good)["memory"]["data"]
    monkeypatch.setenv("HPC_PT_MEMORY_LIMIT", "64K")
    out = tmp_path / "r.zarr"
    assert main(["reconstruct", str(good), "--iterations", "1", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HPC_PT_MEMORY_LIMIT=64K" in err[0] and "per rank" in err[0]
    assert os.listdir(tmp_path) == []
    monkeypatch.setenv("HPC_PT_MEMORY_LIMIT", "off")
    assert main(["reconstruct", str(good), "--iterations", "1", "--quiet", "--out", str(out)]) == 0


def test_host_memory_reads_cgroup_limit(tmp_path):
    from hpc_pt.backend import host_memory_available

    (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable:    8000000 kB\n")
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.max").write_text(f"{3 << 30}\n")
    (cg / "memory.current").write_text(f"{1 << 30}\n")
    assert host_memory_available(str(tmp_path / "meminfo"), str(cg)) == (2 << 30, "left under the cgroup memory limit")
    (cg / "memory.max").write_text("max\n")
    assert host_memory_available(str(tmp_path / "meminfo"), str(cg)) == (8000000 * 1024, "host RAM available")


# ---------------------------------------------------------------- the simulator never writes a file validate refuses
def test_simulate_refuses_non_finite_frames(tmp_path, capsys, monkeypatch):
    from hpc_pt.simulate import dataset

    real = dataset.make_phantom
    monkeypatch.setattr(dataset, "make_phantom", lambda cfg: (real(cfg) * np.complex64(-1e4j)).astype(np.complex64))
    out = tmp_path / "s.h5"
    assert main(["simulate", *SMALL, "--model", "exp", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "NaN or infinite" in err[0]
    assert os.listdir(tmp_path) == []
