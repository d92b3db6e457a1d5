"""The parallel interface every solver uses, and its serial implementation.

Data layout (DESIGN.md section 3): measured frames and per-frame variables are sharded by angle (and by
frames within an angle); they never move. The volume is replicated on every rank in this first version,
so volume-sized partial sums (back-projections of each rank's frames) are combined with
:meth:`Comm.allreduce_sum`, and scalar sums (objective, R-factor) with :meth:`Comm.sum_scalar`.
"""
from __future__ import annotations


class Comm:
    """Interface: collective operations over the ranks/workers that each hold one shard."""

    rank: int = 0
    size: int = 1
    name: str = "abstract"

    def allreduce_sum(self, x):
        """Sum ``x`` (an array of identical shape on every rank) over ranks; every rank gets the sum."""
        raise NotImplementedError

    def sum_scalar(self, v: float) -> float:
        """Sum a Python float over ranks."""
        raise NotImplementedError

    def bcast(self, x, root: int = 0):
        """Value of ``x`` on ``root``, returned on every rank."""
        raise NotImplementedError

    def volume_dot(self, a, b) -> float:
        """Re <a, b> of two volumes as laid out on the ranks (replicated volumes: a local dot product)."""
        from ..backend import get_xp

        return float(get_xp(a).vdot(a, b).real)


class SerialComm(Comm):
    """One process holds every shard: reductions are identities."""

    name = "serial"

    def allreduce_sum(self, x):
        return x

    def sum_scalar(self, v: float) -> float:
        return float(v)

    def bcast(self, x, root: int = 0):
        return x


def split_evenly(n: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part ``index`` when ``n`` items are split into ``parts`` nearly equal blocks."""
    base, extra = divmod(int(n), int(parts))
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


__all__ = ["Comm", "SerialComm", "split_evenly"]
