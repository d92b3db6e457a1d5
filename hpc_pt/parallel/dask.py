"""Dask implementation of :class:`~hpc_pt.parallel.base.Comm`, and the runner that starts it.

SPMD on Dask workers, like MPI ranks: :func:`run_spmd` submits one long-running task per worker ("rank" r
of P, key ``hpc-pt-<name>-rank<r>-<token>``, pinned to its worker with ``allow_other_workers=False``), and
every rank task calls the very same function an MPI rank calls (:func:`run_dask`:
:func:`hpc_pt.pipeline.reconstruct` with a :class:`DaskComm`), so solvers do not know which backend runs
them. A rank task keeps its worker's thread slot for the whole run (it does not ``secede``): with
``threads_per_worker=1`` a worker *is* a rank, and nothing else is scheduled beside it.

Transport. The rank tasks open a full mesh of TCP connections among themselves at start-up: each rank
listens on the worker's host (port 0), publishes ``host:port`` in a ``distributed.Variable`` named after
the run token, connects to every lower rank (handshake: token and rank) and accepts every higher one.
Collectives then move contiguous NumPy buffers directly worker to worker (``socket.sendmsg`` /
``recv_into`` on non-blocking sockets driven by one ``poll`` loop: every rank sends to and receives from
all its peers at once, so no ordering can deadlock and no array is pickled or copied into a message).
Every message carries a 16-byte header (collective sequence number, byte count) that the receiver checks,
so ranks that call collectives in different orders fail with a clear error instead of mixing data.
Plain sockets rather than ``multiprocessing.connection`` because ``recv_bytes_into`` reads each message
into an intermediate ``BytesIO`` first and cannot wait on several peers at once; rather than Dask's own
data transfer (futures, ``Queue``, actors) because every one of those goes through the scheduler and
costs milliseconds per message, while CG does several scalar reductions per iteration.

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

Failure. A rank that raises closes its sockets (every peer's next receive from it sees end-of-file at
once) and sets the ``distributed.Event`` ``hpc-pt-abort-<token>``; a rank blocked in a collective polls
that flag whenever ``POLL_S`` passes without progress. Ranks stopped this way raise :class:`RankAborted`
(``secondary = True``); the client waits for every rank and re-raises the first error that is not
secondary (the original exception, with ``rank`` set on it). A rank whose worker dies (killed, crashed)
cannot say so: its peers see its connections reset, and the client, subscribed to the scheduler's event
topic of every rank's worker, raises the abort flag when the scheduler removes that worker, cancels the
lost rank's task and raises :class:`WorkerLost` (rank, worker, pid, and the nanny's account of the end).

The TCP connections are plain and unauthenticated apart from the run token (like MPI's): run on a
trusted cluster network.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import time
import uuid
from contextlib import contextmanager, nullcontext

import numpy as np

from ..errors import BackendUnavailable, InputError
from .base import Comm, split_evenly

INSTALL_HINT = 'pip install ".[dask]" from the hpc-pt checkout'

#: seconds a blocked collective waits without progress before it checks the job's abort flag
POLL_S = 0.25
#: allreduce of arrays at least this large on more than 2 ranks: reduce-scatter + all-gather
RS_BYTES = 1 << 16
#: messages up to this size travel as one buffer with their header
SMALL = 1 << 12
#: seconds a collective busy-polls its sockets before it sleeps in ``poll`` (0: sleep at once; a short spin
#: lowers the latency of scalar sums on dedicated cores but slows ranks that share cores with other work)
SPIN_S = float(os.environ.get("HPC_PT_DASK_SPIN_US", "0")) * 1e-6
_HDR = struct.Struct("<QQ")  # sequence number, payload bytes
_F64 = struct.Struct("<d")
_HANDSHAKE = struct.Struct("<32sQ")  # run token, rank of the connecting side
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


class RankAborted(RuntimeError):
    """This rank stopped because another rank failed (or the job was aborted): not the original error."""

    secondary = True


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


def _bytes_view(a: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _abort_name(token: str) -> str:
    return f"hpc-pt-abort-{token}"


def _addr_name(token: str, rank: int) -> str:
    return f"hpc-pt-addr-{token}-{rank}"


class DaskComm(Comm):
    """Collectives between the rank tasks of one :func:`run_spmd` job (create it inside a rank task).

    ``token`` names the job (its abort flag and address board), ``rank``/``size`` as in MPI. The
    constructor builds the TCP mesh (collective: every rank of the job must construct its DaskComm);
    ``connect_timeout`` bounds that. ``allreduce_sum`` and ``bcast`` of arrays need the same shape and
    dtype on every rank, as with :class:`~hpc_pt.parallel.mpi.MPIComm`; CuPy arrays go through host memory.
    """

    name = "dask"

    def __init__(self, token: str, rank: int, size: int, connect_timeout: float = 120.0):
        super().__init__()
        self.token, self.rank, self.size = str(token), int(rank), int(size)
        self._socks: dict[int, socket.socket] = {}
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
        distributed = load_distributed()
        client = self._dask()
        try:
            from distributed.comm import get_address_host

            host = get_address_host(distributed.get_worker().address)
        except Exception:  # noqa: BLE001 - not a TCP worker address: stay on this machine
            host = "127.0.0.1"
        lsock = socket.create_server((host, 0), backlog=max(8, self.size))
        deadline = time.monotonic() + timeout
        token = self.token.encode()[:32].ljust(32, b"\0")
        try:
            port = lsock.getsockname()[1]
            mine = distributed.Variable(_addr_name(self.token, self.rank), client=client)
            mine.set(f"{host}:{port}")
            for peer in range(self.rank):  # connect to every lower rank
                var = distributed.Variable(_addr_name(self.token, peer), client=client)
                while True:
                    try:
                        addr = var.get(timeout=POLL_S * 4)
                        break
                    except TimeoutError:
                        self._check_abort(f"waiting for rank {peer}'s address")
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"rank {peer} did not start within {timeout:g} s") from None
                phost, pport = addr.rsplit(":", 1)
                s = socket.create_connection((phost, int(pport)), timeout=max(1.0, deadline - time.monotonic()))
                s.sendall(_HANDSHAKE.pack(token, self.rank))
                self._add_peer(peer, s)
            lsock.settimeout(POLL_S * 4)
            while len(self._socks) < self.size - 1:  # accept every higher rank
                try:
                    s, _ = lsock.accept()
                except TimeoutError:
                    self._check_abort("waiting for the other ranks to connect")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"rank {self.rank}: the other ranks did not connect within "
                                           f"{timeout:g} s") from None
                    continue
                s.settimeout(max(1.0, deadline - time.monotonic()))
                buf = bytearray(_HANDSHAKE.size)
                view, got = memoryview(buf), 0
                while got < len(buf):
                    n = s.recv_into(view[got:])
                    if not n:
                        break
                    got += n
                if got < len(buf):
                    s.close()
                    continue
                tok, peer = _HANDSHAKE.unpack(buf)
                if tok != token or not self.rank < peer < self.size or peer in self._socks:
                    s.close()  # a stray connection: not one of this job's ranks
                    continue
                self._add_peer(int(peer), s)
        except BaseException:
            self.close()
            raise
        finally:
            lsock.close()
        try:
            mine.delete()  # every higher rank has read it and connected
        except Exception:  # noqa: BLE001 - bookkeeping only
            pass

    def _add_peer(self, peer: int, s: socket.socket) -> None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:
                pass
        s.setblocking(False)
        self._socks[peer] = s

    def close(self) -> None:
        """Close the connections (peers blocked on this rank see end-of-file)."""
        self._closed = True
        socks, self._socks = self._socks, {}
        for s in socks.values():
            try:
                s.close()
            except OSError:
                pass

    def mark_failed(self) -> None:
        """Tell every rank that this one failed: close the connections, set the job's abort flag."""
        self.close()
        if self.size > 1:
            try:
                self._dask()
                self._event.set()
            except Exception:  # noqa: BLE001 - the scheduler is gone: the sockets told the peers already
                pass

    def abort(self, code: int = 2) -> None:
        """Stop every rank of the job: mark the failure (the others raise :class:`RankAborted` at their
        next collective) and raise :class:`JobAborted` here (a Dask task must not ``SystemExit``: that
        would take its worker down)."""
        self.mark_failed()
        raise JobAborted(f"rank {self.rank} of {self.size} aborted the job (code {code})")

    # -- the message engine ---------------------------------------------------------------------------
    def _exchange(self, sends: dict, recvs: dict, what: str) -> None:
        """Send ``sends[peer]`` (bytes-like) to each peer and receive exactly ``len(recvs[peer])`` bytes
        into each writable memoryview ``recvs[peer]``, all at once: one loop over non-blocking sockets that
        spins for ``SPIN_S`` and then sleeps in ``poll``. A message is a 16-byte header (sequence number,
        size) and its payload; small ones travel as one buffer and land in a scratch buffer first, large
        ones go straight from and into the arrays."""
        if self._closed:
            raise RankAborted(f"rank {self.rank} of {self.size}: communicator closed")
        seq = self._seq
        self._seq += 1
        out = {}
        for p, buf in sends.items():
            mv = memoryview(buf).cast("B")
            if mv.nbytes <= SMALL:
                out[p] = [memoryview(_HDR.pack(seq, mv.nbytes) + mv.tobytes())]
            else:
                out[p] = [memoryview(_HDR.pack(seq, mv.nbytes)), mv]
        inn = {}
        for p, mv in recvs.items():
            small = mv.nbytes <= SMALL
            scratch = bytearray(_HDR.size + (mv.nbytes if small else 0))
            inn[p] = [memoryview(scratch), 0, mv, scratch, small]  # target, offset, payload, scratch, small
        socks = self._socks
        spin_until = None
        while True:
            for p in list(out):
                views = out[p]
                try:
                    n = socks[p].sendmsg(views)
                except (BlockingIOError, InterruptedError):
                    continue
                except (OSError, KeyError) as e:
                    raise RankAborted(f"rank {self.rank} of {self.size}: rank {p} is gone ({e}) while "
                                      f"{what}") from None
                while n and views:
                    if n >= views[0].nbytes:
                        n -= views[0].nbytes
                        views.pop(0)
                    else:
                        views[0] = views[0][n:]
                        n = 0
                if not views:
                    del out[p]
            for p in list(inn):
                st = inn[p]
                while True:
                    target, off = st[0], st[1]
                    if off == target.nbytes:
                        if target.obj is st[3]:  # the scratch buffer is full: check the header
                            rseq, nbytes = _HDR.unpack_from(st[3])
                            if rseq != seq or nbytes != st[2].nbytes:
                                raise RuntimeError(
                                    f"DaskComm rank {self.rank}: expected message #{seq} of {st[2].nbytes} "
                                    f"bytes from rank {p} while {what}, got #{rseq} of {nbytes} bytes: the "
                                    "ranks called collectives in different orders or with different sizes")
                            if st[4]:
                                if nbytes:
                                    st[2][:] = target[_HDR.size:]
                            elif nbytes:
                                st[0], st[1] = st[2], 0  # now the payload, straight into the array
                                continue
                        del inn[p]
                        break
                    try:
                        n = socks[p].recv_into(target[off:])
                    except (BlockingIOError, InterruptedError):
                        break
                    except (OSError, KeyError) as e:
                        raise RankAborted(f"rank {self.rank} of {self.size}: rank {p} is gone ({e}) while "
                                          f"{what}") from None
                    if n == 0:
                        raise RankAborted(f"rank {self.rank} of {self.size}: rank {p} closed its connection "
                                          f"(it failed or stopped) while {what}")
                    st[1] += n
            if not (out or inn):
                return
            now = time.perf_counter()
            if spin_until is None:
                spin_until = now + SPIN_S
            if now < spin_until:
                continue
            poller = select.poll()
            masks: dict[int, int] = {}
            for p in inn:
                fd = socks[p].fileno()
                masks[fd] = masks.get(fd, 0) | select.POLLIN
            for p in out:
                fd = socks[p].fileno()
                masks[fd] = masks.get(fd, 0) | select.POLLOUT
            for fd, m in masks.items():
                poller.register(fd, m)
            if not poller.poll(int(POLL_S * 1000)):
                self._check_abort(what)

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
                    recvs[s] = _bytes_view(parts[s])
            self._exchange({s: _bytes_view(flat) for s in range(P) if s != r}, recvs, "all-reducing an array")
            return self._sum_in_rank_order(parts).reshape(buf.shape)
        # reduce-scatter (chunk s summed on rank s in rank order) + all-gather
        bounds = [split_evenly(flat.size, P, s) for s in range(P)]
        a, b = bounds[r]
        parts = [flat[a:b] if s == r else np.empty(b - a, dtype=flat.dtype) for s in range(P)]
        self._exchange({s: _bytes_view(flat[bounds[s][0]:bounds[s][1]]) for s in range(P)
                        if s != r and bounds[s][1] > bounds[s][0]},
                       {s: _bytes_view(parts[s]) for s in range(P) if s != r and b > a},
                       "all-reducing an array (reduce-scatter)")
        mine = self._sum_in_rank_order(parts)
        self._exchange({s: _bytes_view(mine) for s in range(P) if s != r and b > a},
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
        """Every rank pair's buffers at once (one poll loop); empty buffers are not sent."""
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
                self._exchange({s: _bytes_view(bufs[s]) for s in range(P) if s != r and bufs[s].size},
                               {s: _bytes_view(out[s]) for s in range(P) if s != r and out[s].size},
                               "exchanging buffers (alltoallv)")
        return out

    def _bcast_buffer(self, buf: np.ndarray, root: int) -> None:
        with _meter(_COMM_LABEL["bcast"]):
            self._bcast_buf(buf, root)

    def _bcast_buf(self, buf: np.ndarray, root: int) -> None:
        r, P = self.rank, self.size
        if not 0 <= root < P:
            raise ValueError(f"bcast root {root} is not a rank of {P}")
        view = _bytes_view(buf) if buf.nbytes else memoryview(b"")
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
