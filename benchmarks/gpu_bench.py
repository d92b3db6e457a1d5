"""GPU validation benchmark: CPU/GPU equivalence of every method and the GPU numbers of issue 16.

    python benchmarks/gpu_bench.py [--device gpu|cpu] [--quick] [--out benchmarks/results] [--repeats N]
                                   [--iterations K] [--max-size N] [--no-mpi] [--parts a,b,...]

Run by ``benchmarks/gpu_check.sh`` on a CUDA machine; ``--device cpu --quick`` runs the same measurement
and comparison code on a CPU (the test suite does, so the JSON / markdown writer and the comparisons are
exercised without a GPU). Parts, run in the order equivalence, operators, methods, mpi, largest (so a
timeout keeps the first ones; ``--parts`` picks some):

* ``operators``: Ptychography and Projector fwd+adj on the device, as ratios to the bare work measured in
  the same run, round-robin (``benchmarks/operators.py``'s timing and cases): cuFFT ``fft2c`` + ``ifft2c``
  on the same frame batch, and the operator's own planned cufinufft type-2 + type-1 pair (finufft and
  scipy.fft on CPU). Every GPU call is followed by a device synchronisation before the clock stops.
* ``equivalence``: every method (apt, apts, admm, gd, two-step) for a few iterations on a 64^3 dataset on
  the device and on the CPU; relative difference ||u_dev - u_cpu|| / ||u_cpu||, agreement at
  ``EQUIV_TOL``.
* ``methods``: time per outer iteration per method at 128^3 in seed 001's configuration
  (``examples/simulate_seed001.toml``), on the device and on the CPU (the speed-up).
* ``largest``: APT at the largest size (seed 001's geometry scaled with N) that docs/scaling.md's memory
  model (``benchmarks/scaling.py``'s ``apt_memory``) says fits in ``MEMORY_FRACTION`` of the device's free
  memory, capped by ``--max-size``; a size that does not fit after all is recorded and the next smaller
  one tried. Peak device memory against the model.
* ``mpi``: 2 MPI ranks on one device (``mpiexec -n 2 ... --backend mpi``) against the serial run.

Peak memory on the GPU is the CuPy memory pool's high-water mark (the pool is emptied before the run and
keeps every block it obtained, so ``total_bytes()`` after the run is the most it held); on the CPU it is
``tracemalloc``'s peak. Writes ``<out>/gpu.json`` (rewritten after every part) and ``<out>/gpu.md``.
Times are medians; nothing asserts on wall time (docs/architecture.md §5).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "benchmarks")):
    if p not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, p)

import operators as opbench  # noqa: E402  (benchmarks/operators.py)
import scaling  # noqa: E402  (benchmarks/scaling.py)

from hpc_pt.backend import fft2c, ifft2c, to_numpy  # noqa: E402
from hpc_pt.operators import Projector, Ptychography, dot_test  # noqa: E402

METHODS = ("apt", "apts", "admm", "gd", "two-step")
PARTS = ("equivalence", "operators", "methods", "mpi", "largest")  # most important first: a timeout keeps those
EQUIV_TOL = 1e-3  # ||u_dev - u_cpu|| / ||u_cpu|| after a few iterations (float32 on both)
MEMORY_FRACTION = 0.6  # of the free device memory, for the model's estimate
SEED001 = REPO / "examples" / "simulate_seed001.toml"


# --- device helpers -------------------------------------------------------------------------------------
def namespace(device: str):
    """(xp, synchronize) for ``device``; the GPU one needs CuPy and a visible device."""
    if device == "gpu":
        from hpc_pt.backend import require_gpu

        cp = require_gpu()
        return cp, cp.cuda.Device().synchronize
    return np, (lambda: None)


def synced(fn, sync):
    """``fn`` followed by a device synchronisation, so a timer around it measures the kernels."""
    def run():
        out = fn()
        sync()
        return out
    return run


class PeakMemory:
    """Peak bytes held during a ``with`` block: the CuPy pool's high-water mark, or tracemalloc's peak."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device == "gpu":
            import cupy

            cupy.cuda.Device().synchronize()
            cupy.get_default_memory_pool().free_all_blocks()
        else:
            tracemalloc.start()
        return self

    def __exit__(self, *exc):
        if self.device == "gpu":
            import cupy

            cupy.cuda.Device().synchronize()
            self.peak = int(cupy.get_default_memory_pool().total_bytes())
            cupy.get_default_memory_pool().free_all_blocks()
        else:
            self.peak = int(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        return False


def environment(device: str) -> dict:
    """Versions of the stack, the GPU (name, memory, CUDA runtime and driver) and the git commit."""
    import importlib.metadata as md

    env = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": device,
           "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for name in ("numpy", "scipy", "finufft", "cufinufft", "cupy-cuda12x", "cupy", "mpi4py", "h5py", "zarr",
                 "pydantic", "hpc-pt"):
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, check=False, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001  (no git on the machine)
        env["git_commit"] = None
    if device == "gpu":
        import cupy

        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        free, total = dev.mem_info
        env["gpu"] = {"name": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
                      "index": int(dev.id), "memory_total_bytes": int(total), "memory_free_bytes": int(free),
                      "compute_capability": str(dev.compute_capability),
                      "cuda_runtime": int(cupy.cuda.runtime.runtimeGetVersion()),
                      "cuda_driver": int(cupy.cuda.runtime.driverGetVersion()),
                      "visible_devices": int(cupy.cuda.runtime.getDeviceCount())}
    return env


def free_device_bytes(device: str) -> int:
    if device == "gpu":
        import cupy

        return int(cupy.cuda.Device().mem_info[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 8 << 30


# --- operators ------------------------------------------------------------------------------------------
def bench_ptycho(case, repeats: int, device: str, rng) -> dict:
    """Ptychography fwd+adj on ``device`` against the bare batched FFT pair on the same (F, m, m) batch."""
    xp, sync = namespace(device)
    name, A, H, m, step, subpixel = case
    pos, aidx = opbench._raster(A, H, m, step, subpixel, rng)
    op = Ptychography(xp.asarray(opbench._probe(m)), pos, (A, H, H), angle_index=aidx, dtype=np.complex64)
    psi = xp.asarray(opbench._crand(rng, op.shape_in))
    y = xp.asarray(opbench._crand(rng, op.shape_out))
    frames = xp.asarray(opbench._crand(rng, op.shape_out))
    t = opbench.timeit_interleaved
    res = {"kind": "ptychography", "device": device, "field_shape": list(op.shape_in), "probe_shape": [m, m],
           "frames": int(op.shape_out[0]), "raster_step": step, "subpixel_positions": subpixel, "dtype": "complex64",
           **t({"op_fwd": synced(lambda: op.fwd(psi), sync), "bare_fwd": synced(lambda: fft2c(frames), sync)},
               repeats),
           **t({"op_adj": synced(lambda: op.adj(y), sync), "bare_adj": synced(lambda: ifft2c(frames), sync)},
               repeats),
           **t({"op_pair": synced(lambda: op.adj(op.fwd(psi)), sync),
                "bare_pair": synced(lambda: ifft2c(fft2c(frames)), sync)}, repeats),
           "bare_kernel": ("cupy.fft (cuFFT)" if device == "gpu" else "scipy.fft") + " fft2 + ifft2, norm='ortho', "
                          "same (F, m, m) batch (hpc_pt.backend.fft2c / ifft2c)",
           "dot_test": float(dot_test(op, xp=xp))}
    return opbench._finish_ratio(name, res)


def bench_projector(case, repeats: int, device: str, rng) -> dict:
    """Projector fwd+adj on ``device`` against its own planned NUFFT type-2 + type-1 pair (execute only)."""
    xp, sync = namespace(device)
    name, n, n_angles = case
    op = Projector(n, n, opbench._angles(n_angles), dtype=np.complex64, gpu=device == "gpu")
    u = xp.asarray(opbench._crand(rng, op.shape_in))
    p = xp.asarray(opbench._crand(rng, op.shape_out))
    nz, npts = op.nz, op._nufft.n_points
    plan2, plan1 = op._nufft._plan(2, nz), op._nufft._plan(1, nz)
    f = xp.asarray(opbench._crand(rng, (nz,) + op._nufft.n_modes))
    c = xp.asarray(opbench._crand(rng, (nz, npts)))
    t = opbench.timeit_interleaved
    res = {"kind": "projector", "device": device, "volume_shape": list(op.shape_in), "n_angles": n_angles,
           "n_det": op.n_det, "fourier_samples_per_angle": int(op.M), "nufft_points_per_slice": int(npts),
           "nufft_eps": float(op._nufft.eps), "dtype": "complex64",
           **t({"op_fwd": synced(lambda: op.fwd(u), sync), "bare_fwd": synced(lambda: plan2.execute(f), sync)},
               repeats),
           **t({"op_adj": synced(lambda: op.adj(p), sync), "bare_adj": synced(lambda: plan1.execute(c), sync)},
               repeats),
           **t({"op_pair": synced(lambda: op.adj(op.fwd(u)), sync),
                "bare_pair": synced(lambda: plan1.execute(plan2.execute(f)), sync)}, repeats),
           "bare_kernel": ("cufinufft" if device == "gpu" else "finufft") + f" type-2 + type-1 plans of the "
                          f"operator, n_trans={nz}, execute() only",
           "dot_test": float(dot_test(op, xp=xp))}
    return opbench._finish_ratio(name, res)


def part_operators(args) -> dict:
    rng = np.random.default_rng(0)
    pt = opbench.PTYCHO_QUICK if args.quick else opbench.PTYCHO_FULL
    pj = opbench.PROJ_QUICK if args.quick else opbench.PROJ_FULL
    cases = [bench_ptycho(c, args.repeats, args.device, rng) for c in pt]
    cases += [bench_projector(c, args.repeats, args.device, rng) for c in pj]
    return {"cases": cases}


# --- datasets and runs ----------------------------------------------------------------------------------
def seed001_config(size: int | None = None) -> dict:
    """Seed 001's simulation settings (examples/simulate_seed001.toml); with ``size`` the probe, its FWHM
    and the step scale with N as the simulator's defaults do (N // 2, 14 N / 128, N / 4)."""
    cfg = dict(tomllib.loads(SEED001.read_text())["simulate"])
    if size is not None and size != cfg["size"]:
        cfg.update(size=int(size), probe_size=int(size) // 2, probe_fwhm=14.0 * size / 128, step=max(1, size // 4))
    return cfg


def simulate(cfg: dict):
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    return simulate_dataset(SimulationConfig(**cfg))


def problem_of(ds) -> dict:
    """N, nz, W, A, F, m and n_maps of a dataset, for docs/scaling.md's memory model."""
    from hpc_pt.pipeline import volume_shape_for

    nz, n, _ = volume_shape_for(ds)
    pos = np.concatenate([a.positions for a in ds.angles])
    return {"N": int(n), "nz": int(nz), "W": int(ds.geometry.field_shape[1]), "A": len(ds.angles),
            "F": int(sum(a.frames.shape[0] for a in ds.angles)), "m": int(ds.probe.shape[-1]),
            "n_maps": 9 if np.any(pos != np.floor(pos)) else 1}


def model_bytes(prob: dict, tv: bool = True) -> float:
    """docs/scaling.md section 4 for one rank: ``benchmarks/scaling.py``'s ``apt_memory`` total."""
    return float(scaling.apt_memory(prob["N"], prob["A"], prob["F"], prob["m"], 1, prob["W"], prob["nz"], tv,
                                    prob["n_maps"])["total"])


def run_method(ds, method: str, iterations: int, device: str, model: str = "linear") -> dict:
    """One reconstruction; its volume (host), time per outer iteration (median of iterations 2..) and peak."""
    from hpc_pt.pipeline import reconstruct

    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        res = reconstruct(ds, method=method, iterations=iterations, device=device, model=model)
    wall = time.perf_counter() - t0
    it = [float(v) for v in np.atleast_1d(res.history.get("iter_time_s", []))]
    per = statistics.median(it[1:]) if len(it) > 1 else (it[0] if it else float("nan"))
    return {"volume": to_numpy(res.volume), "iter_s": per, "iter_times_s": it, "rows": len(it), "wall_s": wall,
            "peak_bytes": mem.peak}


def relative_difference(a, b) -> float:
    """||a - b|| / ||b|| (0 when both are zero)."""
    nb = float(np.linalg.norm(b))
    d = float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
    return d / nb if nb > 0 else (0.0 if d == 0 else math.inf)


def part_equivalence(args) -> dict:
    size = 16 if args.quick else 64
    cfg = seed001_config(size)
    cfg.update(angles=8 if args.quick else 24, field_pad=3 if args.quick else 8)
    ds = simulate(cfg)
    out = {"dataset": cfg, "tolerance": EQUIV_TOL, "iterations": args.iterations, "methods": {}}
    for m in args.methods:
        dev = run_method(ds, m, args.iterations, args.device)
        cpu = run_method(ds, m, args.iterations, "cpu")
        rd = relative_difference(dev["volume"], cpu["volume"])
        out["methods"][m] = {"relative_difference": rd, "agree": bool(rd <= EQUIV_TOL),
                             "device_wall_s": dev["wall_s"], "cpu_wall_s": cpu["wall_s"]}
    out["all_agree"] = all(v["agree"] for v in out["methods"].values())
    return out


def part_methods(args) -> dict:
    cfg = seed001_config(24 if args.quick else None)
    ds = simulate(cfg)
    prob = problem_of(ds)
    out = {"dataset": cfg, "problem": prob, "iterations": args.iterations, "model_bytes": model_bytes(prob),
           "methods": {}}
    for m in args.methods:
        dev = run_method(ds, m, args.iterations, args.device)
        cpu = run_method(ds, m, args.iterations, "cpu")
        out["methods"][m] = {"device_iter_s": dev["iter_s"], "cpu_iter_s": cpu["iter_s"],
                             "speedup": cpu["iter_s"] / dev["iter_s"] if dev["iter_s"] > 0 else math.nan,
                             "device_iter_times_s": dev["iter_times_s"], "cpu_iter_times_s": cpu["iter_times_s"],
                             "device_peak_bytes": dev["peak_bytes"],
                             "peak_over_model": dev["peak_bytes"] / out["model_bytes"],
                             "relative_difference": relative_difference(dev["volume"], cpu["volume"])}
    return out


def candidate_sizes(free_bytes: float, max_size: int, step: int = 64, fraction: float = MEMORY_FRACTION) -> list:
    """Sizes N (multiples of ``step`` up to ``max_size``) whose seed-001 problem the memory model puts under
    ``fraction`` of ``free_bytes``, largest first (from the model alone: nothing is simulated)."""
    fits = []
    for n in range(step, int(max_size) + 1, step):
        cfg = seed001_config(n)
        m, s = cfg["probe_size"], cfg["step"]
        per_side = (n - m) // s + 1  # raster positions per side on the N-wide field (field_pad 0)
        prob = {"N": n, "nz": n, "W": n, "A": cfg["angles"], "F": cfg["angles"] * per_side ** 2, "m": m,
                "n_maps": 1}
        if model_bytes(prob) <= fraction * free_bytes:
            fits.append(n)
    return sorted(fits, reverse=True)


def _is_oom(exc) -> bool:
    return isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__


def part_largest(args) -> dict:
    free = free_device_bytes(args.device)
    sizes = candidate_sizes(free, args.max_size, step=8 if args.quick else 64)
    out = {"free_bytes": free, "memory_fraction": MEMORY_FRACTION, "max_size": args.max_size,
           "candidates": sizes, "tried": []}
    for n in sizes[:3]:
        ds = simulate(seed001_config(n))
        prob = problem_of(ds)
        try:
            r = run_method(ds, "apt", max(2, min(args.iterations, 3)), args.device)
        except Exception as exc:  # noqa: BLE001  (an out-of-memory error is a result here, anything else is not)
            if not _is_oom(exc):
                raise
            out["tried"].append({"N": n, "fits": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        mb = model_bytes(prob)
        out["tried"].append({"N": n, "fits": True, "problem": prob, "iter_s": r["iter_s"],
                             "peak_bytes": r["peak_bytes"], "model_bytes": mb, "peak_over_model": r["peak_bytes"] / mb})
        out["largest"] = out["tried"][-1]
        break
    return out


def part_mpi(args) -> dict:
    """2 MPI ranks on one device against the serial run of the same file (APT)."""
    from hpc_pt.io import read_volume, write_cxi
    from hpc_pt.pipeline import reconstruct

    size = 16 if args.quick else 64
    cfg = seed001_config(size)
    cfg.update(angles=8 if args.quick else 24, field_pad=3 if args.quick else 8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mpi.h5"
        write_cxi(simulate(cfg), path)
        serial = reconstruct(str(path), method="apt", iterations=args.iterations, device=args.device)
        out = Path(tmp) / "mpi.zarr"
        cmd = ["timeout", "600", scaling._mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "hpc_pt",
               "reconstruct", str(path), "--backend", "mpi", "--device", args.device, "--method", "apt",
               "--iterations", str(args.iterations), "--out", str(out), "--force", "--quiet"]
        path_env = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = {**os.environ, **scaling.RANK_ENV, "PYTHONPATH": path_env}
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            return {"ranks": 2, "ok": False, "returncode": p.returncode, "stderr": p.stderr[-2000:]}
        vol, _attrs = read_volume(out)
        rd = relative_difference(vol, to_numpy(serial.volume))
        return {"ranks": 2, "ok": True, "device": args.device, "wall_s": wall, "relative_difference": rd,
                "agree": bool(rd <= EQUIV_TOL), "tolerance": EQUIV_TOL, "stdout_tail": p.stdout[-500:]}


# --- output ---------------------------------------------------------------------------------------------
def _f(x, fmt="{:.3g}"):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def markdown(doc: dict) -> str:
    """The short markdown summary of ``gpu.json``."""
    env = doc["environment"]
    gpu = env.get("gpu", {})
    lines = [f"# GPU validation ({env['device']})", "",
             f"{env['date']}, git {env.get('git_commit')}; {gpu.get('name', 'no GPU')}"
             + (f", {gpu['memory_total_bytes'] / 2**30:.0f} GiB, CUDA runtime {gpu['cuda_runtime']}" if gpu else "")
             + f"; Python {env['python']}, numpy {env.get('numpy')}, "
             f"cupy {env.get('cupy-cuda12x', env.get('cupy', '-'))}"
             f", cufinufft {env.get('cufinufft', '-')}, finufft {env.get('finufft', '-')}.", ""]
    ops = doc.get("operators")
    if ops:
        lines += ["## Operators: fwd+adj against the bare FFT / NUFFT work", "",
                  "| case | size | op pair s | bare pair s | ratio | dot test |", "|---|---|---|---|---|---|"]
        for c in ops["cases"]:
            size = c.get("frames", c.get("volume_shape"))
            lines.append(f"| {c['name']} | {size} | {_f(c['op_pair']['median_s'])} | {_f(c['bare_pair']['median_s'])}"
                         f" | {c['ratio']:.2f} | {c['dot_test']:.1e} |")
        lines.append("")
    eq = doc.get("equivalence")
    if eq:
        lines += [f"## Device against CPU, {eq['dataset']['size']}^3, {eq['iterations']} iterations "
                  f"(tolerance {eq['tolerance']:g})", "", "| method | relative difference | agree |", "|---|---|---|"]
        lines += [f"| {m} | {v['relative_difference']:.2e} | {'yes' if v['agree'] else '**no**'} |"
                  for m, v in eq["methods"].items()]
        lines.append("")
    me = doc.get("methods")
    if me:
        n = me["problem"]["N"]
        lines += [f"## Time per outer iteration, {n}^3 (seed 001), model memory "
                  f"{me['model_bytes'] / 2**20:.0f} MiB", "",
                  "| method | device s | CPU s | speed-up | peak MiB | peak / model |", "|---|---|---|---|---|---|"]
        lines += [f"| {m} | {_f(v['device_iter_s'])} | {_f(v['cpu_iter_s'])} | {_f(v['speedup'], '{:.1f}')} | "
                  f"{v['device_peak_bytes'] / 2**20:.0f} | {v['peak_over_model']:.2f} |"
                  for m, v in me["methods"].items()]
        lines.append("")
    lg = doc.get("largest")
    if lg:
        lines += ["## Largest size", ""]
        big = lg.get("largest")
        if big:
            lines.append(f"APT at {big['N']}^3: {_f(big['iter_s'])} s per outer iteration, peak "
                         f"{big['peak_bytes'] / 2**30:.2f} GiB, model {big['model_bytes'] / 2**30:.2f} GiB "
                         f"(peak / model {big['peak_over_model']:.2f}).")
        for t in lg["tried"]:
            if not t["fits"]:
                lines.append(f"{t['N']}^3 did not fit: {t['error']}")
        if not big and not lg["tried"]:
            lines.append("no size fits the memory model's estimate")
        lines.append("")
    mp = doc.get("mpi")
    if mp:
        lines += ["## 2 MPI ranks on one device", ""]
        lines.append(f"relative difference to the serial run {mp['relative_difference']:.2e} "
                     f"({'agrees' if mp['agree'] else '**differs**'}), {mp['wall_s']:.1f} s" if mp.get("ok")
                     else f"failed (exit {mp.get('returncode')}): see gpu.json")
        lines.append("")
    return "\n".join(lines)


def write(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (out / "gpu.md").write_text(markdown(doc) + "\n")


def failures(doc: dict) -> list[str]:
    """What disagrees: methods off the CPU result, a failed or disagreeing MPI run."""
    bad = [f"equivalence {m}: {v['relative_difference']:.2e}"
           for m, v in doc.get("equivalence", {}).get("methods", {}).items() if not v["agree"]]
    mp = doc.get("mpi")
    if mp and not (mp.get("ok") and mp.get("agree")):
        bad.append("mpi: " + (f"{mp['relative_difference']:.2e}" if mp.get("ok") else "failed"))
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test of seconds")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (default 5, 3 with --quick)")
    ap.add_argument("--iterations", type=int, default=4, help="outer iterations per run (default 4)")
    ap.add_argument("--max-size", type=int, default=512, help="largest N for the 'largest' part (default 512)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--no-mpi", action="store_true")
    args = ap.parse_args(argv)
    args.repeats = max(3, args.repeats or (3 if args.quick else 5))
    args.methods = [m for m in args.methods.split(",") if m]
    parts = [p for p in args.parts.split(",") if p and not (p == "mpi" and args.no_mpi)]
    unknown = sorted(set(parts) - set(PARTS)) + sorted(set(args.methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown part or method: {', '.join(unknown)}")
    doc = {"environment": environment(args.device), "settings": {"quick": args.quick, "repeats": args.repeats,
                                                                 "iterations": args.iterations, "parts": parts}}
    write(doc, args.out)
    for part in parts:
        t0 = time.perf_counter()
        print(f"gpu_bench: {part} ...", flush=True)
        doc[part] = globals()[f"part_{part}"](args)
        doc[part]["part_wall_s"] = time.perf_counter() - t0
        write(doc, args.out)
        print(f"gpu_bench: {part} done in {doc[part]['part_wall_s']:.1f} s", flush=True)
    print(markdown(doc))
    bad = failures(doc)
    for b in bad:
        print(f"gpu_bench: MISMATCH {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
