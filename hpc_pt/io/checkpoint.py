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

The manifest also holds the input's fingerprint (:func:`input_fingerprint`: sizes, frame counts, hashes of the
angles, positions, probe, mask, geometry and of a sample of frames), and the two newest checkpoints of a run
are kept. :meth:`CheckpointStore.resume` (collective) refuses another input, other settings, another number
of ranks or a checkpoint the run cannot continue, in one line; a damaged checkpoint (unreadable manifest,
missing keys, a truncated or unreadable rank file) is skipped for the one before it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile

import numpy as np

from ..errors import InputError

IGNORED_FOR_RESUME = ("iterations",)  # settings a resumed run may change
#: keys every manifest has (one without them is damaged)
MANIFEST_KEYS = ("iteration", "ranks", "config", "plan", "fingerprint")
#: frames (evenly spread over all frames of the input) whose values enter the input's fingerprint
FINGERPRINT_FRAMES = 8


def _digest(*arrays) -> str:
    """A short hash (64 bits, hex) of arrays' values, shapes and dtypes (None: hashed as absent)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def input_fingerprint(meta, n_sample: int = FINGERPRINT_FRAMES) -> dict:
    """What identifies a reconstruction's input, cheaply: recorded in every checkpoint's manifest and
    compared on resume.

    Parameters
    ----------
    meta : :class:`~hpc_pt.data.Dataset` or :class:`~hpc_pt.io.cxi.CxiIndex`
        The input (a file's index: only ``n_sample`` frames are read from it).
    n_sample : int
        Frames, evenly spread over all frames of the input, whose values are hashed.

    Returns
    -------
    dict
        ``frames`` (total), ``angles`` (entries), ``frame_shape``, and 64-bit hashes (hex) of
        ``frames_per_angle``, ``angles_deg``, ``positions``, ``geometry`` (energy, distance, pixel sizes,
        field shape, rotation axis), ``probe``, ``mask`` and ``frames_sample``. A file and the
        :class:`~hpc_pt.data.Dataset` read from it (``read_cxi``) have the same fingerprint.
    """
    from_file = hasattr(meta, "entries")
    entries = meta.entries if from_file else meta.angles
    counts = np.asarray(meta.n_frames, dtype=np.int64)
    total = int(counts.sum())
    if from_file:
        from .cxi import read_frames

        frame_shape = tuple(int(v) for v in meta.frame_shape)
    else:
        frame_shape = tuple(int(v) for v in np.shape(entries[0].frames)[1:]) if entries else ()
    picks = np.unique(np.round(np.linspace(0, total - 1, min(int(n_sample), total))).astype(np.int64))
    starts = np.concatenate([[0], np.cumsum(counts)])
    sample = []
    for j in picks if total else ():
        a = int(np.searchsorted(starts, j, side="right") - 1)
        i = int(j - starts[a])
        fr = read_frames(meta, a, i, i + 1) if from_file else entries[a].frames[i:i + 1]
        sample.append(np.asarray(fr, dtype="<f4"))
    g = meta.geometry
    centre = np.nan if g.rotation_centre is None else float(g.rotation_centre)
    geometry = np.array([g.energy_ev, g.detector_distance_m, *g.detector_pixel_m, g.pixel_m, *g.field_shape,
                         centre], dtype="<f8")
    positions = [None if e.positions is None else np.asarray(e.positions, dtype="<f8") for e in entries]
    return {"frames": total, "angles": len(entries), "frame_shape": list(frame_shape),
            "frames_per_angle": _digest(counts.astype("<i8")),
            "angles_deg": _digest(np.array([e.angle_deg for e in entries], dtype="<f8")),
            "positions": _digest(*positions),
            "geometry": _digest(geometry),
            "probe": _digest(None if meta.probe is None else np.asarray(meta.probe, dtype="<c8")),
            "mask": _digest(None if meta.mask is None else np.asarray(meta.mask, dtype=bool)),
            "frames_sample": _digest(*sample)}


def _bcast_json(comm, obj):
    """Rank 0's JSON-serialisable ``obj`` on every rank (collective)."""
    if int(comm.size) == 1:
        return obj
    raw = json.dumps(obj).encode() if comm.rank == 0 else b""
    n = int(comm.bcast(len(raw), root=0))
    buf = np.frombuffer(raw, dtype=np.uint8).copy() if comm.rank == 0 else np.zeros(n, dtype=np.uint8)
    return json.loads(bytes(comm.bcast(buf, root=0)).decode())


class _Damaged(Exception):
    """A checkpoint that cannot be read (the message says what is wrong)."""


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not np.isscalar(v)


class CheckpointStore:
    """Save / load one rank's part of a checkpoint (see the module docstring).

    Parameters
    ----------
    where : path
        The checkpoint directory.
    rank, size : int
        This rank and the number of ranks.
    config : dict
        The reconstruction settings (compared on resume, except ``IGNORED_FOR_RESUME``).
    plan : list
        The shard plan (:func:`hpc_pt.parallel.plan_shards`).
    fingerprint : dict, optional
        The input's :func:`input_fingerprint`; needed on rank 0 (it writes the manifests and broadcasts it
        on resume), ignored elsewhere.
    """

    def __init__(self, where, rank: int, size: int, config: dict, plan, fingerprint: dict | None = None):
        self.where = os.path.abspath(os.fspath(where))
        self.rank, self.size = int(rank), int(size)
        self.config = dict(config)
        self.plan = [[list(map(int, p)) for p in pieces] for pieces in plan]
        self.fingerprint = fingerprint
        self.previous = None  # the checkpoint this run saved (or resumed from) last: kept by the next save

    # -- writing ------------------------------------------------------------------------------------------
    def save(self, state: dict, comm) -> str:
        """Write this rank's part of checkpoint ``iter-K`` (collective: every rank calls it).

        Arrays go to ``rank-NNNNN.npz``, the other values to ``rank-NNNNN.json``, in ``iter-K.partial/``; once every
        rank's files are complete, rank 0 writes the manifest, renames the folder to ``iter-K``, points ``LATEST``
        at it and removes older checkpoints except the one this run saved (or resumed from) last (see the module
        docstring).

        Parameters
        ----------
        state : dict
            The solver's state: ``iteration`` (int, K) and any arrays (NumPy or CuPy, stored as NumPy) and
            JSON-serialisable values (the history among them).
        comm : hpc_pt.comm.Comm
            The communicator of the ranks that save together.

        Returns
        -------
        str
            The path of the checkpoint folder ``<where>/iter-K``.

        Raises
        ------
        InputError
            When a rank could not write its files or rank 0 could not commit the checkpoint, every rank raises
            (the partial folder is removed): a full disk or quota as one line with the bytes needed, and on the
            ranks that did not fail a ``secondary`` error pointing at the others' messages.
        Exception
            The failing rank's own error when it is not a full disk.
        """
        from ..backend import to_numpy

        from .safety import agree_on_failure, remove_path

        k = int(state["iteration"])
        name = f"iter-{k:06d}"
        part = os.path.join(self.where, name + ".partial")
        arrays = {key: to_numpy(v) for key, v in state.items() if _is_array(v)}
        scalars = {key: (v.item() if isinstance(v, np.generic) else v)
                   for key, v in state.items() if not _is_array(v)}
        text = json.dumps(scalars)
        needed = sum(int(a.nbytes) + 512 for a in arrays.values()) + len(text) + 8192  # this rank's files
        base = os.path.join(part, f"rank-{self.rank:05d}")
        tmp = base + ".npz.tmp"
        err = None
        try:
            os.makedirs(part, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, base + ".npz")
            with open(base + ".json.tmp", "w") as fh:
                fh.write(text)
            os.replace(base + ".json.tmp", base + ".json")
        except Exception as e:  # noqa: BLE001 - agreed on below: every rank raises, the partial folder goes
            err = e
            remove_path(tmp)
            remove_path(base + ".json.tmp")
        # every rank's files are complete (or every rank raises, a full disk as one line with the bytes needed)
        agree_on_failure(comm, err, part, needed, cleanup=lambda: remove_path(part), fix="choose another "
                         "--checkpoint-dir")
        final = os.path.join(self.where, name)
        latest = os.path.join(self.where, "LATEST")
        if self.rank == 0:
            try:
                with open(os.path.join(part, "manifest.json"), "w") as fh:
                    json.dump({"iteration": k, "ranks": self.size, "config": self.config, "plan": self.plan,
                               "fingerprint": self.fingerprint,
                               "state": {key: v for key, v in scalars.items()  # the simple scalars (stage, ...)
                                         if isinstance(v, (bool, int, float, str)) or v is None}}, fh)
                if os.path.exists(final):
                    shutil.rmtree(final)
                os.rename(part, final)
                with open(os.path.join(self.where, "LATEST.tmp"), "w") as fh:
                    fh.write(name)
                os.replace(os.path.join(self.where, "LATEST.tmp"), os.path.join(self.where, "LATEST"))
                keep = {name, self.previous}  # the one before stays: resume falls back to it if this one is damaged
                for old in os.listdir(self.where):
                    if old.startswith("iter-") and old not in keep and not old.endswith(".partial"):
                        shutil.rmtree(os.path.join(self.where, old), ignore_errors=True)
            except Exception as e:  # noqa: BLE001 - agreed on below
                err = e
                remove_path(os.path.join(self.where, "LATEST.tmp"))
                remove_path(part)
                try:
                    with open(latest) as fh:
                        named = fh.read().strip()
                except (OSError, UnicodeDecodeError):
                    named = None
                if named != name:  # LATEST still names the previous checkpoint: this one never was
                    remove_path(final)
        agree_on_failure(comm, err, part, needed, fix="choose another --checkpoint-dir")
        self.previous = name
        return os.path.join(self.where, name)

    # -- reading -------------------------------------------------------------------------------------------
    def candidates(self) -> list[str]:
        """The checkpoints here, newest first.

        The one ``LATEST`` names, then every other complete ``iter-K`` by decreasing K (the ones a damaged newer
        checkpoint falls back to).

        Returns
        -------
        list of str
            Folder names (``iter-K``); empty when the directory cannot be listed.
        """
        try:
            names = os.listdir(self.where)
        except OSError:
            return []
        done = [n for n in names if n.startswith("iter-") and not n.endswith(".partial")
                and os.path.isdir(os.path.join(self.where, n))]
        done.sort(key=lambda n: (int(n[5:]) if n[5:].isdigit() else -1, n), reverse=True)
        try:
            with open(os.path.join(self.where, "LATEST")) as fh:
                latest = fh.read().strip()
        except (OSError, UnicodeDecodeError):
            latest = None
        if latest in done:
            done.remove(latest)
            done.insert(0, latest)
        return done

    def _manifest(self, d: str) -> dict:
        try:
            with open(os.path.join(d, "manifest.json")) as fh:
                man = json.load(fh)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise _Damaged(f"manifest.json unreadable ({_short(e)})") from None
        if not isinstance(man, dict):
            raise _Damaged("manifest.json is not a JSON object")
        missing = [k for k in MANIFEST_KEYS if k not in man]
        if missing:
            raise _Damaged(f"manifest.json lacks {', '.join(missing)}")
        try:
            int(man["iteration"]), int(man["ranks"]), dict(man["config"]), list(man["plan"])
        except (TypeError, ValueError):
            raise _Damaged("manifest.json has values of the wrong type") from None
        return man

    def _refusal(self, d: str, man: dict, fingerprint, check_input: bool = True) -> str | None:
        """Why this run cannot continue the checkpoint ``d`` (None: it can); ``check_input``: compare the
        input's ``fingerprint`` too."""
        if int(man["ranks"]) != self.size:
            return (f"checkpoint {d} was written by {man['ranks']} ranks; resume with the same number "
                    f"(mpiexec -n {man['ranks']} / --workers {man['ranks']})")
        a = {k: v for k, v in man["config"].items() if k not in IGNORED_FOR_RESUME}
        b = {k: v for k, v in json.loads(json.dumps(self.config)).items() if k not in IGNORED_FOR_RESUME}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            return (f"checkpoint {d} was made with other settings ({', '.join(diff)}); resume with the same "
                    "settings (only --iterations may change)")
        theirs = man["fingerprint"] if isinstance(man["fingerprint"], dict) else {}
        ours = fingerprint or {}
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)) if check_input else []
        if diff:
            return (f"checkpoint {d} was made from another input (it differs in {', '.join(diff)}); resume "
                    "with the same input, or drop --resume to start afresh (new checkpoints replace these)")
        if man["plan"] != self.plan:
            return f"checkpoint {d} has another data layout; resume on the same input and ranks"
        return None

    def _load(self, d: str, man: dict) -> dict:
        base = os.path.join(d, f"rank-{self.rank:05d}")
        what = os.path.basename(base) + ".npz"
        try:
            with open(base + ".npz", "rb") as fh, np.load(fh, allow_pickle=False) as z:  # closed if not a zip
                state = {k: z[k] for k in z.files}  # reading every array checks its CRC
            what = os.path.basename(base) + ".json"
            with open(base + ".json") as fh:
                scalars = json.load(fh)
        except (OSError, EOFError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, KeyError) as e:
            raise _Damaged(f"{what} unreadable ({_short(e)})") from None
        if not isinstance(scalars, dict) or scalars.get("iteration") != man["iteration"] \
                or not isinstance(scalars.get("history"), list):
            raise _Damaged(f"{what} does not belong to the manifest (iteration or history missing)")
        state.update(scalars)
        return state

    def precheck(self, check=None) -> None:
        """The checks of :meth:`resume` that need neither the input nor the other ranks (no collective).

        Made on the newest checkpoint with a readable manifest: raises :class:`InputError` when there is no
        checkpoint, or when it was made with other settings, ranks or data layout or ``check`` refuses it.
        Run before the frames are read; the input's fingerprint and the rank files are checked by
        :meth:`resume`.

        Parameters
        ----------
        check : callable, optional
            ``check(manifest) -> str | None``: a further reason why this run cannot continue it (as in
            :meth:`resume`).

        Raises
        ------
        InputError
            No checkpoint, other settings, ranks or data layout, or ``check``'s reason.
        """
        names = self.candidates()
        if not names:
            raise InputError(f"no checkpoint in {self.where}; run without --resume (or with --checkpoint-every)")
        for name in names:
            d = os.path.join(self.where, name)
            try:
                man = self._manifest(d)
            except _Damaged:
                continue  # resume() says so, and falls back
            msg = self._refusal(d, man, None, check_input=False) or (check(man) if check is not None else None)
            if msg is not None:
                raise InputError(msg)
            return

    def resume(self, comm, check=None) -> tuple[dict, dict, list]:
        """Load this rank's state from the newest intact checkpoint (collective: every rank calls it).

        Rank 0's fingerprint is broadcast; every rank reads the candidates' manifests and its own files,
        and the ranks agree on each candidate in turn, so they all take the same one or all raise.

        Parameters
        ----------
        comm : :class:`hpc_pt.parallel.Comm`
            The communicator of the ranks that resume together.
        check : callable, optional
            ``check(manifest) -> str | None``: a further reason (one line) why this run cannot continue
            a checkpoint with that manifest (e.g. one past the run's iterations).

        Returns
        -------
        state : dict
            This rank's state (arrays as NumPy arrays, scalars, the history rows).
        manifest : dict
            The checkpoint's manifest.
        skipped : list of tuple
            ``(name, reason)`` of each newer checkpoint skipped as damaged.

        Raises
        ------
        InputError
            On every rank: no checkpoint, none intact, or the newest intact one was made with another
            input, settings or number of ranks, or ``check`` refuses it.
        """
        fingerprint = _bcast_json(comm, self.fingerprint)
        names = _bcast_json(comm, self.candidates() if self.rank == 0 else None)
        if not names:
            raise _everywhere(InputError(f"no checkpoint in {self.where}; run without --resume (or with "
                                         "--checkpoint-every)"))
        skipped = []
        for name in names:
            d = os.path.join(self.where, name)
            code, msg, state, man = 0, None, None, None
            try:
                man = self._manifest(d)
                msg = self._refusal(d, man, fingerprint) or (check(man) if check is not None else None)
                if msg is not None:
                    code = 2
                else:
                    state = self._load(d, man)
            except _Damaged as e:
                code, msg = 1, str(e)
            refused = comm.sum_scalar(1.0 if code == 2 else 0.0)
            damaged = comm.sum_scalar(1.0 if code == 1 else 0.0)
            if refused:
                if code == 2:
                    raise _everywhere(InputError(msg))
                err = InputError(f"{int(refused)} other rank(s) of {self.size} refused to resume from {d}; see "
                                 "their error messages")
                err.secondary = True
                raise _everywhere(err)
            if damaged:
                skipped.append((name, msg if code == 1 else f"damaged on {int(damaged)} other rank(s)"))
                continue
            self.previous = name
            return state, man, skipped
        why = "; ".join(f"{n}: {r}" for n, r in skipped)
        raise _everywhere(InputError(f"no intact checkpoint in {self.where} ({why}); start afresh by dropping "
                                     "--resume (new checkpoints replace these)"))


def _short(e: Exception) -> str:
    """An exception as a short one-line text."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _everywhere(err: InputError) -> InputError:
    """Mark an error every rank raises at the same point (callers need not abort the job)."""
    err.all_ranks = True
    return err


__all__ = ["CheckpointStore", "input_fingerprint", "FINGERPRINT_FRAMES"]
