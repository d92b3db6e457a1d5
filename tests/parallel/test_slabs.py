"""The slab-decomposed volume (hpc_pt.parallel.slabs): transposes, halos, finite differences, projections
and byte counts against the global operators, on 1-4 in-process ranks (threads) and on real MPI ranks."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from hpc_pt.parallel import SerialComm, chunk_rows, slab_bounds

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from slab_helpers import assert_checks, run_checks  # noqa: E402
from threadcomm import run_threads  # noqa: E402


def test_slab_bounds_and_chunks():
    assert slab_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert slab_bounds(10, 2, align=4) == [(0, 8), (8, 10)]  # 3 blocks of 4 rows: 2 + 1
    for nz, size, align in [(128, 3, 8), (48, 2, 24), (17, 4, 2), (5, 5, 1)]:
        b = slab_bounds(nz, size, align)
        assert b[0][0] == 0 and b[-1][1] == nz and all(x[1] == y[0] for x, y in zip(b, b[1:]))
        assert all(z0 % align == 0 for z0, _ in b), "every slab starts on a chunk boundary"
        assert all(z1 > z0 for z0, z1 in b)
    with pytest.raises(ValueError, match="fewer ranks"):
        slab_bounds(3, 4)
    assert chunk_rows(48, 48, 2) == 24
    assert chunk_rows(2048, 2048, 256) * 2048 * 2048 * 8 <= 64 << 20


def test_serial_space_is_global():
    out = run_checks(SerialComm())
    assert_checks([out])


@pytest.mark.parametrize("size,n_angles,align", [(2, 5, 1), (3, 5, 1), (4, 5, 2), (3, 2, 1), (4, 3, 1)])
def test_threaded_ranks_match_global(size, n_angles, align):
    """Whole angles (ranks <= angles) and split angles (more ranks than angles), uneven slabs, chunk-aligned
    slabs: everything equals the global operators and the bytes equal the formulas."""
    outs = run_threads(size, lambda comm: run_checks(comm, n_angles=n_angles, align=align))
    assert_checks(outs)
    if size > n_angles:
        assert outs[0]["to_slabs_bytes"] > 0


def test_mpi_ranks_match_global(tmp_path):
    """The same checks with MPIComm under mpiexec (3 ranks, 5 angles; and 4 ranks, 3 angles: split angles)."""
    import json
    import shutil
    import subprocess

    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "mpi_scripts", "slab_checks.py")
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    assert exe, "mpiexec not found: install the test extra"
    for n, angles in [(3, 5), (4, 3)]:
        out = tmp_path / f"slabs{n}.json"
        p = subprocess.run(["timeout", "240", exe, "-n", str(n), sys.executable, "-m", "mpi4py", script,
                            str(angles), str(out)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert_checks(json.loads(out.read_text()))


def test_threaded_reconstruct_writes_chunk_aligned_slabs(tmp_path):
    """APTs on 3 in-process ranks: every rank writes its own rows of the Zarr store (slab starts on chunk
    boundaries, so no chunk has two writers), the store equals the serial result, and the history carries
    per-iteration communication counters."""
    import warnings

    import zarr

    from hpc_pt import reconstruct
    from hpc_pt.io import read_table, read_volume
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    ds = simulate_dataset(SimulationConfig(size=16, angles=4, probe_size=8, probe_fwhm=3, step=3, field_pad=3,
                                           scan="fermat", per_angle_offset=1.0))
    settings = dict(method="apts", iterations=3, init="zeros")
    ref = reconstruct(ds, **settings)
    out = tmp_path / "r.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_threads(3, lambda comm: reconstruct(ds, out=str(out), comm=comm, **settings))
    vol, attrs = read_volume(out)
    assert np.linalg.norm(vol - ref.volume) / np.linalg.norm(ref.volume) < 1e-5
    assert all(np.array_equal(r.volume, results[0].volume) for r in results)
    cz = attrs["chunks_z"]
    slabs = attrs["parallel"]["slabs"]
    assert len(slabs) == 3 and all(z0 % cz == 0 for z0, _ in slabs), (cz, slabs)
    assert zarr.open_group(str(out), mode="r")["volume"].chunks[0] == cz
    low = np.asarray(zarr.open_group(str(out), mode="r")["1"][...])
    from hpc_pt.io.zarr_store import downsample2

    assert np.allclose(low, downsample2(vol.real.astype(np.float32))[0], atol=1e-6)
    hist = read_table(out)
    assert np.all(hist["comm_bytes_alltoallv"] > 0) and np.all(hist["comm_time_s"] >= 0)
    assert not list(tmp_path.glob("r.zarr.tmp-*")), "temporary store removed"
