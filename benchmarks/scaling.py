"""Scaling benchmark and performance model of one APT outer iteration (docs/scaling.md).

    python benchmarks/scaling.py [--quick] [--out benchmarks/results] [--repeats R] [--no-dask]

Two parts, both importable (``tests/parallel/test_scaling_model.py`` imports the model from here):

* **Model** (pure functions, no timing): the exact bytes every rank sends per APT/APTs outer iteration
  (:func:`apt_iteration_bytes`, following ``hpc_pt/solvers/apt.py`` and ``hpc_pt/parallel/slabs.py`` call by
  call), the work per rank (:func:`apt_work`: flops, NUFFT points, memory traffic), the memory per rank
  (:func:`apt_memory`) and the time prediction on a machine description (:func:`predict_iteration`), with the
  extrapolation to a 2048^3 / 1,500-angle / 10^6-frame problem on 256 H100-class GPUs (:data:`BIG`,
  :data:`H100`).
* **Measurement**: strong scaling (a fixed 64^3 problem, 48 angles, APT) and weak scaling (angles grow with
  the ranks: 12 per rank, same 64^3 volume, so frames, slab-layout projection rows x angles and transpose
  bytes per rank stay constant) on MPI (``mpiexec -n P python -m mpi4py -m hpc_pt reconstruct ... --backend
  mpi``, 1, 2, 4 ranks) and Dask (:func:`hpc_pt.dask_run.run_dask` on a local cluster of single-threaded
  worker processes, 1, 2, 4 workers). Per outer iteration, from the history written into the Zarr store
  (``hpc_pt.io.read_table(out, "history")``, rank 0's counters): time split into compute / communication /
  I/O, bytes sent (checked against the model, row by row), efficiency. Iteration 1 carries the solver's
  set-up (power iteration, stencil transposes) and is left out of the times; its bytes are checked too.

Every configuration runs ``--repeats`` times round-robin (MPI and Dask alternate), the per-iteration times
are medians over iterations 2.. and then over repeats. Efficiencies and the Dask/MPI ratio come from the same
run. 4 ranks on a 2-core machine are oversubscribed (marked in the JSON and the plot). Nothing asserts on
time. Each rank runs with ``HPC_PT_NUFFT_THREADS=1 HPC_PT_FFT_WORKERS=1 OMP_WAIT_POLICY=PASSIVE``.

Writes ``<out>/scaling.json`` and ``<out>/scaling.png``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

C64 = 8  # bytes of one complex64 value
F32 = 4  # bytes of one float32 value (the stencil maps)
POWER_ITERATIONS = 15  # hpc_pt.solvers.base.power_lipschitz default, run once in APT's set-up


# ======================================================================================================
# Model: exact communication bytes
# ======================================================================================================

def rank_layout(counts, nz: int, n: int, size: int):
    """(rank_angles, bounds) exactly as :func:`hpc_pt.pipeline.make_space` builds them: the shard plan's
    angle lists and the slabs in blocks of the Zarr chunk height."""
    from hpc_pt.parallel import chunk_rows, plan_shards, slab_bounds

    plan = plan_shards(list(counts), size)
    return [[a for a, _s, _e in pieces] for pieces in plan], slab_bounds(nz, size, chunk_rows(nz, n, size))


def _rows(bounds):
    return [z1 - z0 for z0, z1 in bounds]


def to_slabs_bytes(rank_angles, bounds, row_len: int, rank: int, itemsize: int = C64) -> int:
    """Bytes ``rank`` sends in one :meth:`SlabSpace.to_slabs`: its angles' rows of every other slab."""
    rows = _rows(bounds)
    return len(rank_angles[rank]) * (sum(rows) - rows[rank]) * row_len * itemsize


def to_angles_bytes(rank_angles, bounds, row_len: int, rank: int, itemsize: int = C64) -> int:
    """Bytes ``rank`` sends in one :meth:`SlabSpace.to_angles`: its slab's rows of every other rank's angles."""
    others = sum(len(a) for s, a in enumerate(rank_angles) if s != rank)
    return _rows(bounds)[rank] * others * row_len * itemsize


def halo_send_bytes(bounds, rank: int, row_elems: int, itemsize: int = C64) -> int:
    """Bytes ``rank`` sends in one :meth:`SlabSpace.halo`: one row to each neighbouring slab."""
    P = len(bounds)
    return ((rank > 0) + (rank < P - 1)) * row_elems * itemsize if P > 1 else 0


def halo_exchanges(cg_iterations: int, tv: bool = True, vertical: bool = False) -> dict:
    """Halo exchanges in one APT(s) outer iteration (``hpc_pt/solvers/apt.py``). CG calls the operator
    ``1 + c`` times (the warm start's residual, then once per iteration; exact unless CG stops on p^H A p
    <= 0, which a positive-definite L never does). Each call: the normal operator's stencil halo when the
    stencil couples rows (sub-pixel row positions), and with TV the Laplacian = divergence(gradient): two.
    TV outside CG: divergence(p + Lambda1) for the right-hand side and gradient(u) for the p-update, whose
    gradient also gives the objective's TV value: two."""
    calls = 1 + int(cg_iterations)
    return {"volume": (2 * calls + 2) if tv else 0, "stencil": calls if vertical else 0}


def scalar_reductions(cg_iterations: int, tv: bool = True) -> int:
    """One-float allreduces per outer iteration: CG 1 + 2c (||r0||^2, then p^H A p and ||r||^2 per
    iteration), primal residual 1 (+1 TV), objective 1 (+1 TV value), R-factor 1, relative change 2."""
    return 1 + 2 * int(cg_iterations) + 5 + (2 if tv else 0)


#: one-float allreduces of APT's set-up (in iteration 1's counters): stencil refresh 2, energy match 2,
#: power iteration 2 per step, sum of sqrt(f) 1, and the automatic penalty's four data statistics
#: (:func:`hpc_pt.solvers.apt.choose_r2`: non-count pixels, pixels, total and squared counts)
SETUP_SCALARS = 2 + 2 + 2 * POWER_ITERATIONS + 1 + 4


def apt_iteration_bytes(rank_angles, bounds, n: int, n_det: int, n_angles: int, rank: int, cg_iterations: int,
                        tv: bool = True, vertical: bool = False, n_maps: int = 1, first: bool = False) -> dict:
    """Bytes ``rank`` sends in one APT (``tv``) / APTs outer iteration, by collective kind, as
    :class:`~hpc_pt.parallel.base.CommStats` counts them (``alltoallv``: bytes to other ranks; ``scalar``: 8
    per one-float allreduce). ``first``: add the set-up that lands in iteration 1's counters (``n_maps``
    float32 stencil maps moved to the slabs, two ``to_angles`` for D(ones) and D(u0), and the power
    iteration's stencil halos). ``n_maps`` = 9 with sub-pixel positions, else 1; ``vertical``: sub-pixel
    row positions. Returns also the parts (``transposes``, ``halo_volume``, ``halo_stencil``)."""
    P = len(bounds)
    if P == 1:
        return {"alltoallv": 0, "scalar": 0, "comm_bytes": 0, "transposes": 0, "halo_volume": 0,
                "halo_stencil": 0, "halo_exchanges": halo_exchanges(cg_iterations, tv, vertical), "collectives": 0}
    hx = halo_exchanges(cg_iterations, tv, vertical)
    tr = to_slabs_bytes(rank_angles, bounds, n_det, rank) + to_angles_bytes(rank_angles, bounds, n_det, rank)
    hv = hx["volume"] * halo_send_bytes(bounds, rank, n * n)
    hs = hx["stencil"] * halo_send_bytes(bounds, rank, n_angles * n_det)
    nsc = scalar_reductions(cg_iterations, tv)
    if first:
        tr += n_maps * to_slabs_bytes(rank_angles, bounds, n_det, rank, F32)
        tr += 2 * to_angles_bytes(rank_angles, bounds, n_det, rank)
        if vertical:
            hs += POWER_ITERATIONS * halo_send_bytes(bounds, rank, n_angles * n_det)
        nsc += SETUP_SCALARS
    a2a = tr + hv + hs
    calls = 2 + hx["volume"] + hx["stencil"] + nsc  # collectives (each a synchronisation of the ranks)
    if first:
        calls += n_maps + 2 + (POWER_ITERATIONS if vertical else 0)
    return {"alltoallv": int(a2a), "scalar": int(8 * nsc), "comm_bytes": int(a2a + 8 * nsc),
            "transposes": int(tr), "halo_volume": int(hv), "halo_stencil": int(hs), "halo_exchanges": hx,
            "collectives": int(calls)}


def apt_iteration_bytes_total(rank_angles, bounds, n, n_det, n_angles, cg_iterations, **kw) -> dict:
    """:func:`apt_iteration_bytes` summed over ranks (what crosses the network)."""
    out: dict = {}
    for r in range(len(bounds)):
        for k, v in apt_iteration_bytes(rank_angles, bounds, n, n_det, n_angles, r, cg_iterations, **kw).items():
            if k != "halo_exchanges":
                out[k] = out.get(k, 0) + v
    return out


def approx_transpose_bytes(A: int, nz: int, W: int, P: int, itemsize: int = C64) -> float:
    """The slab module's closed form for one transpose, all ranks: itemsize A N_z W (P - 1) / P."""
    return itemsize * A * nz * W * (P - 1) / P


# ======================================================================================================
# Model: work, memory, time
# ======================================================================================================

def nufft_samples(n: int, n_det: int) -> int:
    """Fourier samples M per angle of :class:`hpc_pt.operators.Projector` (``_min_samples``, made odd)."""
    center = (n_det - 1) / 2.0
    reach = max(center, n_det - 1 - center)
    m = max(n_det, int(math.ceil(reach + (n - 1) / math.sqrt(2) + 1 + 4))) + 1
    return m if m % 2 else m + 1


#: flop and traffic constants of the work model (per element; docs/scaling.md section 2)
CONST = {
    "sigma": 2.0,  # NUFFT upsampling factor (finufft's default)
    "w": 7,  # NUFFT kernel width for eps 1e-6 (finufft: ceil(-log10(eps / 10)))
    "frame_elem_flops": 40.0,  # probe products, window gather/scatter, amplitude prox, multipliers, objective
    "frame_elem_passes": 30.0,  # complex64 array passes (read or write) per frame pixel, outside the FFTs
    "fft_passes": 4.0,  # a 2D FFT too large for on-chip memory: 2 passes, each reads and writes
    "nufft_grid_passes": 8.0,  # per NUFFT: the 2D FFT (4) + zero-fill / deconvolve / copy (4)
    "vol_flops_cg": 40.0,  # per voxel per CG iteration: 3 axpy-like updates, 2 dot products
    "vol_flops_tv_call": 30.0,  # per voxel per Laplacian (gradient + divergence)
    "vol_flops_tv_other": 100.0,  # per voxel per outer iteration: rhs divergence, gradient, TV prox, TV value
    "vol_passes": 12.0,  # volume array passes per CG iteration (+ per Laplacian with TV)
    "vol_passes_tv_other": 40.0,  # volume array passes per outer iteration outside CG with TV
}


def apt_work(N: int, A: int, F: float, m: int, P: int, c: int = 4, W: int | None = None, nz: int | None = None,
             tv: bool = True, n_maps: int = 1) -> dict:
    """Work of one APT outer iteration on one of ``P`` ranks (even split): flops, NUFFT non-uniform points
    and memory traffic (bytes) per component. ``N``: volume N x N x nz (nz defaults to N), ``W`` the field /
    detector width (default N), ``A`` angles, ``F`` frames of m x m pixels in all, ``c`` CG iterations.

    Components: ``ptycho_fft`` (one FFT and one inverse FFT per frame: D and D^H), ``ptycho_elem`` (everything
    else on frames), ``projector`` (c + 2 forward/adjoint pairs: P^H for the right-hand side, one pair per
    operator call in CG (1 + c), P for psi; each on nz / P slices: two NUFFTs on the sigma N grid with A M
    points, 1D FFTs of length M per angle and row), ``stencil`` (the normal operator's pixel / 3x3 stencil,
    1 + c times), ``volume`` (CG vector updates, TV)."""
    W = int(W or N)
    nz = int(nz or N)
    k = CONST
    M = nufft_samples(N, W)
    rows = nz / P
    fr = F / P
    m2 = m * m
    g = (k["sigma"] * N) ** 2  # upsampled NUFFT grid points
    pairs = c + 2
    calls = c + 1
    out = {}
    out["ptycho_fft"] = {"flops": 2 * 5 * fr * m2 * math.log2(m2), "bytes": 2 * k["fft_passes"] * C64 * fr * m2,
                         "points": 0.0}
    out["ptycho_elem"] = {"flops": k["frame_elem_flops"] * fr * m2, "bytes": k["frame_elem_passes"] * C64 * fr * m2,
                          "points": 0.0}
    spread = 4 * k["w"] ** 2 + 20 * k["w"]  # per point: w^2 complex x real accumulates + 2w kernel values
    out["projector"] = {
        "flops": pairs * rows * (2 * 5 * g * math.log2(g) + 2 * A * M * spread + 2 * A * 5 * M * math.log2(M)),
        "bytes": pairs * rows * (2 * k["nufft_grid_passes"] * C64 * g + 2 * 4 * C64 * A * M),
        "points": pairs * rows * 2 * A * M,  # non-uniform points spread or interpolated
    }
    sten = A * rows * W
    out["stencil"] = {"flops": calls * 4 * n_maps * sten, "bytes": calls * (n_maps * F32 + 2 * C64) * sten,
                      "points": 0.0}
    vox = N * N * rows
    vf = c * k["vol_flops_cg"] + (calls * k["vol_flops_tv_call"] + k["vol_flops_tv_other"] if tv else 0)
    vp = c * k["vol_passes"] + (calls * k["vol_passes"] + k["vol_passes_tv_other"] if tv else 0)
    out["volume"] = {"flops": vf * vox, "bytes": vp * C64 * vox, "points": 0.0}
    out["total"] = {key: sum(v[key] for v in out.values()) for key in ("flops", "bytes", "points")}
    out["M"] = M
    return out


def apt_memory(N: int, A: int, F: float, m: int, P: int, W: int | None = None, nz: int | None = None,
               tv: bool = True, n_maps: int = 1) -> dict:
    """Bytes held per rank (even split). ``frames_min``: intensity (float32) + z + Lambda2 (complex64) =
    20 B per frame pixel, docs/architecture.md §4's count; ``frames``: what APT holds at its peak: f and
    sqrt(f) (float32), z, Lambda2, D u and two complex64 temporaries of the prox = 48 B. Volume slab: 8
    complex64 volumes (u, u_old, rhs, CG x r p Ap, one temporary) + 12 with TV (p, Lambda1, grad u: 3
    each, one gradient temporary). Slab-layout projections: the stencil maps (float32) and 3 complex64
    (P u, stencil product, transpose buffer); per-angle projections: 3 complex64 (psi, padded field, the
    adjoint's sum) plus the transposes' host buffers (2); NUFFT: the upsampled grid per slab row (finufft
    transforms the whole slab in one batch)."""
    W = int(W or N)
    nz = int(nz or N)
    rows = nz / P
    fr = F / P
    M = nufft_samples(N, W)
    out = {
        "frames_min": fr * m * m * (F32 + 2 * C64),
        "frames": fr * m * m * (2 * F32 + 5 * C64),
        "volume": (8 + (12 if tv else 0)) * C64 * N * N * rows,
        "slab_projections": A * rows * W * (n_maps * F32 + 3 * C64),
        "angle_projections": (A / P) * nz * W * 5 * C64,
        "nufft": rows * ((2 * N) ** 2 * C64 + A * M * C64),
    }
    out["total"] = sum(v for k, v in out.items() if k != "frames_min")
    return out


def predict_iteration(problem: dict, machine: dict, staging: bool = False) -> dict:
    """Seconds of one APT outer iteration per rank on ``machine`` (see :data:`H100`): each component takes
    max(flops / flop rate, bytes / memory bandwidth), the projector's spreading adds points / point rate;
    communication = bytes / link bandwidth + messages x latency, not overlapped with compute. Transposes
    are all-to-all over the network (every rank's bytes through its own link); halos go to the two slab
    neighbours, one of which is off-node for the ranks at a node's edge (they set the pace).
    ``staging``: the current code's host round trip (device -> host copy, packing and unpacking in NumPy,
    host -> device) for every transpose and halo, at ``machine['pcie_Bps']`` and ``machine['host_copy_Bps']``."""
    p = problem
    N, A, F, m, P, c = p["N"], p["A"], p["F"], p["m"], p["P"], p["c"]
    W, nz = p.get("W", N), p.get("nz", N)
    tv, n_maps, vertical = p.get("tv", True), p.get("n_maps", 9), p.get("vertical", True)
    work = apt_work(N, A, F, m, P, c, W, nz, tv, n_maps)
    comp = {}
    for k in ("ptycho_fft", "ptycho_elem", "projector", "stencil", "volume"):
        w = work[k]
        t = max(w["flops"] / machine["flops"], w["bytes"] / machine["mem_Bps"])
        if k == "projector":
            t = max(w["flops"] / machine["flops"], w["bytes"] / machine["mem_Bps"] + w["points"] / machine["nufft_pts_s"])
        comp[k] = t
    t_comp = sum(comp.values())
    # communication per rank
    tr_rank = 2 * approx_transpose_bytes(A, nz, W, P) / P  # both directions, this rank's share
    hx = halo_exchanges(c, tv, vertical)
    row_v, row_s = C64 * N * N, C64 * A * W
    lat = machine["latency_s"]
    bw = machine["net_Bps"]
    t_tr = tr_rank / bw + 2 * (P - 1) * lat
    t_halo = (hx["volume"] * row_v + hx["stencil"] * row_s) / bw + (hx["volume"] + hx["stencil"]) * lat
    t_scal = scalar_reductions(c, tv) * math.ceil(math.log2(max(P, 2))) * 2 * lat
    comm = {"transposes": t_tr, "halos": t_halo, "scalars": t_scal}
    if staging:  # D2H + pack + unpack + H2D for every byte that leaves the rank (and the local part)
        per_b = 2 / machine["pcie_Bps"] + 2 / machine["host_copy_Bps"]
        comm["host_staging"] = (2 * C64 * (A / P) * nz * W + 2 * (hx["volume"] * row_v + hx["stencil"] * row_s)) * per_b
    t_comm = sum(comm.values())
    total = t_comp + t_comm
    return {"compute_s": comp, "compute_total_s": t_comp, "comm_s": comm, "comm_total_s": t_comm,
            "iteration_s": total, "efficiency": t_comp / total, "work": work,
            "memory_bytes": apt_memory(N, A, F, m, P, W, nz, tv, n_maps),
            "comm_bytes_per_rank": {"transposes": tr_rank, "halos": 2 * (hx["volume"] * row_v + hx["stencil"] * row_s),
                                    "scalars": 8 * scalar_reductions(c, tv)}}


#: the extrapolation target (docs/scaling.md section 5): sub-pixel positions (9 stencil maps, row halos)
BIG = {"N": 2048, "nz": 2048, "W": 2048, "A": 1500, "F": 1_000_000, "m": 256, "P": 256, "c": 4, "tv": True,
       "n_maps": 9, "vertical": True}

#: H100 SXM 80 GB class GPU and its links; every number is an assumption stated in docs/scaling.md
H100 = {
    "name": "H100 SXM 80 GB, 8 per node, one 400 Gb/s InfiniBand NIC per GPU",
    "flops": 50e12,  # FP32 sustained (peak 67 TFLOP/s non-tensor)
    "mem_Bps": 2.6e12,  # HBM3 sustained (peak 3.35 TB/s)
    # cuFINUFFT 2D single precision at eps 1e-6 (w = 7), clustered polar points: spread / interpolated points per
    # second. Its paper (arXiv:2102.08463) reports ~1e9 points/s on a V100 at low accuracy; w = 7 costs more per
    # point, an H100 has ~2.5x the V100's bandwidth: 1e9, with 5e8 and 2e9 in the sensitivity table
    "nufft_pts_s": 1e9,
    "net_Bps": 50e9,  # per GPU per direction (25e9 for 200 Gb/s)
    "latency_s": 3e-6,  # MPI point-to-point
    "pcie_Bps": 25e9,  # device <-> host, pageable NumPy buffers (PCIe Gen5 x16 peak 64 GB/s)
    "host_copy_Bps": 10e9,  # one host thread copying / adding NumPy buffers
    "memory_bytes": 80e9,
}


# ======================================================================================================
# Measurement
# ======================================================================================================

def environment() -> dict:
    import finufft
    import scipy

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                check=False, text=True, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        commit = None
    try:
        mpi = subprocess.run([_mpiexec(), "--version"], check=False, capture_output=True, text=True,
                             timeout=20).stdout
        mpi = " ".join(mpi.split()[:6])
    except Exception:  # noqa: BLE001
        mpi = None
    try:
        import distributed

        dask_version = distributed.__version__
    except ImportError:
        dask_version = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "uptime_at_start": _uptime(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "finufft": getattr(finufft, "__version__", "unknown"),
        "mpiexec": mpi,
        "distributed": dask_version,
        "rank_env": dict(RANK_ENV),
        "git_commit": commit,
    }


def _uptime() -> str | None:
    try:
        return subprocess.run(["uptime"], check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


RANK_ENV = {"HPC_PT_NUFFT_THREADS": "1", "HPC_PT_FFT_WORKERS": "1", "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _mpiexec() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the mpich wheel installs it there
    exe = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if not exe:
        raise RuntimeError("mpiexec not found: pip install -e '.[test]' (brings mpich)")
    return exe


def make_dataset(N: int, A: int, m: int, step: int, pad: int, path: Path) -> dict:
    """Simulate and write a CXI file; integer positions (step and per-angle offset integers)."""
    from hpc_pt.io import write_cxi
    from hpc_pt.pipeline import volume_shape_for
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    cfg = SimulationConfig(size=N, angles=A, probe_size=m, probe_fwhm=m / 4, step=step, field_pad=pad,
                           per_angle_offset=1.0)
    ds = simulate_dataset(cfg)
    write_cxi(ds, path)
    pos = np.concatenate([a.positions for a in ds.angles])
    frac = pos - np.floor(pos)
    nz, n, _ = volume_shape_for(ds)
    return {"path": str(path), "N": n, "nz": nz, "W": int(ds.geometry.field_shape[1]), "A": A, "m": m, "step": step,
            "field_pad": pad, "counts": [int(a.frames.shape[0]) for a in ds.angles],
            "F": int(sum(a.frames.shape[0] for a in ds.angles)), "n_maps": 9 if np.any(frac != 0) else 1,
            "vertical": bool(np.any(frac[:, 0] != 0))}


def _history(out) -> dict:
    from hpc_pt.io import read_table

    return {k: [float(x) for x in v] for k, v in read_table(out, "history").items()}


def run_mpi(ds: dict, P: int, iterations: int, out: Path, method: str) -> dict:
    cmd = ["timeout", "900", _mpiexec(), "-n", str(P), sys.executable, "-m", "mpi4py", "-m", "hpc_pt", "reconstruct",
           ds["path"], "--backend", "mpi", "--method", method, "--iterations", str(iterations), "--out", str(out),
           "--force", "--quiet", "--no-deterministic"]  # the byte model is the ordinary mode's (docs/scaling.md)
    env = {**os.environ, **RANK_ENV, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"mpiexec -n {P} failed ({p.returncode}): {p.stderr[-2000:]}")
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"history": _history(out), "wall_s": wall, "cpu_s": cpu}


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process so far (run on Dask workers)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_dask_case(client, ds: dict, P: int, iterations: int, out: Path, method: str) -> dict:
    from hpc_pt.dask_run import run_dask

    c0 = client.run(_cpu_seconds)
    t0 = time.perf_counter()
    res = run_dask(ds["path"], out=str(out), client=client, workers=P, method=method, iterations=iterations,
                   overwrite=True, dashboard=False, deterministic=False)
    wall = time.perf_counter() - t0
    c1 = client.run(_cpu_seconds)
    ranks = [{k: v for k, v in info.items() if k != "calls"} for info in res.rank_info]
    return {"history": _history(out), "wall_s": wall, "rank_totals": ranks,
            "cpu_s": sum(c1[w] - c0[w] for w in c1 if w in c0)}


def summarize(run: dict, ds: dict, P: int, method: str) -> dict:
    """Per-iteration medians over iterations 2.. and the row-by-row byte check against the model."""
    h = run["history"]
    n_it = len(h["iteration"])
    keep = list(range(1, n_it)) if n_it > 1 else [0]

    def med(key):
        return float(statistics.median(h[key][i] for i in keep)) if key in h else 0.0

    ra, bounds = rank_layout(ds["counts"], ds["nz"], ds["N"], P)
    tv = method == "apt"
    rows = []
    for i in range(n_it):
        c = int(h["cg_iterations"][i])
        model = apt_iteration_bytes(ra, bounds, ds["N"], ds["W"], ds["A"], 0, c, tv=tv, vertical=ds["vertical"],
                                    n_maps=ds["n_maps"], first=(i == 0))
        total = apt_iteration_bytes_total(ra, bounds, ds["N"], ds["W"], ds["A"], c, tv=tv, vertical=ds["vertical"],
                                          n_maps=ds["n_maps"], first=(i == 0))
        meas = {k: int(round(h.get(f"comm_bytes_{k}", [0] * n_it)[i])) for k in ("alltoallv", "scalar", "allreduce")}
        meas["comm_bytes"] = int(round(h.get("comm_bytes", [0] * n_it)[i]))
        rows.append({"iteration": i + 1, "cg_iterations": c, "measured_rank0": meas,
                     "model_rank0": {k: model[k] for k in ("alltoallv", "scalar", "comm_bytes", "transposes",
                                                           "halo_volume", "halo_stencil", "collectives")},
                     "model_all_ranks": total,
                     "exact": meas["alltoallv"] == model["alltoallv"] and meas["scalar"] == model["scalar"]
                     and meas["allreduce"] == 0})
    phases = {k[len("phase_time_"):-2]: med(k) for k in h if k.startswith("phase_time_")}
    it = med("iter_time_s")
    comm = med("comm_time_s")
    ncoll = statistics.median(rows[i]["model_rank0"]["collectives"] for i in keep)
    return {
        "iteration_s": it, "compute_s": max(it - comm, 0.0), "comm_s": comm, "io_s": med("io_time_s"),
        "iteration_s_min": float(min(h["iter_time_s"][i] for i in keep)),
        # communication is mostly synchronisation on a loaded machine: seconds per collective call
        "collectives_per_iteration": ncoll, "comm_s_per_collective": comm / ncoll if ncoll else None,
        "phases_s": phases, "wall_s": run["wall_s"], "iterations": n_it,
        # everything outside the outer iterations: start-up, imports, reading the frames, set-up, writing the store
        "outside_iterations_s": run["wall_s"] - sum(h["iter_time_s"]),
        # CPU seconds of all ranks over the whole run / (wall x P): the share of a core each rank got on average
        # (MPI ranks spin while they wait in a collective, so waiting counts as CPU time there)
        "cpu_share_per_rank": run["cpu_s"] / (run["wall_s"] * P) if run.get("cpu_s") is not None else None,
        "comm_bytes_per_iteration_rank0": int(statistics.median(r["measured_rank0"]["comm_bytes"] for r in
                                                                 [rows[i] for i in keep])),
        "comm_bytes_per_iteration_all_ranks_model": int(statistics.median(rows[i]["model_all_ranks"]["comm_bytes"]
                                                                          for i in keep)),
        "bytes_rows": rows, "bytes_exact": all(r["exact"] for r in rows),
        "final_r_factor": h["r_factor"][-1] if "r_factor" in h else None,
        "rank_totals": run.get("rank_totals"),
    }


def _dask_cluster(workers: int, default_env: bool = False):
    """A local cluster of single-threaded worker processes. Unless ``default_env``, the workers start without
    ``MALLOC_TRIM_THRESHOLD_=65536``, which Dask's nanny sets by default (``distributed.nanny.pre-spawn-environ``):
    an explicit trim threshold switches off glibc's dynamic mmap threshold, so every temporary array above
    128 KiB is a fresh mmap with its page faults; hpc-pt's kernels then run 2-3x slower in a worker than in
    a plain process (measured here on the projector and on frame-sized element-wise work)."""
    import dask
    import distributed

    try:  # the cluster `hpc-pt reconstruct --backend dask --workers K` starts (it drops the variable too)
        from hpc_pt.parallel.dask import local_cluster
    except ImportError:
        local_cluster = None
    if local_cluster is not None and not default_env:
        cluster = local_cluster(workers, dashboard_address=None)
    else:
        env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        if not default_env:
            env.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                               host="127.0.0.1", dashboard_address=None)
    client = distributed.Client(cluster)
    client.wait_for_workers(workers, timeout=120)
    trim = set(client.run(_warm_worker).values())  # imports, outside the timed runs; the variable as set
    if (trim != {None}) != default_env:
        raise RuntimeError(f"Dask workers have MALLOC_TRIM_THRESHOLD_={trim}, expected "
                           f"{'the default' if default_env else 'none'}")
    return cluster, client


def _warm_worker():
    import hpc_pt.pipeline
    import hpc_pt.solvers.apt  # noqa: F401

    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def measure(args, tmp: Path) -> dict:
    for k, v in RANK_ENV.items():  # the Dask worker processes inherit these
        os.environ[k] = v
    if args.quick:
        N, A_strong, A_per_rank, m, step, pad, iters = 24, 8, 4, 8, 3, 2, 3
    else:
        N, A_strong, A_per_rank, m, step, pad, iters = 64, 48, 12, 16, 4, 4, args.iterations
    ranks = [1, 2, 4]
    datasets = {}
    print(f"simulating {N}^3 datasets ...", flush=True)
    datasets[("strong", A_strong)] = make_dataset(N, A_strong, m, step, pad, tmp / f"strong_{A_strong}.cxi")
    for P in ranks:
        A = A_per_rank * P
        if A == A_strong:
            datasets[("weak", A)] = datasets[("strong", A_strong)]
        else:
            datasets[("weak", A)] = make_dataset(N, A, m, step, pad, tmp / f"weak_{A}.cxi")
    # configurations: (scaling, P, dataset key); weak at the strong problem's size reuses its run
    configs = [("strong", P, ("strong", A_strong)) for P in ranks]
    configs += [("weak", P, ("weak", A_per_rank * P)) for P in ranks if A_per_rank * P != A_strong]
    backends = ["mpi"] + ([] if args.no_dask else ["dask"])
    dask_ok = None
    if "dask" in backends:
        try:
            import distributed  # noqa: F401

            from hpc_pt.dask_run import run_dask  # noqa: F401
            dask_ok = True
        except Exception as e:  # noqa: BLE001
            dask_ok = f"Dask backend unavailable: {e}"
            backends = ["mpi"]
    raw: dict = {}
    loads = []
    for rep in range(args.repeats):
        # MPI and Dask alternate configuration by configuration (the order flips every repeat), so load from
        # other processes hits both alike; the Dask cluster idles while an MPI run goes
        cluster = client = None
        if "dask" in backends:
            cluster, client = _dask_cluster(max(ranks))
            from hpc_pt.dask_run import run_dask

            # warm-up: every worker runs the whole pipeline once (imports, first plans), untimed
            run_dask(datasets[("weak", A_per_rank * max(ranks))]["path"], client=client, workers=max(ranks),
                     method=args.method, iterations=1, dashboard=False, deterministic=False)
        try:
            for scaling, P, key in configs:
                ds = datasets[key]
                for backend in (backends if rep % 2 == 0 else backends[::-1]):
                    out = tmp / f"{backend}_{scaling}_{P}.zarr"
                    t0 = time.perf_counter()
                    if backend == "mpi":
                        run = run_mpi(ds, P, iters, out, args.method)
                    else:
                        run = run_dask_case(client, ds, P, iters, out, args.method)
                    s = summarize(run, ds, P, args.method)
                    raw.setdefault((backend, scaling, P), []).append(s)
                    loads.append(os.getloadavg()[0])
                    print(f"  rep {rep + 1} {backend:4s} {scaling:6s} P={P}: {s['iteration_s']:.3f} s/iteration "
                          f"(comm {s['comm_s']:.3f}), bytes exact: {s['bytes_exact']}, "
                          f"{time.perf_counter() - t0:.0f} s, load {loads[-1]:.1f}", flush=True)
        finally:
            if client is not None:
                client.close()
                cluster.close()
    default_env = {}
    if "dask" in backends and not args.no_default_env_check:  # Dask's own worker environment, once, for scale
        cluster, client = _dask_cluster(2, default_env=True)
        try:
            for P in (1, 2):
                ds = datasets[("strong", A_strong)]
                run = run_dask_case(client, ds, P, iters, tmp / f"dask_default_env_{P}.zarr", args.method)
                s = summarize(run, ds, P, args.method)
                default_env[str(P)] = {k: s[k] for k in ("iteration_s", "compute_s", "comm_s", "phases_s")}
                print(f"  dask (default nanny env) strong P={P}: {s['iteration_s']:.3f} s/iteration", flush=True)
        finally:
            client.close()
            cluster.close()
    return {"datasets": {f"{k[0]}_{k[1]}": {kk: vv for kk, vv in v.items() if kk not in ("path", "counts")}
                         | {"frames_per_angle_min_max": [min(v["counts"]), max(v["counts"])]}
                         for k, v in datasets.items()},
            "raw": raw, "loads": loads, "dask": dask_ok, "iterations": iters, "N": N, "A_strong": A_strong,
            "A_per_rank": A_per_rank, "ranks": ranks, "datasets_full": datasets,
            "dask_default_env": default_env}


def _median_runs(runs: list[dict]) -> dict:
    keys = ("iteration_s", "compute_s", "comm_s", "io_s")
    out = {k: float(statistics.median(r[k] for r in runs)) for k in keys}
    out["phases_s"] = {p: float(statistics.median(r["phases_s"].get(p, 0.0) for r in runs))
                       for p in runs[0]["phases_s"]}
    out["repeats_iteration_s"] = [r["iteration_s"] for r in runs]
    out["iteration_s_min"] = float(min(r["iteration_s_min"] for r in runs))  # fastest iteration of any repeat
    out["collectives_per_iteration"] = runs[0]["collectives_per_iteration"]
    out["comm_s_per_collective"] = (out["comm_s"] / out["collectives_per_iteration"]
                                    if out["collectives_per_iteration"] else None)
    out["comm_bytes_per_iteration_rank0"] = runs[0]["comm_bytes_per_iteration_rank0"]
    out["comm_bytes_per_iteration_all_ranks_model"] = runs[0]["comm_bytes_per_iteration_all_ranks_model"]
    out["bytes_exact_every_row_every_repeat"] = all(r["bytes_exact"] for r in runs)
    out["bytes_rows_first_repeat"] = runs[0]["bytes_rows"]
    out["wall_s"] = [r["wall_s"] for r in runs]
    out["outside_iterations_s"] = [r["outside_iterations_s"] for r in runs]
    out["cpu_share_per_rank"] = [r["cpu_share_per_rank"] for r in runs]
    out["final_r_factor"] = runs[0]["final_r_factor"]
    if runs[0].get("rank_totals"):
        out["rank_totals_first_repeat"] = runs[0]["rank_totals"]
    return out


def fit_rate(points: list[tuple[float, float]]) -> float:
    """Rate R (flop/s) of the model t = flops / R, least squares in t: 1/R = sum(f t) / sum(f^2)."""
    num = sum(f * f for f, t in points)
    den = sum(f * t for f, t in points)
    return num / den if den > 0 else float("nan")


def analyse(meas: dict, args) -> dict:
    ncpu = os.cpu_count() or 1
    res: dict = {"mpi": {}, "dask": {}}
    for (backend, scaling, P), runs in meas["raw"].items():
        res[backend].setdefault(scaling, {})[str(P)] = _median_runs(runs) | {"oversubscribed": P > ncpu, "ranks": P}
    for backend in ("mpi", "dask"):
        b = res[backend]
        if not b:
            continue
        strong = b["strong"]
        weak = b.setdefault("weak", {})
        for P in meas["ranks"]:
            if meas["A_per_rank"] * P == meas["A_strong"]:
                weak[str(P)] = dict(strong[str(P)]) | {"same_run_as": f"strong P={P}"}
        t1 = strong["1"]["iteration_s"]
        c1 = strong["1"]["compute_s"]
        for P, r in strong.items():
            r["speedup"] = t1 / r["iteration_s"]
            r["efficiency"] = t1 / (int(P) * r["iteration_s"])
            # compute alone, communication left out
            r["compute_efficiency"] = c1 / (int(P) * r["compute_s"]) if r["compute_s"] > 0 else None
            r["comm_fraction"] = r["comm_s"] / r["iteration_s"]
            # the same from the fastest iteration of any repeat (the least disturbed by other processes)
            r["efficiency_best"] = strong["1"]["iteration_s_min"] / (int(P) * r["iteration_s_min"])
        w1 = weak["1"]["iteration_s"]
        for P, r in weak.items():
            r["efficiency"] = w1 / r["iteration_s"]
            r["efficiency_best"] = weak["1"]["iteration_s_min"] / r["iteration_s_min"]
        res[backend] = {"strong": dict(sorted(strong.items(), key=lambda kv: int(kv[0]))),
                        "weak": dict(sorted(weak.items(), key=lambda kv: int(kv[0])))}
    # flop model vs measured compute time (fitted rate over every run with at most one rank per core)
    fits = []
    table = []
    for backend in ("mpi", "dask"):
        for scaling in ("strong", "weak"):
            for P, r in res.get(backend, {}).get(scaling, {}).items():
                P = int(P)
                A = meas["A_strong"] if scaling == "strong" else meas["A_per_rank"] * P
                ds = meas["datasets_full"][("strong", A) if scaling == "strong" else ("weak", A)]
                c = int(statistics.median(row["cg_iterations"] for row in r["bytes_rows_first_repeat"][1:] or
                                          r["bytes_rows_first_repeat"]))
                w = apt_work(ds["N"], ds["A"], ds["F"], ds["m"], P, c, ds["W"], ds["nz"], args.method == "apt",
                             ds["n_maps"])
                flops = w["total"]["flops"]
                table.append({"backend": backend, "scaling": scaling, "P": P, "flops_per_rank": flops,
                              "compute_s": r["compute_s"], "iteration_s": r["iteration_s"],
                              "oversubscribed": P > ncpu})
                if P <= ncpu and backend == "mpi":
                    fits.append((flops, r["compute_s"]))
    rate = fit_rate(fits) if fits else float("nan")
    if not math.isfinite(rate):
        rate = None
    for row in table:
        if rate is None:
            row["model_compute_s"] = row["measured_over_model"] = None
            continue
        row["model_compute_s"] = row["flops_per_rank"] / rate
        row["measured_over_model"] = row["compute_s"] / row["model_compute_s"]
    summary: dict = {}
    m = res["mpi"]
    summary["mpi_strong_efficiency_1_to_2"] = m["strong"]["2"]["efficiency"]
    summary["mpi_strong_efficiency_1_to_2_best_iterations"] = m["strong"]["2"]["efficiency_best"]
    summary["mpi_strong_efficiency_1_to_4_oversubscribed"] = m["strong"]["4"]["efficiency"]
    summary["mpi_weak_efficiency_1_to_2"] = m["weak"]["2"]["efficiency"]
    summary["strong_efficiency_target"] = 0.85
    if res.get("dask"):
        d = res["dask"]
        summary["dask_strong_efficiency_1_to_2"] = d["strong"]["2"]["efficiency"]
        summary["dask_strong_efficiency_1_to_2_best_iterations"] = d["strong"]["2"]["efficiency_best"]
        summary["dask_weak_efficiency_1_to_2"] = d["weak"]["2"]["efficiency"]
        summary["dask_over_mpi_at_2"] = d["strong"]["2"]["iteration_s"] / m["strong"]["2"]["iteration_s"]
        summary["dask_over_mpi_at_2_best_iterations"] = (d["strong"]["2"]["iteration_s_min"]
                                                         / m["strong"]["2"]["iteration_s_min"])
        summary["dask_over_mpi_at_1"] = d["strong"]["1"]["iteration_s"] / m["strong"]["1"]["iteration_s"]
        summary["dask_over_mpi_at_4_oversubscribed"] = d["strong"]["4"]["iteration_s"] / m["strong"]["4"]["iteration_s"]
        summary["dask_over_mpi_target"] = 1.3
    exact = [r["bytes_exact_every_row_every_repeat"] for b in res.values() for s in b.values() for r in s.values()]
    summary["bytes_model_exact_every_run_every_iteration"] = all(exact)
    summary["strong_P2_bytes_per_iteration"] = {
        "measured_rank0": m["strong"]["2"]["comm_bytes_per_iteration_rank0"],
        "model_rank0": m["strong"]["2"]["bytes_rows_first_repeat"][-1]["model_rank0"]["comm_bytes"],
        "model_all_ranks": m["strong"]["2"]["comm_bytes_per_iteration_all_ranks_model"],
    }
    summary["fitted_cpu_rate_flops_per_s_per_rank"] = rate
    return {"results": res, "flop_model_check": {"fitted_rate_flops_per_s": rate,
                                                  "fitted_on": "MPI runs with at most one rank per core",
                                                  "rows": table}, "summary": summary}


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["results"]
    backends = [b for b in ("mpi", "dask") if res.get(b)]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    ax = axes[0]
    xs, labels = [], []
    colors = {"compute": "#4c72b0", "comm": "#dd8452", "io": "#55a868"}
    x, top = 0, 0.0
    for b in backends:
        for P, r in res[b]["strong"].items():
            bottom = 0.0
            for key, col in colors.items():
                v = r[f"{key}_s"]
                ax.bar(x, v, bottom=bottom, color=col, hatch="//" if r["oversubscribed"] else None,
                       edgecolor="k" if r["oversubscribed"] else None, label=key if x == 0 else None)
                bottom += v
            ax.text(x, bottom, f"{bottom:.2f}", ha="center", va="bottom", fontsize=8)
            top = max(top, bottom)
            xs.append(x)
            labels.append(f"{b}\nP={P}" + ("*" if r["oversubscribed"] else ""))
            x += 1
        x += 0.5
    ax.set_ylim(0, top * 1.15)
    ax.set_xticks(xs, labels)
    ax.set_ylabel("seconds per outer iteration (rank 0, median)")
    ax.set_title(f"strong scaling: {doc['problem']['strong']}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    for b, mk in zip(backends, ("o", "s")):
        for scaling, ls in (("strong", "-"), ("weak", "--")):
            Ps = [int(p) for p in res[b][scaling]]
            es = [res[b][scaling][str(p)]["efficiency"] for p in Ps]
            ax.plot(Ps, es, ls, marker=mk, label=f"{b} {scaling}")
    ax.axhline(0.85, color="gray", lw=0.8, ls=":", label="target 0.85 (strong, 1 -> 2)")
    ax.axvspan(2.5, 4.5, color="red", alpha=0.08, label="oversubscribed (P > 2 cores)")
    ax.set_xticks([1, 2, 4])
    ax.set_xlabel("ranks / workers P")
    ax.set_ylabel("parallel efficiency")
    top_e = max(r["efficiency"] for b in backends for sc in ("strong", "weak") for r in res[b][sc].values())
    ax.set_ylim(0, max(1.15, top_e + 0.1))
    ax.legend(fontsize=7)
    ax.set_title("efficiency (strong: T1 / (P TP), weak: T1 / TP)", fontsize=10)
    ax = axes[2]
    for b, mk in zip(backends, ("o", "s")):
        Ps = [int(p) for p in res[b]["weak"]]
        ax.plot(Ps, [res[b]["weak"][str(p)]["iteration_s"] for p in Ps], marker=mk, label=f"{b} total")
        ax.plot(Ps, [res[b]["weak"][str(p)]["comm_s"] for p in Ps], marker=mk, ls=":", label=f"{b} comm")
    ax.axvspan(2.5, 4.5, color="red", alpha=0.08)
    ax.set_xticks([1, 2, 4])
    ax.set_xlabel(f"ranks / workers P (angles = {doc['problem']['weak_angles_per_rank']} P)")
    ax.set_ylabel("seconds per outer iteration (rank 0, median)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(f"weak scaling: {doc['problem']['weak']}", fontsize=10)
    ax = axes[3]
    names, meas, model, total = [], [], [], []
    for b in backends:
        for scaling in ("strong", "weak"):
            for P, r in res[b][scaling].items():
                if P == "1" or "same_run_as" in r:
                    continue
                names.append(f"{b}\n{scaling}\nP={P}")
                meas.append(r["comm_bytes_per_iteration_rank0"])
                model.append(r["bytes_rows_first_repeat"][-1]["model_rank0"]["comm_bytes"])
                total.append(r["comm_bytes_per_iteration_all_ranks_model"])
    xx = np.arange(len(names))
    ax.bar(xx - 0.27, meas, 0.27, label="measured, rank 0")
    ax.bar(xx, model, 0.27, label="model, rank 0")
    ax.bar(xx + 0.27, total, 0.27, label="model, all ranks")
    ax.set_xticks(xx, names, fontsize=7)
    ax.set_ylabel("bytes sent per outer iteration")
    ax.legend(fontsize=8)
    exact = doc["summary"]["bytes_model_exact_every_run_every_iteration"]
    ax.set_title(f"communication bytes (model exact in every iteration: {exact})", fontsize=10)
    env = doc["environment"]
    lr = env.get("loadavg_during_runs", {})
    fig.suptitle(f"hpc-pt APT scaling on {env['cpu_count']} shared cores (load average {lr.get('min', 0):.1f}"
                 f"-{lr.get('max', 0):.1f} during the runs; * = oversubscribed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def extrapolation() -> dict:
    """The 256-GPU prediction (docs/scaling.md section 5), for two network bandwidths, device-direct and
    with the current host staging."""
    out = {"problem": dict(BIG), "machine": dict(H100), "cases": {}}
    for bw in (25e9, 50e9):
        for staging in (False, True):
            mach = dict(H100, net_Bps=bw)
            p = predict_iteration(BIG, mach, staging=staging)
            key = f"net_{int(bw / 1e9)}GBps_{'host_staged' if staging else 'device_direct'}"
            out["cases"][key] = {"iteration_s": p["iteration_s"], "efficiency": p["efficiency"],
                                 "compute_s": p["compute_s"], "compute_total_s": p["compute_total_s"],
                                 "comm_s": p["comm_s"], "comm_total_s": p["comm_total_s"]}
    sweep = []
    for P in (64, 128, 256, 512, 1024):
        prob = dict(BIG, P=P)
        row = {"P": P, "memory_per_gpu_bytes": apt_memory(prob["N"], prob["A"], prob["F"], prob["m"], P, prob["W"],
                                                          prob["nz"], prob["tv"], prob["n_maps"])["total"]}
        for bw in (25e9, 50e9):
            for staging in (False, True):
                q = predict_iteration(prob, dict(H100, net_Bps=bw), staging=staging)
                key = f"net_{int(bw / 1e9)}GBps_{'host_staged' if staging else 'device_direct'}"
                row[key] = {"iteration_s": q["iteration_s"], "efficiency": q["efficiency"],
                            "compute_s": q["compute_total_s"], "comm_s": q["comm_total_s"]}
        sweep.append(row)
    out["gpu_count_sweep"] = sweep
    sens = {}
    for rate in (5e8, 1e9, 2e9):
        q = predict_iteration(BIG, dict(H100, nufft_pts_s=rate))
        sens[f"{rate:.0e}"] = {"iteration_s": q["iteration_s"], "efficiency": q["efficiency"]}
    out["nufft_point_rate_sensitivity_50GBps_device_direct"] = sens
    p = predict_iteration(BIG, H100)
    out["memory_bytes_per_gpu"] = p["memory_bytes"]
    out["comm_bytes_per_gpu"] = p["comm_bytes_per_rank"]
    out["comm_bytes_all_gpus_transposes"] = 2 * approx_transpose_bytes(BIG["A"], BIG["nz"], BIG["W"], BIG["P"])
    out["work_per_gpu"] = {k: v for k, v in p["work"].items() if k != "M"}
    out["nufft_samples_M"] = p["work"]["M"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="24^3, 8 angles, 3 iterations: smoke test")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=6, help="outer iterations per run (the first is left out)")
    ap.add_argument("--method", choices=["apt", "apts"], default="apt")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--no-default-env-check", action="store_true",
                    help="skip the two Dask runs with Dask's default worker environment (MALLOC_TRIM_THRESHOLD_)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hpc-pt-scaling-") as tmp:
        meas = measure(args, Path(tmp))
    doc = {"benchmark": "scaling", "environment": env}
    doc["problem"] = {
        "method": args.method,
        "strong": f"{meas['N']}^3, {meas['A_strong']} angles",
        "weak": f"{meas['N']}^3, {meas['A_per_rank']} angles per rank",
        "weak_angles_per_rank": meas["A_per_rank"],
        "iterations_per_run": meas["iterations"], "timed_iterations": "2..last (medians), then median over repeats",
        "repeats": args.repeats, "datasets": meas["datasets"],
        "note": ("weak scaling grows the angles with P at a fixed volume: frames per rank, slab-layout "
                 "projection values per rank (A x rows_r x W) and transpose bytes per rank stay constant. Growing "
                 "the volume's rows as well would grow each angle's frames with P (the simulator makes cubes)."),
    }
    doc.update(analyse(meas, args))
    if meas["dask"] is not True and meas["dask"] is not None:
        doc["summary"]["dask"] = meas["dask"]
    if meas["dask_default_env"]:
        de = meas["dask_default_env"]
        doc["dask_default_worker_env"] = {
            "note": ("one repeat of strong P=1, 2 on a cluster with Dask's default worker environment "
                     "(MALLOC_TRIM_THRESHOLD_=65536, as run_dask's own local cluster and the CLI start it); the "
                     "results above use workers without it"),
            "runs": de,
            "iteration_s_over_tuned_dask": {P: de[P]["iteration_s"] / doc["results"]["dask"]["strong"][P]["iteration_s"]
                                            for P in de},
        }
        doc["summary"]["dask_default_env_over_mpi_at_2"] = (de["2"]["iteration_s"]
                                                           / doc["results"]["mpi"]["strong"]["2"]["iteration_s"])
    doc["extrapolation_256_gpus"] = extrapolation()
    doc["environment"]["loadavg_during_runs"] = {"min": min(meas["loads"]), "max": max(meas["loads"]),
                                                 "median": statistics.median(meas["loads"])}
    doc["environment"]["loadavg_at_end"] = list(os.getloadavg())
    doc["environment"]["uptime_at_end"] = _uptime()
    doc["environment"]["benchmark_wall_s"] = time.perf_counter() - t0
    (out / "scaling.json").write_text(json.dumps(doc, indent=1, default=float, allow_nan=False) + "\n")
    plot(doc, out / "scaling.png")
    s = doc["summary"]
    print(json.dumps({k: v for k, v in s.items()}, indent=1, default=float))
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
