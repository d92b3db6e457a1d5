"""Local Dask clusters and clients for the rank tasks."""
from __future__ import annotations

from contextlib import contextmanager

from ...errors import InputError
from .comm import load_distributed
from .spmd import _QuietNannyRestart

def _dashboard_url(client, cluster=None) -> str | None:
    link = getattr(cluster, "dashboard_link", None) if cluster is not None else None
    try:
        link = link or client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing on the scheduler)
        return None
    return link or None


def local_cluster(workers: int, **kwargs):
    """A ``LocalCluster`` of ``workers`` single-threaded worker processes on 127.0.0.1.

    Its dashboard is on a free port (``cluster.dashboard_link`` has the real one). The workers do not get
    Dask's default ``MALLOC_TRIM_THRESHOLD_=65536``: that fixes glibc's mmap threshold at 128 kB, so every
    temporary array of a solver iteration is mapped and faulted in afresh (APT on 48^3: 1.5x slower per
    iteration, measured with MPI ranks given the same variable). Set the variable yourself to get it back.

    Parameters
    ----------
    workers : int
        Number of worker processes.
    **kwargs
        Further ``distributed.LocalCluster`` options; they override the defaults above.

    Returns
    -------
    distributed.LocalCluster
        The running cluster (the caller closes it).

    Raises
    ------
    BackendUnavailable
        When dask.distributed is not installed.
    """
    import dask

    distributed = load_distributed()
    opts = {"n_workers": int(workers), "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0", **kwargs}
    env = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    env.update({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in worker_thread_env(int(workers)).items()})
    with dask.config.set(env):
        return distributed.LocalCluster(**opts)


def worker_thread_env(workers: int, environ=None) -> dict:
    """The execution policy's thread variables for each of ``workers`` local worker processes (set before
    they spawn, so OpenMP reads them at load): this process's CPU budget divided among the workers, OpenMP
    waiting passively; a variable the user set is left out (the workers inherit it).

    Parameters
    ----------
    workers : int
        Worker processes on this node.
    environ : Mapping, optional
        The environment to read (default ``os.environ``).

    Returns
    -------
    dict
        Variable -> value for the workers' environment.
    """
    import os

    from ...execution import apply_thread_policy, cpu_budget

    environ = os.environ if environ is None else environ
    threads = max(1, cpu_budget(environ)[0] // max(1, int(workers)))
    wanted: dict = {}
    apply_thread_policy(threads, wanted)  # what the policy would set in an empty environment
    return {k: v for k, v in wanted.items() if environ.get(k) is None}


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, client=None):
    """``(client, dashboard URL)``: the given client, a client of ``scheduler``, or one of a fresh local cluster.

    The given ``client``; or a ``Client`` of the scheduler at ``scheduler``; or a fresh ``LocalCluster`` of
    ``workers`` single-threaded worker processes on 127.0.0.1 with its dashboard on a free port (closed on
    exit).

    Parameters
    ----------
    workers : int, optional
        With ``scheduler``: wait (60 s) for that many workers; without: the local cluster's size.
    scheduler : str, optional
        Address of a running scheduler (``tcp://HOST:PORT``).
    client : distributed.Client, optional
        A client to use as is (not closed on exit).

    Yields
    ------
    client : distributed.Client
        The client.
    dashboard : str or None
        The dashboard's URL, None without one.

    Raises
    ------
    InputError
        When the scheduler cannot be reached, or neither ``workers`` nor ``scheduler`` nor ``client`` is given.
    BackendUnavailable
        When dask.distributed is not installed.
    """
    distributed = load_distributed()
    if client is not None:
        yield client, _dashboard_url(client)
        return
    if scheduler:
        try:
            c = distributed.Client(scheduler, timeout="30s")
        except OSError as e:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({e}); check --scheduler") from None
        try:
            if workers:
                c.wait_for_workers(int(workers), timeout=60)
            yield c, _dashboard_url(c)
        finally:
            c.close()
        return
    if not workers:
        raise InputError("the Dask backend needs --workers K (a local cluster) or --scheduler tcp://HOST:PORT")
    import logging

    restart_filter = _QuietNannyRestart()
    logging.getLogger("distributed.nanny").addFilter(restart_filter)
    try:
        cluster = local_cluster(int(workers))
    except BaseException:
        logging.getLogger("distributed.nanny").removeFilter(restart_filter)
        raise
    try:
        with distributed.Client(cluster) as c:
            c.wait_for_workers(int(workers), timeout=120)
            yield c, _dashboard_url(c, cluster)
    finally:
        # the job is over: a worker process that takes more than the nanny's 4 s to exit (a loaded machine
        # tearing down NumPy/SciPy/HDF5) is killed, which is harmless here and not worth a warning
        nanny_log = logging.getLogger("distributed.nanny")
        level = nanny_log.level
        nanny_log.setLevel(logging.ERROR)
        try:
            cluster.close()
        finally:
            nanny_log.setLevel(level)
            nanny_log.removeFilter(restart_filter)


__all__ = ["dask_client", "local_cluster"]
