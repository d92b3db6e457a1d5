"""Checkpoints: an interrupted run resumed from its last checkpoint ends bitwise-equal to an uninterrupted one,
checkpoints are written atomically, resuming with other settings, another input or a checkpoint past
--iterations is refused in one line, and a damaged checkpoint falls back to the one before it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from hpc_pt import reconstruct
from hpc_pt.cli import main
from hpc_pt.errors import InputError
from hpc_pt.io import write_cxi
from hpc_pt.simulate import SimulationConfig, simulate_dataset

CASES = {  # method: settings (small problems, a few iterations)
    "apt": {"init": "zeros"},
    "apts": {"init": "zeros"},
    "gd": {},
    "admm": {},
    "two-step": {"options": {"tomo_iterations": 3}},
}
ITERATIONS = 6
# history rows per method (default ITERATIONS). two-step numbers its rows over both stages: rows 1-6 are the
# 2D ptychography iterations, rows 7-9 the 3 tomography (CG) iterations; so the interruption after row 3
# and the checkpoint at row 2 lie inside the 2D stage (the 2D solver's own loop state is saved and restored)
ROWS = {"two-step": ITERATIONS + 3}


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    ds = simulate_dataset(SimulationConfig(size=16, angles=4, probe_size=8, probe_fwhm=3, step=3, field_pad=3,
                                           scan="fermat", per_angle_offset=1.0))
    path = d / "a4.cxi"
    write_cxi(ds, path)
    return path


def _stop_after(k):
    def progress(row):
        if row["iteration"] >= k:
            raise Interrupt(f"stopped after iteration {k}")
    return progress


@pytest.mark.parametrize("method", list(CASES))
def test_resume_is_bitwise_equal(data, tmp_path, method):
    settings = CASES[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny problems: two-step warns about overlap
        ref = reconstruct(str(data), method=method, iterations=ITERATIONS, **settings)
        out = tmp_path / "r.zarr"
        with pytest.raises(Interrupt):
            reconstruct(str(data), out=str(out), method=method, iterations=ITERATIONS, checkpoint_every=2,
                        progress=_stop_after(3), **settings)
        ck = tmp_path / "r.zarr.ckpt"
        assert (ck / "LATEST").read_text() == "iter-000002"
        assert not out.exists(), "an interrupted run writes no store"
        res = reconstruct(str(data), out=str(out), method=method, iterations=ITERATIONS, resume=True, **settings)
    assert np.array_equal(res.volume, ref.volume), "resumed run differs from the uninterrupted one"
    assert np.array_equal(res.probe, ref.probe)
    it = res.history["iteration"]
    assert list(it) == list(range(1, ROWS.get(method, ITERATIONS) + 1)), it
    assert out.is_dir()


def test_resume_refuses_other_settings(data, tmp_path):
    out = tmp_path / "r.zarr"
    with pytest.raises(Interrupt):
        reconstruct(str(data), out=str(out), method="apts", iterations=4, checkpoint_every=1, init="zeros",
                    progress=_stop_after(2))
    with pytest.raises(InputError, match="other settings.*penalty"):
        reconstruct(str(data), out=str(out), method="apts", iterations=4, resume=True, init="zeros", penalty=0.5)
    with pytest.raises(InputError, match="no checkpoint"):
        reconstruct(str(data), out=str(tmp_path / "other.zarr"), method="apts", iterations=4, resume=True)


def test_crash_during_checkpoint_keeps_previous(data, tmp_path, monkeypatch):
    """A failure while the next checkpoint is being written leaves LATEST on the previous, complete one,
    and resuming from it still ends bitwise-equal."""
    from hpc_pt.io import checkpoint as ckmod

    ref = reconstruct(str(data), method="apts", iterations=5, init="zeros")
    out = tmp_path / "r.zarr"
    real_savez = np.savez
    calls = {"n": 0}

    def flaky_savez(fh, **arrays):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-way through its file
            fh.write(b"partial")
            raise OSError("disk full (injected)")
        return real_savez(fh, **arrays)

    monkeypatch.setattr(ckmod.np, "savez", flaky_savez)
    with pytest.raises(OSError, match="injected"):
        reconstruct(str(data), out=str(out), method="apts", iterations=5, checkpoint_every=2, init="zeros")
    monkeypatch.setattr(ckmod.np, "savez", real_savez)
    ck = tmp_path / "r.zarr.ckpt"
    assert (ck / "LATEST").read_text() == "iter-000002"
    assert (ck / "iter-000002" / "manifest.json").is_file()
    assert not out.exists()
    res = reconstruct(str(data), out=str(out), method="apts", iterations=5, resume=True, init="zeros")
    assert np.array_equal(res.volume, ref.volume)
    assert os.path.isdir(out)


# --------------------------------------------------------------------------------------------------
# resume checks what it resumes: the input's fingerprint, --iterations, damaged checkpoints
# --------------------------------------------------------------------------------------------------

APTS = {"method": "apts", "init": "zeros"}
CLI_APTS = ["--method", "apts", "--init", "zeros", "--quiet"]


def _tree(d):
    """Every file under ``d``: relative path -> bytes (to show a refused resume touched nothing)."""
    return {os.path.relpath(os.path.join(r, n), d): Path(r, n).read_bytes() for r, _, names in os.walk(d)
            for n in names}


def _other_input(data, tmp_path):
    """The same layout (angles, positions, frame counts, probe) with other frames: every frame x 1.5."""
    import h5py

    from hpc_pt.io.cxi import P_DATA

    other = tmp_path / "other.cxi"
    shutil.copy(data, other)
    with h5py.File(other, "r+") as f:
        entries = [name for name in f if name.startswith("entry_")]
        for name in entries:
            f[name][P_DATA][...] = f[name][P_DATA][()] * 1.5
    assert len(entries) == 4
    return other


def _interrupted(data, out, stop=5, **kw):
    """apts, 6 iterations, a checkpoint every 2, stopped after ``stop``: checkpoints at 4 (LATEST) and 2."""
    with pytest.raises(Interrupt):
        reconstruct(str(data), out=str(out), iterations=ITERATIONS, checkpoint_every=2, progress=_stop_after(stop),
                    **APTS, **kw)
    return tmp_ckpt(out)


def tmp_ckpt(out):
    return out.parent / (out.name + ".ckpt")


def test_fingerprint_cheap_and_same_for_file_and_dataset(data, monkeypatch):
    """The fingerprint reads only a sample of frames, and a file and the Dataset read from it agree (the
    serial CLI reads a Dataset, MPI / Dask ranks an index)."""
    from hpc_pt.io import cxi
    from hpc_pt.io.checkpoint import FINGERPRINT_FRAMES, input_fingerprint

    ds = cxi.read_cxi(str(data))
    index = cxi.scan_cxi(str(data))
    assert int(index.n_frames.sum()) > 4 * FINGERPRINT_FRAMES
    real = cxi.read_frames
    read = []

    def counting(ix, a, start=0, stop=None):
        fr = real(ix, a, start, stop)
        read.append(fr.shape[0])
        return fr

    monkeypatch.setattr(cxi, "read_frames", counting)
    fp = input_fingerprint(index)
    assert 0 < sum(read) <= FINGERPRINT_FRAMES
    assert fp == input_fingerprint(ds)
    assert fp["frames"] == int(index.n_frames.sum()) and fp["angles"] == 4


def test_resume_refuses_other_input_of_same_layout(data, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    ck = _interrupted(data, out)
    before = _tree(ck)
    capsys.readouterr()  # the interrupted run's own lines
    other = _other_input(data, tmp_path)
    code = main(["reconstruct", str(other), "--out", str(out), "--iterations", str(ITERATIONS), "--resume",
                 *CLI_APTS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "another input" in err[0] and "frames_sample" in err[0] and "angles_deg" not in err[0], err[0]
    assert _tree(ck) == before and not out.exists(), "a refused resume leaves checkpoints and output alone"
    # the same input (read by the CLI as a Dataset) resumes, bitwise-equal to an uninterrupted run
    ref = reconstruct(str(data), iterations=ITERATIONS, **APTS)
    assert main(["reconstruct", str(data), "--out", str(out), "--iterations", str(ITERATIONS), "--resume",
                 *CLI_APTS]) == 0
    from hpc_pt.io import read_volume

    vol, _ = read_volume(str(out))
    assert np.array_equal(np.asarray(vol), ref.volume.astype(vol.dtype))


def test_resume_iterations_count_every_iteration(data, tmp_path, capsys):
    """--iterations counts the checkpoint's iterations too: below the checkpoint's refused (one line,
    nothing written); equal to it: no new iteration, the output from the checkpoint; above: continued.
    The log line, the returned history and the stored rows agree."""
    from hpc_pt.io import read_table

    out = tmp_path / "r.zarr"
    ck = _interrupted(data, out)
    before = _tree(ck)
    capsys.readouterr()  # the interrupted run's own lines
    code = main(["reconstruct", str(data), "--out", str(out), "--iterations", "1", "--resume", *CLI_APTS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "at iteration 4, past --iterations 1" in err[0], err
    assert "--iterations 4 or more" in err[0]
    assert _tree(ck) == before and not out.exists()

    res = reconstruct(str(data), out=str(tmp_path / "four.zarr"), iterations=4, resume=True, checkpoint_dir=str(ck),
                      **APTS)
    assert res.resumed_from == 4 and list(res.history["iteration"]) == [1, 2, 3, 4]
    assert list(read_table(str(tmp_path / "four.zarr"))["iteration"]) == [1, 2, 3, 4]
    capsys.readouterr()
    for n, name in ((4, "four-cli.zarr"), (7, "seven.zarr")):
        assert main(["reconstruct", str(data), "--out", str(tmp_path / name), "--iterations", str(n), "--resume",
                     "--checkpoint-dir", str(ck), *CLI_APTS]) == 0
        log = capsys.readouterr().out
        assert f"apts, {n} iterations (resumed after iteration 4)" in log, log
        assert list(read_table(str(tmp_path / name))["iteration"]) == list(range(1, n + 1))


def test_two_step_tomography_checkpoint_needs_its_2d_iterations(data, tmp_path):
    """A two-step checkpoint in the tomography stage continues only with the --iterations its 2D stage ran
    (more 2D iterations could not be added any more)."""
    kw = {"method": "two-step", "options": {"tomo_iterations": 3}}
    out = tmp_path / "r.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny problems: two-step warns about overlap
        with pytest.raises(Interrupt):  # rows 1-2: 2D, rows 3-5: tomography; stopped after row 4
            reconstruct(str(data), out=str(out), iterations=2, checkpoint_every=1, progress=_stop_after(4), **kw)
        ck = tmp_ckpt(out)
        with pytest.raises(InputError, match="tomography stage, after 2 2D iterations.*--iterations 2"):
            reconstruct(str(data), out=str(out), iterations=3, resume=True, **kw)
        res = reconstruct(str(data), out=str(out), iterations=2, resume=True, **kw)
    assert res.resumed_from == 3 and list(res.history["iteration"]) == [1, 2, 3, 4, 5]
    assert (ck / "LATEST").read_text() == "iter-000003"


@pytest.mark.parametrize("damage", ["truncated-npz", "bad-json", "manifest-missing-keys"])
def test_damaged_latest_checkpoint_falls_back(data, tmp_path, capsys, damage):
    out = tmp_path / "r.zarr"
    ck = _interrupted(data, out)
    assert sorted(p.name for p in ck.iterdir() if p.is_dir()) == ["iter-000002", "iter-000004"]
    latest = ck / "iter-000004"
    if damage == "truncated-npz":
        raw = (latest / "rank-00000.npz").read_bytes()
        (latest / "rank-00000.npz").write_bytes(raw[: len(raw) // 2])
    elif damage == "bad-json":
        (latest / "rank-00000.json").write_text('{"iteration": 4, "history": [')
    else:
        man = json.loads((latest / "manifest.json").read_text())
        del man["plan"], man["fingerprint"]
        (latest / "manifest.json").write_text(json.dumps(man))
    ref = reconstruct(str(data), iterations=ITERATIONS, **APTS)
    capsys.readouterr()
    res = reconstruct(str(data), out=str(out), iterations=ITERATIONS, resume=True, **APTS)
    err = capsys.readouterr().err.strip().splitlines()
    warn = [e for e in err if e.startswith("warning: ")]
    assert len(warn) == 1 and "iter-000004" in warn[0] and "damaged" in warn[0] and "iter-000002" in warn[0], err
    assert {"truncated-npz": "rank-00000.npz", "bad-json": "rank-00000.json",
            "manifest-missing-keys": "lacks plan, fingerprint"}[damage] in warn[0], warn[0]
    assert res.resumed_from == 2
    assert np.array_equal(res.volume, ref.volume), "resumed from the previous checkpoint: bitwise-equal"
    assert list(res.history["iteration"]) == list(range(1, ITERATIONS + 1))


def test_every_checkpoint_damaged_is_one_line(data, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    ck = _interrupted(data, out)
    for d in ("iter-000002", "iter-000004"):
        (ck / d / "rank-00000.npz").write_bytes(b"PK\x03\x04 not a whole zip")
    (ck / "iter-000002" / "manifest.json").write_text("{")
    capsys.readouterr()
    code = main(["reconstruct", str(data), "--out", str(out), "--iterations", str(ITERATIONS), "--resume",
                 *CLI_APTS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: no intact checkpoint"), err
    assert "iter-000004: rank-00000.npz" in err[0] and "iter-000002: manifest.json" in err[0], err[0]
    assert "dropping --resume" in err[0]
    assert not out.exists()


def test_fresh_run_replaces_old_checkpoints(data, tmp_path):
    """Without --resume a run's first checkpoint removes an older run's (no fallback into another run); a
    run keeps its two newest."""
    out = tmp_path / "r.zarr"
    ck = _interrupted(data, out)
    with pytest.raises(Interrupt):
        reconstruct(str(data), out=str(out), iterations=ITERATIONS, checkpoint_every=3, progress=_stop_after(4),
                    **APTS)
    assert sorted(p.name for p in ck.iterdir()) == ["LATEST", "iter-000003"]


def test_thread_ranks_fall_back_together(data, tmp_path, capsys):
    """2 ranks, only rank 1's file of the latest checkpoint damaged: both ranks take the previous one
    (rank 0 warns once) and end bitwise-equal to an uninterrupted 2-rank run."""
    from threadcomm import run_threads

    out = tmp_path / "r.zarr"
    kw = dict(out=str(out), iterations=ITERATIONS, **APTS)
    ref = run_threads(2, lambda comm: reconstruct(str(data), comm=comm, iterations=ITERATIONS, **APTS))[0]
    with pytest.raises(Interrupt):
        run_threads(2, lambda comm: reconstruct(str(data), comm=comm, checkpoint_every=2, progress=_stop_after(5),
                                                **kw))
    ck = tmp_ckpt(out)
    assert (ck / "LATEST").read_text() == "iter-000004"
    (ck / "iter-000004" / "rank-00001.npz").write_bytes(b"")
    capsys.readouterr()
    res = run_threads(2, lambda comm: reconstruct(str(data), comm=comm, resume=True, **kw))
    warn = [e for e in capsys.readouterr().err.splitlines() if e.startswith("warning: ")]
    assert len(warn) == 1 and "iter-000004" in warn[0] and "1 other rank" in warn[0], warn
    assert [r.resumed_from for r in res] == [2, 2]
    assert np.array_equal(res[0].volume, ref.volume)


def _mpiexec(n, *args, timeout=120):
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the mpich wheel installs it there
    exe = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    assert exe, "mpiexec not found: install the test extra (pip install -e '.[test]', which brings mpich)"
    return subprocess.run(["timeout", str(timeout), exe, "-n", str(n), *args], check=False, capture_output=True,
                          text=True, timeout=timeout + 30)


def test_mpi_resume_refuses_other_input(data, tmp_path):
    """2 MPI ranks: rank 0's fingerprint is broadcast, both ranks refuse together (exit 2, one line, no
    hanging rank), the checkpoints stay as they were."""
    from threadcomm import run_threads

    ck = tmp_path / "ck"  # the checkpoints of a 2-rank run (thread ranks: one mpiexec start less)
    run_threads(2, lambda comm: reconstruct(str(data), out=str(tmp_path / "a.zarr"), comm=comm, method="gd",
                                            iterations=2, checkpoint_every=1, checkpoint_dir=str(ck)))
    assert (ck / "LATEST").read_text() == "iter-000002"
    before = _tree(ck)
    other = _other_input(data, tmp_path)
    p = _mpiexec(2, sys.executable, "-m", "hpc_pt", "reconstruct", str(other), "--backend", "mpi", "--method", "gd",
                 "--iterations", "2", "--checkpoint-dir", str(ck), "--resume", "--out", str(tmp_path / "b.zarr"),
                 "--quiet")
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, (p.returncode, p.stderr[-3000:])
    assert err[0].startswith("error: checkpoint") and "another input" in err[0], err[0]
    assert _tree(ck) == before and not (tmp_path / "b.zarr").exists()
