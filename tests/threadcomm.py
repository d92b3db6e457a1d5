"""P ranks as threads of one process: a test double of MPIComm with the same semantics (every collective
sums or exchanges in rank order, so all ranks get identical results) and the same byte counting.
Shared by the slab, solver, prior and pipeline tests."""
from __future__ import annotations

import threading

import numpy as np

from hpc_pt.parallel.base import Comm


class _Group:
    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=120)
        self.box = [None] * size


class ThreadComm(Comm):
    name = "threads"

    def __init__(self, group, rank):
        super().__init__()
        self.g, self.rank, self.size = group, rank, group.size

    def _exchange(self, obj):
        self.g.barrier.wait()
        self.g.box[self.rank] = obj
        self.g.barrier.wait()
        out = list(self.g.box)
        self.g.barrier.wait()
        return out

    def alltoallv(self, send, recv_counts):
        everyone = self._exchange([np.array(b, copy=True) for b in send])
        self.stats.add("alltoallv", sum(b.nbytes for s, b in enumerate(send) if s != self.rank), 0.0)
        recv = [everyone[s][self.rank] for s in range(self.size)]
        assert [b.size for b in recv] == list(recv_counts)
        return recv

    def allreduce_sum(self, x):
        parts = self._exchange(np.array(x, copy=True))
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out

    def sum_scalar(self, v):
        parts = self._exchange(float(v))
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return float(out)

    def bcast(self, x, root=0):
        return self._exchange(x)[root]


def run_threads(size, fn):
    """``fn(comm)`` on ``size`` thread-ranks; the list of their results. The first exception of any rank is
    re-raised (the others are released from their barrier)."""
    group = _Group(size)
    results, errors = [None] * size, []

    def work(r):
        try:
            results[r] = fn(ThreadComm(group, r))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
