"""Execution policy: the device, precision, frame batch and CPU threads of one process, decided once.

An :class:`Execution` value is built once per process (:meth:`Execution.from_environment`) and handed to
the forward model, the slab space and the 2D solvers, instead of each of them reading the environment.

Threads. A rank uses ``threads_per_rank()`` threads: what the process may use (:func:`cpu_budget`: its CPU
affinity, the cgroup CPU quota, ``SLURM_CPUS_PER_TASK``) divided among the ranks the launcher started on
this node (:func:`ranks_on_node`), unless the user pinned it (``HPC_PT_THREADS``). The default thread
counts of the kernels are not rank-aware (``scipy.fft`` with ``workers=-1`` and finufft's default use every
core), so two ranks on a node would each start a thread per core.

Waiting. OpenMP threads that spin while they wait for work (GNU OpenMP's default when
``OMP_WAIT_POLICY`` is unset) take the cores from whatever else runs there. Measured on the loaded 2-core
development machine (benchmarks/threads.py: one core kept busy by another process, load average 3.5-5):
the 64^3 / 90-angle projector fwd+adj took 1,133 ms with spinning threads and 118 ms with
``OMP_WAIT_POLICY=PASSIVE`` (9.6x), the 128^3 / 180-angle one 3,585 and 582 ms (6.2x); less load, less
penalty (1.1x-8x and 1.4x-1.6x in runs the same hour). :func:`apply_thread_policy` therefore makes
OpenMP threads wait passively unless the user chose otherwise.

OpenMP runtimes read ``OMP_WAIT_POLICY`` (and ``OMP_NUM_THREADS``) once, when the library is loaded: call
:func:`apply_thread_policy` before finufft (whose wheel ships its own ``libgomp``) is imported, i.e. before
the first NUFFT runs. Importing :mod:`hpc_pt`, :mod:`hpc_pt.backend` or :mod:`hpc_pt.operators` does not
load finufft (it is imported inside the NUFFT functions), so calling it at the start of a program is early
enough; child processes (MPI ranks, Dask workers started afterwards) inherit the variables either way.

Nothing here holds state: every function reads the environment and files it is given (defaults: the
process's own) when called.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import _read_int
from .errors import InputError

__all__ = ["cpu_budget", "ranks_on_node", "threads_per_rank", "apply_thread_policy", "Execution",
           "THREADS_ENV", "LOCAL_SIZE_VARS", "DEVICES", "DTYPES"]

#: environment variable pinning the threads per rank (a positive integer), whatever the budget
THREADS_ENV = "HPC_PT_THREADS"
#: launcher variables holding the number of ranks on this node, in the order they are trusted: Open MPI,
#: MPICH / Intel MPI's Hydra (``mpiexec`` from the mpich wheel exports ``MPI_LOCALNRANKS`` and
#: ``MPI_LOCALRANKID``; its ``PMI_SIZE`` is the world size, not the node's), Cray PALS, then SLURM (the job
#: step's tasks per node, then the job's; ``"4(x2)"`` and ``"2,1"`` count as 4 and 2)
LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE",
                   "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
#: device names, as ``--device`` and ``ReconConfig.device`` spell them
DEVICES = ("cpu", "gpu")
#: complex working precisions
DTYPES = ("complex64", "complex128")


def _positive_int(text) -> int | None:
    """The leading integer of a launcher value (``"4"``, ``"4(x2)"``, ``"2,1"``), None unless it is >= 1."""
    head = str(text).strip().split(",")[0].split("(")[0].strip()
    return int(head) if head.isdigit() and int(head) >= 1 else None


def _count(name: str, value, allowed: str) -> int:
    """``value`` as an int when it is an integer >= 1 (bool excluded), else an InputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}={value!r} must be {allowed}")
    return int(value)


def _cgroup_dirs(root: Path, proc_cgroup: str, controller: str | None) -> list[Path]:
    """The process's own cgroup directory under ``root`` and its ancestors up to ``root`` (a limit anywhere
    on that path applies); just ``root`` when ``proc_cgroup`` cannot be read or names no such cgroup.

    ``controller`` None: the v2 line ``0::/path``; else the v1 line listing that controller."""
    rel = ""
    try:
        with open(proc_cgroup) as fh:
            for line in fh:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) != 3:
                    continue
                if (controller is None and parts[0] == "0" and parts[1] == "") or (
                        controller is not None and controller in parts[1].split(",")):
                    rel = parts[2].strip("/")
                    break
    except OSError:
        pass
    here = root / rel if rel else root
    dirs = [here]
    while here != root and root in here.parents:
        here = here.parent
        dirs.append(here)
    return dirs


def _cgroup_quota(cgroup_root: str, proc_cgroup: str) -> tuple[int, str] | None:
    """CPUs allowed by the tightest cgroup CPU quota on the process's path (v2 ``cpu.max``, else v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up; None when there is no quota."""
    root = Path(cgroup_root)
    found: list[tuple[int, str]] = []
    for d in _cgroup_dirs(root, proc_cgroup, None):
        path = d / "cpu.max"
        try:
            quota, period = path.read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota.isdigit() and period.isdigit() and int(period) > 0:
            found.append((max(1, math.ceil(int(quota) / int(period))), f"cgroup v2 {path} ({quota} {period})"))
    if not found:
        for sub in ("cpu", "cpu,cpuacct"):
            for d in _cgroup_dirs(root / sub, proc_cgroup, "cpu"):
                quota = _read_int(str(d / "cpu.cfs_quota_us"))  # -1 (no quota) reads as None
                period = _read_int(str(d / "cpu.cfs_period_us"))
                if quota and period:
                    found.append((max(1, math.ceil(quota / period)),
                                  f"cgroup v1 {d / 'cpu.cfs_quota_us'} ({quota} / {period})"))
            if found:
                break
    return min(found) if found else None


def _cpu_limits(environ=None, cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup",
                affinity: int | None = None) -> list[tuple[int, str, bool]]:
    """Every CPU limit found: (CPUs, where from, whether it is per task already)."""
    env = os.environ if environ is None else environ
    where = "CPU affinity"
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            affinity, where = os.cpu_count() or 1, "os.cpu_count()"
    limits = [(max(1, int(affinity)), f"{where} ({int(affinity)} CPUs)", False)]
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        limits.append((quota[0], quota[1], False))
    slurm = _positive_int(env.get("SLURM_CPUS_PER_TASK", ""))
    if slurm is not None:
        limits.append((slurm, f"SLURM_CPUS_PER_TASK={slurm}", True))
    return limits


def cpu_budget(environ=None, cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup",
               affinity: int | None = None) -> tuple[int, str]:
    """The number of CPUs this process may use, and where the figure comes from.

    The smallest of: the CPU affinity mask (``os.sched_getaffinity(0)``; ``os.cpu_count()`` where that is
    missing), the cgroup CPU quota on the process's cgroup path (v2: ``cpu.max`` ``"200000 100000"`` is 2
    CPUs, ``"max 100000"`` none; v1: ``cpu.cfs_quota_us / cpu.cfs_period_us``, -1 none; rounded up), and
    ``SLURM_CPUS_PER_TASK`` when set.

    Parameters
    ----------
    environ : mapping, optional
        The environment to read ``SLURM_CPUS_PER_TASK`` from. Default ``os.environ``.
    cgroup_root : str, optional
        Where the cgroup file systems are mounted (v2 files under it, v1 under ``cpu/`` or
        ``cpu,cpuacct/``). Default ``/sys/fs/cgroup``.
    proc_cgroup : str, optional
        The file naming the process's cgroups (``0::/path`` for v2, ``N:cpu,cpuacct:/path`` for v1); a
        missing file or path means the cgroup root. Default ``/proc/self/cgroup``.
    affinity : int, optional
        The number of CPUs in the affinity mask, instead of asking the kernel (tests).

    Returns
    -------
    cpus : int
        At least 1.
    source : str
        The limit that decided, e.g. ``"CPU affinity (2 CPUs)"``, ``"SLURM_CPUS_PER_TASK=4"`` or
        ``"cgroup v2 /sys/fs/cgroup/cpu.max (200000 100000)"`` (the first of them on a tie).
    """
    n, source, _per_task = min(_cpu_limits(environ, cgroup_root, proc_cgroup, affinity), key=lambda t: t[0])
    return n, source


def ranks_on_node(environ=None) -> int:
    """The number of ranks the launcher started on this node (they share its CPUs), from its variables.

    Parameters
    ----------
    environ : mapping, optional
        The environment to read (default ``os.environ``): the first of :data:`LOCAL_SIZE_VARS` holding a
        positive integer wins.

    Returns
    -------
    int
        The ranks on this node; 1 outside a launcher.
    """
    env = os.environ if environ is None else environ
    for var in LOCAL_SIZE_VARS:
        n = _positive_int(env.get(var, ""))
        if n is not None:
            return n
    return 1


def _pinned(threads, environ) -> tuple[int, str] | None:
    """The user's thread count (the argument, else ``HPC_PT_THREADS``), validated; None when not pinned."""
    if threads is not None:
        value, where = threads, "threads argument"
    else:
        value, where = environ.get(THREADS_ENV), THREADS_ENV
        if value is None or not str(value).strip():
            return None
    n = _positive_int(value) if not isinstance(value, bool) else None
    if n is None or str(value).strip() != str(n):
        raise InputError(f"{where}={value!r} must be a positive integer (threads per rank); unset "
                         f"{THREADS_ENV} to use the CPUs this process may use")
    return n, f"{where}={n}"


def _threads_and_source(threads=None, environ=None, **where) -> tuple[int, str]:
    env = os.environ if environ is None else environ
    pinned = _pinned(threads, env)
    if pinned is not None:
        return pinned
    limits = _cpu_limits(env, **where)
    ranks = ranks_on_node(env)
    shared = min((t for t in limits if not t[2]), key=lambda t: t[0])
    per_rank, source = max(1, shared[0] // ranks), shared[1] + (f" / {ranks} ranks on this node" if ranks > 1 else "")
    for n, src, per_task in limits:  # already one task's share: not divided again
        if per_task and n < per_rank:
            per_rank, source = n, src
    return per_rank, source


def threads_per_rank(threads: int | None = None, environ=None, cgroup_root: str = "/sys/fs/cgroup",
                     proc_cgroup: str = "/proc/self/cgroup", affinity: int | None = None) -> int:
    """Threads this rank should use: its share of the node's CPUs, unless the user pinned the count.

    ``max(1, budget // ranks_on_node())``, where the budget is the affinity mask and the cgroup quota
    (:func:`cpu_budget`), which every rank of the node sees alike; ``SLURM_CPUS_PER_TASK`` is one task's
    share already and caps the result without being divided. A launcher that binds each rank to its own
    cores shrinks each rank's affinity mask, so the division then under-counts rather than oversubscribes;
    pin the count with ``HPC_PT_THREADS`` for such layouts.

    Parameters
    ----------
    threads : int, optional
        An explicit thread count; wins over everything.
    environ : mapping, optional
        The environment (default ``os.environ``): ``HPC_PT_THREADS`` pins the count when ``threads`` is
        None; the launcher variables of :func:`ranks_on_node` and ``SLURM_CPUS_PER_TASK`` are read too.
    cgroup_root, proc_cgroup : str, optional
        As in :func:`cpu_budget`.
    affinity : int, optional
        As in :func:`cpu_budget`.

    Returns
    -------
    int
        At least 1.

    Raises
    ------
    InputError
        When ``threads`` or ``HPC_PT_THREADS`` is not a positive integer.
    """
    return _threads_and_source(threads, environ, cgroup_root=cgroup_root, proc_cgroup=proc_cgroup,
                               affinity=affinity)[0]


def _openmp_loaded() -> bool | None:
    """Whether an OpenMP runtime is mapped into this process already (Linux), None when unknown."""
    try:
        with open("/proc/self/maps") as fh:
            maps = fh.read()
    except OSError:
        return None
    return any(lib in maps for lib in ("libgomp", "libomp", "libiomp"))


def apply_thread_policy(threads: int, environ=os.environ) -> dict:
    """Set the thread environment of this process (and of the children it starts), leaving the user's.

    Sets, each only when the user has not: ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of
    spinning while they wait), ``HPC_PT_FFT_WORKERS`` (the ``scipy.fft`` workers of
    :func:`hpc_pt.backend.fft2c`; its default -1 means every core) and ``OMP_NUM_THREADS`` (which the
    backend's finufft plans take as their thread count for large transforms). ``HPC_PT_NUFFT_THREADS`` is
    never set: it would override the backend's one-thread rule for small transforms (deterministic NUFFT
    pairs give the same bits whatever it is, :class:`hpc_pt.backend.NufftPair2D`).

    Call it before finufft is imported: OpenMP reads ``OMP_WAIT_POLICY`` and ``OMP_NUM_THREADS`` once,
    when its library loads (the report's ``openmp_loaded_before`` says whether that had happened).

    Parameters
    ----------
    threads : int
        Threads per rank (:func:`threads_per_rank`), at least 1.
    environ : mutable mapping, optional
        The environment to update. Default ``os.environ`` (changes reach C libraries loaded afterwards and
        child processes).

    Returns
    -------
    dict
        ``{"threads": n, "set": {var: value}, "user": {var: value}, "default": {var: why}, "openmp_loaded_before":
        bool or None}``: what this call set, what it left as the user had it, what it left to the library
        default, and (for ``os.environ`` only, else None) whether an OpenMP runtime was already loaded, in
        which case the variables reach only child processes.

    Raises
    ------
    InputError
        When ``threads`` is not a positive integer.
    """
    threads = _count("threads", threads, "a positive integer (threads per rank)")
    report = {"threads": threads, "set": {}, "user": {}, "default": {},
              "openmp_loaded_before": _openmp_loaded() if environ is os.environ else None}
    wanted = {"OMP_WAIT_POLICY": "PASSIVE", "HPC_PT_FFT_WORKERS": str(threads), "OMP_NUM_THREADS": str(threads)}
    for var, value in wanted.items():
        if environ.get(var) is not None:
            report["user"][var] = environ[var]
        else:
            environ[var] = value
            report["set"][var] = value
    if environ.get("HPC_PT_NUFFT_THREADS") is not None:
        report["user"]["HPC_PT_NUFFT_THREADS"] = environ["HPC_PT_NUFFT_THREADS"]
    else:
        report["default"]["HPC_PT_NUFFT_THREADS"] = ("unset: OMP_NUM_THREADS for large transforms, 1 below 2^18 "
                                                     "modes x batch")
    return report


@dataclass(frozen=True)
class Execution:
    """Where and how one process computes: built once, handed to the forward model and the solvers.

    Parameters
    ----------
    device : {"cpu", "gpu"}, optional
        The array backend (NumPy or CuPy), as ``--device`` names it. Default "cpu".
    dtype : {"complex64", "complex128"}, optional
        Working precision of the complex arrays; anything :class:`numpy.dtype` reads as one of them is
        stored by name. Default "complex64".
    frame_batch : int or None, optional
        Frames per far-field batch (None: the solvers' default, 16 MiB of complex64 far field). Default None.
    threads : int, optional
        CPU threads of this process (FFT workers, NUFFT threads). Default 1.

    Raises
    ------
    InputError
        (a :class:`ValueError`) naming the bad field and the allowed values.
    """

    device: str = "cpu"
    dtype: str = "complex64"
    frame_batch: int | None = None
    threads: int = 1

    def __post_init__(self):
        if self.device not in DEVICES:
            raise InputError(f"device={self.device!r} must be one of {', '.join(DEVICES)}")
        try:
            name = np.dtype(self.dtype).name
        except TypeError:
            name = None
        if name not in DTYPES:
            raise InputError(f"dtype={self.dtype!r} must be complex64 or complex128")
        object.__setattr__(self, "dtype", name)
        if self.frame_batch is not None:
            batch = _count("frame_batch", self.frame_batch, "None or a positive integer")
            object.__setattr__(self, "frame_batch", batch)
        object.__setattr__(self, "threads", _count("threads", self.threads, "a positive integer"))

    @classmethod
    def from_environment(cls, device: str = "cpu", dtype: str = "complex64", frame_batch: int | None = None,
                         threads: int | None = None, environ=None) -> "Execution":
        """The execution of this process: the given settings, with threads from :func:`threads_per_rank`.

        Parameters
        ----------
        device : {"cpu", "gpu"}, optional
            Default "cpu".
        dtype : {"complex64", "complex128"}, optional
            Default "complex64".
        frame_batch : int or None, optional
            Default None.
        threads : int, optional
            Threads per rank; default: ``HPC_PT_THREADS`` if set, else this rank's share of the CPUs.
        environ : mapping, optional
            The environment to read. Default ``os.environ``.

        Returns
        -------
        Execution
            The validated value.
        """
        n = threads_per_rank(threads, environ)
        return cls(device=device, dtype=dtype, frame_batch=frame_batch, threads=n)

    def describe(self, environ=None) -> dict:
        """The settings and where the thread count would come from, for provenance (JSON-ready).

        Parameters
        ----------
        environ : mapping, optional
            The environment to read. Default ``os.environ``.

        Returns
        -------
        dict
            ``device``, ``dtype``, ``frame_batch``, ``threads``; ``cpu_budget`` and ``cpu_budget_source``
            (:func:`cpu_budget`), ``ranks_on_node``, ``threads_default`` and ``threads_default_source`` (what
            :func:`threads_per_rank` picks now), and the current values of the thread variables
            (``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS``, ``HPC_PT_THREADS``, ``HPC_PT_FFT_WORKERS``,
            ``HPC_PT_NUFFT_THREADS``; None when unset).
        """
        env = os.environ if environ is None else environ
        budget, source = cpu_budget(env)
        default, default_source = _threads_and_source(None, env)
        return {
            "device": self.device, "dtype": self.dtype, "frame_batch": self.frame_batch, "threads": self.threads,
            "cpu_budget": budget, "cpu_budget_source": source, "ranks_on_node": ranks_on_node(env),
            "threads_default": default, "threads_default_source": default_source,
            "env": {k: env.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", THREADS_ENV,
                                            "HPC_PT_FFT_WORKERS", "HPC_PT_NUFFT_THREADS")},
        }
