"""How this process was launched, read from the launcher's environment (no mpi4py import), and how the
ranks of an MPI job agree on one error message.

:func:`launch_world` answers "is this process one of several started together by ``mpiexec`` / ``srun``?"
from the variables the launchers set for every process they start:

* MPICH / Intel MPI (Hydra, PMI-1 and PMI-2): ``PMI_RANK``, ``PMI_SIZE``;
* Open MPI: ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_SIZE``;
* MVAPICH2: ``MV2_COMM_WORLD_RANK``, ``MV2_COMM_WORLD_SIZE``;
* PMIx launchers (``prterun``, ``srun --mpi=pmix``): ``PMIX_RANK``, with the size from one of the others
  (a PMIx rank above 0 alone already proves a world of more than one process);
* SLURM job steps (``srun``): ``SLURM_PROCID`` and the step's task count ``SLURM_STEP_NUM_TASKS``, or
  ``SLURM_NTASKS`` inside a step (``SLURM_STEP_ID`` set). An ``sbatch`` batch script that did not go
  through ``srun`` is a single process even when its allocation has ``SLURM_NTASKS`` > 1, so the
  allocation's variables alone never count.

:class:`ErrorAgreement` lets the ranks that fail find out whether every rank failed (then rank 0 alone
reports, and the job exits cleanly) or only some did (then they report and the job must be aborted).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping

#: (rank variable, size variable) of the MPI launchers, checked in this order before SLURM's
MPI_LAUNCHER_VARS = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                     ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"))


def _int(env: Mapping, name: str) -> int | None:
    v = env.get(name)
    if v is None:
        return None
    v = str(v).strip()
    return int(v) if v.isdigit() else None


def launch_world(environ: Mapping | None = None) -> tuple[int, int] | None:
    """(rank, size) of this process in the job its launcher started, or None when no launcher says so.

    Parameters
    ----------
    environ : mapping, optional
        The environment to read (default ``os.environ``).

    Returns
    -------
    tuple of int or None
        ``(rank, size)`` with ``0 <= rank < size``; None for a process started on its own (including an
        ``sbatch`` batch script outside ``srun``). With PMIx and no size variable, a rank above 0 gives
        ``(rank, rank + 1)`` (a lower bound on the size) and rank 0 gives None.
    """
    env = os.environ if environ is None else environ
    for rank_var, size_var in MPI_LAUNCHER_VARS:
        rank, size = _int(env, rank_var), _int(env, size_var)
        if size is not None and size >= 1:
            return (rank if rank is not None and rank < size else 0), size
    slurm_size = _int(env, "SLURM_STEP_NUM_TASKS")
    if slurm_size is None and _int(env, "SLURM_STEP_ID") is not None:  # inside a numbered srun step
        slurm_size = _int(env, "SLURM_NTASKS")
    pmix_rank = _int(env, "PMIX_RANK")
    if pmix_rank is not None:
        if slurm_size is not None and pmix_rank < slurm_size:
            return pmix_rank, slurm_size
        return (pmix_rank, pmix_rank + 1) if pmix_rank > 0 else None
    if slurm_size is not None and slurm_size >= 1:
        rank = _int(env, "SLURM_PROCID")
        return (rank if rank is not None and rank < slurm_size else 0), slurm_size
    return None


class ErrorAgreement:
    """Find out, after an error, whether every rank of an MPI job failed.

    Create it on every rank before the work starts (it duplicates the communicator, a collective). A rank
    that fails calls :meth:`all_failed`; it returns True as soon as every rank has called it, or False
    after ``timeout_s`` when some rank is still working (then the failing ranks must abort the job).
    When every rank failed they call :meth:`gather` together.

    Parameters
    ----------
    comm : mpi4py communicator
        Usually ``MPI.COMM_WORLD``; only a duplicate of it is used, so a rank still blocked in one of the
        solver's collectives on ``comm`` cannot be confused with this agreement.
    """

    def __init__(self, comm):
        self.comm = comm.Dup()
        self.size = int(self.comm.Get_size())
        self.rank = int(self.comm.Get_rank())

    def all_failed(self, timeout_s: float = 2.0, poll_s: float = 0.01) -> bool:
        """True when every rank has called this within ``timeout_s`` seconds of this rank's call.

        A non-blocking barrier on the duplicated communicator, polled every ``poll_s`` seconds.

        Parameters
        ----------
        timeout_s : float, optional
            Seconds to wait for the other ranks. Default 2.
        poll_s : float, optional
            Seconds between two polls. Default 0.01.

        Returns
        -------
        bool
            True when every rank failed (always for one rank); False when some rank is still working.
        """
        if self.size == 1:
            return True
        req = self.comm.Ibarrier()
        deadline = time.monotonic() + timeout_s
        while not req.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(poll_s)
        return True

    def gather(self, item):
        """Every rank's ``item`` (small, picklable), in rank order, on every rank.

        Collective: call it on every rank once :meth:`all_failed` returned True.

        Parameters
        ----------
        item : object
            This rank's contribution (e.g. its error message).

        Returns
        -------
        list
            The items of ranks 0, 1, ...
        """
        return self.comm.allgather(item)


__all__ = ["MPI_LAUNCHER_VARS", "ErrorAgreement", "launch_world"]
