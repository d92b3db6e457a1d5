"""Cost and effect of the deterministic reduction mode (``--deterministic``, docs/parallel.md).

One simulated dataset (default: 32^3 Shepp-Logan, 12 angles, linear model, no noise), APT reconstructed
serially and on 2 MPI ranks, with the mode off and on. Reports

* ``time_per_iteration_s`` (APT; GD and ADMM as ``gd serial``, ``admm mpi-2``, ...): the median of the history's ``iter_time_s`` over the outer iterations after the
  first (the first one includes set-up work), per backend and mode, the smallest of ``--repeats`` runs
  (interleaved off / on, so a busy machine disturbs both alike), and the ratio on / off; also the median
  over the repeats and its ratio (``on_over_off_median``), which one busy run cannot move;
* ``agreement``: the relative L2 difference of the 2-rank volume from the serial one, and whether they are
  bitwise equal, for each case below;
* the cases that locate the amplification of rounding: APT from its default constant start after 1, 2
  and ``--iterations`` iterations, the same with a tight CG (``cg_tol`` 1e-8, up to 60 CG iterations:
  if the difference stays, the CG stopping rule is not what amplifies it), and from a zero start.

Usage: python benchmarks/determinism.py [--size 32] [--angles 12] [--iterations 10] [--repeats 3] [--out DIR]
Writes DIR/determinism.json and DIR/determinism.png (DIR defaults to benchmarks/results). Needs mpiexec
(the ``mpi`` extra). Never asserts on time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def cases(iterations: int, repeats: int) -> list[dict]:
    """name, settings of every APT run (each runs serially and on 2 ranks): the timing runs, mode off and on
    interleaved ``repeats`` times, then the agreement cases."""
    tight = {"cg_tol": 1e-8, "cg_max_iter": 60}
    timing = [{"name": f"{m}time-{mode}-{r}", "method": m[:-1] or "apt", "model": "linear",
               "iterations": iterations, "deterministic": mode == "on"}
              for m in ("", "gd-", "admm-") for r in range(repeats) for mode in ("off", "on")]
    # serial only: the same runs with another frame batch (another summation order, no ranks involved)
    batch = [{"name": f"fb37-{k}", "iterations": k, "deterministic": False, "frame_batch": 37, "serial_only": True}
             for k in (1, 2, iterations)]
    return timing + batch + [
        {"name": "constant-off", "iterations": iterations, "deterministic": False},
        {"name": "constant-on", "iterations": iterations, "deterministic": True},
        {"name": "constant-off-1", "iterations": 1, "deterministic": False},
        {"name": "constant-off-2", "iterations": 2, "deterministic": False},
        {"name": "constant-off-tight-cg", "iterations": iterations, "deterministic": False, "options": tight},
        {"name": "zeros-off", "iterations": iterations, "deterministic": False, "init": "zeros"},
        {"name": "gd-off", "method": "gd", "model": "linear", "iterations": iterations, "deterministic": False},
        {"name": "gd-on", "method": "gd", "model": "linear", "iterations": iterations, "deterministic": True},
        {"name": "admm-off", "method": "admm", "model": "linear", "iterations": iterations, "deterministic": False},
        {"name": "admm-on", "method": "admm", "model": "linear", "iterations": iterations, "deterministic": True},
    ]


def run_cases(data: str, todo: list[dict], comm=None) -> dict:
    """Every case on ``comm`` (None: serial); {name: (volume, per-iteration times)}."""
    from hpc_pt import reconstruct

    out = {}
    for case in todo:
        if comm is not None and case.get("serial_only"):
            continue
        settings = {k: v for k, v in case.items() if k not in ("name", "serial_only")}
        settings.setdefault("method", "apt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = reconstruct(data, comm=comm, **settings)
        out[case["name"]] = (res.volume, [float(t) for t in res.history["iter_time_s"]])
    return out


def worker(data: str, outdir: str, cases_json: str) -> None:
    """The 2-rank half, run under mpiexec: rank 0 saves every case's volume and times."""
    from hpc_pt.parallel import MPIComm

    comm = MPIComm()
    res = run_cases(data, json.loads(Path(cases_json).read_text()), comm=comm)
    if comm.rank == 0:
        for name, (vol, times) in res.items():
            np.save(os.path.join(outdir, f"{name}.npy"), vol)
            Path(outdir, f"{name}.json").write_text(json.dumps(times))


def median_after_first(times: list[float]) -> float:
    return float(np.median(times[1:] if len(times) > 1 else times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--angles", type=int, default=12)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="timing runs per mode, interleaved")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--worker", nargs=3, metavar=("DATA", "OUTDIR", "CASES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    from hpc_pt.io import write_cxi
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    todo = cases(args.iterations, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.cxi")
        ds = simulate_dataset(SimulationConfig(size=args.size, angles=args.angles))
        write_cxi(ds, data)
        frames = int(sum(a.frames.shape[0] for a in ds.angles))
        t0 = time.perf_counter()
        serial = run_cases(data, todo)
        serial_s = time.perf_counter() - t0
        cases_json = os.path.join(tmp, "cases.json")
        Path(cases_json).write_text(json.dumps(todo))
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        cmd = [mpiexec if os.access(mpiexec, os.X_OK) else "mpiexec", "-n", "2", sys.executable, "-m", "mpi4py",
               str(Path(__file__).resolve()), "--worker", data, tmp, cases_json]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        mpi_s = time.perf_counter() - t0
        mpi = {c["name"]: (np.load(os.path.join(tmp, f"{c['name']}.npy")),
                           json.loads(Path(tmp, f"{c['name']}.json").read_text()))
               for c in todo if not c.get("serial_only")}
    agreement = {}
    for c in todo:
        if "time-" in c["name"] or c.get("serial_only"):
            continue
        a, b = serial[c["name"]][0], mpi[c["name"]][0]
        agreement[c["name"]] = {
            "settings": {k: v for k, v in c.items() if k != "name"},
            "relative_l2_2ranks_vs_serial": float(np.linalg.norm(b - a) / np.linalg.norm(a)),
            "bitwise_equal": bool(np.array_equal(a, b)),
        }
    timing = {}
    for prefix, label in (("", ""), ("gd-", "gd "), ("admm-", "admm ")):
        for backend, res in (("serial", serial), ("mpi-2", mpi)):
            med = {mode: [median_after_first(res[f"{prefix}time-{mode}-{r}"][1]) for r in range(args.repeats)]
                   for mode in ("off", "on")}
            off, on = min(med["off"]), min(med["on"])  # the least disturbed run of each mode
            moff, mon = float(np.median(med["off"])), float(np.median(med["on"]))  # robust to one busy run
            timing[label + backend] = {"off_s": off, "on_s": on, "on_over_off": on / off,
                                       "median_off_s": moff, "median_on_s": mon, "on_over_off_median": mon / moff,
                                       "off_medians_s": med["off"], "on_medians_s": med["on"]}
    reference = {1: "constant-off-1", 2: "constant-off-2", args.iterations: "constant-off"}
    frame_batch = {}
    for k, ref in reference.items():
        a, b = serial[ref][0], serial[f"fb37-{k}"][0]
        frame_batch[str(k)] = float(np.linalg.norm(b - a) / np.linalg.norm(a))
    result = {
        "what": "APT, GD and ADMM time per outer iteration with the deterministic reduction mode off and on, the "
                "2-rank vs serial agreement that locates the amplification of rounding, and the serial "
                "difference a frame batch of 37 makes (another summation order, no ranks)",
        "dataset": {"size": args.size, "angles": args.angles, "frames": frames, "model": "linear",
                    "noise": "none"},
        "iterations": args.iterations,
        "repeats": args.repeats,
        "time_per_iteration_s": timing,
        "agreement": agreement,
        "serial_frame_batch_37_vs_default_relative_l2": frame_batch,
        "wall_s": {"serial_all_cases": serial_s, "mpi2_all_cases": mpi_s},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "determinism.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "determinism.png")
    print(json.dumps({"time_per_iteration_s": {k: {kk: v[kk] for kk in ("off_s", "on_s", "on_over_off",
                                                                         "on_over_off_median")}
                                               for k, v in timing.items()},
                      "agreement": {k: (v["relative_l2_2ranks_vs_serial"], v["bitwise_equal"])
                                    for k, v in agreement.items()},
                      "serial_frame_batch_37_vs_default_relative_l2": frame_batch}, indent=1))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    t = result["time_per_iteration_s"]
    names = list(t)
    x = np.arange(len(names))
    a1.bar(x - 0.2, [t[n]["off_s"] for n in names], 0.4, label="off")
    a1.bar(x + 0.2, [t[n]["on_s"] for n in names], 0.4, label="deterministic")
    a1.set_xticks(x, names)
    a1.set_ylabel("s per outer iteration (median)")
    a1.legend()
    ag = result["agreement"]
    keys = list(ag)
    vals = [max(ag[k]["relative_l2_2ranks_vs_serial"], 1e-17) for k in keys]
    a2.barh(np.arange(len(keys)), vals)
    a2.set_xscale("log")
    a2.set_yticks(np.arange(len(keys)), keys)
    a2.set_xlabel("relative L2, 2 ranks vs serial (1e-17: bitwise)")
    d = result["dataset"]
    fig.suptitle(f"APT (GD, ADMM), {d['size']}^3, {d['angles']} angles, {d['frames']} frames, {result['iterations']} iterations")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
