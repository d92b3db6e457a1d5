"""Reconstructed volumes as Zarr v3 stores with OME-Zarr (NGFF 0.5) metadata; see docs/formats.md.

Layout of ``<out>.zarr``::

    volume   complex64 (nz, n, n)  delta + i beta, chunks (cz, n, n)   <- what hpc-pt reads back
    0        float32   (nz, n, n)  delta, full resolution               <- OME multiscale level 0
    1        float32   2x block-mean of delta                          <- OME multiscale level 1
    beta     float32   (nz, n, n)  beta
    zarr.json  group attrs: "ome" (NGFF 0.5 multiscales over "0" and "1"), voxel_size_m, voxel_size_nm,
               units, quantities (what delta, beta and u mean for the forward model), provenance, plus
               caller attrs; metadata consolidated.

Every array of the multiscale (and ``volume``, ``beta``) carries ``dimension_names`` ("z", "y", "x"), as
NGFF 0.5 requires, and the attributes ``quantity`` and ``units``.

Viewers (napari with napari-ome-zarr, neuroglancer, ...) cannot display complex numbers, hence the real
pyramid next to the complex array.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import warnings

import numpy as np
import zarr

from ..errors import InputError
from .provenance import jsonable, provenance

__all__ = ["begin_volume", "consolidate_volume", "estimate_volume_bytes", "finish_volume", "write_volume", "write_volume_rows", "read_volume", "read_table", "default_chunks_z", "ome_multiscales", "downsample2", "quantities"]

CHUNK_BYTES = 16 * 2**20
AXES = ("z", "y", "x")  # volume axes; z is the vertical rotation axis


def default_chunks_z(shape, itemsize: int = 8, target_bytes: int = CHUNK_BYTES) -> int:
    """Slices per chunk so one (cz, n, n) chunk is at most ``target_bytes`` (at least 1 slice).

    Parameters
    ----------
    shape : tuple of int
        The volume's shape (nz, ...).
    itemsize : int, optional
        Bytes per element. Default 8 (complex64).
    target_bytes : int, optional
        Largest chunk in bytes. Default :data:`CHUNK_BYTES` (16 MiB).

    Returns
    -------
    int
        Slices per chunk, between 1 and nz.
    """
    nz = int(shape[0])
    per_slice = int(np.prod(shape[1:])) * itemsize
    return max(1, min(nz, target_bytes // max(per_slice, 1)))


def downsample2(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """2x block mean along every axis longer than 1 (an odd trailing element is dropped).

    Returns the array and the per-axis factors (2, or 1 where the axis was left alone).

    Parameters
    ----------
    x : numpy.ndarray
        The array, any dimension.

    Returns
    -------
    numpy.ndarray
        The block means.
    tuple of int
        The factor of each axis.
    """
    factors = []
    for ax in range(x.ndim):
        n = x.shape[ax]
        if n < 2:
            factors.append(1)
            continue
        n2 = n // 2
        x = np.take(x, np.arange(2 * n2), axis=ax)
        shp = x.shape[:ax] + (n2, 2) + x.shape[ax + 1:]
        x = x.reshape(shp).mean(axis=ax + 1)
        factors.append(2)
    return x, tuple(factors)


def _unit_for(voxel_m: float) -> tuple[str, float]:
    """NGFF unit name and metres -> unit factor: nanometres below 1 um voxels, micrometres otherwise."""
    return ("nanometer", 1e9) if voxel_m < 1e-6 else ("micrometer", 1e6)


def ome_multiscales(voxel_size_m: float, factors1=(2, 2, 2), name: str = "delta") -> dict:
    """The ``attrs["ome"]`` dict (NGFF 0.5) for levels "0" (full) and "1" (``factors1`` downsampled).

    Parameters
    ----------
    voxel_size_m : float
        Voxel size in metres (the unit is nanometres below 1 um voxels, micrometres otherwise).
    factors1 : tuple of int, optional
        Downsampling factor of level "1" per axis (z, y, x). Default (2, 2, 2).
    name : str, optional
        The multiscale's name. Default "delta".

    Returns
    -------
    dict
        ``{"version": "0.5", "multiscales": [...]}`` with the axes, scales and translations.
    """
    unit, k = _unit_for(voxel_size_m)
    s = voxel_size_m * k
    scale1 = [s * f for f in factors1]
    trans1 = [(f - 1) * s / 2 for f in factors1]  # block centres move by half the extra width
    return {
        "version": "0.5",
        "multiscales": [{
            "name": name,
            "axes": [{"name": a, "type": "space", "unit": unit} for a in ("z", "y", "x")],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [s, s, s]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": scale1},
                                                            {"type": "translation", "translation": trans1}]},
            ],
            "type": "mean",
            "metadata": {"description": "real part (delta) of u = delta + i beta; 2x block mean"},
        }],
    }


def quantities(model: str | None = None, voxel_size_m: float | None = None,
               energy_ev: float | None = None) -> dict:
    """What the stored numbers mean, for the ``quantities`` attribute of a store (see docs/formats.md).

    ``model``: "exp" (delta and beta are refractive-index quantities), "linear" (u is the linear
    model's dimensionless sample, not a refractive index) or None (unknown: both readings given).
    With ``voxel_size_m`` and ``energy_ev``, ``k_dz_rad`` = 2 pi dz / wavelength is included: the phase
    (radians) one voxel of delta = 1 adds for the exponential model.

    Parameters
    ----------
    model : {"exp", "linear"} or None, optional
        The forward model of the reconstruction; anything else counts as unknown.
    voxel_size_m : float, optional
        Voxel size in metres.
    energy_ev : float, optional
        Photon energy in eV (positive and finite for ``k_dz_rad``).

    Returns
    -------
    dict
        ``forward_model``, ``u``, ``model_meaning``, ``delta``, ``beta``, ``axes`` (descriptions) and,
        when computable, ``k_dz_rad``.
    """
    from .. import conventions as cv

    exp = {"model": "exp: exit wave psi = probe * exp(i k dz P u), P the sum over voxels along each ray, "
                    "k = 2 pi / wavelength, dz = voxel size; u = delta + i beta with n = 1 - delta + i beta",
           "delta": "refractive-index decrement delta, dimensionless; one voxel adds a phase of k dz delta rad",
           "beta": "absorption index beta, dimensionless; one voxel scales the amplitude by exp(-k dz beta)"}
    lin = {"model": "linear (Rytov approximation): exit wave psi = probe * P u, P the sum over voxels along "
                    "each ray; u is the dimensionless 3D sample whose projection is the complex transmission "
                    "seen by 2D ptychography, not a refractive index; the arrays named delta / beta hold "
                    "Re u / Im u",
           "delta": "Re u, dimensionless (linear model: not a refractive-index decrement)",
           "beta": "Im u, dimensionless (linear model: not an absorption index)"}
    if model == "exp":
        q = exp
    elif model == "linear":
        q = lin
    else:
        q = {"model": "unknown; for 'exp' " + exp["model"] + ". For 'linear' " + lin["model"],
             "delta": "Re u, dimensionless (delta for the exp model)",
             "beta": "Im u, dimensionless (beta for the exp model)"}
    out = {"forward_model": model or "unknown", "u": "u = delta + i beta, complex, dimensionless",
           "model_meaning": q["model"], "delta": q["delta"], "beta": q["beta"],
           "axes": "(z, y, x): z the vertical rotation axis; voxel size isotropic (voxel_size_m, voxel_size_nm)"}
    if (isinstance(voxel_size_m, (int, float)) and isinstance(energy_ev, (int, float))
            and np.isfinite(energy_ev) and energy_ev > 0 and voxel_size_m > 0):
        out["k_dz_rad"] = float(cv.k_dz(float(energy_ev), float(voxel_size_m)))
    return out


def _level1_factors(shape) -> tuple[int, ...]:
    return tuple(2 if n >= 2 else 1 for n in shape)


def begin_volume(path, shape, voxel_size_m: float, attrs: dict | None = None, overwrite: bool = False,
                 chunks_z: int | None = None, command=None, config=None, input_path=None,
                 tables: dict | None = None, arrays: dict | None = None, token: str | None = None) -> str:
    """First step of a (possibly parallel) volume write: create ``<path>.tmp-<token>`` with every array empty.

    The store also gets the tables, extra arrays and attributes. Returns the temporary path; every writer then
    fills its rows with :func:`write_volume_rows` and one process calls :func:`finish_volume`.

    Parameters
    ----------
    path : str or path-like
        The final store path.
    shape : tuple of int
        (nz, n, n) of the volume.
    voxel_size_m : float
        Voxel size in metres, positive and finite.
    attrs : dict, optional
        Extra group attributes (``model`` and ``energy_ev`` among them feed :func:`quantities`).
    overwrite : bool, optional
        An existing ``path`` may be replaced (by :func:`finish_volume`). Default False.
    chunks_z : int, optional
        Slices per chunk; default :func:`default_chunks_z`.
    command, config, input_path : optional
        Recorded in the ``provenance`` attribute (:func:`hpc_pt.io.provenance.provenance`).
    tables : dict, optional
        ``{group: {column: 1D array}}``: groups of float64 columns.
    arrays : dict, optional
        ``{name: array}``: further arrays (e.g. the refined ``probe``).
    token : str, optional
        Suffix of the temporary store; default the process id.

    Returns
    -------
    str
        The temporary store's path.

    Raises
    ------
    InputError
        When ``shape`` is not 3D, the voxel size is not positive and finite, ``path`` exists without
        ``overwrite``, or the temporary folder cannot be created.
    OSError
        For a full disk or quota (ENOSPC, EDQUOT), left to the caller, whose message says the bytes needed.
    """
    path = os.path.abspath(os.fspath(path))
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise InputError(f"volume has shape {shape}; write_volume needs a 3D (nz, n, n) array")
    if not (np.isfinite(voxel_size_m) and voxel_size_m > 0):
        raise InputError(f"voxel size {voxel_size_m} m must be a positive finite number; check the geometry")
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path} already exists; pass --force (overwrite=True) to replace it")
    cz = default_chunks_z(shape) if chunks_z is None else max(1, min(int(chunks_z), shape[0]))
    tmp = f"{path}.tmp-{token or os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.mkdir(tmp)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the caller's message says how many bytes are needed
            raise
        raise InputError(f"cannot write {path}: {e.strerror or e}; choose a writable --out path") from None
    try:
        g = zarr.open_group(tmp, mode="w-", zarr_format=3)
        chunks = (cz,) + shape[1:]
        dims = dict(dimension_names=AXES)  # NGFF 0.5: every array of a multiscale names its axes
        g.create_array("volume", shape=shape, chunks=chunks, dtype="complex64", **dims)
        g.create_array("0", shape=shape, chunks=chunks, dtype="float32", **dims)
        g.create_array("beta", shape=shape, chunks=chunks, dtype="float32", **dims)
        factors = _level1_factors(shape)
        low = tuple(n // f for n, f in zip(shape, factors))
        cz1 = max(1, cz // factors[0]) if cz % factors[0] == 0 else 1  # level-1 chunks never straddle writers
        g.create_array("1", shape=low, chunks=(min(cz1, max(low[0], 1)),) + low[1:], dtype="float32", **dims)
        for gname, cols in (tables or {}).items():
            tg = g.create_group(gname)
            for col, values in cols.items():
                v = np.asarray(values, dtype=np.float64).ravel()
                tg.create_array(col, shape=v.shape, chunks=(max(1, v.size),), dtype="float64")[...] = v
        for name, arr in (arrays or {}).items():
            a = np.asarray(arr)
            g.create_array(name, shape=a.shape, chunks=a.shape or (1,), dtype=a.dtype)[...] = a
        meta = dict(jsonable(attrs or {}))
        model = meta.get("model") if meta.get("model") in ("linear", "exp") else None
        q = quantities(model, float(voxel_size_m), meta.get("energy_ev"))
        for name, what in (("volume", q["u"]), ("0", q["delta"]), ("1", q["delta"] + "; 2x2x2 block mean"),
                           ("beta", q["beta"])):
            g[name].attrs.update({"quantity": what, "units": "dimensionless"})
        units = {"volume": "dimensionless (delta + i beta)", "voxel_size_m": "m", "voxel_size_nm": "nm",
                 "0": "dimensionless (delta)", "1": "dimensionless (delta, 2x block mean)",
                 "beta": "dimensionless (beta)"}
        if "probe" in (arrays or {}):
            units["probe"] = ("complex amplitude, sqrt(photons) per sample-plane pixel: with the "
                              "orthonormal FFT, sum |probe|^2 = photons per frame through a unit transmission")
        meta.update({
            "ome": ome_multiscales(float(voxel_size_m), factors),
            "voxel_size_m": float(voxel_size_m),
            "voxel_size_nm": float(voxel_size_m) * 1e9,
            "shape": list(shape),
            "chunks_z": int(cz),
            "axes": list(AXES),
            "units": units,
            "quantities": q,
            "provenance": jsonable(provenance(command=command, config=config, input_path=input_path)),
        })
        g.attrs.update(meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def write_volume_rows(tmp, z0: int, rows, next_row=None) -> None:
    """Write rows ``z0 .. z0 + len(rows)`` of the volume into a store begun by :func:`begin_volume`.

    Also writes the rows of its real / imaginary parts, and the level-1 block means whose first row is in this
    range. ``next_row``: the volume's row ``z0 + len(rows)`` when this range ends inside a 2-row block (the
    following writer's first row). Writers whose row ranges start on chunk boundaries never share a chunk.

    Parameters
    ----------
    tmp : str
        The temporary store (:func:`begin_volume`).
    z0 : int
        Global index of the first row.
    rows : array_like
        (rows, n, n) volume rows (cast to complex64).
    next_row : array_like, optional
        (n, n): the row after the range, when it ends inside a 2-row block.
    """
    g = zarr.open_group(tmp, mode="r+")
    rows = np.asarray(rows).astype(np.complex64, copy=False)
    z1 = z0 + rows.shape[0]
    if rows.shape[0]:
        g["volume"][z0:z1] = rows
        g["0"][z0:z1] = rows.real
        g["beta"][z0:z1] = rows.imag
    shape = tuple(g["volume"].shape)
    fz, fy, fx = _level1_factors(shape)
    first = -(-z0 // fz)  # level-1 rows whose first volume row lies in [z0, z1)
    last = min(-(-z1 // fz), shape[0] // fz)
    if last <= first:
        return
    ext = rows.real.astype(np.float32)
    if next_row is not None:
        ext = np.concatenate([ext, np.asarray(next_row).real.astype(np.float32)[None]], axis=0)
    blk = ext[first * fz - z0:last * fz - z0]
    ny, nx = shape[1] // fy, shape[2] // fx
    blk = blk[:, :ny * fy, :nx * fx].reshape(last - first, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5))
    g["1"][first:last] = blk.astype(np.float32)


def consolidate_volume(tmp) -> None:
    """Consolidate the metadata of a store begun by :func:`begin_volume` whose rows are all written.

    It is the last write into it before it is moved into place.

    Parameters
    ----------
    tmp : str
        The temporary store.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
        zarr.consolidate_metadata(tmp)


def finish_volume(tmp, path, overwrite: bool = False) -> str:
    """Consolidate the metadata once and move the finished store into place.

    An existing ``path`` is replaced only now, with ``overwrite`` (see :func:`hpc_pt.io.safety.commit`). On any
    failure the temporary store is removed and an existing ``path`` is left as it was.

    Parameters
    ----------
    tmp : str
        The temporary store, every row written.
    path : str or path-like
        The final store path.
    overwrite : bool, optional
        Replace an existing ``path``. Default False.

    Returns
    -------
    str
        The absolute ``path`` of the finished store.

    Raises
    ------
    InputError
        When ``path`` exists without ``overwrite``.
    """
    from .safety import commit

    path = os.path.abspath(os.fspath(path))
    try:
        consolidate_volume(tmp)
        if os.path.lexists(path) and not overwrite:
            raise InputError(f"{path} already exists; pass --force (overwrite=True) to replace it")
        commit([(tmp, path)], str(os.getpid()))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def estimate_volume_bytes(shape, chunks_z: int | None = None, tables: dict | None = None,
                          arrays: dict | None = None, attrs: dict | None = None, block: int = 4096) -> int:
    """Upper estimate of the disk space a store of :func:`begin_volume`'s layout takes.

    Every chunk at its uncompressed size (the default compression usually does better) rounded up to
    ``block`` bytes, one block per metadata file and per folder, and the attributes' JSON twice (the group's
    own and the consolidated copy). The one-line disk-full errors quote it.

    Parameters
    ----------
    shape : tuple of int
        (nz, n, n) of the volume.
    chunks_z : int, optional
        Slices per chunk; default :func:`default_chunks_z`.
    tables, arrays, attrs : dict, optional
        As :func:`begin_volume`.
    block : int, optional
        File-system block size in bytes. Default 4096.

    Returns
    -------
    int
        Bytes.
    """
    shape = tuple(int(s) for s in shape)
    cz = default_chunks_z(shape) if chunks_z is None else max(1, min(int(chunks_z), shape[0]))

    def up(n):
        return -(-int(n) // block) * block

    plane = int(np.prod(shape[1:]))
    nchunks = -(-shape[0] // cz)
    total, files = 0, 1  # the group's zarr.json
    for itemsize in (8, 4, 4):  # volume, 0, beta
        total += (shape[0] // cz) * up(cz * plane * itemsize) + (up((shape[0] % cz) * plane * itemsize)
                                                                 if shape[0] % cz else 0)
        total += up(1024) + 3 * block + 2 * nchunks * block  # zarr.json, array / c / index folders
        files += 1
    low = [n // f for n, f in zip(shape, _level1_factors(shape))]
    total += up(int(np.prod(low)) * 4) + (nchunks + 1) * block * 3 + up(1024)
    for cols in (tables or {}).values():
        total += block + up(1024)
        for values in cols.values():
            total += up(np.asarray(values).size * 8) + up(1024) + 3 * block
            files += 1
    for a in (arrays or {}).values():
        total += up(np.asarray(a).nbytes) + up(1024) + 3 * block
        files += 1
    meta = len(json.dumps(jsonable(attrs or {}), default=str)) + 8192  # + provenance, units, quantities
    return int(total + 2 * up(meta + 1024 * files))


def write_volume(path, volume, voxel_size_m: float, attrs: dict | None = None, overwrite: bool = False,
                 chunks_z: int | None = None, command=None, config=None, input_path=None,
                 tables: dict | None = None, arrays: dict | None = None) -> str:
    """Write a (nz, n, n) complex volume u = delta + i beta as a Zarr v3 / OME-Zarr 0.5 store.

    The store is built at ``<path>.tmp-<pid>`` and renamed into place, so a failure leaves nothing (a full
    disk or quota: an :class:`InputError` with the bytes needed, :func:`estimate_volume_bytes`).
    An existing ``path`` is refused unless ``overwrite`` (then it is replaced only after the new store is
    complete). ``command``, ``config`` and ``input_path`` go into the ``provenance`` attribute (the input
    file's sha256 is computed by streaming it). ``tables`` = {group: {column: 1D array}} adds groups of
    float64 columns (the solver history goes to ``history/<column>``); ``arrays`` = {name: array} adds
    further arrays (e.g. the refined ``probe``). Returns the absolute path. (Parallel writers use
    :func:`begin_volume`, :func:`write_volume_rows` and :func:`finish_volume` directly.)

    Parameters
    ----------
    path : str or path-like
        The store to write.
    volume : array_like
        (nz, n, n) complex volume.
    voxel_size_m : float
        Voxel size in metres.
    attrs : dict, optional
        Extra group attributes.
    overwrite : bool, optional
        Replace an existing store. Default False.
    chunks_z : int, optional
        Slices per chunk; default :func:`default_chunks_z`.
    command, config, input_path : optional
        Recorded in the ``provenance`` attribute.
    tables : dict, optional
        ``{group: {column: 1D array}}``.
    arrays : dict, optional
        ``{name: array}``.

    Returns
    -------
    str
        The absolute path of the store.

    Raises
    ------
    InputError
        When the volume is not 3D, the voxel size is invalid, ``path`` exists without ``overwrite``, it cannot
        be written, or the disk or quota is full.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise InputError(f"volume has shape {vol.shape}; write_volume needs a 3D (nz, n, n) array")
    from .safety import write_failure

    try:
        tmp = begin_volume(path, vol.shape, voxel_size_m, attrs=attrs, overwrite=overwrite, chunks_z=chunks_z,
                           command=command, config=config, input_path=input_path, tables=tables, arrays=arrays)
        try:
            write_volume_rows(tmp, 0, vol)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return finish_volume(tmp, path, overwrite)
    except OSError as e:  # a full disk or quota: one line with the bytes the store needs
        full = write_failure(e, path, estimate_volume_bytes(vol.shape, chunks_z, tables, arrays, attrs))
        if full is None:
            raise
        raise full from None


def read_volume(path) -> tuple[np.ndarray, dict]:
    """(volume complex64 (nz, n, n), group attrs dict) of a store written by :func:`write_volume`.

    Parameters
    ----------
    path : str or path-like
        The store.

    Returns
    -------
    volume : numpy.ndarray
        complex64 array (nz, n, n).
    attrs : dict
        The group's attributes.

    Raises
    ------
    InputError
        When the store does not exist or holds no ``volume`` array.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such Zarr store; check the path")
    try:
        g = zarr.open_group(path, mode="r")
        arr = g["volume"]
    except (KeyError, FileNotFoundError, ValueError, TypeError) as e:
        raise InputError(f"{path}: not an hpc-pt Zarr volume ({type(e).__name__}: {e}); "
                         "give a store written by hpc-pt (with a 'volume' array)") from None
    return np.asarray(arr[...], dtype=np.complex64), dict(g.attrs.asdict())


def read_table(path, name: str = "history") -> dict:
    """{column: float64 array} of a table group written by :func:`write_volume` (empty if absent).

    Parameters
    ----------
    path : str or path-like
        The store.
    name : str, optional
        The table group. Default "history".

    Returns
    -------
    dict
        ``{column: numpy.ndarray}``, columns sorted by name; empty when the group is absent.
    """
    g = zarr.open_group(os.fspath(path), mode="r")
    if name not in g:
        return {}
    t = g[name]
    return {k: np.asarray(t[k][...]) for k in sorted(t.array_keys())}
