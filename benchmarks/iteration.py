"""Outer-iteration benchmark: one iteration of every solver against its floor, per thread / rank layout.

    python benchmarks/iteration.py [--out benchmarks/results] [--quick] [--cases seed001,seed002]
                                   [--methods apt,apts,admm,gd,two-step] [--layouts 1x1,1x2,2x1]
                                   [--iterations K]

What it measures (nothing asserts on wall time; docs/scaling.md, benchmarks/README.md):

* Cases. ``seed001``: seed 001's size, 128^3 Shepp-Logan, 12 angles, step 4 (3,468 frames of 64^2), linear
  model (``benchmarks/seed_tables.py seed001_sim(4, 12)``), methods APT, APTs, ADMM, GD and the 2-step.
  ``seed002``: seed 002's exp-model geometry, 64^3 wires, 100 angles over 2 pi, 63^2 detector, step 10
  (``seed002_sim(10, 100)``), methods ADMM, GD and the 2-step (APT/APTs are linear-model only). Each case is
  simulated once and written to a CXI file that every run reads, as a user's run would.
* Layouts. ``1x1``: one rank, one thread; ``1x2``: one rank, two threads; ``2x1``: two MPI ranks
  (``mpiexec -n 2``, :class:`hpc_pt.parallel.MPIComm`) with one thread each. Every run is a fresh process
  (``--child``) that sets ``HPC_PT_THREADS`` and applies hpc-pt's thread policy
  (:func:`hpc_pt.execution.apply_thread_policy`) before finufft loads.
* One run: ``hpc_pt.reconstruct`` on the CXI file with the method's defaults and 1 + K iterations (K =
  ``--iterations``, default 3); the first iteration (first touch, plan caches) is not counted, the
  iteration time is the median of the other K rows' ``iter_time_s``, with their phase breakdown
  (``phase_time_{ptycho,project,cg,prox}_s`` and ``comm_time_s``, rank 0's; the 2-step's rows are the 2D
  stage's DM iterations, ``two-step/dm``, and the tomography's CG iterations, ``two-step/cg``, timed apart).
* Counting. While it runs, the child counts every batched 2D FFT and inverse FFT (``hpc_pt.backend.fft2c``
  / ``ifft2c`` wherever the code calls them) in frames transformed, divided by the rank's frames: a *pass*
  is one FFT over all of the rank's frames; and every ``Projector.fwd`` / ``adj`` call on the slab (a pass
  is one call over all the slab's rows and all angles). Counts are per iteration row.
* Floor. After the solve, the same child times the bare kernels on its own shard: ``scipy.fft.fft2`` /
  ``ifft2`` (``norm='ortho'``, the policy's workers) over an array the size of all its frames, and the slab
  ``Projector.fwd`` / ``adj`` (median of 5 after a warm-up; on 2 ranks both ranks time at the same moment,
  after a barrier, so they share the node as in the solve). The floor of a row is the passes the method's
  equations *need* (:func:`needed_passes`, printed with the results) times those unit times, the largest
  over ranks; the *counted* floor uses the passes the code actually made. ``ratio = iteration / floor``;
  ``ratio_counted`` shows what is spent outside the kernels. Where counted > needed the JSON names why.
* Targets (issue 17): ratio <= 1.3 for APT/APTs, <= 1.5 for ADMM and GD; the 2-step's stages are reported
  against the same floor definition without a target.

Writes ``<out>/iteration.json`` (environment, every row of every run, counts, unit times, ratios) and
``<out>/iteration.png``. Full run: about 8 minutes on 2 cores (idle machine). ``--quick``: the seed tables'
reduced sizes, about 3 minutes, a smoke test only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):  # run from a checkout without installing; operators.py beside it
    if p not in sys.path:
        sys.path.insert(0, p)

#: layout -> (ranks, threads per rank)
LAYOUTS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}
#: case -> methods
CASE_METHODS = {"seed001": ["apt", "apts", "admm", "gd", "two-step"], "seed002": ["admm", "gd", "two-step"]}
#: the ratio to the floor each method should stay under (issue 17)
TARGETS = {"apt": 1.3, "apts": 1.3, "admm": 1.5, "gd": 1.5}
THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "HPC_PT_FFT_WORKERS", "HPC_PT_NUFFT_THREADS", "HPC_PT_THREADS")
KERNELS = ("fft", "ifft", "proj_fwd", "proj_adj")


def case_sim(case: str, quick: bool) -> dict:
    from seed_tables import seed001_sim, seed002_sim

    return seed001_sim(4, 12, quick) if case == "seed001" else seed002_sim(10, 100, quick)


def method_settings(method: str, iterations: int) -> dict:
    """reconstruct() settings of one run: the method's defaults, 1 + ``iterations`` outer iterations (the
    2-step: as many DM iterations and CG iterations, CG not stopping early)."""
    n = 1 + iterations
    if method == "two-step":
        return dict(method=method, iterations=n, options={"iterations": n, "tomo_iterations": n, "tomo_tol": 1e-30})
    return dict(method=method, iterations=n)


# --- the floor: passes the equations need --------------------------------------------------------------
def needed_passes(method: str, row: dict, options: dict) -> tuple[dict, dict]:
    """Passes one iteration's equations need, and why each count is what it is.

    FFT / iFFT passes are over all of the rank's frames; projector passes are slab calls over every angle.

    * APT / APTs (seed 001 Eqs. 5-10): Step 1's right-hand side D^H(z + Lambda2) is one iFFT and one
      projector adjoint; CG on L u needs one L (projector fwd + adj: D^H D is the probe-weight stencil,
      no FFT) for the warm start's residual and one per CG iteration; D u for Step 2 is one projector fwd and
      one FFT. Probe refinement adds one iFFT of z + Lambda2.
    * ADMM (seed 000, (a)-(d)): the psi-step's K = ``ptycho_iterations`` gradient steps need the gradient at
      K points (K FFT + K iFFT) and the objective at the last trial (1 FFT); the u-step one projector adjoint
      for the right-hand side, one fwd + adj per CG iteration, one fwd per extra Gauss-Newton step; T(u) one
      projector fwd.
    * GD (seed 002 Eq. 5): the trial point's loss and gradient field (1 FFT + 1 iFFT), one more FFT per
      backtrack, P g (one projector fwd) and the gradient P^H(...) (one adjoint).
    * 2-step: a DM iteration is one FFT of the exit waves and one iFFT; a CG(LS) iteration one projector fwd
      and one adjoint.
    """
    if method in ("apt", "apts"):
        cg = int(row.get("cg_iterations", 0))
        refine = bool(options.get("probe_refine", False))
        return ({"fft": 1, "ifft": 1 + int(refine), "proj_fwd": cg + 2, "proj_adj": cg + 2},
                {"cg_iterations": cg, "probe_refine": refine})
    if method == "admm":
        k = int(options.get("ptycho_iterations", 4))
        gn = int(options.get("tomo_gn_steps", 1))
        cg = int(row.get("cg_iterations", 0))
        return ({"fft": k + 1, "ifft": k, "proj_fwd": cg + (gn - 1) + 1, "proj_adj": cg + gn},
                {"ptycho_iterations": k, "tomo_gn_steps": gn, "cg_iterations": cg})
    if method == "gd":
        bt = int(row.get("backtracks", 0))
        return ({"fft": 1 + bt, "ifft": 1, "proj_fwd": 1, "proj_adj": 1}, {"backtracks": bt})
    if method == "two-step/dm":
        return ({"fft": 1, "ifft": 1, "proj_fwd": 0, "proj_adj": 0}, {})
    if method == "two-step/cg":
        return ({"fft": 0, "ifft": 0, "proj_fwd": 1, "proj_adj": 1}, {})
    raise ValueError(method)


def extra_reasons(method: str, extra: dict) -> list[str]:
    """Why the code makes more passes than :func:`needed_passes` (only where it does)."""
    why = []
    if method == "admm" and extra.get("fft", 0) >= 1:
        why.append("1 FFT pass: the objective and R-factor at the consistent point T(u) (the history's "
                   "objective / r_factor columns; monitoring, not needed by the update)")
        if extra.get("fft", 0) > 1:
            why.append(f"{extra['fft'] - 1:g} FFT pass(es): psi-step backtracking trials (the Poisson guard)")
    if method == "admm" and extra.get("ifft", 0) > 0:
        why.append(f"{extra['ifft']:g} iFFT pass(es): gradients formed at rejected backtracking trials")
    if method == "gd" and extra.get("ifft", 0) > 0:
        why.append(f"{extra['ifft']:g} iFFT pass(es): every trial forms its gradient field in the same pass "
                   "(kept when accepted), so a rejected trial's iFFT is wasted")
    for k in ("proj_fwd", "proj_adj"):
        if extra.get(k, 0) > 0 and not why:
            why.append(f"{extra[k]:g} {k} pass(es) beyond the equations")
    for k, v in extra.items():
        if v > 0 and not any(k.split("_")[0] in w.lower() or k in w for w in why):
            why.append(f"{v:g} {k} pass(es): not explained")
    return why


# --- child -------------------------------------------------------------------------------------------------
class Counters:
    """Frames transformed by fft2c / ifft2c and Projector calls, with the time spent inside them."""

    def __init__(self, frame_shape):
        self.frame_shape = tuple(frame_shape)
        self.frames = {"fft": 0, "ifft": 0}
        self.proj = {"proj_fwd": 0.0, "proj_adj": 0.0}
        self.seconds = {k: 0.0 for k in KERNELS}

    def snapshot(self) -> dict:
        return {**self.frames, **self.proj, **{f"t_{k}": v for k, v in self.seconds.items()}}


def _install_counters(counters: Counters, slab_rows: list):
    import hpc_pt.backend as backend
    import hpc_pt.operators.ptycho as optycho
    import hpc_pt.solvers.ptycho2d as p2d
    from hpc_pt.operators.projector import Projector

    def wrap_fft(fn, kind):
        def wrapped(x, *a, **k):
            t0 = time.perf_counter()
            out = fn(x, *a, **k)
            counters.seconds[kind] += time.perf_counter() - t0
            if x.ndim >= 2 and tuple(x.shape[-2:]) == counters.frame_shape:  # not the probe's own FFTs
                counters.frames[kind] += int(np.prod(x.shape[:-2], dtype=np.int64))
            return out
        return wrapped

    for mod in (backend, optycho, p2d):  # each module holds its own reference (``from ..backend import``)
        for name, kind in (("fft2c", "fft"), ("ifft2c", "ifft")):
            if hasattr(mod, name):
                setattr(mod, name, wrap_fft(getattr(mod, name), kind))
    fwd, adj = Projector.fwd, Projector.adj

    def share(op):  # one pass = every row of the slab, every angle
        if not slab_rows:
            return 1.0
        return op.nz * len(op.angles) / max(slab_rows[0] * slab_rows[1], 1)

    def timed(method, kind):
        def wrapped(self, x):
            t0 = time.perf_counter()
            out = method(self, x)
            counters.seconds[kind] += time.perf_counter() - t0
            counters.proj[kind] += share(self)
            return out
        return wrapped

    Projector.fwd, Projector.adj = timed(fwd, "proj_fwd"), timed(adj, "proj_adj")


def _median_time(fn, comm, repeats=5) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        comm.barrier()
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def child(path: str, method: str, threads: int, iterations: int) -> dict:
    from hpc_pt.execution import apply_thread_policy

    os.environ["HPC_PT_THREADS"] = str(threads)
    policy = apply_thread_policy(threads)
    import hpc_pt.pipeline as pipeline
    from hpc_pt.io.cxi import scan_cxi

    ranks = int(os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or 1)
    if ranks > 1:
        from hpc_pt.parallel import MPIComm

        comm = MPIComm()
    else:
        from hpc_pt.parallel import SerialComm

        comm = SerialComm()
    meta = scan_cxi(path)
    counters = Counters(meta.frame_shape)
    slab_rows: list = []
    captured = {}
    orig_build = pipeline.build_rank_shard

    def build(*a, **k):
        shard, nbytes = orig_build(*a, **k)
        captured["shard"] = shard
        slab_rows[:] = [shard.space.shape[0], shard.space.n_angles]
        return shard, nbytes

    pipeline.build_rank_shard = build
    _install_counters(counters, slab_rows)
    snaps = []
    orig_check = pipeline.check_finite_row

    def check(row, method_name=""):
        snaps.append(counters.snapshot())
        return orig_check(row, method_name)

    pipeline.check_finite_row = check
    settings = method_settings(method, iterations)
    t0 = time.perf_counter()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # counters from the start of the solve: the first row's counts include set-up, and it is dropped
        res = pipeline.reconstruct(path, comm=comm, **settings)
    total_s = time.perf_counter() - t0
    shard = captured["shard"]
    hist = res.history
    n_rows = len(hist.get("iteration", []))
    rows = [{k: (float(v[i]) if isinstance(v[i], (int, float, np.floating, np.integer)) else v[i])
             for k, v in hist.items() if len(v) == n_rows} for i in range(n_rows)]
    if len(snaps) != n_rows:
        raise RuntimeError(f"{len(snaps)} per-row callbacks for {n_rows} history rows")
    counts = []
    prev = {}
    for i, s in enumerate(snaps):
        if i == 0:
            counts.append(None)  # set-up included
        else:
            counts.append({k: s[k] - prev.get(k, 0) for k in s})
        prev = s
    n_frames = int(shard.intensities.shape[0])
    for c in counts:
        if c is not None:
            for k in ("fft", "ifft"):
                c[k] = c[k] / max(n_frames, 1)
    # unit times on this rank's shard, both ranks at once
    import scipy.fft

    from hpc_pt.backend import _workers

    m1, m2 = meta.frame_shape
    rng = np.random.default_rng(comm.rank)
    frames = (rng.standard_normal((n_frames, m1, m2)) + 1j * rng.standard_normal((n_frames, m1, m2))).astype(
        np.complex64)
    w = _workers()
    P = shard.space.P
    u = (rng.standard_normal(P.shape_in) + 1j * rng.standard_normal(P.shape_in)).astype(P.dtype)
    pr = (rng.standard_normal(P.shape_out) + 1j * rng.standard_normal(P.shape_out)).astype(P.dtype)
    units = {"fft": _median_time(lambda: scipy.fft.fft2(frames, norm="ortho", workers=w), comm),
             "ifft": _median_time(lambda: scipy.fft.ifft2(frames, norm="ortho", workers=w), comm),
             "proj_fwd": _median_time(lambda: P.fwd(u), comm),
             "proj_adj": _median_time(lambda: P.adj(pr), comm)}
    mine = {"rank": comm.rank, "ranks": comm.size, "frames": n_frames, "slab_rows": int(shard.space.shape[0]),
            "units_s": units, "counts": counts, "rows": rows, "total_s": total_s, "policy": policy,
            "env": {k: os.environ.get(k) for k in THREAD_VARS},
            "config": res.config.model_dump(mode="json") if hasattr(res.config, "model_dump") else None}
    return mine


def run_child(path: str, method: str, layout: str, iterations: int, base_env: dict, timeout: int) -> list[dict]:
    ranks, threads = LAYOUTS[layout]
    cmd = [sys.executable, __file__, "--child", path, "--method", method, "--threads", str(threads),
           "--iterations", str(iterations)]
    if ranks > 1:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(ranks)] + cmd
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "child.json"  # every rank writes <out_file>.<rank>
        out = subprocess.run(cmd + ["--child-out", str(out_file)], env=base_env, capture_output=True, text=True,
                             timeout=timeout, check=False)
        files = [Path(f"{out_file}.{r}") for r in range(ranks)]
        if out.returncode != 0 or not all(f.exists() for f in files):
            raise RuntimeError(f"{method} / {layout} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        return [json.loads(f.read_text()) for f in files]


# --- parent: floors, ratios ----------------------------------------------------------------------------------
def _row_kind(method: str, row: dict) -> str:
    if method != "two-step":
        return method
    return "two-step/dm" if int(row.get("stage", 1)) == 1 else "two-step/cg"


def summarise(method: str, ranks_out: list[dict], options: dict) -> dict:
    """Per row kind (the 2-step has two): median iteration time, phases, counted / needed passes, floors."""
    r0 = ranks_out[0]
    kinds: dict[str, list[int]] = {}
    for i, row in enumerate(r0["rows"]):
        if r0["counts"][i] is None:
            continue
        if method == "two-step" and i > 0 and _row_kind(method, r0["rows"][i - 1]) != _row_kind(method, row):
            continue  # the first row of a stage holds its set-up
        kinds.setdefault(_row_kind(method, row), []).append(i)
    out = {}
    for kind, idx in kinds.items():
        it = [r0["rows"][i]["iter_time_s"] for i in idx]
        phases = {}
        for key in sorted({k for i in idx for k in r0["rows"][i] if k.startswith("phase_time_")} | {"comm_time_s"}):
            vals = [float(r0["rows"][i].get(key, 0.0)) for i in idx]
            phases[key.replace("phase_time_", "").replace("_s", "")] = statistics.median(
                v if np.isfinite(v) else 0.0 for v in vals)
        needed, why_needed = needed_passes(kind, r0["rows"][idx[-1]], options)
        floors, floors_counted, counted_all = [], [], []
        for r in ranks_out:
            cnt = {k: statistics.median(r["counts"][i][k] for i in idx) for k in KERNELS}
            counted_all.append(cnt)
            floors.append(statistics.median(
                sum(needed_passes(kind, r["rows"][i], options)[0][k] * r["units_s"][k] for k in KERNELS)
                for i in idx))
            floors_counted.append(sum(cnt[k] * r["units_s"][k] for k in KERNELS))
        kernel_s = statistics.median(sum(r0["counts"][i][f"t_{k}"] for k in KERNELS) for i in idx)
        counted = {k: round(counted_all[0][k], 3) for k in KERNELS}
        extra = {k: round(counted[k] - needed[k], 3) for k in KERNELS if counted[k] - needed[k] > 0.01}
        iter_s = statistics.median(it)
        floor = max(floors)
        target = TARGETS.get(kind)
        out[kind] = {
            "iteration_s": iter_s, "iteration_runs_s": it, "phases_s": phases,
            "passes_needed": needed, "passes_counted": counted, "passes_counted_per_rank": counted_all,
            "needed_from": why_needed, "extra_passes": extra, "extra_reasons": extra_reasons(kind, extra),
            "floor_s": floor, "floor_per_rank_s": floors, "floor_counted_s": max(floors_counted),
            "kernel_time_in_solver_s": kernel_s,
            "ratio": iter_s / floor if floor > 0 else None,
            "ratio_counted": iter_s / max(floors_counted) if max(floors_counted) > 0 else None,
            "target": target, "target_met": None if target is None else bool(iter_s / floor <= target),
        }
    return out


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in doc["cases"] if doc["cases"][c]["runs"]]
    fig, axes = plt.subplots(len(cases), 1, figsize=(13, 4.6 * len(cases)), squeeze=False)
    colours = {"ptycho": "tab:blue", "project": "tab:orange", "cg": "tab:green", "prox": "tab:purple",
               "comm_time": "tab:red", "other": "lightgray"}
    layouts = doc["layouts"]
    for ax, case in zip(axes[:, 0], cases):
        runs = doc["cases"][case]["runs"]
        kinds = []
        for m in doc["cases"][case]["methods"]:
            for lay in layouts:
                for kind in runs.get(m, {}).get(lay, {}).get("kinds", {}):
                    if kind not in kinds:
                        kinds.append(kind)
        x, labels = 0, []
        width = 0.8 / max(len(layouts), 1)
        for ki, kind in enumerate(kinds):
            m = kind.split("/")[0]
            for li, lay in enumerate(layouts):
                s = runs.get(m, {}).get(lay, {}).get("kinds", {}).get(kind)
                if s is None:
                    continue
                xi = ki + (li - (len(layouts) - 1) / 2) * width
                bottom = 0.0
                for ph, v in s["phases_s"].items():
                    ax.bar(xi, v * 1e3, width * 0.9, bottom=bottom, color=colours.get(ph, "tab:brown"),
                           label=ph if (ki == 0 and li == 0) else None)
                    bottom += v * 1e3
                rest = s["iteration_s"] * 1e3 - bottom
                if rest > 0:
                    ax.bar(xi, rest, width * 0.9, bottom=bottom, color=colours["other"],
                           label="other" if (ki == 0 and li == 0) else None)
                ax.plot([xi - width * 0.45, xi + width * 0.45], [s["floor_s"] * 1e3] * 2, "k-", lw=2)
                ok = s["target_met"]
                ax.text(xi, s["iteration_s"] * 1e3, f"{lay}\n{s['ratio']:.2f}x", ha="center", va="bottom",
                        fontsize=7, color={True: "darkgreen", False: "darkred", None: "black"}[ok])
            labels.append(kind + (f"\n(target {TARGETS[kind]}x)" if kind in TARGETS else ""))
            x += 1
        ax.set_xticks(range(len(kinds)), labels, fontsize=8)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
        ax.set_ylabel("one iteration [ms] (stacked phases; black line: floor)")
        ax.set_title(f"{case}: {doc['cases'][case]['description']}", fontsize=9)
        ax.legend(fontsize=7, ncol=6, loc="upper right")
    env = doc["environment"]
    fig.suptitle(f"Outer iteration vs floor (needed FFT + projector passes x bare unit times), layouts ranks x "
                 f"threads {', '.join(layouts)}; {env['cpu_count']} CPUs, {env['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe(sim: dict) -> str:
    return (f"{sim['phantom']} {sim['size']}^3, {sim['angles']} angles, probe {sim['probe_size']}^2, step "
            f"{sim['step']:g}, field_pad {sim['field_pad']}, model {sim['model']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (smoke test)")
    ap.add_argument("--cases", default=",".join(CASE_METHODS), help="comma-separated, of seed001, seed002")
    ap.add_argument("--methods", default=None, help="comma-separated subset of apt, apts, admm, gd, two-step")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {', '.join(LAYOUTS)}")
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per run (after one warm-up)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mine = child(args.child, args.method, args.threads, args.iterations)
        Path(f"{args.child_out}.{mine['rank']}").write_text(json.dumps(mine, default=float))
        return 0
    cases = [c for c in args.cases.split(",") if c]
    layouts = [x for x in args.layouts.split(",") if x]
    if not set(cases) <= set(CASE_METHODS) or not set(layouts) <= set(LAYOUTS):
        ap.error("unknown --cases or --layouts")
    wanted = None if args.methods is None else set(args.methods.split(","))
    iterations = max(2, args.iterations)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from operators import child_base_env, environment, write_results

    from hpc_pt.io.cxi import write_cxi
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    base_env = child_base_env(THREAD_VARS)
    env = environment(None)
    env.pop("astra", None)
    doc = {"benchmark": "iteration", "environment": env, "quick": args.quick, "iterations_timed": iterations,
           "layouts": {k: {"ranks": r, "threads_per_rank": t} for k, (r, t) in LAYOUTS.items() if k in layouts},
           "targets_ratio_max": TARGETS,
           "floor": ("needed FFT passes x bare scipy.fft.fft2/ifft2 over all of a rank's frames + needed projector "
                     "passes x the slab Projector.fwd/adj, measured in the same child, max over ranks"),
           "needed_passes_rules": needed_passes.__doc__, "cases": {}}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            sim = case_sim(case, args.quick)
            t0 = time.perf_counter()
            ds = simulate_dataset(SimulationConfig(**sim))
            path = str(Path(tmp) / f"{case}.cxi")
            write_cxi(ds, path)
            n_frames = int(sum(len(a.positions) for a in ds.angles))
            del ds
            methods = [m for m in CASE_METHODS[case] if wanted is None or m in wanted]
            doc["cases"][case] = {"simulation": sim, "description": describe(sim) + f", {n_frames} frames",
                                  "frames": n_frames, "simulate_s": time.perf_counter() - t0,
                                  "methods": methods, "runs": {}}
            print(f"{case}: {doc['cases'][case]['description']}", flush=True)
            for method in methods:
                for layout in layouts:
                    t1 = time.perf_counter()
                    ranks_out = run_child(path, method, layout, iterations, base_env, args.timeout)
                    options = (ranks_out[0].get("config") or {}).get("options") or {}
                    kinds = summarise(method, ranks_out, options)
                    doc["cases"][case]["runs"].setdefault(method, {})[layout] = {
                        "kinds": kinds, "wall_s": time.perf_counter() - t1, "per_rank": ranks_out,
                        "options": options}
                    for kind, s in kinds.items():
                        ph = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in s["phases_s"].items())
                        print(f"  {kind:<12} {layout}: {s['iteration_s'] * 1e3:8.1f} ms, floor "
                              f"{s['floor_s'] * 1e3:8.1f} ms, ratio {s['ratio']:.2f}x (counted floor "
                              f"{s['ratio_counted']:.2f}x) target {s['target']}: "
                              f"{'-' if s['target_met'] is None else ('met' if s['target_met'] else 'NOT met')}"
                              f"; needed {s['passes_needed']}, counted {s['passes_counted']}; phases [ms] {ph}"
                              + (f"; extra: {'; '.join(s['extra_reasons'])}" if s["extra_reasons"] else ""),
                              flush=True)
                    doc["wall_s"] = time.perf_counter() - t_start
                    write_results(doc, out, "iteration", plot)
    doc["wall_s"] = time.perf_counter() - t_start
    jp, pp = write_results(doc, out, "iteration", plot)
    print(f"wrote {jp} and {pp} ({doc['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
