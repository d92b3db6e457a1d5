"""Reconstruction on Dask workers: :func:`run_dask` runs :func:`hpc_pt.pipeline.reconstruct` on one rank per
worker (the ranks and their collectives are :mod:`hpc_pt.parallel.dask`). It sits above the pipeline layer,
so the parallel layer never imports the pipeline."""
from __future__ import annotations

import os
import time
import uuid

from .errors import InputError
from .parallel.dask import dask_client, load_distributed, run_spmd
from .parallel.dask.spmd import _ForwardProgress, _replay_progress

def _reconstruct_rank(comm, data, out, settings, progress_topic):
    """One rank of :func:`run_dask`: the same call an MPI rank makes."""
    from .pipeline import reconstruct

    callback = None
    if progress_topic and comm.rank == 0:
        from distributed import get_worker

        callback = _ForwardProgress(get_worker(), progress_topic)
    res = reconstruct(data, out=out, comm=comm, progress=callback, **settings)
    info = {"rank": comm.rank, "bytes_read": int(res.bytes_read),
            "progress_rows": callback.events if callback is not None else 0,
            "calls": dict(comm.stats.calls), **comm.stats.snapshot()}
    return (res if comm.rank == 0 else None), info


def run_dask(data, out=None, *, workers: int | None = None, scheduler: str | None = None, client=None,
             progress=None, dashboard=True, connect_timeout: float = 120.0, **settings):
    """Reconstruct ``data`` on Dask workers, one rank per worker; returns rank 0's
    :class:`~hpc_pt.pipeline.ReconResult` (rank 0 writes ``out``).

    Where: ``workers=K`` starts a local cluster of K single-threaded worker processes (closed at the end);
    ``scheduler="tcp://HOST:PORT"`` uses the first ``workers`` (default: all) workers of a running
    cluster, which must see ``data`` and ``out`` at the same paths; ``client=`` uses an existing
    ``distributed.Client`` (benchmarks: one cluster for many runs). ``data``: a CXI path (every rank
    reads only its own frames) or a :class:`~hpc_pt.data.Dataset` (scattered to every worker once).
    ``settings``: everything :func:`hpc_pt.pipeline.reconstruct` takes (``config``, ``method``,
    ``iterations``, ``overwrite``, ``command``, ``reader``, ...). ``progress(row)`` is called here, on the
    client, for rank 0's per-iteration rows (forwarded as Dask events), and so are its ``status`` and
    ``start`` methods, when it has them, for rank 0's set-up steps and phases (:mod:`hpc_pt.progress`).
    ``dashboard``: True prints ``dashboard: URL`` on stdout as soon as the cluster is up, a callable gets the URL, False neither.

    The result also carries ``dashboard`` (the URL) and ``rank_info`` (per rank: bytes read and its
    :class:`~hpc_pt.parallel.base.CommStats` snapshot and call counts).
    """
    load_distributed()
    if workers is None and scheduler is None and client is None:
        raise InputError("run_dask needs workers=K (a local cluster), scheduler='tcp://HOST:PORT' or client=")
    from .data import Dataset

    if not isinstance(data, Dataset):
        data = os.path.abspath(os.fspath(data))
    if out is not None:
        out = os.path.abspath(os.fspath(out))
    with dask_client(workers, scheduler, client) as (c, url):
        if dashboard is True:
            print(f"dashboard: {url or 'unavailable (pip install bokeh)'}", flush=True)
        elif callable(dashboard):
            dashboard(url)
        method = getattr(settings.get("config"), "method", None) or settings.get("method") or "recon"
        topic, received = None, [0]
        if progress is not None:
            topic = f"hpc-pt-progress-{uuid.uuid4().hex[:12]}"

            def handler(event):
                received[0] += 1
                _replay_progress(progress, event[1])

            c.subscribe_topic(topic, handler)
        try:
            arg = c.scatter(data, broadcast=True) if isinstance(data, Dataset) else data
            results = run_spmd(c, _reconstruct_rank, arg, out, settings, topic,
                               workers=workers if client is not None or scheduler else None,
                               name=str(method), connect_timeout=connect_timeout)
            if topic is not None:  # the last rows may still be on their way
                expected, t0 = results[0][1]["progress_rows"], time.monotonic()
                while received[0] < expected and time.monotonic() - t0 < 5:
                    time.sleep(0.01)
        finally:
            if topic is not None:
                try:
                    c.unsubscribe_topic(topic)
                except Exception:  # noqa: BLE001
                    pass
    res = results[0][0]
    res.dashboard = url
    res.rank_info = [info for _, info in results]
    return res


__all__ = ["run_dask"]
