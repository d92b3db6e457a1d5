#!/usr/bin/env python3
"""Reconstruct on Dask workers that run as SLURM jobs (dask-jobqueue), from a login node or a small job.

    python slurm/dask_jobqueue.py DATA.h5 --out RECON.zarr --workers 8 --cores 8 --memory 32GB \\
        --queue compute --walltime 02:00:00 -- --method apt --iterations 50

This process runs the Dask scheduler; each worker is one SLURM job (`--cores` threads, `--memory`) that
connects back to it. Once all `--workers` workers are up it runs

    python -m hpc_pt.cli reconstruct DATA --backend dask --scheduler tcp://HOST:PORT --workers K --out OUT [options after --]

and, when that ends (or on Ctrl-C), stops the workers (scancel). The workers must be able to reach this
machine: on clusters whose compute nodes only see the login nodes on a fast network, pass
`--interface ib0` (or the site's name for it). Run it inside a 1-task sbatch job to keep the scheduler
off the login node. `--dry-run` prints the worker job script and the command and submits nothing;
`--check` starts the workers, checks that each imports hpc_pt, and stops them.

Needs `pip install ".[dask]" dask-jobqueue` (from the hpc-pt checkout) in an environment the compute nodes see (shared
file system); `--venv` activates a virtual environment in each worker job. Exit code: hpc-pt's, or 2 for
a usage error / workers that did not start.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

INSTALL_HINT = 'error: dask-jobqueue is not installed; pip install dask-jobqueue ".[dask]" from the hpc-pt checkout'


def hpc_pt_command(data: str, out: str, scheduler: str, workers: int, extra: list[str] | tuple[str, ...] = (),
                   python: str = sys.executable) -> list[str]:
    """The hpc-pt command line run on `workers` of the workers of the cluster's scheduler."""
    return [python, "-m", "hpc_pt.cli", "reconstruct", data, "--backend", "dask", "--scheduler", scheduler,
            "--workers", str(workers), "--out", out, *extra]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dask_jobqueue.py",
        description="Start K Dask workers as SLURM jobs (dask-jobqueue) and run hpc-pt reconstruct on them.",
        epilog="Options after `--` go to `hpc-pt reconstruct`, e.g. -- --method apt --iterations 50")
    p.add_argument("data", help="input CXI/HDF5 file or directory (on a file system the workers see)")
    p.add_argument("--out", required=True, help="output Zarr store")
    p.add_argument("--workers", type=int, required=True, help="number of Dask workers (one SLURM job each)")
    p.add_argument("--cores", type=int, default=4, help="threads (and CPUs) per worker [4]")
    p.add_argument("--memory", default="16GB", help="memory per worker job, e.g. 32GB [16GB]")
    p.add_argument("--walltime", default="02:00:00", help="time limit of each worker job [02:00:00]")
    p.add_argument("--queue", help="SLURM partition (-p) of the worker jobs")
    p.add_argument("--account", help="SLURM account (-A) of the worker jobs")
    p.add_argument("--interface", help="network interface the scheduler and workers listen on, e.g. ib0")
    p.add_argument("--job-extra", action="append", default=[], metavar="SBATCH_OPTION",
                   help='extra #SBATCH option for the worker jobs, e.g. --job-extra=--gres=gpu:1 (repeatable)')
    p.add_argument("--venv", help="virtual environment to activate in each worker job")
    p.add_argument("--log-dir", default="dask-logs", help="worker job output files [dask-logs]")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for all workers to start (queue time included) [600]")
    p.add_argument("--dry-run", action="store_true", help="print the worker job script and the command; submit nothing")
    p.add_argument("--check", action="store_true",
                   help="start the workers, check each imports hpc_pt, stop them; no reconstruction")
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    else:
        extra = []
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1 or args.cores < 1:
        parser.error("--workers and --cores must be positive")
    if not os.path.exists(args.data):
        parser.error(f"input '{args.data}' does not exist")
    return args, extra


def has_dask_backend(python: str = sys.executable) -> bool:
    """Does this hpc-pt's `reconstruct` accept --scheduler? (Checked before any job is submitted.)"""
    res = subprocess.run([python, "-m", "hpc_pt.cli", "reconstruct", "--help"], capture_output=True, text=True)
    return res.returncode == 0 and "--scheduler" in res.stdout


def import_slurm_cluster():
    """dask_jobqueue.SLURMCluster, imported lazily. This file is itself named dask_jobqueue.py, and Python
    puts its folder first on sys.path, so that folder is hidden during the import."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        sys.exit(2)
    finally:
        sys.path[:] = saved
    return SLURMCluster


def make_cluster(args):
    SLURMCluster = import_slurm_cluster()
    prologue = [f"export OMP_NUM_THREADS={args.cores}"]
    if args.venv:
        prologue.insert(0, f"source {os.path.join(args.venv, 'bin', 'activate')}")
    return SLURMCluster(cores=args.cores, processes=1, memory=args.memory, walltime=args.walltime,
                        queue=args.queue, account=args.account, interface=args.interface,
                        job_name="hpc-pt-dask", job_extra_directives=list(args.job_extra),
                        job_script_prologue=prologue, log_directory=args.log_dir,
                        python=os.path.join(args.venv, "bin", "python") if args.venv else sys.executable)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    if not args.dry_run and not args.check and not has_dask_backend():
        print("error: this hpc-pt has no Dask backend yet ('hpc-pt reconstruct --help' lists no --scheduler); "
              "update hpc-pt or use slurm/reconstruct_cpu.sbatch (MPI)", file=sys.stderr)
        return 2
    cluster = make_cluster(args)
    try:
        command = hpc_pt_command(args.data, args.out, cluster.scheduler_address, args.workers, extra)
        if args.dry_run:
            print(cluster.job_script())
            print("# then, once", args.workers, "workers are up:")
            print(" ".join(command))
            return 0
        from distributed import Client

        cluster.scale(jobs=args.workers)
        print(f"submitted {args.workers} worker jobs; scheduler {cluster.scheduler_address}, "
              f"dashboard {cluster.dashboard_link}", flush=True)
        with Client(cluster) as client:
            try:
                client.wait_for_workers(args.workers, timeout=args.timeout)
            except TimeoutError:
                have = len(client.scheduler_info()["workers"])
                print(f"error: only {have} of {args.workers} workers started within {args.timeout:.0f} s; "
                      f"check `squeue --me` and {args.log_dir}/, or raise --timeout", file=sys.stderr)
                return 2
            hosts = client.run(lambda: __import__("socket").gethostname())
            print(f"{len(hosts)} workers on {', '.join(sorted(set(hosts.values())))}", flush=True)
            if args.check:
                versions = client.run(lambda: __import__("hpc_pt").__version__)
                print(f"every worker imports hpc_pt {', '.join(sorted(set(versions.values())))}; stopping")
                return 0
            print("+", " ".join(command), flush=True)
            return subprocess.run(command).returncode
    except KeyboardInterrupt:
        print("interrupted; stopping the workers", file=sys.stderr)
        return 130
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
