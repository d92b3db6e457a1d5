"""Which frames each rank holds (docs/architecture.md §3: data sharded by angle, within an angle by frames).

:func:`plan_shards` is pure arithmetic on the per-angle frame counts (from a CXI index, no frame read), so
every rank computes the same plan independently and reads only its own part.
"""
from __future__ import annotations

import numpy as np

from ..comm import split_evenly

#: one piece of a rank's shard: frames ``start:stop`` of angle ``angle_index`` (file order)
Piece = tuple[int, int, int]


def plan_shards(n_frames_per_angle, size: int) -> list[list[Piece]]:
    """Assign every frame to exactly one of ``size`` ranks; returns, per rank, its (angle, start, stop) pieces.

    * At least as many angles as ranks: whole angles, balanced by frame count (largest angle first onto
      the least-loaded rank; each rank gets at least one angle). A rank's pieces are in angle order.
    * More ranks than angles: every angle gets a number of ranks roughly proportional to its frame count
      (at least one, at most its frame count) and its frames are split into contiguous, nearly equal
      blocks over them, so every rank holds frames. Angles without frames ride along, whole, on rank 0.

    Raises ValueError when there are fewer frames than ranks in the second case (some rank would be empty).

    Parameters
    ----------
    n_frames_per_angle : array_like of int
        Frames of every angle, in file order.
    size : int
        Number of ranks, at least 1.

    Returns
    -------
    list of list of Piece
        For every rank, its ``(angle_index, start, stop)`` pieces, sorted.

    Raises
    ------
    ValueError
        For ``size`` < 1, a negative count, no angles, or fewer frames than ranks when ranks outnumber angles.
    """
    counts = np.asarray(n_frames_per_angle, dtype=np.int64).reshape(-1)
    size = int(size)
    if size < 1:
        raise ValueError(f"need at least one rank, got {size}")
    if np.any(counts < 0):
        raise ValueError("frame counts must be >= 0")
    A = counts.size
    if A == 0:
        raise ValueError("no angles to distribute")
    if A >= size:
        loads = [0] * size
        nang = [0] * size
        plan: list[list[Piece]] = [[] for _ in range(size)]
        for a in sorted(range(A), key=lambda k: (-int(counts[k]), k)):
            r = min(range(size), key=lambda q: (loads[q], nang[q], q))
            plan[r].append((a, 0, int(counts[a])))
            loads[r] += int(counts[a])
            nang[r] += 1
        return [sorted(p) for p in plan]
    nonempty = [a for a in range(A) if counts[a] > 0]
    if int(counts.sum()) < size:
        raise ValueError(f"{int(counts.sum())} frames cannot give each of {size} ranks at least one; "
                         "use fewer ranks")
    ranks_for = {a: 1 for a in nonempty}
    spare = size - len(nonempty)
    while spare > 0:  # the next rank goes where it lowers the largest per-rank load most
        a = max((b for b in nonempty if ranks_for[b] < counts[b]),
                key=lambda b: (counts[b] / ranks_for[b], -b))
        ranks_for[a] += 1
        spare -= 1
    plan = []
    for a in nonempty:
        for part in range(ranks_for[a]):
            start, stop = split_evenly(int(counts[a]), ranks_for[a], part)
            plan.append([(a, start, stop)])
    for a in range(A):
        if counts[a] == 0:
            plan[0].append((a, 0, 0))
    return [sorted(p) for p in plan]


def split_angles(plan: list[list[Piece]]) -> list[int]:
    """Angles whose frames are spread over more than one rank.

    Parameters
    ----------
    plan : list of list of Piece
        A plan of :func:`plan_shards`.

    Returns
    -------
    list of int
        The angle indices, sorted.
    """
    seen: dict[int, int] = {}
    for pieces in plan:
        for a in {p[0] for p in pieces}:
            seen[a] = seen.get(a, 0) + 1
    return sorted(a for a, k in seen.items() if k > 1)


__all__ = ["Piece", "plan_shards", "split_angles"]
