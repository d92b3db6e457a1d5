"""CXI (HDF5) reader and writer for ptycho-tomography data; the layout is documented in docs/formats.md.

One ``/entry_N`` per rotation angle. Frames are stored fftshifted (DC at the centre, as a detector sees
them) and held in memory with DC at index 0 (hpc_pt.conventions). Translations are the probe centre in
metres relative to the rotation axis (``conventions.positions_to_translations``).

Reading happens in two steps so that a distributed job can read only its own frames:
:func:`scan_cxi` reads the metadata (angles, translations, shapes, geometry, probe, mask) into a
:class:`CxiIndex` without touching the frames; :func:`read_frames` reads a slice of one angle's frames.
:func:`read_cxi` does both for a whole :class:`~hpc_pt.data.Dataset`.

Every problem with an input file is a one-line :class:`~hpc_pt.errors.InputError` naming the problem
and the fix.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field

import h5py
import numpy as np

from .. import conventions as cv
from ..data import AngleData, Dataset, Geometry
from ..errors import InputError
from ..operators.ptycho import validate_positions
from .provenance import provenance, to_json

__all__ = [
    "CXI_VERSION", "TRUTH_GROUP", "CxiEntry", "CxiIndex", "write_cxi", "scan_cxi", "read_frames",
    "read_cxi", "read_truth", "atomic_output", "check_output_path", "dc_position_check", "ensure_probe",
    "check_probe", "frames_per_read",
]

CXI_VERSION = 160
TRUTH_GROUP = "hpc_pt_truth"
FIELD_ATTR = "hpc_pt_field_shape"
MODEL_ATTR = "hpc_pt_model"  # root attribute: the forward model of the data, "linear" or "exp" (docs/formats.md)
CXI_SUFFIXES = (".cxi", ".h5", ".hdf5", ".hdf", ".nxs")

# paths inside one entry
P_DATA = "data_1/data"
P_TRANS = "sample_1/geometry_1/translation"
P_TRANS_ALT = "data_1/translation"
P_ANGLE = "sample_1/tomography_angle_deg"
P_ENERGY = "instrument_1/source_1/energy"
P_PROBE = "instrument_1/source_1/illumination"
P_DIST = "instrument_1/detector_1/distance"
P_XPIX = "instrument_1/detector_1/x_pixel_size"
P_YPIX = "instrument_1/detector_1/y_pixel_size"
P_MASK = "instrument_1/detector_1/mask"
P_AXIS = "sample_1/rotation_axis_x"  # optional: x (metres) of the rotation axis in the translations' frame

LAYOUTS = ("auto", "frames,3", "3,frames")


# --------------------------------------------------------------------------------------------------
# atomic output
# --------------------------------------------------------------------------------------------------

class atomic_output:
    """Context manager yielding a temporary path next to ``path``; renamed onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched (a full disk or quota
    becomes a one-line :class:`InputError`, :func:`hpc_pt.io.safety.write_failure`). Refuses an existing
    ``path`` unless ``overwrite``.

    Parameters
    ----------
    path : str or path-like
        The file to write (made absolute).
    overwrite : bool, optional
        Replace an existing ``path``. Default False.

    Raises
    ------
    InputError
        On entering: ``path`` is a directory, exists without ``overwrite``, or no temporary file can be
        created next to it. On leaving: the rename fails, or the write failed for lack of space.
    """

    def __init__(self, path, overwrite: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        self.overwrite = overwrite
        self.tmp = None

    def __enter__(self) -> str:
        """Create the temporary file (permissions as the umask allows) and return its path."""
        p = self.path
        if os.path.isdir(p):
            raise InputError(f"cannot write {p}: it is a directory; choose a file name for --out")
        if os.path.exists(p) and not self.overwrite:
            raise InputError(f"{p} already exists; pass --force (overwrite=True) to replace it")
        parent = os.path.dirname(p)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(p)}.tmp-", dir=parent)
        except OSError as e:
            raise InputError(f"cannot write {p}: {e.strerror or e}; choose a writable --out path") from None
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        self.tmp = tmp
        return tmp

    def __exit__(self, exc_type, exc, tb):
        """Rename the temporary file onto ``path`` on success, remove it on an exception."""
        if exc_type is None:
            try:
                os.replace(self.tmp, self.path)
            except OSError as e:
                _unlink(self.tmp)
                raise InputError(f"cannot write {self.path}: {e.strerror or e}; "
                                 "choose a writable --out path") from None
        else:
            try:
                written = os.path.getsize(self.tmp)
            except OSError:
                written = 0
            _unlink(self.tmp)
            if isinstance(exc, OSError):  # a full disk or quota: one line, with what was written by then
                from .safety import write_failure

                full = write_failure(exc, self.path, written, at_least=True)
                if full is not None:
                    raise full from None
        return False


def check_output_path(path, overwrite: bool = False) -> None:
    """Fail early (before hours of work) if ``path`` cannot be written.

    Same checks as the real write, including creating and removing a temporary file in the target directory.
    An existing directory (a Zarr store) is accepted when ``overwrite`` is set: writers replace it only once
    the new one is complete.

    Parameters
    ----------
    path : str or path-like
        The output file (or Zarr directory).
    overwrite : bool, optional
        An existing ``path`` may be replaced. Default False.

    Raises
    ------
    InputError
        When ``path`` exists without ``overwrite``, or no file can be created in its directory.
    """
    p = os.path.abspath(os.fspath(path))
    if os.path.isdir(p):
        if not overwrite:
            raise InputError(f"{p} already exists; pass --force (overwrite=True) to replace it")
        p = os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.probe")
    guard = atomic_output(p, overwrite)
    guard.__enter__()
    _unlink(guard.tmp)


def _unlink(p):
    try:
        os.unlink(p)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------------

def cxi_bytes(dataset: Dataset) -> int:
    """Upper estimate of the bytes :func:`write_cxi` writes, plus 1 MiB of HDF5 metadata.

    Counts frames, positions, probe, mask and truth, without compression.

    Parameters
    ----------
    dataset : hpc_pt.data.Dataset
        The dataset to write (frames may be lazy: only their shapes and dtypes are read).

    Returns
    -------
    int
        Bytes.
    """
    m1, m2 = dataset.frame_shape
    total = 1 << 20
    for a in dataset.angles:
        n = int(a.frames.shape[0])
        total += n * m1 * m2 * max(np.dtype(getattr(a.frames, "dtype", np.float32)).itemsize, 4) + n * 24 + 4096
    if dataset.probe is not None:
        total += np.asarray(dataset.probe).nbytes * len(dataset.angles)
    if dataset.mask is not None:
        total += int(np.prod(np.shape(dataset.mask))) * len(dataset.angles)
    for v in (dataset.truth or {}).values():
        total += int(getattr(v, "nbytes", 0))
    return int(total)


def check_room_for(path, needed: int) -> None:
    """Refuse in one line, before any byte is written, a file the disk has no room for.

    HDF5 can crash the process (not raise) when the disk fills in the middle of a write.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    needed : int
        Bytes it needs (e.g. :func:`cxi_bytes`).

    Raises
    ------
    InputError
        When the free space there (:func:`hpc_pt.io.safety.free_bytes`) is known and smaller than ``needed``.
    """
    from .safety import _size, free_bytes

    free = free_bytes(path)
    if free is not None and needed > free:
        raise InputError(f"no space left for {os.path.abspath(os.fspath(path))}: it needs up to about {needed:,} "
                         f"bytes ({_size(needed)}), {free:,} bytes ({_size(free)}) are free there; free some space "
                         "or choose another --out")


def write_cxi(dataset: Dataset, path, overwrite: bool = False, command=None) -> str:
    """Write ``dataset`` as a CXI file with one ``/entry_N`` per angle (N = 1, 2, ... in angle order).

    Atomic: the file is written to a temporary name in the same directory and renamed into place, so a
    failure leaves nothing behind and never damages an existing file. Returns the absolute path.

    Parameters
    ----------
    dataset : hpc_pt.data.Dataset
        The data (frames with DC at index 0; they are stored fftshifted). ``attrs`` become the ``config``
        attribute (``attrs["model"]`` also the ``hpc_pt_model`` attribute), ``truth`` the ``/hpc_pt_truth`` group.
    path : str or path-like
        The output file.
    overwrite : bool, optional
        Replace an existing file. Default False.
    command : list of str or str, optional
        The command line recorded in the provenance (:func:`hpc_pt.io.provenance.provenance`).

    Returns
    -------
    str
        The absolute path of the file written.

    Raises
    ------
    InputError
        When the dataset has no angles, an invalid or implausible geometry, a probe with NaN/infinite values
        or none non-zero, a ``pixel_m`` that disagrees with lambda z / (m dx), frames or positions of the wrong
        shape; when the disk has no room for it, or ``path`` cannot be written (:class:`atomic_output`).
    """
    g = dataset.geometry
    m1, m2 = dataset.frame_shape
    if len(dataset.angles) == 0:
        raise InputError("dataset has no angles; nothing to write")
    _check_geometry_values(g.energy_ev, g.detector_distance_m, g.detector_pixel_m, "dataset geometry")
    _check_plausible(cv.ev_to_joule(g.energy_ev), g.detector_distance_m, g.detector_pixel_m, "dataset geometry")
    if dataset.probe is not None:
        check_probe(dataset.probe, "dataset")
    derived = cv.sample_pixel_size_m(g.energy_ev, g.detector_distance_m, g.detector_pixel_m[0], m2)
    if not np.isclose(g.pixel_m, derived, rtol=1e-6, atol=0):
        raise InputError(
            f"dataset geometry: pixel_m {g.pixel_m:.6g} m disagrees with lambda*z/(m*dx) = {derived:.6g} m; "
            "set pixel_m with conventions.sample_pixel_size_m")
    for k, a in enumerate(dataset.angles):
        if a.frames.ndim != 3 or a.frames.shape[1:] != (m1, m2):
            raise InputError(f"angle {k}: frames have shape {a.frames.shape}, expected (frames, {m1}, {m2}) "
                             "to match the probe")
        if np.shape(a.positions) != (a.frames.shape[0], 2):
            raise InputError(f"angle {k}: {a.frames.shape[0]} frames but positions of shape "
                             f"{np.shape(a.positions)}; give one (row, col) per frame")
    config = dict(dataset.attrs)
    check_room_for(path, cxi_bytes(dataset))
    with atomic_output(path, overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("cxi_version", data=np.int64(CXI_VERSION))
            f.attrs["cxi_version"] = CXI_VERSION
            prov = provenance(command=command, config=config)
            f.attrs["hpc_pt_version"] = prov["hpc_pt_version"]
            f.attrs["command"] = prov["command"]
            f.attrs["config"] = to_json(config)
            f.attrs["provenance"] = to_json(prov)
            f.attrs[FIELD_ATTR] = np.asarray(g.field_shape, dtype=np.int64)
            if config.get("model") is not None:  # the data's forward model (the simulator's); reconstruct uses it
                f.attrs[MODEL_ATTR] = str(config["model"])
            for k, a in enumerate(dataset.angles):
                _write_entry(f, f"entry_{k + 1}", a, dataset)
            if dataset.truth:
                _write_truth(f.create_group(TRUTH_GROUP), dataset.truth)
    return os.path.abspath(os.fspath(path))


def _write_entry(f, name, a: AngleData, ds: Dataset):
    g = ds.geometry
    e = f.create_group(name)
    e.attrs["NX_class"] = "NXentry"
    d1 = e.create_group("data_1")
    d1.create_dataset("data", data=np.fft.fftshift(np.asarray(a.frames, dtype=np.float32), axes=(-2, -1)),
                      chunks=(1,) + tuple(a.frames.shape[1:]) if a.frames.shape[0] else None)
    tr = cv.positions_to_translations(a.positions, ds.frame_shape, g.field_shape, g.pixel_m)
    s1 = e.create_group("sample_1")
    s1.create_dataset("geometry_1/translation", data=tr.astype(np.float64))
    s1["geometry_1/translation"].attrs["units"] = "m"
    s1.create_dataset("tomography_angle_deg", data=np.float64(a.angle_deg))
    s1["tomography_angle_deg"].attrs["units"] = "degree"
    d1["translation"] = h5py.SoftLink(f"/{name}/{P_TRANS}")
    src = e.create_group("instrument_1/source_1")
    src.create_dataset("energy", data=np.float64(cv.ev_to_joule(g.energy_ev)))
    src["energy"].attrs["units"] = "J"
    if ds.probe is not None:  # a file without a probe gets one estimated from its frames on reading
        src.create_dataset("illumination", data=np.asarray(ds.probe, dtype=np.complex64))
    det = e.create_group("instrument_1/detector_1")
    for key, val in (("distance", g.detector_distance_m), ("x_pixel_size", g.detector_pixel_m[0]),
                     ("y_pixel_size", g.detector_pixel_m[1])):
        det.create_dataset(key, data=np.float64(val))
        det[key].attrs["units"] = "m"
    if ds.mask is not None:
        det.create_dataset("mask", data=np.fft.fftshift(np.asarray(ds.mask).astype(np.uint8), axes=(-2, -1)))
    if g.rotation_centre is not None:  # the axis's x in the translations' frame (centre of the field: 0)
        W = g.field_shape[1]
        s1.create_dataset("rotation_axis_x", data=np.float64((g.rotation_centre - (W - 1) / 2.0) * g.pixel_m))
        s1["rotation_axis_x"].attrs["units"] = "m"


def _write_truth(grp, truth: dict):
    """Arrays become datasets; everything else a JSON-encoded attribute (decoded by :func:`read_truth`)."""
    for key, val in truth.items():
        if isinstance(val, np.ndarray) and val.dtype != object:
            grp.create_dataset(str(key), data=val)
        else:
            grp.attrs[str(key)] = to_json(val)


def read_truth(path) -> dict | None:
    """The ground-truth group of an hpc-pt CXI file (the first file of a directory), or None.

    Parameters
    ----------
    path : str or path-like
        A CXI file or a directory of them.

    Returns
    -------
    dict or None
        Datasets of ``/hpc_pt_truth`` as arrays and its attributes JSON-decoded; None without that group.

    Raises
    ------
    InputError
        When the path does not exist or the file cannot be read as HDF5.
    """
    files = _cxi_files(os.fspath(path))
    with _open(files[0]) as f:
        if TRUTH_GROUP not in f:
            return None
        grp = f[TRUTH_GROUP]
        out = {k: grp[k][()] for k in grp.keys()}
        for k, v in grp.attrs.items():
            out[k] = json.loads(v)
        return out


# --------------------------------------------------------------------------------------------------
# index (metadata only)
# --------------------------------------------------------------------------------------------------

@dataclass
class CxiEntry:
    """Metadata of one angle: where its frames live, how many, and their positions.

    Parameters
    ----------
    file : str
        The file that holds the entry.
    name : str
        The entry's group ("entry_3").
    label : str
        "entry_3" or "scan_007.cxi:entry_1" (directory form), used in error messages.
    angle_deg : float
        Rotation angle in degrees.
    n_frames : int
        Number of frames.
    translations : numpy.ndarray or None
        (F, 3) probe translations in metres, layout normalised, flip applied.
    positions : numpy.ndarray, optional
        (F, 2) top-left (row, col) positions in pixels in the object field.
    """

    file: str
    name: str  # "entry_3"
    label: str  # "entry_3" or "scan_007.cxi:entry_1" (directory form), used in error messages
    angle_deg: float
    n_frames: int
    translations: np.ndarray | None  # (F, 3) metres, layout normalised, flip applied
    positions: np.ndarray | None = None  # (F, 2) top-left (row, col) pixels in the field


@dataclass
class CxiIndex:
    """Everything about a CXI file or directory except the frames (see :func:`scan_cxi`).

    Parameters
    ----------
    path : str
        Absolute path of the file or directory.
    entries : list of CxiEntry
        One per angle, in file and entry order.
    frame_shape : tuple of int
        (m1, m2) of the frames.
    frame_dtype : str
        The stored frames' dtype.
    energy_ev : float
        Photon energy in eV.
    detector_distance_m : float
        Sample-detector distance in metres.
    detector_pixel_m : tuple of float
        (x, y) detector pixel sizes in metres.
    pixel_m : float
        Sample-plane pixel size in metres.
    field_shape : tuple of int
        (H, W) of the object field.
    probe : numpy.ndarray or None
        (m1, m2) complex64 probe; None: the file holds none (:func:`ensure_probe` estimates one from the
        frames).
    mask : numpy.ndarray or None
        (m1, m2) bool, True = valid, DC at index 0 (like the frames in memory).
    attrs : dict, optional
        The file's ``config`` attribute (and ``model``).
    rotation_centre : float, optional
        Field column of the rotation axis from the file (None: (W-1)/2).
    fftshift : bool, optional
        The file's frames have DC at index 0 already (``--fftshift``): no shift on read.
    """

    path: str
    entries: list[CxiEntry]
    frame_shape: tuple[int, int]
    frame_dtype: str
    energy_ev: float
    detector_distance_m: float
    detector_pixel_m: tuple[float, float]
    pixel_m: float
    field_shape: tuple[int, int]
    probe: np.ndarray | None  # None: the file holds none (ensure_probe estimates one from the frames)
    mask: np.ndarray | None  # bool, True = valid, DC at index 0 (like the frames in memory)
    attrs: dict = field(default_factory=dict)
    rotation_centre: float | None = None  # field column of the rotation axis from the file (None: (W-1)/2)
    fftshift: bool = False  # the file's frames have DC at index 0 already (``--fftshift``): no shift on read

    @property
    def n_angles(self) -> int:
        """Number of angles (entries)."""
        return len(self.entries)

    @property
    def angles_deg(self) -> list[float]:
        """Rotation angle of every entry, in degrees."""
        return [e.angle_deg for e in self.entries]

    @property
    def n_frames(self) -> np.ndarray:
        """Frames per entry, int64 array (A,)."""
        return np.array([e.n_frames for e in self.entries], dtype=np.int64)

    @property
    def geometry(self) -> Geometry:
        """The :class:`~hpc_pt.data.Geometry` of the index."""
        return Geometry(energy_ev=self.energy_ev, detector_distance_m=self.detector_distance_m,
                        detector_pixel_m=self.detector_pixel_m, pixel_m=self.pixel_m,
                        field_shape=self.field_shape, rotation_centre=self.rotation_centre)


def _cxi_files(path: str) -> list[str]:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory; check the input path")
    if os.path.isdir(path):
        try:
            listing = os.listdir(path)
        except OSError as e:
            raise InputError(f"{path}: cannot list the directory ({e.strerror or e}); check its permissions") \
                from None
        names = sorted(n for n in listing if n.lower().endswith(CXI_SUFFIXES)
                       and os.path.isfile(os.path.join(path, n)))
        if not names:
            raise InputError(f"{path}: directory holds no CXI files ({', '.join(CXI_SUFFIXES)}); "
                             "give a .cxi file or a directory of one .cxi file per angle")
        return [os.path.join(path, n) for n in names]
    return [path]


def _open(fname: str) -> h5py.File:
    try:  # an unreadable file would otherwise pass for "not an HDF5 file"
        with open(fname, "rb"):
            pass
    except OSError as e:
        raise InputError(f"{fname}: cannot read it ({e.strerror or e}); check the file's permissions "
                         "(ls -l) and that the path is a file") from None
    if not h5py.is_hdf5(fname):
        raise InputError(f"{fname}: not an HDF5 file; give a CXI (HDF5) file such as one written by "
                         "`hpc-pt simulate`")
    try:
        return h5py.File(fname, "r")
    except OSError as e:
        raise InputError(f"{fname}: cannot open HDF5 file ({e}); check the file is complete and readable") \
            from None


def _entry_names(f) -> list[str]:
    names = [k for k in f.keys() if re.fullmatch(r"entry_\d+", k) and isinstance(f[k], h5py.Group)]
    return sorted(names, key=lambda s: int(s.split("_")[1]))


def _has(e, p) -> bool:
    """True if ``p`` resolves to an object (a dangling soft link does not)."""
    try:
        e[p]
    except KeyError:
        return False
    return True


def _require(e, p, label):
    if not _has(e, p):
        raise InputError(f"{label}: missing CXI dataset /{e.name.strip('/')}/{p}; "
                         "the file must hold every path listed in docs/formats.md")
    return e[p]


def _scalar(ds, label, what) -> float:
    v = np.asarray(ds[()]).reshape(-1)
    if v.size != 1:
        raise InputError(f"{label}: {ds.name} must be a scalar, found shape {np.shape(ds[()])}; "
                         f"store one {what} value per entry")
    return float(v[0])


def _check_geometry_values(energy_ev, distance, pix, label):
    for what, v in (("energy", energy_ev), ("detector distance", distance),
                    ("x_pixel_size", pix[0]), ("y_pixel_size", pix[1])):
        if not (np.isfinite(v) and v > 0):
            raise InputError(f"{label}: {what} is {v}, must be a positive finite number; "
                             "fix the value (energy in joules, lengths in metres)")


def _check_plausible(energy_j, distance, pix, label):
    """Refuse a geometry no experiment has (a unit mistake: :func:`hpc_pt.conventions.implausible_geometry`)."""
    problem = cv.implausible_geometry(energy_j, distance, pix)
    if problem is not None:
        raise InputError(f"{label}: {problem}")


def check_probe(probe, label: str) -> None:
    """Refuse a probe (illumination) with NaN or infinite values, or one that is zero everywhere.

    Either makes every far field NaN or zero, and the run ends with a meaningless R-factor of nan or 1.

    Parameters
    ----------
    probe : array_like
        The probe.
    label : str
        Where it comes from, for the message.

    Raises
    ------
    InputError
        When the probe holds NaN or infinite values or is zero everywhere.
    """
    p = np.asarray(probe)
    bad = int(np.count_nonzero(~np.isfinite(p)))
    if bad:
        raise InputError(f"{label}: the probe (illumination) holds {bad} NaN or infinite values; store a finite "
                         "probe, or drop it (hpc-pt then estimates one from the frames)")
    if not np.any(p):
        raise InputError(f"{label}: the probe (illumination) is zero everywhere; store the real probe, or drop "
                         "it (hpc-pt then estimates one from the frames)")


def _layout_of(t: np.ndarray) -> str | None:
    """"frames,3" / "3,frames" when the shape decides it, None for a 3x3 (or a shape that is neither)."""
    if t.ndim != 2 or t.shape == (3, 3):
        return None
    if t.shape[1] == 3:
        return "frames,3"
    if t.shape[0] == 3:
        return "3,frames"
    return None


def _normalise_translations(raw, n_frames, layout, label):
    t = np.asarray(raw, dtype=np.float64)
    if t.ndim != 2 or 3 not in t.shape:
        raise InputError(f"{label}: translation has shape {t.shape}; it must be (frames, 3) or (3, frames) "
                         "metres (x, y, z)")
    if layout == "3,frames":
        if t.shape[0] != 3:
            raise InputError(f"{label}: translation has shape {t.shape}, not (3, frames); "
                             "use translation_layout='frames,3' or 'auto'")
        t = t.T
    elif t.shape[1] != 3:
        raise InputError(f"{label}: translation has shape {t.shape}, not (frames, 3); "
                         "use translation_layout='3,frames' or 'auto'")
    if t.shape[0] != n_frames:
        raise InputError(f"{label}: {n_frames} frames but {t.shape[0]} translations; "
                         "the translation dataset must have one row per frame")
    if not np.all(np.isfinite(t)):
        raise InputError(f"{label}: {int(np.sum(~np.isfinite(t)))} NaN or infinite translation values; "
                         "every frame needs a finite probe position")
    return np.ascontiguousarray(t)


def _resolve_layout(raws, layout) -> list[str]:
    """Per-entry layout. "auto": an entry's shape decides; an ambiguous 3x3 entry follows the other
    entries of the input if their shapes agree, else the one all-zero z (3rd column vs 3rd row), else
    (frames, 3)."""
    if layout not in LAYOUTS:
        raise InputError(f"translation_layout {layout!r} is not one of {LAYOUTS}; pick one of those")
    if layout != "auto":
        return [layout] * len(raws)
    decided = {_layout_of(np.asarray(t)) for t in raws} - {None}
    out = []
    for t in raws:
        t = np.asarray(t)
        lay = _layout_of(t)
        if lay is None:
            if len(decided) == 1:
                lay = next(iter(decided))
            elif t.shape == (3, 3) and not np.any(t[2, :]) and np.any(t[:, 2]):
                lay = "3,frames"
            else:
                lay = "frames,3"
        out.append(lay)
    return out


def scan_cxi(path, flip_translations: bool = False, translation_layout: str = "auto",
             field_shape=None, fftshift: bool = False, check_dc: bool = True) -> CxiIndex:
    """Read the metadata of a CXI file or directory (and a small sample of frames, see ``check_dc``).

    Validates everything that does not need the frame values (keys, shapes, counts, geometry, duplicate
    angles, positions inside the field). The object field is ``field_shape`` if given, else the
    ``hpc_pt_field_shape`` root attribute hpc-pt writes, else the smallest field holding every probe
    window, of the parity that keeps an integer scan at integer positions
    (``conventions.field_for_translations`` over all angles). The optional ``sample_1/rotation_axis_x``
    (metres, the axis's x in the translations' frame) gives ``rotation_centre``, the axis's field column.

    ``fftshift``: the file stores frames (and mask) with DC at index 0, not at the centre; they are then
    used as stored. ``check_dc``: read up to 32 frames and refuse the file when their diffraction peak sits
    in the corners instead of the centre (frames stored without the fftshift; :func:`dc_position_check`).

    Parameters
    ----------
    path : str or path-like
        A CXI file, or a directory of CXI files (sorted by name; each may hold several entries).
    flip_translations : bool, optional
        Negate the stored translations (sample-stage instead of probe positions). Default False.
    translation_layout : {"auto", "frames,3", "3,frames"}, optional
        Layout of the translation datasets (see :func:`read_cxi`). Default "auto".
    field_shape : tuple of int, optional
        (H, W) object field override.
    fftshift : bool, optional
        Frames stored with DC at index 0. Default False.
    check_dc : bool, optional
        Run :func:`dc_position_check`. Default True.

    Returns
    -------
    CxiIndex
        The metadata; entries' ``translations`` and ``positions`` filled.

    Raises
    ------
    InputError
        One line for any problem: missing paths or datasets, wrong shapes or dtypes, invalid or inconsistent
        geometry, duplicate angles, positions outside the field, a misplaced diffraction peak.
    """
    path = os.fspath(path)
    files = _cxi_files(path)
    is_dir = os.path.isdir(path)
    entries: list[CxiEntry] = []
    first = None  # geometry of the first entry
    probe = mask = None
    frame_shape = frame_dtype = None
    attrs: dict = {}
    stored_field = None
    raws: list[np.ndarray] = []  # raw translation datasets, normalised once every entry is seen
    axes: list[tuple[str, float]] = []  # (label, rotation_axis_x in metres) of the entries that give it
    for fi, fname in enumerate(files):
        with _open(fname) as f:
            names = _entry_names(f)
            if not names:
                raise InputError(f"{fname}: no /entry_N groups; a CXI file needs /entry_1/{P_DATA} "
                                 "(see docs/formats.md)")
            if fi == 0:
                if "config" in f.attrs:
                    try:
                        attrs = json.loads(f.attrs["config"])
                    except (TypeError, ValueError):
                        attrs = {}
                if MODEL_ATTR in f.attrs:  # the data's forward model (written by hpc-pt, or set by the user)
                    v = f.attrs[MODEL_ATTR]
                    attrs["model"] = (v.decode() if isinstance(v, bytes) else str(v)).strip()
                if FIELD_ATTR in f.attrs:
                    stored_field = tuple(int(v) for v in np.asarray(f.attrs[FIELD_ATTR]).reshape(-1)[-2:])
            elif FIELD_ATTR in f.attrs:
                fs = tuple(int(v) for v in np.asarray(f.attrs[FIELD_ATTR]).reshape(-1)[-2:])
                if fs != stored_field:
                    stored_field = None  # files disagree: fall back to the computed field
            for name in names:
                e = f[name]
                label = f"{os.path.basename(fname)}:{name}" if is_dir else name
                data = _require(e, P_DATA, label)
                if data.ndim not in (2, 3):
                    raise InputError(f"{label}: {P_DATA} has shape {data.shape}; it must be "
                                     "(frames, height, width)")
                shp = tuple(data.shape[-2:])
                nf = data.shape[0] if data.ndim == 3 else 1
                if frame_shape is None:
                    frame_shape, frame_dtype = shp, str(data.dtype)
                elif shp != frame_shape:
                    raise InputError(f"{label}: frames are {shp[0]}x{shp[1]} but {entries[0].label} has "
                                     f"{frame_shape[0]}x{frame_shape[1]}; all angles need one detector shape")
                if not (np.issubdtype(data.dtype, np.number) and not np.issubdtype(data.dtype, np.complexfloating)):
                    raise InputError(f"{label}: {P_DATA} has dtype {data.dtype}; store real intensities "
                                     "(float or integer counts)")
                tpath = P_TRANS if _has(e, P_TRANS) else (P_TRANS_ALT if _has(e, P_TRANS_ALT) else P_TRANS)
                raws.append(np.asarray(_require(e, tpath, label)[()]))
                angle = _scalar(_require(e, P_ANGLE, label), label, "angle (degrees)")
                if not np.isfinite(angle):
                    raise InputError(f"{label}: tomography angle is {angle}; store a finite angle in degrees")
                energy_j = _scalar(_require(e, P_ENERGY, label), label, "energy (J)")
                dist = _scalar(_require(e, P_DIST, label), label, "distance (m)")
                pix = (_scalar(_require(e, P_XPIX, label), label, "pixel size (m)"),
                       _scalar(_require(e, P_YPIX, label), label, "pixel size (m)"))
                _check_geometry_values(energy_j, dist, pix, label)
                _check_plausible(energy_j, dist, pix, label)
                energy_ev = cv.joule_to_ev(energy_j)
                geo = (energy_ev, dist, pix[0], pix[1])
                if first is None:
                    first = geo
                    if _has(e, P_PROBE):  # optional: without it read_cxi / the pipeline call ensure_probe
                        probe = np.asarray(e[P_PROBE][()]).astype(np.complex64)
                        check_probe(probe, label)
                        if probe.shape != frame_shape:
                            raise InputError(f"{label}: probe (illumination) shape {probe.shape} differs from "
                                             f"the frame shape {frame_shape}; the probe must be sampled like "
                                             "the detector frames")
                    if P_MASK in e:
                        mraw = np.asarray(e[P_MASK][()])
                        if mraw.shape != frame_shape:
                            raise InputError(f"{label}: mask shape {mraw.shape} differs from the frame shape "
                                             f"{frame_shape}; give one mask value per detector pixel")
                        mask = (mraw != 0) if fftshift else np.fft.ifftshift(mraw != 0, axes=(-2, -1))
                        if not mask.any():
                            raise InputError(f"{label}: the detector mask marks no pixel valid (1 = valid "
                                             "pixel); fix the mask (invert it if it marks the bad pixels) or "
                                             "drop it")
                else:
                    if not np.allclose(geo, first, rtol=1e-6, atol=0):
                        raise InputError(
                            f"{label}: energy/distance/pixel size ({geo[0]:.6g} eV, {dist:.6g} m, "
                            f"{pix[0]:.6g} m, {pix[1]:.6g} m) differ from {entries[0].label}'s; all angles "
                            "must share one energy and detector geometry")
                    if P_PROBE in e and e[P_PROBE].shape != frame_shape:
                        raise InputError(f"{label}: probe (illumination) shape {e[P_PROBE].shape} differs "
                                         f"from the frame shape {frame_shape}; the probe must be sampled "
                                         "like the detector frames")
                    if P_MASK in e and e[P_MASK].shape != frame_shape:
                        raise InputError(f"{label}: mask shape {e[P_MASK].shape} differs from the frame "
                                         f"shape {frame_shape}; give one mask value per detector pixel")
                if _has(e, P_AXIS):
                    ax = _scalar(e[P_AXIS], label, "rotation-axis x (m)")
                    if not np.isfinite(ax):
                        raise InputError(f"{label}: {P_AXIS} is {ax}; store a finite x in metres or drop it")
                    axes.append((label, ax))
                for other in entries:
                    if np.isclose(other.angle_deg, angle, rtol=0, atol=1e-9):
                        raise InputError(f"duplicate angle {angle:g} deg in {other.label} and {label}; "
                                         "each angle must appear once (drop or merge one of them)")
                entries.append(CxiEntry(file=fname, name=name, label=label, angle_deg=angle,
                                        n_frames=int(nf), translations=None))
    for e, raw, lay in zip(entries, raws, _resolve_layout(raws, translation_layout)):
        e.translations = _normalise_translations(raw, e.n_frames, lay, e.label)
        if flip_translations:
            e.translations = -e.translations
    energy_ev, dist, xpix, ypix = first
    m1, m2 = frame_shape
    pixel_m = cv.sample_pixel_size_m(energy_ev, dist, xpix, m2)
    pixel_y = cv.sample_pixel_size_m(energy_ev, dist, ypix, m1)
    if not np.isclose(pixel_m, pixel_y, rtol=1e-6, atol=0):
        raise InputError(f"{entries[0].label}: sample-plane pixels are not square (x {pixel_m:.4g} m, "
                         f"y {pixel_y:.4g} m); crop or bin the frames so lambda*z/(n*pixel) is equal on "
                         "both axes")
    if field_shape is not None:
        fshape = tuple(int(v) for v in tuple(field_shape)[-2:])
        source = "the given field_shape"
    elif stored_field is not None:
        fshape, source = stored_field, f"the file's {FIELD_ATTR} attribute"
    else:
        all_t = np.concatenate([e.translations for e in entries], axis=0)
        # A vertical stage position means nothing relative to a vertical rotation axis (and facilities
        # record absolute heights): centre the field vertically on the middle of the scanned range.
        y0 = 0.5 * (all_t[:, 1].min() + all_t[:, 1].max()) if all_t.size else 0.0
        if y0 != 0.0:
            shift = np.array([0.0, y0, 0.0])
            for e in entries:
                e.translations = e.translations - shift
            all_t = all_t - shift
        fshape, source = cv.field_for_translations(all_t, frame_shape, pixel_m), None
    for e in entries:
        e.positions = cv.translations_to_positions(e.translations, frame_shape, fshape, pixel_m)
        try:
            validate_positions(e.positions, frame_shape, fshape)
        except ValueError as err:
            fix = ("pass a larger field_shape (--field-shape H,W, or none to size it from the translations)"
                   if source else "check the translations and their units (metres)")
            raise InputError(f"{e.label}: {err}; {fix}") from None
    centre = None
    if axes:
        ax0 = axes[0][1]
        for label, ax in axes[1:]:
            if not np.isclose(ax, ax0, rtol=1e-6, atol=1e-6 * pixel_m):
                raise InputError(f"{label}: {P_AXIS} {ax:.6g} m differs from {axes[0][0]}'s {ax0:.6g} m; "
                                 "one rotation axis serves every angle: store one value")
        centre = (fshape[1] - 1) / 2.0 + (-ax0 if flip_translations else ax0) / pixel_m
    index = CxiIndex(path=os.path.abspath(path), entries=entries, frame_shape=frame_shape,
                     frame_dtype=frame_dtype, energy_ev=energy_ev, detector_distance_m=dist,
                     detector_pixel_m=(xpix, ypix), pixel_m=pixel_m, field_shape=fshape, probe=probe,
                     mask=mask, attrs=attrs, rotation_centre=centre, fftshift=bool(fftshift))
    if check_dc:
        dc_position_check(index)
    return index


#: frames :func:`dc_position_check` reads, spread over ``DC_SAMPLE_ANGLES`` angles and over each scan
DC_SAMPLE_FRAMES = 32
DC_SAMPLE_ANGLES = 4
#: the corners must hold this many times the centre's mass for the frames to count as unshifted
DC_CORNER_RATIO = 4.0


def dc_mass(frames) -> tuple[float, float]:
    """(centre, corners): the mass of the frames' sum in the central box and in the four corner boxes.

    The central box is (h/2 x w/2), the corner boxes (h/4 x w/4) each (together the same area), of frames
    laid out as stored (DC expected at the centre; in the corners when they were stored without the
    fftshift). Non-finite and negative values count as 0.

    Parameters
    ----------
    frames : array_like
        (..., h, w) frames, as stored.

    Returns
    -------
    centre, corners : float
        The two masses.
    """
    f = np.asarray(frames, dtype=np.float64)
    f = np.where(np.isfinite(f) & (f > 0), f, 0.0).reshape(-1, *f.shape[-2:]).sum(axis=0)
    h, w = f.shape
    qh, qw = max(h // 4, 1), max(w // 4, 1)
    centre = float(f[qh:h - qh, qw:w - qw].sum())
    rows, cols = np.r_[0:qh, h - qh:h], np.r_[0:qw, w - qw:w]
    corners = float(f[np.ix_(rows, cols)].sum())
    return centre, corners


def dc_position_check(index: CxiIndex, n_sample: int = DC_SAMPLE_FRAMES) -> dict:
    """Check on a few frames that the diffraction peak sits where the file format says it does.

    Reads ``n_sample`` frames (evenly spread over the scans of up to 4 evenly spread angles), laid out
    as stored and fftshifted first when ``index.fftshift`` (so the DC belongs at the centre either way),
    and compares the mass in the central box with that in the corners (:func:`dc_mass`). Raises
    :class:`InputError` when the corners hold more than ``DC_CORNER_RATIO`` times the centre's mass: the
    frames were stored without the fftshift (pass ``--fftshift``) or are shifted twice (drop it).
    Returns {"centre": ..., "corners": ..., "frames": n read}.

    Parameters
    ----------
    index : CxiIndex
        The file's index.
    n_sample : int, optional
        Frames to read in all. Default :data:`DC_SAMPLE_FRAMES`.

    Returns
    -------
    dict
        ``centre`` and ``corners`` (summed masses) and ``frames`` (the number read).

    Raises
    ------
    InputError
        When the peak sits in the corners (the message says whether to pass or drop ``--fftshift``).
    """
    A = index.n_angles
    n_angles = min(DC_SAMPLE_ANGLES, A)
    picks = sorted({int(round(k * (A - 1) / max(n_angles - 1, 1))) for k in range(n_angles)})
    per = max(1, n_sample // len(picks))
    centre = corners = 0.0
    n = 0
    for a in picks:
        e = index.entries[a]
        if not e.n_frames:
            continue
        # frames spread over the whole scan: some windows may see only free space (no signal in the
        # linear model), the mass of those that see the sample decides
        sel = sorted({int(round(k * (e.n_frames - 1) / max(per - 1, 1))) for k in range(min(per, e.n_frames))})
        with _open(e.file) as f:
            ds = f[e.name][P_DATA]
            for i in sel:  # one frame at a time: 32 frames of a 4096^2 detector would be 4 GiB in float64
                raw = np.asarray(ds[i] if ds.ndim == 3 else ds[()], dtype=np.float64)[None]
                if index.fftshift:
                    raw = np.fft.fftshift(raw, axes=(-2, -1))
                c, k = dc_mass(raw)
                centre, corners, n = centre + c, corners + k, n + 1
    if corners > DC_CORNER_RATIO * centre and corners > 0:
        if index.fftshift:
            raise InputError(f"{index.path}: with --fftshift the diffraction peak of the frames sits in the "
                             "corners, so they are already stored with DC at the centre; drop --fftshift")
        raise InputError(f"{index.path}: the diffraction peak of the frames sits in their corners, not at the "
                         f"centre ({corners / max(centre, 1e-300):.3g}x the centre's mass): they were stored "
                         "without the fftshift; pass --fftshift to shift them on read")
    return {"centre": centre, "corners": corners, "frames": n}


# --------------------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------------------

def read_frames(path_or_index, angle_idx: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames ``start:stop`` of angle ``angle_idx`` as float32 (n, h, w) with DC at index 0.

    Reads only that slice from disk. Raises InputError on NaN or negative intensities in the slice.

    Parameters
    ----------
    path_or_index : CxiIndex or str or path-like
        The index, or a path to scan (:func:`scan_cxi` with its defaults).
    angle_idx : int
        The angle, in entry order (negative values count from the end).
    start : int, optional
        First frame. Default 0.
    stop : int, optional
        One past the last frame; default the angle's frame count. Python slice rules apply.

    Returns
    -------
    numpy.ndarray
        float32 array (n, h, w), DC at index 0.

    Raises
    ------
    InputError
        When ``angle_idx`` is out of range, the file cannot be read, or the slice holds NaN, infinite or
        negative intensities.
    """
    index = path_or_index if isinstance(path_or_index, CxiIndex) else scan_cxi(path_or_index)
    if not -index.n_angles <= angle_idx < index.n_angles:
        raise InputError(f"angle index {angle_idx} out of range; the input has {index.n_angles} angles")
    e = index.entries[angle_idx]
    start, stop, _ = slice(start, stop).indices(e.n_frames)
    stop = max(stop, start)
    with _open(e.file) as f:
        ds = f[e.name][P_DATA]
        raw = ds[start:stop] if ds.ndim == 3 else ds[()][None][start:stop]
    frames = np.asarray(raw, dtype=np.float32)
    if not index.fftshift:  # stored DC-centred (the format); with ``fftshift`` already DC at index 0
        frames = np.fft.ifftshift(frames, axes=(-2, -1))
    n_nan = int(np.count_nonzero(~np.isfinite(frames)))
    n_neg = int(np.count_nonzero(frames < 0))
    if n_nan or n_neg:
        raise InputError(f"{e.label}: {n_nan} NaN/infinite and {n_neg} negative intensities in frames "
                         f"{start}..{stop - 1}; intensities must be finite and >= 0 (replace bad pixels by 0 "
                         "and mark them 0 in the detector mask)")
    return frames


#: bytes of float32 frames one read holds when a whole input is scanned (validate, the probe estimate)
READ_BATCH_BYTES = 256 << 20


def frames_per_read(frame_shape, batch_bytes: int = READ_BATCH_BYTES) -> int:
    """Frames of ``frame_shape`` (float32) per read when scanning every frame.

    At most ``batch_bytes``, at least one frame.

    Parameters
    ----------
    frame_shape : tuple of int
        (h, w) of a frame.
    batch_bytes : int, optional
        Bytes one read may hold. Default :data:`READ_BATCH_BYTES`.

    Returns
    -------
    int
        Frames per read, at least 1.
    """
    return max(1, int(batch_bytes) // max(1, int(np.prod(frame_shape)) * 4))


#: at most this many frames (whole angles, spread over the scan) feed the probe estimate of a probe-less file
PROBE_ESTIMATE_FRAMES = 2048


def ensure_probe(index: CxiIndex, max_frames: int = PROBE_ESTIMATE_FRAMES) -> CxiIndex:
    """Give a file without a probe (no ``illumination``) an initial one estimated from its frames.

    Averages the frames of evenly spread whole angles (at most ``max_frames`` frames, at least one angle;
    the same on every rank of a distributed run) and fits the Gaussian beam of
    :func:`hpc_pt.simulate.probe_init.estimate_probe` to the mean pattern. Sets ``index.probe`` and
    ``index.attrs["probe_source"] = "estimated"``; an index that has a probe is returned unchanged.

    Parameters
    ----------
    index : CxiIndex
        The file's index; modified in place.
    max_frames : int, optional
        Most frames averaged. Default :data:`PROBE_ESTIMATE_FRAMES`.

    Returns
    -------
    CxiIndex
        ``index`` itself.

    Raises
    ------
    InputError
        When there are no frames to estimate from, the estimate fails, or a frame read fails
        (:func:`read_frames`).
    """
    if index.probe is not None:
        return index
    from ..simulate.probe_init import estimate_probe

    counts, n_angles = index.n_frames, index.n_angles
    picks = np.zeros(1, dtype=int)
    for n_pick in range(n_angles, 0, -1):  # as many evenly spread angles as fit in max_frames
        picks = np.unique(np.round(np.linspace(0, n_angles - 1, n_pick)).astype(int))
        if int(counts[picks].sum()) <= max_frames:
            break
    total = int(counts[picks].sum())
    acc = np.zeros(index.frame_shape, dtype=np.float64)
    step = frames_per_read(index.frame_shape)
    for a in picks:  # in batches of bounded size: a whole angle of a large detector need not fit in memory
        for start in range(0, int(counts[a]), step):
            acc += read_frames(index, int(a), start, start + step).sum(axis=0, dtype=np.float64)
    if total == 0:
        raise InputError(f"{index.path}: no probe (illumination) in the file and no frames to estimate one "
                         "from; store the probe at /entry_N/" + P_PROBE)
    try:
        index.probe = estimate_probe(acc / total, index.mask)
    except ValueError as err:
        raise InputError(f"{index.path}: no probe (illumination) in the file and none can be estimated from "
                         f"the frames ({err}); store the probe at /entry_N/{P_PROBE} (hpc-pt convert "
                         "--probe FILE)") from None
    index.attrs["probe_source"] = "estimated"
    return index


def _as_slice(frames_slice):
    if frames_slice is None:
        return slice(None)
    if isinstance(frames_slice, slice):
        return frames_slice
    return slice(*frames_slice)


def read_cxi(path, flip_translations: bool = False, translation_layout: str = "auto", select_angles=None,
             frames_slice=None, field_shape=None, load_truth: bool = False, fftshift: bool = False,
             check_dc: bool = True) -> Dataset:
    """Read a CXI file, or a directory of CXI files (sorted by name; each may hold several entries).

    A file without a probe gets one estimated from its frames (:func:`ensure_probe`).

    Parameters
    ----------
    path : str or path-like
        The CXI file or directory.
    flip_translations : bool, optional
        Negate the stored translations (files that record the sample-stage position instead of the probe
        position).
    translation_layout : {"auto", "frames,3", "3,frames"}, optional
        "auto" (decide by shape; an ambiguous 3x3 entry follows the input's other entries, else the layout
        whose z (3rd column / 3rd row) is all zero, else (frames, 3)), "frames,3" or "3,frames".
    select_angles : sequence of int, optional
        Indices (in entry order) of the angles to read; default all.
    frames_slice : slice or tuple of int, optional
        A ``slice`` (or ``(start, stop[, step])``) applied to every angle's frames.
    field_shape : tuple of int, optional
        (H, W) object field override (see :func:`scan_cxi`); positions are validated in it.
    load_truth : bool, optional
        Also load the ``/hpc_pt_truth`` group into ``Dataset.truth`` (ignored otherwise).
    fftshift, check_dc : bool, optional
        See :func:`scan_cxi` (frames stored with DC at index 0; the DC-position check).

    Returns
    -------
    hpc_pt.data.Dataset
        Frames float32 with DC at index 0, positions, probe, geometry, mask, ``attrs`` from the file, and
        ``truth`` when ``load_truth``.

    Raises
    ------
    InputError
        For an index in ``select_angles`` out of range, or any problem :func:`scan_cxi`, :func:`ensure_probe`
        or :func:`read_frames` finds.
    """
    index = scan_cxi(path, flip_translations, translation_layout, field_shape, fftshift=fftshift,
                     check_dc=check_dc)
    ensure_probe(index)
    sel = range(index.n_angles) if select_angles is None else list(select_angles)
    sl = _as_slice(frames_slice)
    angles = []
    for i in sel:
        if not -index.n_angles <= int(i) < index.n_angles:
            raise InputError(f"select_angles: index {i} out of range; the input has {index.n_angles} angles")
        e = index.entries[int(i)]
        start, stop, step = sl.indices(e.n_frames)
        frames = read_frames(index, int(i), start, stop)[::step]
        pos = e.positions[start:stop:step]
        angles.append(AngleData(angle_deg=e.angle_deg, frames=frames, positions=pos))
    truth = read_truth(path) if load_truth else None
    return Dataset(angles=angles, probe=index.probe, geometry=index.geometry, mask=index.mask,
                   truth=truth, attrs=dict(index.attrs))
