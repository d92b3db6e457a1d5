"""Provenance metadata attached to every file hpc-pt writes (CXI root attrs, Zarr group attrs)."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import socket
import sys

import numpy as np

BLOCK = 1 << 20  # 1 MiB


def file_checksum(path, algorithm: str = "sha256", block: int = BLOCK) -> str:
    r"""Hex digest of a file, streamed in ``block``-byte reads (never loads the file).

    For a directory (the one-CXI-file-per-angle form) the digest is taken over the lines
    ``"<name> <sha256 of file>\n"`` of its regular files in sorted name order, so it changes when any
    file's content or name changes.

    Parameters
    ----------
    path : str or path-like
        A file or a directory.
    algorithm : str, optional
        A :func:`hashlib.new` name (also used for the per-file digests of a directory). Default "sha256".
    block : int, optional
        Bytes per read. Default 1 MiB.

    Returns
    -------
    str
        The hex digest.

    Raises
    ------
    OSError
        When the file cannot be read.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        h = hashlib.new(algorithm)
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                h.update(f"{name} {file_checksum(full, algorithm, block)}\n".encode())
        return h.hexdigest()
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def jsonable(obj):
    """Convert numpy scalars / arrays, tuples, paths and sets into plain JSON types (recursively).

    Dict keys become strings, complex numbers ``[real, imag]``, non-finite floats their ``str`` ("nan",
    "inf"), and any other object its ``str``.

    Parameters
    ----------
    obj : object
        The value to convert.

    Returns
    -------
    object
        A dict, list, str, int, float, bool or None that :func:`json.dumps` accepts.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, complex):
        return [obj.real, obj.imag]
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def to_json(obj) -> str:
    """``obj`` as a JSON string (through :func:`jsonable`, keys sorted).

    Parameters
    ----------
    obj : object
        The value: anything :func:`jsonable` accepts.

    Returns
    -------
    str
        The JSON text.
    """
    return json.dumps(jsonable(obj), sort_keys=True)


def provenance(command=None, config=None, input_path=None) -> dict:
    """Provenance record: hpc-pt version, command line, config, input checksum, time, host, versions.

    ``command`` defaults to the shlex-joined ``sys.argv``; ``input_path`` (file or directory) adds
    ``input_path`` and ``input_sha256`` (see :func:`file_checksum`).

    Parameters
    ----------
    command : str or sequence of str, optional
        The command line; a sequence is shlex-joined. Default ``sys.argv``.
    config : object, optional
        The settings, recorded through :func:`jsonable`.
    input_path : str or path-like, optional
        The input file or directory whose checksum is recorded.

    Returns
    -------
    dict
        ``hpc_pt_version``, ``command``, ``config``, ``timestamp_utc``, ``hostname``, ``python_version``,
        ``numpy_version`` and, with ``input_path``, ``input_path`` (absolute) and ``input_sha256``.
    """
    from .. import __version__

    if command is None:
        command = shlex.join(sys.argv)
    elif not isinstance(command, str):
        command = shlex.join(str(c) for c in command)
    rec = {
        "hpc_pt_version": __version__,
        "command": command,
        "config": jsonable(config) if config is not None else None,
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
    }
    if input_path is not None:
        rec["input_path"] = os.path.abspath(os.fspath(input_path))
        rec["input_sha256"] = file_checksum(input_path)
    return rec
