"""Reconstructed volumes as Zarr v3 stores with OME-Zarr (NGFF 0.5) metadata; see docs/formats.md.

Layout of ``<out>.zarr``::

    volume   complex64 (nz, n, n)  delta + i beta, chunks (cz, n, n)   <- what hpc-pt reads back
    0        float32   (nz, n, n)  delta, full resolution               <- OME multiscale level 0
    1        float32   2x block-mean of delta                          <- OME multiscale level 1
    beta     float32   (nz, n, n)  beta
    zarr.json  group attrs: "ome" (NGFF 0.5 multiscales over "0" and "1"), voxel_size_m, units,
               provenance, plus caller attrs; metadata consolidated.

Viewers (napari with napari-ome-zarr, neuroglancer, ...) cannot display complex numbers, hence the real
pyramid next to the complex array.
"""
from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import zarr

from ..errors import InputError
from .provenance import jsonable, provenance

__all__ = ["write_volume", "read_volume", "read_table", "default_chunks_z", "ome_multiscales", "downsample2"]

CHUNK_BYTES = 16 * 2**20


def default_chunks_z(shape, itemsize: int = 8, target_bytes: int = CHUNK_BYTES) -> int:
    """Slices per chunk so one (cz, n, n) chunk is at most ``target_bytes`` (at least 1 slice)."""
    nz = int(shape[0])
    per_slice = int(np.prod(shape[1:])) * itemsize
    return max(1, min(nz, target_bytes // max(per_slice, 1)))


def downsample2(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """2x block mean along every axis longer than 1 (an odd trailing element is dropped).

    Returns the array and the per-axis factors (2, or 1 where the axis was left alone).
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
    """The ``attrs["ome"]`` dict (NGFF 0.5) for levels "0" (full) and "1" (``factors1`` downsampled)."""
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


def write_volume(path, volume, voxel_size_m: float, attrs: dict | None = None, overwrite: bool = False,
                 chunks_z: int | None = None, command=None, config=None, input_path=None,
                 tables: dict | None = None, arrays: dict | None = None) -> str:
    """Write a (nz, n, n) complex volume u = delta + i beta as a Zarr v3 / OME-Zarr 0.5 store.

    The store is built at ``<path>.tmp-<pid>`` and renamed into place, so a failure leaves nothing.
    An existing ``path`` is refused unless ``overwrite`` (then it is replaced only after the new store is
    complete). ``command``, ``config`` and ``input_path`` go into the ``provenance`` attribute (the input
    file's sha256 is computed by streaming it). ``tables`` = {group: {column: 1D array}} adds groups of
    float64 columns (the solver history goes to ``history/<column>``); ``arrays`` = {name: array} adds
    further arrays (e.g. the refined ``probe``). Returns the absolute path.
    """
    path = os.path.abspath(os.fspath(path))
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise InputError(f"volume has shape {vol.shape}; write_volume needs a 3D (nz, n, n) array")
    if not (np.isfinite(voxel_size_m) and voxel_size_m > 0):
        raise InputError(f"voxel size {voxel_size_m} m must be a positive finite number; check the geometry")
    vol = vol.astype(np.complex64, copy=False)
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path} already exists; pass --force (overwrite=True) to replace it")
    cz = default_chunks_z(vol.shape) if chunks_z is None else max(1, min(int(chunks_z), vol.shape[0]))
    tmp = f"{path}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.mkdir(tmp)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}; choose a writable --out path") from None
    try:
        g = zarr.open_group(tmp, mode="w-", zarr_format=3)
        chunks = (cz,) + vol.shape[1:]
        g.create_array("volume", shape=vol.shape, chunks=chunks, dtype="complex64")[...] = vol
        g.create_array("0", shape=vol.shape, chunks=chunks, dtype="float32")[...] = vol.real
        g.create_array("beta", shape=vol.shape, chunks=chunks, dtype="float32")[...] = vol.imag
        low, factors = downsample2(vol.real.astype(np.float32))
        cz1 = max(1, min(low.shape[0], cz))
        g.create_array("1", shape=low.shape, chunks=(cz1,) + low.shape[1:], dtype="float32")[...] = low
        for gname, cols in (tables or {}).items():
            tg = g.create_group(gname)
            for col, values in cols.items():
                v = np.asarray(values, dtype=np.float64).ravel()
                tg.create_array(col, shape=v.shape, chunks=(max(1, v.size),), dtype="float64")[...] = v
        for name, arr in (arrays or {}).items():
            a = np.asarray(arr)
            g.create_array(name, shape=a.shape, chunks=a.shape or (1,), dtype=a.dtype)[...] = a
        meta = dict(jsonable(attrs or {}))
        meta.update({
            "ome": ome_multiscales(float(voxel_size_m), factors),
            "voxel_size_m": float(voxel_size_m),
            "shape": list(vol.shape),
            "axes": ["z", "y", "x"],
            "units": {"volume": "dimensionless (delta + i beta)", "voxel_size_m": "m",
                      "0": "dimensionless (delta)", "1": "dimensionless (delta, 2x block mean)",
                      "beta": "dimensionless (beta)"},
            "provenance": jsonable(provenance(command=command, config=config, input_path=input_path)),
        })
        g.attrs.update(meta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
            zarr.consolidate_metadata(tmp)
        if os.path.exists(path):  # overwrite=True: swap only once the new store is complete
            old = f"{path}.old-{os.getpid()}"
            os.rename(path, old)
            os.rename(tmp, path)
            if os.path.isdir(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.unlink(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_volume(path) -> tuple[np.ndarray, dict]:
    """(volume complex64 (nz, n, n), group attrs dict) of a store written by :func:`write_volume`."""
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
    """{column: float64 array} of a table group written by :func:`write_volume` (empty if absent)."""
    g = zarr.open_group(os.fspath(path), mode="r")
    if name not in g:
        return {}
    t = g[name]
    return {k: np.asarray(t[k][...]) for k in sorted(t.array_keys())}
