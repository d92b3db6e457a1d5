"""Running rank tasks: :func:`run_spmd` (one long-running task per worker), failures and lost workers, and
rank 0's progress forwarded to the client (see the package docstring)."""
from __future__ import annotations

import os
import time
import uuid

from ...errors import InputError
from .comm import DaskComm, WorkerLost, _abort_name, load_distributed

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
    """Addresses of the workers that become ranks 0..K-1.

    The first ``workers`` (an int; all when None) of the scheduler's workers ordered by name (numeric names
    first, by value), or the given list of addresses.

    Parameters
    ----------
    client : distributed.Client
        A client of the scheduler.
    workers : int or list of str, optional
        How many workers, or their addresses; None: all.

    Returns
    -------
    list of str
        The worker addresses, rank 0 first.

    Raises
    ------
    InputError
        When the scheduler has no workers, ``workers`` < 1, or more workers are asked for than it has.
    """
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
    """Run ``fn(comm, *args, **kwargs)`` as one task per worker (SPMD, ``comm`` a :class:`DaskComm`).

    Returns every rank's result, by rank. ``fn`` and its arguments must pickle (Dask futures among ``args``
    are resolved on the workers).

    If a rank raises, every rank is stopped and the first error that is not a consequence of another
    rank's (``secondary``) is re-raised here, with ``rank`` set on it. If a rank's worker leaves the
    cluster while the job runs (its process killed or crashed; the scheduler's ``remove-worker`` event on
    that worker's topic, or its absence from the scheduler once a peer saw its connection drop), the job's
    abort flag is raised at once, the other ranks stop and :class:`WorkerLost` is raised, naming the rank,
    the worker, its pid and the nanny's account of its end. Ranks still running ``grace`` seconds after
    the first error or loss are cancelled, as are the lost ranks' tasks, so the workers (and a nanny's
    restarted worker) are free for the next job.

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster.
    fn : callable
        ``fn(comm, *args, **kwargs)``, run on every rank.
    *args
        Positional arguments of ``fn``.
    workers : int or list of str, optional
        The workers that become ranks (:func:`worker_addresses`); None: all.
    name : str, optional
        Part of the task keys ``hpc-pt-<name>-rank<r>-<token>``. Default "spmd".
    connect_timeout : float, optional
        Seconds the ranks' mesh set-up may take. Default 120.
    grace : float, optional
        Seconds the other ranks get to stop after the first error or loss. Default 10.
    **kwargs
        Keyword arguments of ``fn``.

    Returns
    -------
    list
        ``fn``'s result on every rank, by rank.

    Raises
    ------
    WorkerLost
        When a rank's worker left the cluster.
    Exception
        The first rank's error that is not ``secondary`` (with ``rank`` set on it).
    InputError
        When the workers asked for are not there (:func:`worker_addresses`).
    """
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


__all__ = ["WATCH_S", "run_spmd", "worker_addresses"]
