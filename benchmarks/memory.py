"""Memory benchmark: far fields one frame batch at a time (``--frame-batch``) against one stack.

    python benchmarks/memory.py [--quick] [--out benchmarks/results] [--repeats N]

What it measures (docs/architecture.md §4; nothing asserts on wall time or bytes). One seed-002-like problem
(64^3 wires, exponential model, 63 x 63 disc probe, raster step 4 px with the 1 px shift per angle, 24
angles: about 4,200 frames, 130 MB of complex64 far field) and three solver kernels, each with the frames in one
batch and in batches of 2,048 and 512 frames (the operator's ``frame_batch``):

* ``farfield_pass``: objective, R-factor sums and the gradient field D^H r(D psi) at the true exit waves
  (the kernel GD's and ADMM's trials call),
* a GD run of 2 iterations (``run_gd``: set-up with the step's power iteration, then the iterations),
* an ADMM run of 2 iterations (``run_admm``).

For each: the peak of the bytes allocated while it runs (``tracemalloc``, which sees every NumPy / SciPy
array; taken in a run of its own, after set-up, so the data, operators and scatter matrices built before it
are not counted), as a ratio to the one-batch peak, and the time (median of ``--repeats`` runs without
tracing, after the traced ones) as a ratio to the one-batch time, measured in the same run. Targets: the 512-frame batches peak
at <= 0.25 x the one-batch peak of ``farfield_pass`` and <= 0.5 x that of the GD and ADMM runs, at a
time ratio <= 1.15.

Writes ``<out>/memory.json`` and ``<out>/memory.png``. ``--quick``: 24^3, a few seconds (smoke test).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from hpc_pt.parallel import SerialComm  # noqa: E402
from hpc_pt.pipeline import build_shard  # noqa: E402
from hpc_pt.simulate import SimulationConfig, simulate_dataset  # noqa: E402
from hpc_pt.solvers.admm import ADMMOptions, run_admm  # noqa: E402
from hpc_pt.solvers.farfield import farfield_pass  # noqa: E402
from hpc_pt.solvers.gd import GDOptions, run_gd  # noqa: E402

PEAK_TARGET = {"farfield_pass": 0.25, "gd_2_iterations": 0.5, "admm_2_iterations": 0.5}
TIME_TARGET = 1.15


def problem(quick: bool) -> SimulationConfig:
    if quick:
        return SimulationConfig(phantom="wires", size=24, angles=8, angle_range=360, probe_kind="disc",
                                probe_size=15, probe_fwhm=6.0, step=2.0, per_angle_offset=1.0, field_pad=8,
                                model="exp", energy_kev=5.0, voxel_nm=10.0, seed=0)
    return SimulationConfig(phantom="wires", size=64, angles=24, angle_range=360, probe_kind="disc",
                            probe_size=63, probe_fwhm=15.0, step=4.0, per_angle_offset=1.0, field_pad=24,
                            model="exp", energy_kev=5.0, voxel_nm=10.0, seed=0)


def kernels(shard):
    """name -> a function running that kernel once on ``shard``."""
    m = shard.model
    psi = m.exit_wave(np.asarray(shard.space.local(np.zeros(shard.global_volume_shape, np.complex64))))

    def ff():
        farfield_pass(m.ptycho, psi, shard.intensities, shard.amplitudes, "gaussian", shard.mask, grad=True)

    def gd():
        run_gd(shard, SerialComm(), GDOptions(iterations=2))

    def admm():
        run_admm(shard, SerialComm(), ADMMOptions(iterations=2))

    return {"farfield_pass": ff, "gd_2_iterations": gd, "admm_2_iterations": admm}


def traced_peak(fn) -> int:
    """Peak bytes allocated (above the start) while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()  # first call builds lazy operator state (scatter matrices, plans): not part of the peak
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = None
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "env": {k: os.environ.get(k) for k in ("HPC_PT_FFT_WORKERS", "HPC_PT_NUFFT_THREADS",
                                                   "OMP_NUM_THREADS")}}


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["kernels"])
    batches = doc["batches"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(batches)
    x = np.arange(len(names))
    for i, b in enumerate(batches):
        lab = "one batch" if b is None else f"{b} frames"
        ax[0].bar(x + i * width, [doc["kernels"][n][str(b)]["peak_mb"] for n in names], width, label=lab)
        ax[1].bar(x + i * width, [doc["kernels"][n][str(b)]["time_ratio"] for n in names], width, label=lab)
    for a, t in zip(ax, ("peak allocated during the kernel (MB)", "time / one-batch time")):
        a.set_xticks(x + width * (len(batches) - 1) / 2, names)
        a.set_title(t)
        a.legend()
    ax[1].axhline(TIME_TARGET, color="k", ls="--", lw=1)
    fig.suptitle(f"far fields by frame batch: {doc['problem']['frames']} frames of "
                 f"{doc['problem']['detector']} ({doc['problem']['farfield_mb']:.0f} MB complex64)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="24^3, a few seconds (smoke test)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: give at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = problem(args.quick)
    ds = simulate_dataset(cfg)
    batches = [None, 64, 16] if args.quick else [None, 2048, 512]
    frames = sum(len(a.positions) for a in ds.angles)
    m = ds.probe.shape[0]
    doc = {"benchmark": "memory", "quick": args.quick, "environment": environment(),
           "problem": {"config": cfg.model_dump() if hasattr(cfg, "model_dump") else vars(cfg),
                       "frames": frames, "detector": f"{m}x{m}", "farfield_mb": frames * m * m * 8 / 1e6},
           "batches": batches, "targets": {"peak_ratio": PEAK_TARGET, "time_ratio": TIME_TARGET},
           "kernels": {}}
    for b in batches:
        shard = build_shard(ds, "exp", frame_batch=b if b is not None else frames)
        for name, fn in kernels(shard).items():
            peak = traced_peak(fn)
            t = median_time(fn, args.repeats)
            doc["kernels"].setdefault(name, {})[str(b)] = {"peak_mb": peak / 1e6, "time_s": t,
                                                           "n_batches": len(shard.model.ptycho.batches())}
            print(f"{name:18s} batch {str(b):>5s}: peak {peak / 1e6:8.1f} MB  time {t:7.3f} s", flush=True)
    met = {}
    for name, rows in doc["kernels"].items():
        one = rows["None"]
        for b, r in rows.items():
            r["peak_ratio"] = r["peak_mb"] / one["peak_mb"] if one["peak_mb"] > 0 else float("nan")
            r["time_ratio"] = r["time_s"] / one["time_s"] if one["time_s"] > 0 else float("nan")
        last = rows[str(batches[-1])]
        met[name] = {"peak_ratio": last["peak_ratio"], "time_ratio": last["time_ratio"],
                     "met": bool(last["peak_ratio"] <= PEAK_TARGET[name] and last["time_ratio"] <= TIME_TARGET)}
    doc["smallest_batch_vs_one_batch"] = met
    (out / "memory.json").write_text(json.dumps(doc, indent=1, default=str))
    plot(doc, out / "memory.png")
    for name, r in met.items():
        print(f"{name}: peak x{r['peak_ratio']:.2f}, time x{r['time_ratio']:.2f}, target met: {r['met']}")
    print(f"wrote {out / 'memory.json'} and {out / 'memory.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
