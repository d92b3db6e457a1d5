"""Checkpoints: an interrupted run resumed from its last checkpoint ends bitwise-equal to an uninterrupted one,
checkpoints are written atomically, and resuming with other settings is refused."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from hpc_pt import reconstruct
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
