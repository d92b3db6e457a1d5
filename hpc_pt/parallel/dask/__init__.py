"""Dask implementation of :class:`~hpc_pt.parallel.base.Comm`, and the SPMD runner that starts its ranks.

Modules: :mod:`.transport` (the point-to-point mesh on ``distributed.comm``), :mod:`.comm` (:class:`DaskComm`,
the collectives), :mod:`.spmd` (:func:`run_spmd`: rank tasks, failures, lost workers, progress forwarding),
:mod:`.cluster` (local clusters and clients). :func:`hpc_pt.dask_run.run_dask`, which runs the pipeline on
these ranks, lives above the pipeline layer.

SPMD on Dask workers, like MPI ranks: :func:`run_spmd` submits one long-running task per worker ("rank" r
of P, key ``hpc-pt-<name>-rank<r>-<token>``, pinned to its worker with ``allow_other_workers=False``), and
every rank task calls the very same function an MPI rank calls (:func:`hpc_pt.dask_run.run_dask`:
:func:`hpc_pt.pipeline.reconstruct` with a :class:`DaskComm`), so solvers do not know which backend runs
them. A rank task keeps its worker's thread slot for the whole run (it does not ``secede``): with
``threads_per_worker=1`` a worker *is* a rank, and nothing else is scheduled beside it.

Transport. The rank tasks open a full mesh of connections among themselves at start-up on Dask's own
communication layer (:mod:`hpc_pt.parallel.dask.transport`: ``distributed.comm`` on the worker's address scheme,
with the cluster's ``Security``, so TLS clusters work and are enforced; addresses on a ``distributed.Variable``
board named after the run token). Collectives then move contiguous NumPy buffers worker to worker as raw
frames (no pickling: the comms are opened with ``deserialize=False``), sending to and receiving from all
peers at once, so no ordering can deadlock. Every message carries its collective's sequence number and
size, which the receiver checks, so ranks that call collectives in different orders fail with a clear
error instead of mixing data. Not Dask's own data transfer (futures, ``Queue``, actors): every one of those
goes through the scheduler and costs milliseconds per message, while CG does several scalar reductions per
iteration.

Reductions are deterministic and identical on every rank: the parts are summed in rank order
(``x_0 + x_1 + ...``) on every rank (directly, or for large arrays on more than two ranks by a
reduce-scatter + all-gather over the same order), so every rank takes the same branches in the solvers.

Statistics: :attr:`Comm.stats` counts what :class:`~hpc_pt.parallel.mpi.MPIComm` counts, with the same
formulas (``allreduce``: the array's bytes per call; ``scalar``: 8; ``alltoallv``: bytes sent to other
ranks; ``bcast``: the array's bytes on the root), so byte-count tests are backend independent.

Dashboard. :meth:`DaskComm.phase` and every collective are metered with
``distributed.metrics.context_meter``: the Fine Performance Metrics page shows the solver phases
("ptycho", "project", "cg", "prox") and the communication ("transpose" = ``alltoallv``, "allreduce",
"allreduce-scalar", "bcast") as activities of the task prefix ``hpc-pt-<method>``; the time in a phase
excludes the communication metered inside it. Dask publishes a task's metrics when the task ends, so they
appear once the rank tasks finish.

Failure. A rank that raises closes its connections (every peer's next receive from it fails at once) and sets the ``distributed.Event`` ``hpc-pt-abort-<token>``; a rank blocked in a collective polls
that flag whenever ``POLL_S`` passes without progress. Ranks stopped this way raise :class:`RankAborted`
(``secondary = True``); the client waits for every rank and re-raises the first error that is not
secondary (the original exception, with ``rank`` set on it). A rank whose worker dies (killed, crashed)
cannot say so: its peers see its connections close, and the client, subscribed to the scheduler's event
topic of every rank's worker, raises the abort flag when the scheduler removes that worker, cancels the
lost rank's task and raises :class:`WorkerLost` (rank, worker, pid, and the nanny's account of the end).

Security. The mesh uses the worker's own ``Security``: on a TLS cluster every connection is TLS with the
cluster's certificates, and a peer without them is refused in the TLS handshake; on a plain ``tcp://``
cluster the connections are as open as Dask's own (a connection must still name the run token and an
expected rank in its first message).
"""
from __future__ import annotations

from .cluster import dask_client, local_cluster
from .comm import INSTALL_HINT, DaskComm, JobAborted, WorkerLost, load_distributed
from .spmd import WATCH_S, _ForwardProgress, _replay_progress, run_spmd, worker_addresses  # noqa: F401
from .transport import POLL_S, RankAborted

__all__ = ["INSTALL_HINT", "POLL_S", "WATCH_S", "DaskComm", "JobAborted", "RankAborted", "WorkerLost", "dask_client",
           "load_distributed", "local_cluster", "run_spmd", "worker_addresses"]
