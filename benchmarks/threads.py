"""Thread policy benchmark: the projector's fwd+adj with OpenMP threads that spin or sleep, on a loaded machine.

    python benchmarks/threads.py [--out benchmarks/results] [--rounds R] [--pairs K] [--sizes small,large]
                                 [--busy N]

What it measures (docs/parallel.md "Threads"; nothing asserts on wall time). ``Projector`` fwd+adj
(``op.adj(op.fwd(u))``, complex64, built as benchmarks/operators.py builds it) at 64^3 / 90 angles
(``small``) and 128^3 / 180 angles (``large``), each in a fresh interpreter per configuration (OpenMP reads
its variables once, when finufft's ``libgomp`` loads), while other processes keep cores busy (``--busy N``
plain Python busy loops, default 1: one core; 0: none):

* ``unset``: ``OMP_WAIT_POLICY`` unset, hpc-pt's default threads (finufft on every core for these sizes):
  GNU OpenMP's threads then spin for a while before they sleep;
* ``passive``: the same with ``OMP_WAIT_POLICY=PASSIVE``;
* ``policy``: ``hpc_pt.execution.apply_thread_policy(threads_per_rank())`` in the child, before finufft
  loads: what hpc-pt's policy gives on this machine;
* ``one_thread``: ``HPC_PT_NUFFT_THREADS=1 HPC_PT_FFT_WORKERS=1 OMP_NUM_THREADS=1`` (no thread waits at all).

Each child warms up once (plans), then times ``--pairs`` pairs (``time.perf_counter``) and reports the CPU
seconds it used (``os.times``: spinning threads burn CPU while they wait). The configurations run
round-robin for ``--rounds`` rounds (default 5), so the machine's load hits them alike; a configuration's
time is the median of all its pairs, and the ratios to ``passive`` are taken in the same run. The thread
variables of the calling shell are not passed to the children (recorded as ``parent_thread_env``).

Writes ``<out>/threads.json`` (environment, every pair time, CPU seconds, ratios, the busy process's CPU
seconds) and ``<out>/threads.png``. Default run: about 2 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):  # run from a checkout without installing; operators.py beside it
    if p not in sys.path:
        sys.path.insert(0, p)

from operators import _angles, _crand, child_base_env, environment, write_results  # noqa: E402

from hpc_pt.execution import Execution, cpu_budget, ranks_on_node  # noqa: E402

#: name -> (n = nz, n_angles)
SIZES = {"small": (64, 90), "large": (128, 180)}
THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "HPC_PT_FFT_WORKERS", "HPC_PT_NUFFT_THREADS", "HPC_PT_THREADS",
               "GOMP_SPINCOUNT", "OMP_PROC_BIND", "OMP_PLACES")
#: configuration -> the thread variables its child gets ("policy": set in the child by hpc_pt.execution)
CONFIGS = {
    "unset": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "policy": {},
    "one_thread": {"HPC_PT_NUFFT_THREADS": "1", "HPC_PT_FFT_WORKERS": "1", "OMP_NUM_THREADS": "1"},
}
BUSY = "while True:\n    pass\n"


# --- child: one configuration, one size ----------------------------------------------------------------
def child(config: str, size: str, pairs: int) -> dict:
    policy = None
    if config == "policy":  # before anything loads finufft's libgomp
        from hpc_pt.execution import apply_thread_policy, threads_per_rank

        policy = apply_thread_policy(threads_per_rank())
    from hpc_pt.operators import Projector

    n, n_angles = SIZES[size]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    op = Projector(n, n, _angles(n_angles), dtype=np.complex64)
    u = _crand(rng, op.shape_in)
    op.adj(op.fwd(u))  # warm-up: plans (FFTW_MEASURE at 128^3), first touch
    setup = time.perf_counter() - t0
    runs, cpu = [], []
    for _ in range(pairs):
        c0, w0 = os.times(), time.perf_counter()
        op.adj(op.fwd(u))
        w1, c1 = time.perf_counter(), os.times()
        runs.append(w1 - w0)
        cpu.append((c1.user - c0.user) + (c1.system - c0.system))
    return {"config": config, "size": size, "runs_s": runs, "cpu_s": cpu, "setup_s": setup, "policy": policy,
            "env": {k: os.environ.get(k) for k in THREAD_VARS}}


def run_child(config: str, size: str, pairs: int, base_env: dict) -> dict:
    env = {**base_env, **CONFIGS[config]}
    out = subprocess.run([sys.executable, __file__, "--child", config, "--size", size, "--pairs", str(pairs)],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {config}/{size} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- parent ----------------------------------------------------------------------------------------------
def start_busy_loop():
    return subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop_busy_loop(proc) -> float | None:
    """Kill the busy loop started by :func:`start_busy_loop`; return the CPU seconds it used."""
    proc.kill()
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = status
        return usage.ru_utime + usage.ru_stime
    except (AttributeError, ChildProcessError):  # not POSIX, or already reaped
        proc.wait()
        return None


def summarise(results: list[dict], sizes, configs) -> dict:
    out = {}
    for size in sizes:
        per = {}
        for config in configs:
            mine = [r for r in results if r["size"] == size and r["config"] == config]
            runs = [t for r in mine for t in r["runs_s"]]
            cpu = [c for r in mine for c in r["cpu_s"]]
            per[config] = {"median_s": statistics.median(runs), "min_s": min(runs), "runs_s": runs,
                           "round_medians_s": [statistics.median(r["runs_s"]) for r in mine],
                           "cpu_per_wall": statistics.median(c / t for c, t in zip(cpu, runs)),
                           "setup_s": [r["setup_s"] for r in mine], "child_env": mine[0]["env"],
                           "policy": mine[0]["policy"]}
        ref = per["passive"]["median_s"]
        for config in configs:
            per[config]["ratio_to_passive"] = per[config]["median_s"] / ref
        n, n_angles = SIZES[size]
        out[size] = {"volume": [n, n, n], "n_angles": n_angles, "configs": per,
                     "slowdown_unset_vs_passive": per["unset"]["median_s"] / ref}
    return out


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(doc["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.4), squeeze=False)
    colours = {"unset": "tab:red", "passive": "tab:green", "policy": "tab:blue", "one_thread": "tab:gray"}
    for ax, size in zip(axes[0], sizes):
        s = doc["sizes"][size]
        names = list(s["configs"])
        for i, name in enumerate(names):
            c = s["configs"][name]
            ax.bar(i, c["median_s"] * 1e3, 0.6, color=colours.get(name, "tab:purple"))
            ax.plot([i] * len(c["runs_s"]), np.array(c["runs_s"]) * 1e3, "k.", ms=3)
            ax.text(i, c["median_s"] * 1e3, f"{c['median_s'] * 1e3:.0f} ms\nx{c['ratio_to_passive']:.2f}",
                    ha="center", va="bottom", fontsize=8, bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 1})
        ax.set_xticks(range(len(names)), names)
        ax.set_yscale("log")
        ax.set_ylabel("Projector fwd+adj [ms] (median, dots: pairs)")
        ax.set_title(f"{s['volume'][0]}^3, {s['n_angles']} angles: unset / PASSIVE = "
                     f"{s['slowdown_unset_vs_passive']:.1f}x", fontsize=10)
    env = doc["environment"]
    load = f"{doc['busy_loops']} busy-loop process(es) meanwhile" if doc["busy_loops"] else "no extra load"
    fig.suptitle(f"OpenMP wait policy, {env['cpu_count']} CPUs, {load}, {env['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder")
    ap.add_argument("--rounds", type=int, default=5, help="round-robin rounds, one child per configuration each")
    ap.add_argument("--pairs", type=int, default=2, help="timed fwd+adj pairs per child (after one warm-up)")
    ap.add_argument("--sizes", default="small,large", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--busy", type=int, default=1, help="busy-loop processes running meanwhile (0: none)")
    ap.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.size, args.pairs)), flush=True)
        return 0
    sizes = [s for s in args.sizes.split(",") if s]
    if not set(sizes) <= set(SIZES):
        ap.error(f"--sizes: unknown {sorted(set(sizes) - set(SIZES))}")
    rounds, pairs = max(1, args.rounds), max(1, args.pairs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    base_env = child_base_env(THREAD_VARS)
    env = environment(None)
    env.pop("astra", None)
    budget, source = cpu_budget()
    env.update({"cpu_budget": budget, "cpu_budget_source": source, "ranks_on_node": ranks_on_node(),
                "execution_default": Execution.from_environment(environ=base_env).describe(base_env),
                "parent_thread_env": {k: os.environ.get(k) for k in THREAD_VARS}})
    print(f"thread policy benchmark: {env['cpu_count']} CPUs (budget {budget}: {source}), load "
          f"{env['loadavg_at_start']}, {rounds} rounds x {pairs} pairs, sizes {sizes}", flush=True)
    busy = [start_busy_loop() for _ in range(max(0, args.busy))]
    t_start = time.perf_counter()
    results, load_during = [], []
    try:
        time.sleep(0.5 if busy else 0.0)  # let the busy loops start
        for rnd in range(rounds):
            for size in sizes:
                for config in CONFIGS:
                    r = run_child(config, size, pairs, base_env)
                    results.append(r)
                    print(f"round {rnd + 1} {size:<5} {config:<10} median "
                          f"{statistics.median(r['runs_s']) * 1e3:8.1f} ms (cpu/wall "
                          f"{statistics.median(c / t for c, t in zip(r['cpu_s'], r['runs_s'])):.2f})", flush=True)
            load_during.append(list(os.getloadavg()))
    finally:
        busy_cpu = [stop_busy_loop(p) for p in busy]
    wall = time.perf_counter() - t_start
    env["loadavg_during"] = load_during
    env["loadavg_at_end"] = list(os.getloadavg())
    doc = {
        "benchmark": "threads", "statistic": "median of all timed pairs of a configuration",
        "timer": "time.perf_counter", "rounds": rounds, "pairs_per_child": pairs, "warmup": 1,
        "operation": "Projector(n, n, angles, complex64): op.adj(op.fwd(u))",
        "busy_loops": len(busy), "busy_loop_cpu_s": busy_cpu, "wall_s": wall,
        "busy_loop_cpu_share": [c / wall if c is not None else None for c in busy_cpu],
        "configs": {k: v or ("apply_thread_policy(threads_per_rank()) in the child" if k == "policy"
                             else "nothing set") for k, v in CONFIGS.items()},
        "environment": env,
        "sizes": summarise(results, sizes, list(CONFIGS)),
    }
    for size, s in doc["sizes"].items():
        c = s["configs"]
        print(f"{size}: {s['volume'][0]}^3 / {s['n_angles']} angles: unset {c['unset']['median_s'] * 1e3:.0f} ms, "
              f"PASSIVE {c['passive']['median_s'] * 1e3:.0f} ms ({s['slowdown_unset_vs_passive']:.1f}x), policy "
              f"{c['policy']['median_s'] * 1e3:.0f} ms, one thread {c['one_thread']['median_s'] * 1e3:.0f} ms",
              flush=True)
    jpath, ppath = write_results(doc, out, "threads", plot)
    print(f"wrote {jpath} and {ppath} ({wall:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
