"""Output safety: outputs never touch inputs, full disks give one line, results replace results whole.

Used by every command that writes (``reconstruct``, its checkpoints, ``simulate``, ``convert``,
``ptycho2d``):

* :func:`refuse_overlap`: an output that *is* an input (the same file, also through a symbolic or hard
  link), *contains* one (a folder holding it) or *lies inside* one (an input folder) is refused before any
  work, whatever ``--force`` says: replacing it would damage the input.
* :func:`write_failure`: an :class:`OSError` for a full disk (``ENOSPC``) or an exhausted quota
  (``EDQUOT``) becomes one :class:`~hpc_pt.errors.InputError` line with the bytes the output needs and
  the bytes free there.
* :func:`commit`: move finished temporaries into place, replacing an existing result only once every
  part of the new one exists, and undoing the moves done so far if a later one fails.
* :func:`stale_temporaries` / :func:`sweep`: the temporaries a killed run of the same output left behind
  (``OUT.tmp-*`` stores, ``OUT.old-*`` replaced stores, ``.OUT.png.tmp-*`` figures, checkpoint
  ``iter-K.partial`` folders), removed by ``--resume``; never a path that is or holds an input.
"""
from __future__ import annotations

import errno
import glob
import os
import shutil

from ..errors import InputError

__all__ = ["agree_on_failure", "commit", "free_bytes", "is_disk_full", "overlap", "refuse_overlap", "remove_path",
           "stale_checkpoint_parts", "stale_temporaries", "sweep", "write_failure", "write_file"]

#: errno values that mean "no room for this output", and how the message names them
DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}


# --------------------------------------------------------------------------------------------------
# outputs against inputs
# --------------------------------------------------------------------------------------------------

def _identity(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _ancestors(path) -> list[tuple[int, int]]:
    """Identities of the existing folders above ``path`` (after resolving links), nearest first."""
    out = []
    p = os.path.realpath(os.fspath(path))
    while True:
        parent = os.path.dirname(p)
        if parent == p:
            return out
        p = parent
        ident = _identity(p)
        if ident is not None:
            out.append(ident)


def overlap(output, input_path) -> str | None:
    """How writing ``output`` would touch ``input_path``.

    ``"is"`` (the same file or folder, also through a link), ``"contains"`` (``output`` is a folder holding
    the input), ``"lies inside"`` (the input is a folder holding ``output``), or None. Compared as resolved
    paths (also for paths that do not exist yet, such as a checkpoint folder) and, for existing ones, by
    device and inode, so other spellings of a path, symbolic links, hard links and bind mounts are all seen.

    Parameters
    ----------
    output : str or path-like
        The output path (it need not exist).
    input_path : str or path-like
        The input path.

    Returns
    -------
    str or None
        "is", "contains", "lies inside", or None when they do not touch.
    """
    ro, ri = os.path.realpath(os.fspath(output)), os.path.realpath(os.fspath(input_path))
    if ro == ri:
        return "is"
    if ri.startswith(ro.rstrip(os.sep) + os.sep):
        return "contains"
    if ro.startswith(ri.rstrip(os.sep) + os.sep):
        return "lies inside"
    inp = _identity(input_path)
    if inp is None:
        return None
    out = _identity(output)
    if out is not None and out == inp:
        return "is"
    if os.path.isdir(input_path) and inp in _ancestors(output):
        return "lies inside"
    if out is not None and os.path.isdir(output) and out in _ancestors(input_path):
        return "contains"
    return None


def refuse_overlap(outputs: dict, inputs: dict, relations=("is", "contains", "lies inside"),
                   what: str = "the input") -> None:
    """Raise :class:`InputError` when an output is, contains or lies inside an input.

    Called before any work, and whatever ``--force`` says: the output's writer would replace, remove or fill
    the input. None paths are skipped.

    Parameters
    ----------
    outputs : dict
        ``{label: path}``, e.g. ``{"--out": "r.zarr"}``.
    inputs : dict
        ``{label: path}`` of the inputs.
    relations : tuple of str, optional
        The relations (:func:`overlap`) refused. Default all three.
    what : str, optional
        Names the inputs in the message. Default "the input".

    Raises
    ------
    InputError
        For the first output and input in one of ``relations``, naming both.
    """
    for olabel, opath in outputs.items():
        if opath is None:
            continue
        for ilabel, ipath in inputs.items():
            if ipath is None:
                continue
            how = overlap(opath, ipath)
            if how in relations:
                raise InputError(f"{olabel} {os.path.abspath(os.fspath(opath))} {how} {ilabel} "
                                 f"{os.path.abspath(os.fspath(ipath))}: writing it would damage {what}, so it is "
                                 "refused even with --force; choose an output path outside the inputs")


# --------------------------------------------------------------------------------------------------
# write failures
# --------------------------------------------------------------------------------------------------

def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is an :class:`OSError` with ENOSPC or EDQUOT.

    Parameters
    ----------
    exc : BaseException
        The exception; its ``__cause__`` / ``__context__`` chain is followed.

    Returns
    -------
    bool
        Whether a full disk or quota is in the chain.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _errno_of(exc: BaseException) -> int | None:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def free_bytes(path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``path`` (its nearest existing folder).

    None when that cannot be asked.

    Parameters
    ----------
    path : str or path-like
        A path; it need not exist.

    Returns
    -------
    int or None
        ``f_bavail * f_frsize`` of :func:`os.statvfs`, or None.
    """
    p = os.path.abspath(os.fspath(path))
    while not os.path.isdir(p):
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return int(st.f_bavail) * int(st.f_frsize)


def _size(n: int) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def write_failure(exc: BaseException, what, needed: int | None, fix: str = "choose another --out",
                  at_least: bool = False) -> InputError | None:
    """The one-line error for a full disk or quota while writing ``what`` (None when ``exc`` is another failure).

    The message gives the bytes ``needed`` (an upper estimate, see the callers; with ``at_least``, the bytes
    written when the disk filled, a lower bound) and the bytes free now, after the temporaries were removed.

    Parameters
    ----------
    exc : BaseException
        The failure (its cause / context chain is searched for ENOSPC or EDQUOT).
    what : str or path-like
        The output being written.
    needed : int or None
        Bytes the output needs (or, with ``at_least``, bytes written); None leaves them out.
    fix : str, optional
        The alternative fix the message offers. Default "choose another --out".
    at_least : bool, optional
        ``needed`` is a lower bound (bytes written when the disk filled). Default False.

    Returns
    -------
    InputError or None
        The error to raise, or None when ``exc`` is not a full disk or quota.
    """
    code = _errno_of(exc)
    if code is None:
        return None
    what = os.path.abspath(os.fspath(what))
    free = free_bytes(what)
    if needed is None:
        need = ""
    elif at_least:
        need = f"; it needs more than the {int(needed):,} bytes ({_size(int(needed))}) written when the disk filled"
    else:
        need = f"; it needs up to about {int(needed):,} bytes ({_size(int(needed))})"
    have = "" if free is None else f", {free:,} bytes ({_size(free)}) are free there"
    return InputError(f"{DISK_FULL[code]} writing {what}{need}{have}; free some space (or raise the quota) "
                      f"or {fix}")


def agree_on_failure(comm, err: BaseException | None, what, needed: int | None = None, cleanup=None,
                     fix: str = "choose another --out") -> None:
    """Raise on every rank if any rank failed the write step every rank took part in.

    A collective when ``comm`` has several ranks; nothing happens when none failed.

    Rank 0 first runs ``cleanup()`` (remove the temporaries; every rank is past its writes by then). The
    failing rank raises its own error, a full disk or quota as :func:`write_failure`'s line with the
    ``needed`` bytes (this rank's share, summed over the ranks; None on every rank or on none); the others
    raise an :class:`InputError` marked ``secondary`` (its reason is the failing rank's message).

    Parameters
    ----------
    comm : hpc_pt.comm.Comm
        The communicator (``size`` and ``rank`` default to 1 and 0 when it lacks them).
    err : BaseException or None
        This rank's failure, or None.
    what : str or path-like
        The output written.
    needed : int, optional
        This rank's share of the bytes the output needs.
    cleanup : callable, optional
        Called (no arguments) on rank 0 before raising.
    fix : str, optional
        The alternative fix of a full-disk message. Default "choose another --out".

    Raises
    ------
    InputError
        The full-disk line, or on the ranks that did not fail the ``secondary`` one.
    BaseException
        The failing rank's own ``err`` when it is not a full disk.
    """
    size = int(getattr(comm, "size", 1))
    failed = comm.sum_scalar(1.0 if err is not None else 0.0) if size > 1 else float(err is not None)
    if not failed:
        return
    total = None
    if needed is not None:
        total = int(comm.sum_scalar(float(needed))) if size > 1 else int(needed)
    if cleanup is not None and int(getattr(comm, "rank", 0)) == 0:
        cleanup()
    if size > 1:  # the free bytes in the message are counted after the clean-up
        comm.sum_scalar(0.0)
    if err is None:
        other = InputError(f"{int(failed)} other rank(s) of {size} failed writing {what}; see their error messages")
        other.secondary = True
        other.all_ranks = True
        raise other
    full = write_failure(err, what, total, fix=fix)
    if full is not None:
        full.all_ranks = True
        raise full from None
    raise err


# --------------------------------------------------------------------------------------------------
# replacing results and cleaning up
# --------------------------------------------------------------------------------------------------

def write_file(path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` (a temporary name the caller moves into place).

    Parameters
    ----------
    path : str or path-like
        The file (replaced if it exists).
    data : bytes
        The content.
    """
    with open(path, "wb") as fh:
        fh.write(data)


def remove_path(path) -> None:
    """Remove a file, link or folder tree; a missing path is fine, other failures are ignored.

    Parameters
    ----------
    path : str or path-like
        The path; a link is removed, not what it points to.
    """
    p = os.fspath(path)
    try:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.unlink(p)
    except OSError:
        pass


def commit(moves, token: str) -> None:
    """Move every ``(tmp, final)`` of ``moves`` into place, in order.

    An existing ``final`` is set aside as ``final.old-<token>`` first and removed once every move is done; the
    last move is one atomic ``os.replace`` when its ``final`` is a file. If a move fails, the moves done so
    far are undone (each new part back to its temporary name, each old part restored) and the error is raised;
    the caller removes the temporaries.

    Parameters
    ----------
    moves : sequence of tuple
        ``(tmp, final)`` path pairs.
    token : str
        Suffix of the set-aside names (the run's token).

    Raises
    ------
    OSError
        When a move fails (after the moves done so far were undone).
    """
    done = []  # (tmp, final, backup or None)
    try:
        for k, (tmp, final) in enumerate(moves):
            last = k == len(moves) - 1
            backup = None
            if os.path.lexists(final) and not (last and os.path.isfile(tmp) and not os.path.isdir(final)):
                backup = f"{final}.old-{token}"
                remove_path(backup)
                os.rename(final, backup)
            try:
                os.replace(tmp, final)
            except BaseException:
                if backup is not None:
                    os.rename(backup, final)
                raise
            done.append((tmp, final, backup))
    except BaseException:
        for tmp, final, backup in reversed(done):
            try:
                os.rename(final, tmp)
                if backup is not None:
                    os.rename(backup, final)
            except OSError:
                pass
        raise
    for _tmp, _final, backup in done:
        if backup is not None:
            remove_path(backup)


def stale_temporaries(out, figure=None) -> list[str]:
    """Temporaries an earlier (killed) run writing ``out`` and ``figure`` may have left.

    ``OUT.tmp-*`` (a store being written), ``OUT.old-*`` (a result being replaced), ``.OUT.probe*`` (the
    writable-path probe) and ``.FIGURE.tmp-*`` (a figure being written).

    Parameters
    ----------
    out : str or path-like or None
        The output path.
    figure : str or path-like, optional
        The figure path.

    Returns
    -------
    list of str
        The matching absolute paths, sorted.
    """
    found = []
    for path in (out, figure):
        if path is None:
            continue
        p = os.path.abspath(os.fspath(path))
        d, b = os.path.dirname(p), glob.escape(os.path.basename(p))
        found += glob.glob(os.path.join(glob.escape(d), b + ".tmp-*"))
        found += glob.glob(os.path.join(glob.escape(d), b + ".old-*"))
        found += glob.glob(os.path.join(glob.escape(d), "." + b + ".tmp-*"))
        found += glob.glob(os.path.join(glob.escape(d), "." + b + ".probe*"))
    return sorted(set(found))


def stale_checkpoint_parts(where) -> list[str]:
    """Unfinished parts of checkpoints in the folder ``where``: ``iter-K.partial`` folders and ``LATEST.tmp``.

    A complete checkpoint is an ``iter-K`` folder named by ``LATEST``.

    Parameters
    ----------
    where : str or path-like or None
        The checkpoint folder.

    Returns
    -------
    list of str
        The paths found, sorted; empty when ``where`` is None or not a folder.
    """
    if where is None or not os.path.isdir(where):
        return []
    d = glob.escape(os.path.abspath(os.fspath(where)))
    return sorted(glob.glob(os.path.join(d, "iter-*.partial")) + glob.glob(os.path.join(d, "LATEST.tmp")))


def sweep(paths, inputs: dict | None = None) -> list[str]:
    """Remove ``paths`` except any that is, contains or lies inside one of ``inputs``.

    ``paths`` come from :func:`stale_temporaries` or :func:`stale_checkpoint_parts`.

    Parameters
    ----------
    paths : iterable of str
        The paths to remove (:func:`remove_path`).
    inputs : dict, optional
        ``{label: path}`` of the inputs to keep clear of.

    Returns
    -------
    list of str
        The removed paths.
    """
    removed = []
    for p in paths:
        if any(ip is not None and overlap(p, ip) for ip in (inputs or {}).values()):
            continue
        remove_path(p)
        removed.append(p)
    return removed
