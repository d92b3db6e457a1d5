"""Dask implementation of :class:`~hpc_pt.parallel.base.Comm`, and the runner that starts it.

SPMD on Dask workers, like MPI ranks: :func:`run_spmd` submits one long-running task per worker ("rank" r
of P, key ``hpc-pt-<name>-rank<r>-<token>``, pinned to its worker with ``allow_other_workers=False``), and
every rank task calls the very same function an MPI rank calls (:func:`run_dask`:
:func:`hpc_pt.pipeline.reconstruct` with a :class:`DaskComm`), so solvers do not know which backend runs
them. A rank task keeps its worker's thread slot for the whole run (it does not ``secede``): with
``threads_per_worker=1`` a worker *is* a rank, and nothing else is scheduled beside it.

Transport. The rank tasks open a full mesh of connections among themselves at start-up on Dask's own
communication layer (:mod:`hpc_pt.parallel.dask_mesh`: ``distributed.comm`` on the worker's address scheme,
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

import os
import struct
import time
import uuid
from contextlib import contextmanager, nullcontext

import numpy as np

from ..errors import BackendUnavailable, InputError
from .base import Comm, split_evenly
from .dask_mesh import POLL_S, RankAborted, byte_view  # noqa: F401 (POLL_S re-exported)

INSTALL_HINT = 'pip install ".[dask]" from the hpc-pt checkout'

#: allreduce of arrays at least this large on more than 2 ranks: reduce-scatter + all-gather
RS_BYTES = 1 << 16
_F64 = struct.Struct("<d")
_COMM_LABEL = {"alltoallv": "transpose", "allreduce": "allreduce", "scalar": "allreduce-scalar",
               "bcast": "bcast"}


def load_distributed():
    """``distributed``, imported on first use, with a one-line error naming the install command."""
    try:
        import distributed
    except ImportError as e:
        raise BackendUnavailable(f"the Dask backend needs dask.distributed ({e}); install it with "
                                 f"{INSTALL_HINT}") from None
    return distributed


class JobAborted(RuntimeError):
    """Raised by :meth:`DaskComm.abort` on the rank that aborts the job."""


class WorkerLost(RuntimeError):
    """A rank's Dask worker left the cluster while the job ran (its process was killed or died, or it lost
    contact with the scheduler). Raised by :func:`run_spmd` once the other ranks have stopped, with
    ``rank`` (the first lost rank), ``ranks`` (every lost rank), ``worker`` (its address), ``pid`` and
    ``cause`` (the nanny's account, e.g. ``killed by signal 9 (SIGKILL)``, or None) set."""

    def __init__(self, message: str, *, rank: int, ranks: list, worker: str, pid, cause):
        super().__init__(message)
        self.rank, self.ranks, self.worker, self.pid, self.cause = rank, list(ranks), worker, pid, cause


_CONTEXT_METER = []


def _meter(label: str):
    """``context_meter.meter(label)`` (Dask's Fine Performance Metrics), or nothing on an old distributed."""
    if not _CONTEXT_METER:
        try:
            from distributed.metrics import context_meter
        except ImportError:
            context_meter = None
        _CONTEXT_METER.append(context_meter)
    cm = _CONTEXT_METER[0]
    return cm.meter(label) if cm is not None else nullcontext()


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def _abort_name(token: str) -> str:
    return f"hpc-pt-abort-{token}"


class DaskComm(Comm):
    """Collectives between the rank tasks of one :func:`run_spmd` job (create it inside a rank task).

    ``token`` names the job (its abort flag and address board), ``rank``/``size`` as in MPI. The
    constructor builds the mesh (collective: every rank of the job must construct its DaskComm);
    ``connect_timeout`` bounds that. ``allreduce_sum`` and ``bcast`` of arrays need the same shape and
    dtype on every rank, as with :class:`~hpc_pt.parallel.mpi.MPIComm`; CuPy arrays go through host memory.
    """

    name = "dask"

    def __init__(self, token: str, rank: int, size: int, connect_timeout: float = 120.0):
        super().__init__()
        self.token, self.rank, self.size = str(token), int(rank), int(size)
        self._mesh = None
        self._seq = 0
        self._client = None
        self._event = None
        self._closed = False
        if self.size > 1:
            self._connect(float(connect_timeout))

    # -- set-up and tear-down ---------------------------------------------------------------------------
    def _dask(self):
        if self._client is None:
            distributed = load_distributed()
            self._client = distributed.get_client()
            self._event = distributed.Event(_abort_name(self.token), client=self._client)
        return self._client

    def _aborted(self) -> bool:
        try:
            self._dask()
            return bool(self._event.is_set())
        except Exception:  # noqa: BLE001 - no scheduler any more: the job is gone
            return True

    def _check_abort(self, what: str) -> None:
        if self._aborted():
            raise RankAborted(f"rank {self.rank} of {self.size}: the job was aborted (another rank failed) "
                              f"while {what}")

    def _connect(self, timeout: float) -> None:
        from .dask_mesh import Mesh

        self._mesh = Mesh(self.token, self.rank, self.size, self._dask(), self._check_abort, timeout=timeout)

    def close(self) -> None:
        """Close the connections (peers blocked on this rank see them closed)."""
        self._closed = True
        mesh, self._mesh = self._mesh, None
        if mesh is not None:
            mesh.close()

    def mark_failed(self) -> None:
        """Tell every rank that this one failed: close the connections, set the job's abort flag."""
        self.close()
        if self.size > 1:
            try:
                self._dask()
                self._event.set()
            except Exception:  # noqa: BLE001 - the scheduler is gone: the closed comms told the peers already
                pass

    def abort(self, code: int = 2) -> None:
        """Stop every rank of the job: mark the failure (the others raise :class:`RankAborted` at their
        next collective) and raise :class:`JobAborted` here (a Dask task must not ``SystemExit``: that
        would take its worker down)."""
        self.mark_failed()
        raise JobAborted(f"rank {self.rank} of {self.size} aborted the job (code {code})")

    def _exchange(self, sends: dict, recvs: dict, what: str) -> None:
        """One message to each peer in ``sends`` and one from each peer in ``recvs`` (exactly
        ``len(recvs[peer])`` bytes into that writable byte view), all at once (:meth:`Mesh.exchange
        <hpc_pt.parallel.dask_mesh.Mesh.exchange>`); messages are numbered, so every rank must call the
        collectives in the same order."""
        if self._closed or self._mesh is None:
            raise RankAborted(f"rank {self.rank} of {self.size}: communicator closed")
        seq = self._seq
        self._seq += 1
        self._mesh.exchange(seq, sends, recvs, what)

    @contextmanager
    def _timed(self, kind: str, nbytes: int):
        t0 = time.perf_counter()
        with _meter(_COMM_LABEL[kind]):
            yield
        self.stats.add(kind, nbytes, time.perf_counter() - t0)

    def _sum_in_rank_order(self, parts: list):
        acc = np.array(parts[0], copy=True)
        for p in parts[1:]:
            acc += p
        return acc

    # -- collectives -----------------------------------------------------------------------------------
    def allreduce_sum(self, x):
        gpu = _is_cupy(x)
        if gpu:
            import cupy

            buf = np.ascontiguousarray(cupy.asnumpy(x))
        else:
            buf = np.array(x, copy=True, order="C")
        if self.size > 1:
            with self._timed("allreduce", buf.nbytes):
                buf = self._allreduce(buf)
        if gpu:
            import cupy

            return cupy.asarray(buf)
        return buf if isinstance(x, np.ndarray) else buf[()]

    def _allreduce(self, buf: np.ndarray) -> np.ndarray:
        r, P = self.rank, self.size
        flat = buf.reshape(-1)
        if P == 2 or buf.nbytes < RS_BYTES:  # every rank gets every part, sums in rank order
            parts = [None] * P
            parts[r] = flat
            recvs = {}
            for s in range(P):
                if s != r:
                    parts[s] = np.empty_like(flat)
                    recvs[s] = byte_view(parts[s])
            self._exchange({s: byte_view(flat) for s in range(P) if s != r}, recvs, "all-reducing an array")
            return self._sum_in_rank_order(parts).reshape(buf.shape)
        # reduce-scatter (chunk s summed on rank s in rank order) + all-gather
        bounds = [split_evenly(flat.size, P, s) for s in range(P)]
        a, b = bounds[r]
        parts = [flat[a:b] if s == r else np.empty(b - a, dtype=flat.dtype) for s in range(P)]
        self._exchange({s: byte_view(flat[bounds[s][0]:bounds[s][1]]) for s in range(P)
                        if s != r and bounds[s][1] > bounds[s][0]},
                       {s: byte_view(parts[s]) for s in range(P) if s != r and b > a},
                       "all-reducing an array (reduce-scatter)")
        mine = self._sum_in_rank_order(parts)
        self._exchange({s: byte_view(mine) for s in range(P) if s != r and b > a},
                       {s: memoryview(flat[bounds[s][0]:bounds[s][1]].view(np.uint8)) for s in range(P)
                        if s != r and bounds[s][1] > bounds[s][0]},
                       "all-reducing an array (all-gather)")
        flat[a:b] = mine
        return buf

    def sum_scalar(self, v: float) -> float:
        v = float(v)
        if self.size == 1:
            return v
        r, P = self.rank, self.size
        with self._timed("scalar", 8):
            mine = _F64.pack(v)
            bufs = [bytearray(8) for _ in range(P)]
            self._exchange({s: mine for s in range(P) if s != r},
                           {s: memoryview(bufs[s]) for s in range(P) if s != r}, "summing a scalar")
        total = 0.0
        for s in range(P):  # rank order, identical on every rank
            total += v if s == r else _F64.unpack(bufs[s])[0]
        return total

    def alltoallv(self, send: list, recv_counts: list[int]) -> list:
        """Every rank pair's buffers at once; empty buffers are not sent."""
        r, P = self.rank, self.size
        if len(send) != P or len(recv_counts) != P:
            raise ValueError(f"alltoallv needs one buffer and one count per rank ({P})")
        dtype = np.result_type(*[b.dtype for b in send]) if send else np.dtype(np.float64)
        bufs = [np.ascontiguousarray(b, dtype=dtype).reshape(-1) for b in send]
        if bufs[r].size != int(recv_counts[r]):
            raise ValueError(f"alltoallv: rank {r} sends {bufs[r].size} elements to itself but expects "
                             f"{recv_counts[r]}")
        out = [bufs[r].copy() if s == r else np.empty(int(recv_counts[s]), dtype=dtype) for s in range(P)]
        if P > 1:
            sent = int(sum(b.nbytes for s, b in enumerate(bufs) if s != r))
            with self._timed("alltoallv", sent):
                self._exchange({s: byte_view(bufs[s]) for s in range(P) if s != r and bufs[s].size},
                               {s: byte_view(out[s]) for s in range(P) if s != r and out[s].size},
                               "exchanging buffers (alltoallv)")
        return out

    def _bcast_buffer(self, buf: np.ndarray, root: int) -> None:
        with _meter(_COMM_LABEL["bcast"]):
            self._bcast_buf(buf, root)

    def _bcast_buf(self, buf: np.ndarray, root: int) -> None:
        r, P = self.rank, self.size
        if not 0 <= root < P:
            raise ValueError(f"bcast root {root} is not a rank of {P}")
        view = byte_view(buf) if buf.nbytes else memoryview(b"")
        if r == root:
            self._exchange({s: view for s in range(P) if s != r}, {}, f"broadcasting from rank {root}")
        else:
            self._exchange({}, {root: memoryview(buf.reshape(-1).view(np.uint8))}, f"broadcasting from rank {root}")

    def barrier(self) -> None:
        if self.size > 1:
            self._exchange({s: b"" for s in range(self.size) if s != self.rank},
                           {s: memoryview(bytearray(0)) for s in range(self.size) if s != self.rank},
                           "in a barrier")

    @contextmanager
    def phase(self, name: str):
        """Time per label in :attr:`stats` (as every Comm) and the same label as an activity on the Dask
        dashboard's Fine Performance Metrics page."""
        with _meter(name), super().phase(name):
            yield


# ------------------------------------------------------------------------------------------------------
# running rank tasks
# ------------------------------------------------------------------------------------------------------

class _QuietRankFailures:
    """Logging filter for a worker: drop distributed's "Compute Failed" report of a rank task (the client
    re-raises that error itself; the report would repeat it once per rank)."""

    def filter(self, record) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        return not (msg.startswith("Compute Failed") and "hpc-pt-" in msg)


class _QuietNannyRestart:
    """Logging filter for the nannies of a cluster that lives only for one job (``--workers K``): drop their
    "Restarting worker" warning; a worker that died during the job ends it with :class:`WorkerLost`,
    whose one line says which rank and how."""

    def filter(self, record) -> bool:
        try:
            return not record.getMessage().startswith("Restarting worker")
        except Exception:  # noqa: BLE001
            return True


def _quiet_worker_log() -> None:
    import logging

    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _QuietRankFailures) for f in log.filters):
        log.addFilter(_QuietRankFailures())


def _rank_entry(fn, token, rank, size, connect_timeout, kwargs, *args):
    """Body of rank task ``rank``: build the mesh, run ``fn(comm, *args, **kwargs)``, tell the other ranks
    if it fails."""
    _quiet_worker_log()
    comm = None
    try:
        comm = DaskComm(token, rank, size, connect_timeout=connect_timeout)
        return fn(comm, *args, **kwargs)
    except BaseException as e:
        if not getattr(e, "secondary", False):
            if comm is not None:
                comm.mark_failed()
            elif size > 1:
                try:
                    distributed = load_distributed()
                    distributed.Event(_abort_name(token), client=distributed.get_client()).set()
                except Exception:  # noqa: BLE001
                    pass
        try:
            e.rank = rank
        except Exception:  # noqa: BLE001 - an exception type without a __dict__
            pass
        raise
    finally:
        if comm is not None:
            comm.close()


#: seconds between two looks of :func:`run_spmd` at its rank tasks and at the workers the scheduler lost
WATCH_S = 0.25


def _scheduler_workers(client) -> dict:
    """The scheduler's record of every worker: ``{address: {"name", "pid", "nanny", "host", ...}}``."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # older distributed: every worker by default
        info = client.scheduler_info()
    return dict(info.get("workers", {}))


def _watch_workers(client, addrs: list, lost: dict) -> list:
    """Subscribe to the scheduler's event topic of each worker in ``addrs``: when the scheduler removes one
    (its process died, its nanny unregistered it, or its heartbeats stopped) ``lost[address]`` gets the
    removal's stimulus id. Returns the topics, for :func:`_unwatch_workers`."""
    topics = []
    for addr in addrs:
        def on_event(event, addr=addr):
            msg = event[1] if isinstance(event, (tuple, list)) and len(event) == 2 else event
            if isinstance(msg, dict) and msg.get("action") == "remove-worker":
                lost.setdefault(addr, str(msg.get("stimulus_id", "")))

        try:
            client.subscribe_topic(addr, on_event)
            topics.append(addr)
        except Exception:  # noqa: BLE001 - no events on this scheduler: the direct check below remains
            break
    return topics


def _unwatch_workers(client, topics: list) -> None:
    for t in topics:
        try:
            client.unsubscribe_topic(t)
        except Exception:  # noqa: BLE001 - bookkeeping only
            pass


#: the nanny's log line for a worker process that ended (distributed.nanny.Nanny._death_message)
_DEATH = "Worker process {pid} "


def _death_cause(client, nanny, pid, wait: float = 1.5) -> str | None:
    """The nanny's account of how worker process ``pid`` ended (``killed by signal 9 (SIGKILL)``,
    ``exited with status 1``), read from the nanny's log; None without a nanny or when it does not answer
    within ``wait`` seconds (retried briefly: the scheduler may hear of the loss before the nanny)."""
    if not nanny or not pid:
        return None
    import re
    import signal

    pattern = re.compile(re.escape(_DEATH.format(pid=pid)) + r"(.*)$")
    deadline = time.monotonic() + wait
    async def nanny_log():  # the scheduler forgot the worker (and its nanny): ask the nanny itself
        return await client.rpc(nanny).get_logs(n=200)

    while True:
        try:
            logs = client.sync(nanny_log, callback_timeout=max(0.2, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - the nanny is gone too, or slow: no cause to add
            return None
        for _level, line in logs or []:  # newest first
            m = pattern.search(str(line))
            if m:
                cause = m.group(1).strip()
                sig = re.fullmatch(r"was killed by signal (\d+)", cause)
                if sig:
                    try:
                        cause = f"killed by signal {sig.group(1)} ({signal.Signals(int(sig.group(1))).name})"
                    except ValueError:
                        cause = f"killed by signal {sig.group(1)}"
                return cause.removeprefix("was ")
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _worker_lost(client, gone: list, addrs: list, known: dict, lost: dict, size: int) -> WorkerLost:
    """The :class:`WorkerLost` for the ranks in ``gone`` (their workers left the scheduler)."""
    r = gone[0]
    addr = addrs[r]
    rec = known.get(addr, {})
    pid = rec.get("pid")
    cause = _death_cause(client, rec.get("nanny"), pid)
    who = f"Dask worker {addr}" + (f" (pid {pid})" if pid else "")
    why = cause or "its process ended or it lost contact with the scheduler"
    more = "" if len(gone) == 1 else f" (ranks {', '.join(map(str, gone))} all lost their workers)"
    return WorkerLost(f"rank {r} of {size}: its {who} died while the job ran: {why}{more}; the other ranks "
                      "stopped", rank=r, ranks=gone, worker=addr, pid=pid, cause=cause)


def worker_addresses(client, workers: int | list | None = None) -> list[str]:
    """Addresses of the workers that become ranks 0..K-1: the first ``workers`` (an int; all when None)
    of the scheduler's workers ordered by name, or the given list of addresses."""
    if isinstance(workers, (list, tuple)):
        return [str(w) for w in workers]
    ws = _scheduler_workers(client)

    def order(item):
        addr, w = item
        name = w.get("name", addr)
        return (0, int(name), addr) if str(name).isdigit() else (1, str(name), addr)

    addrs = [a for a, _ in sorted(ws.items(), key=order)]
    if workers is None:
        if not addrs:
            raise InputError("the Dask scheduler has no workers; start some (dask worker SCHEDULER_ADDRESS)")
        return addrs
    k = int(workers)
    if k < 1:
        raise InputError(f"--workers {k}: need at least one worker")
    if k > len(addrs):
        raise InputError(f"asked for {k} Dask workers but the scheduler has {len(addrs)}; start more or "
                         f"ask for at most {len(addrs)}")
    return addrs[:k]


def run_spmd(client, fn, *args, workers: int | list | None = None, name: str = "spmd",
             connect_timeout: float = 120.0, grace: float = 10.0, **kwargs) -> list:
    """Run ``fn(comm, *args, **kwargs)`` as one task per worker (SPMD, ``comm`` a :class:`DaskComm`) and
    return every rank's result, by rank. ``fn`` and its arguments must pickle (Dask futures among ``args``
    are resolved on the workers).

    If a rank raises, every rank is stopped and the first error that is not a consequence of another
    rank's (``secondary``) is re-raised here, with ``rank`` set on it. If a rank's worker leaves the
    cluster while the job runs (its process killed or crashed; the scheduler's ``remove-worker`` event on
    that worker's topic, or its absence from the scheduler once a peer saw its connection drop), the job's
    abort flag is raised at once, the other ranks stop and :class:`WorkerLost` is raised, naming the rank,
    the worker, its pid and the nanny's account of its end. Ranks still running ``grace`` seconds after
    the first error or loss are cancelled, as are the lost ranks' tasks, so the workers (and a nanny's
    restarted worker) are free for the next job."""
    distributed = load_distributed()
    addrs = worker_addresses(client, workers)
    size = len(addrs)
    token = uuid.uuid4().hex
    event = distributed.Event(_abort_name(token), client=client)
    known = _scheduler_workers(client)
    try:  # the pids, to find a lost worker's end in its nanny's log
        for a, pid in client.run(os.getpid, workers=addrs).items():
            known.setdefault(a, {})["pid"] = pid
    except Exception:  # noqa: BLE001 - a worker already gone: the job fails below, just without its pid
        pass
    lost: dict[str, str] = {}
    topics = _watch_workers(client, addrs, lost)
    futures = [client.submit(_rank_entry, fn, token, r, size, connect_timeout, kwargs, *args,
                             key=f"hpc-pt-{name}-rank{r}-{token[:12]}", workers=[a], allow_other_workers=False,
                             pure=False)
               for r, a in enumerate(addrs)]
    rank_of = {f.key: r for r, f in enumerate(futures)}
    errors = []
    try:
        pending, failed_at, checked = set(futures), None, False
        while pending:
            try:
                done, pending = distributed.wait(pending, timeout=WATCH_S, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = ()
            errors.extend(f for f in done if f.status != "finished")
            if errors and not checked and not lost and all(
                    f.status != "error" or getattr(f.exception(), "secondary", False) for f in errors):
                # only "a peer is gone" so far: is a rank's worker missing from the scheduler?
                checked = True
                present = _scheduler_workers(client)
                lost.update({a: "not among the scheduler's workers" for a in addrs if a not in present})
            gone = [r for r, a in enumerate(addrs) if a in lost]
            if failed_at is None and (errors or gone):
                failed_at = time.monotonic()
                event.set()  # every rank stops at its next collective (or within POLL_S inside one)
            if failed_at is None:
                continue
            if {rank_of[f.key] for f in pending} <= set(gone):
                break  # what is left ran on lost workers: it can never finish
            if time.monotonic() - failed_at > grace:
                break  # stragglers: cancelled below
        gone = [r for r, a in enumerate(addrs) if a in lost]
        if errors or gone:
            client.cancel([f for f in futures if f.status not in ("finished", "error")])
            primary = next((f for f in errors if f.status == "error"
                            and not getattr(f.exception(), "secondary", False)), None)
            if primary is not None:
                primary.result()  # re-raises the rank's exception (with its traceback)
            if gone:
                raise _worker_lost(client, gone, addrs, known, lost, size)
            errors[0].result()
            raise RuntimeError(f"a rank task ended as {errors[0].status!r}")
        return [f.result() for f in futures]
    except BaseException:
        try:
            event.set()
            client.cancel(futures)
        except Exception:  # noqa: BLE001
            pass
        raise
    finally:
        _unwatch_workers(client, topics)
        try:
            event.clear()  # drops the scheduler's record of the flag
        except Exception:  # noqa: BLE001
            pass


def _dashboard_url(client, cluster=None) -> str | None:
    link = getattr(cluster, "dashboard_link", None) if cluster is not None else None
    try:
        link = link or client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing on the scheduler)
        return None
    return link or None


def local_cluster(workers: int, **kwargs):
    """A ``LocalCluster`` of ``workers`` single-threaded worker processes on 127.0.0.1, dashboard on a free
    port (``cluster.dashboard_link`` has the real one). The workers do not get Dask's default
    ``MALLOC_TRIM_THRESHOLD_=65536``: that fixes glibc's mmap threshold at 128 kB, so every temporary
    array of a solver iteration is mapped and faulted in afresh (APT on 48^3: 1.5x slower per iteration,
    measured with MPI ranks given the same variable). Set the variable yourself to get it back."""
    import dask

    distributed = load_distributed()
    opts = {"n_workers": int(workers), "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0", **kwargs}
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return distributed.LocalCluster(**opts)


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, client=None):
    """``(client, dashboard URL)``: the given client; or a ``Client`` of the scheduler at ``scheduler``;
    or a fresh ``LocalCluster`` of ``workers`` single-threaded worker processes on 127.0.0.1 with its
    dashboard on a free port (closed on exit)."""
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


def _plain(v):
    try:
        return v.item() if hasattr(v, "item") else v
    except (TypeError, ValueError):
        return float(v)


class _ForwardProgress:
    """Rank 0's ``progress`` on a worker: every call (a row, a status line, a phase start; see
    :mod:`hpc_pt.progress`) goes to the client as one Dask event ``{"call": name, "args": [...],
    "kwargs": {...}}``, where :func:`_replay_progress` makes the same call on the client's reporter."""

    def __init__(self, worker, topic):
        self.worker, self.topic, self.events = worker, topic, 0

    def _send(self, name, *args, **kwargs):
        self.worker.log_event(self.topic, {"call": name, "args": [_plain(a) for a in args],
                                           "kwargs": {str(k): _plain(v) for k, v in kwargs.items()}})
        self.events += 1

    def __call__(self, row):
        self._send("row", {str(k): _plain(v) for k, v in row.items()})

    def status(self, text=None, ok=True):
        self._send("status", text, ok=ok)

    def start(self, label, total, **kwargs):
        self._send("start", label, total, **kwargs)


def _replay_progress(progress, msg) -> None:
    """Make the call a :class:`_ForwardProgress` event describes on the client's ``progress`` (rows on
    any callable; status lines and phases only where ``progress`` has those methods)."""
    name = msg.get("call")
    if name == "row":
        progress(*msg["args"])
    elif name in ("status", "start") and hasattr(progress, name):
        getattr(progress, name)(*msg["args"], **msg["kwargs"])


def _reconstruct_rank(comm, data, out, settings, progress_topic):
    """One rank of :func:`run_dask`: the same call an MPI rank makes."""
    from ..pipeline import reconstruct

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
    from ..data import Dataset

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


__all__ = ["INSTALL_HINT", "DaskComm", "JobAborted", "RankAborted", "WorkerLost", "dask_client",
           "load_distributed", "local_cluster", "run_dask", "run_spmd", "worker_addresses"]
