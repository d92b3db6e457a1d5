"""One GPU per rank: which device a rank (or Dask worker) uses.

The launcher tells each process its rank on the node: SLURM (``SLURM_LOCALID``), Open MPI
(``OMPI_COMM_WORLD_LOCAL_RANK``), MPICH / Hydra (``MPI_LOCALRANKID``, ``PMI_LOCAL_RANK``). The rank uses
visible device ``local_rank % n_visible``, where the visible devices are those CUDA_VISIBLE_DEVICES leaves
(CUDA renumbers them from 0), so both "every rank sees all GPUs" and "SLURM binds one GPU per task
(--gpus-per-task=1)" give one distinct GPU per rank.
"""
from __future__ import annotations

import os

from ..errors import InputError

LOCAL_RANK_VARS = ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK",
                   "HPC_PT_LOCAL_RANK")


def local_rank(comm=None, environ=None) -> int:
    """This process's rank on its node (launcher variables), else its global rank, else 0.

    Parameters
    ----------
    comm : object, optional
        A communicator; its ``rank`` is the fallback.
    environ : mapping, optional
        The environment to read (default ``os.environ``); the first of :data:`LOCAL_RANK_VARS` holding an
        integer wins.

    Returns
    -------
    int
        The node-local rank.
    """
    env = os.environ if environ is None else environ
    for var in LOCAL_RANK_VARS:
        v = env.get(var)
        if v is not None and str(v).strip().lstrip("-").isdigit():
            return int(v)
    return int(getattr(comm, "rank", 0))


def gpu_index(local: int, n_visible: int) -> int:
    """The visible device a rank uses: ``local % n_visible``.

    Parameters
    ----------
    local : int
        The rank's node-local rank (:func:`local_rank`).
    n_visible : int
        Number of visible CUDA devices.

    Returns
    -------
    int
        The device index among the visible ones.

    Raises
    ------
    InputError
        When no device is visible (``n_visible`` < 1).
    """
    if n_visible < 1:
        raise InputError("--device gpu, but no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the "
                         "job's GPU request, e.g. --gres=gpu:N); or run with --device cpu")
    return int(local) % int(n_visible)


def select_gpu(comm=None) -> int:
    """Make this rank's GPU current for CuPy; returns its index among the visible devices.

    Parameters
    ----------
    comm : object, optional
        The communicator (its ``rank`` when no launcher variable gives the local rank).

    Returns
    -------
    int
        The device index made current.

    Raises
    ------
    BackendUnavailable
        Without CuPy or a visible CUDA device (:func:`hpc_pt.backend.require_gpu`).
    """
    from ..backend import require_gpu

    cp = require_gpu()
    dev = gpu_index(local_rank(comm), int(cp.cuda.runtime.getDeviceCount()))
    cp.cuda.Device(dev).use()
    return dev


__all__ = ["LOCAL_RANK_VARS", "gpu_index", "local_rank", "select_gpu"]
