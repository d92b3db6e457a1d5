"""Checkpoints of a solver's whole state, one file per rank, written atomically.

Layout of a checkpoint directory (default ``<out>.ckpt``)::

    LATEST                  the name of the newest complete checkpoint ("iter-000010"), replaced atomically
    iter-000010/
        manifest.json       iteration, ranks, method settings, shard plan (written by rank 0)
        rank-00000.npz      this rank's arrays: volume slab, z, multipliers, probe, ...
        rank-00000.json     this rank's scalars (penalties, step sizes, set-up constants) and the history

Atomicity: every rank writes into ``iter-K.partial/`` (each file through a temporary name and
``os.replace``); after all ranks are done (a collective), rank 0 writes the manifest, renames the folder to
``iter-K`` and only then points ``LATEST`` at it, and removes older checkpoints. A crash at any moment
leaves ``LATEST`` naming a complete checkpoint (or no ``LATEST`` before the first one). Values are stored
exactly (arrays as .npy, floats as shortest round-trip reprs), so a resumed run is bitwise-equal to an
uninterrupted one on the CPU. The solvers hold no random state across iterations (their only random
draw, the power-iteration start vector, is seeded and its result is part of the state).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from ..errors import InputError

IGNORED_FOR_RESUME = ("iterations",)  # settings a resumed run may change


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not np.isscalar(v)


class CheckpointStore:
    """Save / load one rank's part of a checkpoint (see the module docstring)."""

    def __init__(self, where, rank: int, size: int, config: dict, plan):
        self.where = os.path.abspath(os.fspath(where))
        self.rank, self.size = int(rank), int(size)
        self.config = dict(config)
        self.plan = [[list(map(int, p)) for p in pieces] for pieces in plan]

    # -- writing ------------------------------------------------------------------------------------------
    def save(self, state: dict, comm) -> str:
        from ..backend import to_numpy

        k = int(state["iteration"])
        name = f"iter-{k:06d}"
        part = os.path.join(self.where, name + ".partial")
        os.makedirs(part, exist_ok=True)
        arrays = {key: to_numpy(v) for key, v in state.items() if _is_array(v)}
        scalars = {key: (v.item() if isinstance(v, np.generic) else v)
                   for key, v in state.items() if not _is_array(v)}
        base = os.path.join(part, f"rank-{self.rank:05d}")
        tmp = base + ".npz.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, base + ".npz")
        with open(base + ".json.tmp", "w") as fh:
            json.dump(scalars, fh)
        os.replace(base + ".json.tmp", base + ".json")
        comm.sum_scalar(0.0)  # every rank's files are complete
        if self.rank == 0:
            with open(os.path.join(part, "manifest.json"), "w") as fh:
                json.dump({"iteration": k, "ranks": self.size, "config": self.config, "plan": self.plan}, fh)
            final = os.path.join(self.where, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(part, final)
            with open(os.path.join(self.where, "LATEST.tmp"), "w") as fh:
                fh.write(name)
            os.replace(os.path.join(self.where, "LATEST.tmp"), os.path.join(self.where, "LATEST"))
            for old in os.listdir(self.where):
                if old.startswith("iter-") and old != name and not old.endswith(".partial"):
                    shutil.rmtree(os.path.join(self.where, old), ignore_errors=True)
        comm.sum_scalar(0.0)
        return os.path.join(self.where, name)

    # -- reading -------------------------------------------------------------------------------------------
    def latest(self) -> str:
        path = os.path.join(self.where, "LATEST")
        if not os.path.isfile(path):
            raise InputError(f"no checkpoint in {self.where}; run without --resume (or with --checkpoint-every)")
        return os.path.join(self.where, open(path).read().strip())

    def check_resumable(self) -> dict:
        """The manifest of the latest checkpoint, after checking it matches this run."""
        d = self.latest()
        try:
            with open(os.path.join(d, "manifest.json")) as fh:
                man = json.load(fh)
        except (OSError, ValueError) as e:
            raise InputError(f"checkpoint {d} is unreadable ({e}); remove it or run without --resume") from None
        if int(man["ranks"]) != self.size:
            raise InputError(f"checkpoint {d} was written by {man['ranks']} ranks; resume with the same "
                             f"number (mpiexec -n {man['ranks']} / --workers {man['ranks']})")
        a = {k: v for k, v in man["config"].items() if k not in IGNORED_FOR_RESUME}
        b = {k: v for k, v in json.loads(json.dumps(self.config)).items() if k not in IGNORED_FOR_RESUME}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise InputError(f"checkpoint {d} was made with other settings ({', '.join(diff)}); resume with "
                             "the same settings (only --iterations may change)")
        if man["plan"] != self.plan:
            raise InputError(f"checkpoint {d} has another data layout; resume on the same input and ranks")
        return man

    def load(self) -> dict:
        """This rank's state (arrays as NumPy arrays, scalars, history rows)."""
        d = self.latest()
        base = os.path.join(d, f"rank-{self.rank:05d}")
        with np.load(base + ".npz") as z:
            state = {k: z[k] for k in z.files}
        with open(base + ".json") as fh:
            state.update(json.load(fh))
        return state


__all__ = ["CheckpointStore"]
