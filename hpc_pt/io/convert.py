"""``hpc-pt convert``: bring a beamline scan from a foreign layout into hpc-pt's CXI layout (docs/formats.md).

Two sources (docs/your-data.md describes both, with a worked example):

* ``numpy`` — a small YAML or TOML description (:class:`NumpySpec`) naming ``.npy`` / ``.npz`` / CSV
  arrays of frames, positions and angles, with explicit units for every physical quantity.
* ``nexus`` — HDF5 files following the NeXus application definition NXcxi_ptycho, one ``NXentry`` per
  rotation angle (a file or a directory of files). The definition stores no rotation angle; it is read
  from ``sample_1/rotation_angle`` or from a rotation in ``sample_1/transformations`` (NeXus base classes),
  or given in the description (``angles``).

Conventions applied on the way (the output then follows docs/conventions.md exactly):

* Frames are taken as a detector records them, direct beam (DC) at pixel ``(h // 2, w // 2)``
  (``frames_dc = "centre"``), or already fftshifted with DC at ``[0, 0]`` (``"corner"``). A beam centre
  elsewhere is handled by cropping the frames to the largest window centred on it (``beam_centre``), or to
  ``crop`` pixels (the automatic window is the largest even one). The last axis is x (columns, ``x_pixel_size``); ``transpose_frames`` swaps the two
  frame axes (and those of the probe and the mask) for files that store (x, y).
* Positions are the probe centre (x horizontal, y vertical) relative to the rotation axis. Stage positions
  (the sample moves, the probe stays) are the negative: ``positions_are = "sample"`` (NXcxi_ptycho's
  translations are sample-motor positions, so that is the default for ``nexus``). ``rotation_axis_x`` (in
  the positions' unit) is subtracted from x. Pixel positions (``px``) are sample-plane pixels
  ``lambda z / (n dx)`` of the converted frames.
* Masked detector pixels (mask 0; NeXus ``pixel_mask`` non-zero) are set to 0 in the frames.

Frames are read one angle at a time while writing (``.npy`` files memory-mapped), so converting never
holds more than one angle's frames; the output is written atomically (:func:`hpc_pt.io.cxi.write_cxi`).
A file converted without a probe gets one estimated from its frames when read
(:func:`hpc_pt.io.cxi.ensure_probe`). Every problem with the input is a one-line
:class:`~hpc_pt.errors.InputError` naming the problem and the fix.
"""
from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from .. import conventions as cv
from ..data import AngleData, Dataset, Geometry
from ..errors import InputError
from .cxi import write_cxi

__all__ = ["LENGTH_UNITS", "ENERGY_UNITS", "ANGLE_UNITS", "NumpySpec", "convert", "convert_numpy",
           "convert_nexus", "load_spec", "parse_quantity", "unit_factor", "FORMATS"]

FORMATS = ("auto", "numpy", "nexus")
#: metres per unit
LENGTH_UNITS = {"m": 1.0, "metre": 1.0, "meter": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6,
                "microns": 1e-6, "micrometre": 1e-6, "micrometer": 1e-6, "nm": 1e-9, "nanometre": 1e-9,
                "nanometer": 1e-9, "pm": 1e-12}
#: electron-volts per unit
ENERGY_UNITS = {"ev": 1.0, "kev": 1e3, "j": 1.0 / cv.E_CHARGE}
#: degrees per unit
ANGLE_UNITS = {"deg": 1.0, "degree": 1.0, "degrees": 1.0, "rad": 180.0 / math.pi, "radian": 180.0 / math.pi,
               "radians": 180.0 / math.pi}
_KINDS = {"length": LENGTH_UNITS, "energy": ENERGY_UNITS, "angle": ANGLE_UNITS}


# --------------------------------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------------------------------

def unit_factor(unit, kind: str, what: str) -> float:
    """SI-ish factor of ``unit`` (metres, eV or degrees per unit) for a ``kind`` in length/energy/angle.

    Raises :class:`InputError` naming ``what`` and the accepted units when ``unit`` is unknown.

    Parameters
    ----------
    unit : str or bytes
        The unit's name (:data:`LENGTH_UNITS`, :data:`ENERGY_UNITS`, :data:`ANGLE_UNITS`), matched as given,
        then in lower case.
    kind : {"length", "energy", "angle"}
        Which table.
    what : str
        What the unit belongs to, for the message.

    Returns
    -------
    float
        Metres, eV or degrees per ``unit``.

    Raises
    ------
    InputError
        When ``unit`` is not in the table.
    """
    table = _KINDS[kind]
    u = (unit.decode() if isinstance(unit, bytes) else str(unit)).strip()
    key = u if u in table else u.lower()
    if key not in table:
        raise InputError(f"{what}: unknown {kind} unit {u!r}; use one of {', '.join(sorted(set(table)))}")
    return table[key]


def parse_quantity(value, kind: str, what: str) -> float:
    """A quantity written ``"VALUE UNIT"`` (e.g. ``"8 keV"``, ``"75 um"``) in metres, eV or degrees.

    A bare number is refused: every physical quantity needs its unit.

    Parameters
    ----------
    value : str
        ``"VALUE UNIT"``.
    kind : {"length", "energy", "angle"}
        The quantity's kind (:func:`unit_factor`).
    what : str
        The setting's name, for the message.

    Returns
    -------
    float
        The value in metres, eV or degrees.

    Raises
    ------
    InputError
        For a bare number, text that is not ``VALUE UNIT``, a value that is not a number, or an unknown unit.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        units = ", ".join(sorted(set(_KINDS[kind])))
        raise InputError(f"{what} = {value!r} has no unit; write it as a string with its unit, e.g. "
                         f"\"{value} {next(iter(_KINDS[kind]))}\" (units: {units})")
    m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*([^\s]+)\s*", str(value))
    if not m:
        raise InputError(f"{what} = {value!r} is not 'VALUE UNIT'; write e.g. \"8 keV\", \"5.2 m\", \"75 um\"")
    try:
        number = float(m.group(1))
    except ValueError:
        raise InputError(f"{what} = {value!r}: {m.group(1)!r} is not a number; write e.g. \"8 keV\"") from None
    return number * unit_factor(m.group(2), kind, what)


# --------------------------------------------------------------------------------------------------
# the description file
# --------------------------------------------------------------------------------------------------

class NumpySpec(BaseModel):
    """Description of a scan held in NumPy arrays (YAML or TOML, flat or under ``[convert]``).

    Array references are a ``.npy`` file, ``file.npz:key`` (or a one-array ``.npz``), a ``.csv`` / ``.txt``
    table (one header line allowed), a list of such files (one per angle) or a glob (sorted, one file per
    angle); relative paths are relative to the description file. ``angles`` may also be an inline list.
    With ``nexus`` every key is optional and overrides or completes what the files hold.

    Parameters
    ----------
    **fields
        The keys below, by keyword; docs/your-data.md ("The description file") says what each means and
        which are required. Physical quantities (``energy``, ``detector_distance``, ``detector_pixel``,
        ``sample_width``) are ``"VALUE UNIT"`` strings (:func:`parse_quantity`). Unknown keys are refused
        (pydantic ``ValidationError``; :func:`load_spec` turns it into one :class:`InputError` line); the
        model is frozen.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: str | list[str] | None = None
    angle_index: str | None = None
    angles: str | list[float] | None = None
    angles_unit: Literal["deg", "degree", "degrees", "rad", "radian", "radians"] | None = None
    positions: str | list[str] | None = None
    positions_unit: str | None = None
    positions_columns: Literal["xy", "yx"] = "xy"
    positions_are: Literal["probe", "sample"] | None = None
    rotation_axis_x: float = 0.0
    energy: str | float | None = None  # quantities: "VALUE UNIT"; a bare number is refused (no unit)
    detector_distance: str | float | None = None
    detector_pixel: str | float | list[str | float] | None = None
    frames_dc: Literal["centre", "center", "corner"] = "centre"
    transpose_frames: bool = False
    beam_centre: list[float] | None = None
    crop: int | list[int] | None = None
    probe: str | None = None
    mask: str | None = None
    model: Literal["linear", "exp"] | None = None  # the data's forward model, recorded for reconstruct
    sample_width: str | None = None  # the sample's width across the rotation axis, "VALUE UNIT" (px or a length)


def load_spec(path=None, overrides: dict | None = None) -> tuple[NumpySpec, str]:
    """Read a description file (YAML / TOML; none: empty) and apply ``overrides`` (CLI flags).

    Returns (spec, base directory for its relative paths).

    Parameters
    ----------
    path : str or path-like, optional
        The description file; keys flat or under ``convert``, ``-`` or ``_`` in names. None: only
        ``overrides``, relative paths relative to the working directory.
    overrides : dict, optional
        Keys that replace the file's (None values are skipped).

    Returns
    -------
    spec : NumpySpec
        The validated description.
    base : str
        The directory relative array paths are resolved in (the file's, else the working directory).

    Raises
    ------
    InputError
        When the file does not exist or cannot be parsed, or a key is unknown or has a bad value.
    """
    data: dict = {}
    base = os.getcwd()
    source = "convert options"
    if path is not None:
        p = os.fspath(path)
        source = p
        if not os.path.isfile(p):
            raise InputError(f"description file {p} does not exist; give the YAML or TOML file describing the scan")
        from ..configfile import load_settings

        data = load_settings(p, "description file")  # one-line errors: syntax, NUL bytes, duplicate keys
        if isinstance(data.get("convert"), dict):
            data = data["convert"]
        base = os.path.dirname(os.path.abspath(p))
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return NumpySpec(**data), base
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "settings"
        if err["type"] == "extra_forbidden":
            raise InputError(f"{source}: unknown key {loc!r}; allowed keys: {', '.join(NumpySpec.model_fields)}") \
                from None
        raise InputError(f"{source}: {loc}: {err['msg']} (got {err.get('input')!r}); see docs/your-data.md") from None


# --------------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------------

def _resolve(ref: str, base: str) -> str:
    return ref if os.path.isabs(ref) else os.path.join(base, ref)


def load_array(ref: str, base: str, what: str, mmap: bool = False) -> np.ndarray:
    """Load one array reference (see :class:`NumpySpec`); ``mmap`` memory-maps ``.npy`` files.

    Parameters
    ----------
    ref : str
        ``file.npy``, ``file.npz:KEY`` (or a one-array ``.npz``), ``file.csv``, ``file.txt`` or ``file.dat``
        (one header line allowed).
    base : str
        Directory of relative paths.
    what : str
        The key being loaded, for the message.
    mmap : bool, optional
        Memory-map ``.npy`` files read-only. Default False.

    Returns
    -------
    numpy.ndarray
        The array (a read-only memory map for ``.npy`` with ``mmap``); tables at least 1-D.

    Raises
    ------
    InputError
        When the file does not exist, cannot be read, has an unknown suffix, or the ``.npz`` key is missing
        or ambiguous.
    """
    path, key = ref, None
    m = re.fullmatch(r"(.+\.npz):(.+)", ref)
    if m:
        path, key = m.group(1), m.group(2)
    full = _resolve(path, base)
    if not os.path.isfile(full):
        raise InputError(f"{what}: file {full} does not exist; fix the path (relative paths are relative to "
                         "the description file)")
    ext = os.path.splitext(full)[1].lower()
    try:
        if ext == ".npy":
            return np.load(full, mmap_mode="r" if mmap else None, allow_pickle=False)
        if ext == ".npz":
            with np.load(full, allow_pickle=False) as z:
                names = list(z.keys())
                if key is None:
                    if len(names) != 1:
                        raise InputError(f"{what}: {full} holds {len(names)} arrays ({', '.join(names)}); "
                                         f"name one as {path}:KEY")
                    key = names[0]
                if key not in names:
                    raise InputError(f"{what}: {full} has no array {key!r} (it has {', '.join(names)}); "
                                     "fix the key after the colon")
                return z[key]
        if ext in (".csv", ".txt", ".dat"):
            delim = "," if ext == ".csv" else None
            try:
                return np.loadtxt(full, delimiter=delim, ndmin=1)
            except ValueError:  # one header line
                return np.loadtxt(full, delimiter=delim, ndmin=1, skiprows=1)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - unreadable file: one line
        raise InputError(f"{what}: cannot read {full} ({' '.join(str(e).split())[:160]}); save it with "
                         "numpy.save / numpy.savez or as a comma-separated table") from None
    raise InputError(f"{what}: {full} has unknown type {ext!r}; use .npy, .npz:KEY, .csv or .txt")


def _file_list(ref, base: str, what: str) -> list[str] | None:
    """Per-angle file list for a list or a glob reference; None for a single array reference."""
    if isinstance(ref, list):
        return [str(r) for r in ref]
    if any(c in ref for c in "*?["):
        found = sorted(glob.glob(_resolve(ref, base)))
        if not found:
            raise InputError(f"{what}: no file matches {ref!r}; fix the pattern")
        return found
    return None


# --------------------------------------------------------------------------------------------------
# frame transforms
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameLayout:
    """How recorded frames become hpc-pt frames: transpose, DC position, crop window (rows, cols).

    Built by :func:`make_layout`; :meth:`centred` applies it to an array.

    Parameters
    ----------
    transpose : bool
        Swap the two frame axes first.
    dc_corner : bool
        The recorded frames have DC at ``[0, 0]`` (``frames_dc = "corner"``); they are fftshifted to the
        centre.
    rows, cols : tuple of int
        Window ``[r0, r1)`` and ``[c0, c1)`` in the recorded (DC-centred, transposed) layout.
    """

    transpose: bool
    dc_corner: bool
    rows: tuple[int, int]  # window [r0, r1) in the recorded (DC-centred, transposed) layout
    cols: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the converted frames."""
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]

    def centred(self, arr: np.ndarray) -> np.ndarray:
        """Recorded array (..., h, w) -> transposed, DC-centred, cropped (still DC at the centre).

        Parameters
        ----------
        arr : array_like
            Recorded frames, probe or mask, (..., h, w).

        Returns
        -------
        numpy.ndarray
            The window, (..., rows, cols) (a view where no shift was needed).
        """
        a = np.asarray(arr)
        if self.transpose:
            a = np.swapaxes(a, -1, -2)
        if self.dc_corner:
            a = np.fft.fftshift(a, axes=(-2, -1))
        return a[..., self.rows[0]:self.rows[1], self.cols[0]:self.cols[1]]


def _window(length: int, centre: int, size: int, what: str) -> tuple[int, int]:
    start = centre - size // 2
    if start < 0 or start + size > length:
        raise InputError(f"{what}: a {size}-pixel window centred on pixel {centre} does not fit in {length} "
                         "pixels; choose a smaller crop or check the beam centre")
    return start, start + size


def _largest_window(length: int, centre: int) -> int:
    """Largest even n with the window [centre - n//2, centre - n//2 + n) inside [0, length)."""
    best = 0
    for n in range(2, length + 1, 2):
        start = centre - n // 2
        if start >= 0 and start + n <= length:
            best = n
    return best


def make_layout(raw_shape, spec: NumpySpec, beam_centre=None, square: bool = True) -> FrameLayout:
    """The :class:`FrameLayout` of recorded (h, w) frames (``raw_shape``) from the spec's frame keys.

    ``beam_centre`` (row, col) in the recorded frames (before transposing) is ``spec.beam_centre`` or a
    value from the file; ``square`` makes the automatic crop square (square detector pixels).

    Parameters
    ----------
    raw_shape : tuple of int
        (h, w) of the recorded frames.
    spec : NumpySpec
        ``transpose_frames``, ``frames_dc``, ``beam_centre`` and ``crop`` are used.
    beam_centre : sequence of float, optional
        (row, col) of the direct beam from the file, used when the spec gives none.
    square : bool, optional
        Make the automatic crop square. Default True.

    Returns
    -------
    FrameLayout
        No crop when neither ``crop`` nor an off-centre beam asks for one; else the crop (``crop`` pixels, or
        the largest even window) centred on the beam.

    Raises
    ------
    InputError
        For a beam centre that is not two finite numbers, given with ``frames_dc = "corner"`` or outside the
        frames, a crop below 2 pixels, or a window that does not fit.
    """
    h, w = (int(v) for v in raw_shape)
    transpose = bool(spec.transpose_frames)
    dc_corner = spec.frames_dc == "corner"
    bc = spec.beam_centre if spec.beam_centre is not None else beam_centre
    if bc is not None:
        if len(bc) != 2 or not all(math.isfinite(float(v)) for v in bc):
            raise InputError(f"beam_centre {bc!r} must be two finite numbers [row, col] (detector pixels)")
        if dc_corner:
            raise InputError("beam_centre describes frames as recorded (direct beam inside the frame); drop it "
                             "or frames_dc = \"corner\"")
        bc = (float(bc[1]), float(bc[0])) if transpose else (float(bc[0]), float(bc[1]))
    if transpose:
        h, w = w, h
    crop = spec.crop
    if crop is None and (bc is None or (round(bc[0]) == h // 2 and round(bc[1]) == w // 2)):
        return FrameLayout(transpose, dc_corner, (0, h), (0, w))
    cr, cc = (h // 2, w // 2) if bc is None else (int(round(bc[0])), int(round(bc[1])))
    if not (0 <= cr < h and 0 <= cc < w):
        raise InputError(f"beam centre ({cr}, {cc}) lies outside the {h}x{w} frames; give [row, col] of the "
                         "direct beam in detector pixels")
    if crop is None:
        n1, n2 = _largest_window(h, cr), _largest_window(w, cc)
        if square:
            n1 = n2 = min(n1, n2)
    else:
        n1, n2 = (int(crop), int(crop)) if isinstance(crop, int) else (int(crop[0]), int(crop[-1]))
        if n1 < 2 or n2 < 2:
            raise InputError(f"crop {crop!r} must be at least 2 pixels")
    return FrameLayout(transpose, dc_corner, _window(h, cr, n1, "crop rows"), _window(w, cc, n2, "crop columns"))


class LazyFrames:
    """One angle's frames, read and converted only when the writer asks for them (``np.asarray``).

    ``shape`` is known up front; ``__array__`` loads the recorded frames, applies the
    :class:`FrameLayout`, zeroes masked pixels, moves DC to index 0 and checks the values.

    Parameters
    ----------
    load : callable
        ``load() -> array``: the recorded frames, (F, h, w) or one (h, w) frame.
    n_frames : int
        F.
    layout : FrameLayout
        The conversion of the frames.
    valid : numpy.ndarray or None
        bool (m1, m2) valid-pixel mask, DC-centred, in the converted layout; None: every pixel valid.
    label : str
        The angle, for error messages.
    """

    ndim = 3

    def __init__(self, load: Callable[[], np.ndarray], n_frames: int, layout: FrameLayout, valid, label: str):
        self._load = load
        self._layout = layout
        self._valid = valid  # bool (m1, m2) DC-centred, or None
        self.label = label
        self.shape = (int(n_frames),) + layout.shape

    def __array__(self, dtype=None, copy=None):
        """Load and convert the frames (float32 unless ``dtype``); InputError on NaN or negative values."""
        raw = np.asarray(self._load())
        if raw.ndim == 2:
            raw = raw[None]
        f = np.array(self._layout.centred(raw), dtype=np.float32)
        if f.shape != self.shape:
            raise InputError(f"{self.label}: frames have shape {f.shape}, expected {self.shape}")
        if self._valid is not None:
            f[:, ~self._valid] = 0.0
        n_bad = int(np.count_nonzero(~np.isfinite(f)))
        n_neg = int(np.count_nonzero(f < 0))
        if n_bad or n_neg:
            raise InputError(f"{self.label}: {n_bad} NaN/infinite and {n_neg} negative intensities; intensities "
                             "must be finite and >= 0 (mark bad pixels 0 in the mask: they are then set to 0)")
        f = np.fft.ifftshift(f, axes=(-2, -1))
        return f if dtype is None else f.astype(dtype, copy=False)


# --------------------------------------------------------------------------------------------------
# assembling the dataset
# --------------------------------------------------------------------------------------------------

@dataclass
class _Angle:
    angle_deg: float
    load: Callable[[], np.ndarray]
    n_frames: int
    xy_m: np.ndarray  # (F, 2) probe-centre (x, y) in metres relative to the rotation axis
    label: str


def _pixel_sizes(value) -> tuple[float, float]:
    """(x, y) detector pixel sizes in metres from one quantity or a list [x, y]."""
    pix = value if isinstance(value, list) else [value]
    if len(pix) not in (1, 2):
        raise InputError(f"detector_pixel {value!r}: give one size or [x, y], e.g. \"75 um\"")
    x, y = (parse_quantity(v, "length", "detector_pixel") for v in (pix * 2)[:2])
    return x, y


def _check_geometry(energy_ev, distance_m, xpix, ypix, label: str) -> None:
    for what, v in (("energy", energy_ev), ("detector distance", distance_m), ("detector x pixel size", xpix),
                    ("detector y pixel size", ypix)):
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"{label}: {what} is {v:g}; it must be a positive finite number (with its unit)")


def _xy_metres(raw, unit: str | None, columns: str, sign: float, axis_x: float, pixel_m: float, n: int,
               what: str) -> np.ndarray:
    """(F, 2|3) positions in ``unit`` -> (F, 2) probe (x, y) metres relative to the rotation axis."""
    if unit is None:
        raise InputError(f"{what}: positions_unit is not given; set it to m, mm, um, nm or px")
    p = np.asarray(raw, dtype=np.float64)
    if p.ndim == 1 and p.size in (2, 3) and n == 1:
        p = p[None]
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise InputError(f"{what}: positions have shape {p.shape}; give one row (x, y) or (x, y, z) per frame")
    if p.shape[0] != n:
        raise InputError(f"{what}: {n} frames but {p.shape[0]} positions; give one position per frame")
    if not np.all(np.isfinite(p)):
        raise InputError(f"{what}: {int(np.sum(~np.isfinite(p)))} NaN or infinite position values; every frame "
                         "needs a finite position")
    xy = p[:, :2] if columns == "xy" else p[:, 1::-1]
    xy = xy - np.array([axis_x, 0.0])
    scale = pixel_m if str(unit).strip().lower() in ("px", "pixel", "pixels") else unit_factor(unit, "length", what)
    return sign * xy * scale


def _dataset(angles: list[_Angle], layout: FrameLayout, energy_ev: float, distance_m: float,
             det_pixel: tuple[float, float], probe, valid, attrs: dict) -> Dataset:
    """Field, positions and lazily-read frames of the converted scan."""
    if not angles:
        raise InputError("the scan has no angles; give at least one angle of frames")
    degs = np.array([a.angle_deg for a in angles])
    order = np.argsort(degs, kind="stable")
    for i, j in zip(order[:-1], order[1:]):
        if abs(degs[i] - degs[j]) < 1e-9:
            raise InputError(f"duplicate angle {degs[i]:g} deg in {angles[i].label} and {angles[j].label}; each "
                             "angle must appear once (drop or merge one of them)")
    m1, m2 = layout.shape
    pixel_m = cv.sample_pixel_size_m(energy_ev, distance_m, det_pixel[0], m2)
    pixel_y = cv.sample_pixel_size_m(energy_ev, distance_m, det_pixel[1], m1)
    if not math.isclose(pixel_m, pixel_y, rel_tol=1e-6):
        raise InputError(f"sample-plane pixels are not square (x {pixel_m:.4g} m, y {pixel_y:.4g} m) for "
                         f"{m1}x{m2} frames; crop them to a square window (crop = N) or bin them")
    all_xy = np.concatenate([a.xy_m for a in angles])
    y0 = 0.5 * (all_xy[:, 1].min() + all_xy[:, 1].max()) if all_xy.size else 0.0  # as the CXI reader does
    tr3 = np.zeros((all_xy.shape[0], 3))
    tr3[:, 0], tr3[:, 1] = all_xy[:, 0], all_xy[:, 1] - y0
    field = tuple(int(v) for v in cv.field_for_translations(tr3, (m1, m2), pixel_m))
    data = []
    for a in angles:
        t = np.zeros((a.n_frames, 3))
        t[:, 0], t[:, 1] = a.xy_m[:, 0], a.xy_m[:, 1] - y0
        pos = cv.translations_to_positions(t, (m1, m2), field, pixel_m)
        data.append(AngleData(angle_deg=float(a.angle_deg), frames=LazyFrames(a.load, a.n_frames, layout, valid,
                                                                              a.label),
                              positions=pos))
    geo = Geometry(energy_ev=float(energy_ev), detector_distance_m=float(distance_m),
                   detector_pixel_m=(float(det_pixel[0]), float(det_pixel[1])), pixel_m=pixel_m, field_shape=field)
    check_scan_step([d.positions for d in data], (m1, m2), pixel_m)
    mask_mem = None if valid is None else np.fft.ifftshift(valid, axes=(-2, -1))
    width = attrs.pop("sample_width", None)
    if width is not None:  # the reconstruction's default volume edge (attrs "size", as the simulator records)
        attrs["size"] = sample_width_px(width, pixel_m, field)
    return Dataset(angles=data, probe=probe, geometry=geo, mask=mask_mem, truth=None, attrs=attrs)


def scan_step_px(positions) -> float:
    """Median nearest-neighbour distance of the scan positions (pixels) over the angles; nan for none.

    Per angle the median of the nearest-neighbour distances (for more than 2048 positions the median distance
    to the next position in scan order), then the median over the angles.

    Parameters
    ----------
    positions : iterable of array_like
        One (F, 2) array of positions per angle.

    Returns
    -------
    float
        The step in pixels; nan when no angle has two positions.
    """
    steps = []
    for pos in positions:
        p = np.asarray(pos, dtype=float)
        if len(p) < 2:
            continue
        d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)) if len(p) <= 2048 else None
        if d is None:  # a large scan: the distance to the next position in scan order is enough
            steps.append(float(np.median(np.sqrt((np.diff(p, axis=0) ** 2).sum(-1)))))
            continue
        np.fill_diagonal(d, np.inf)
        steps.append(float(np.median(d.min(axis=1))))
    return float(np.median(steps)) if steps else float("nan")


def check_scan_step(positions, frame_shape, pixel_m: float) -> None:
    """Warn (one line) when the converted scan's step is implausible for a ptychographic scan.

    Implausible: below a tenth of a sample-plane pixel or wider than the frame, the usual signature of a
    positions unit off by 10^3.

    Parameters
    ----------
    positions : iterable of array_like
        One (F, 2) array of positions (pixels) per angle.
    frame_shape : tuple of int
        (m1, m2) of the converted frames.
    pixel_m : float
        Sample-plane pixel size in metres (for the message).
    """
    import warnings

    step = scan_step_px(positions)
    if not np.isfinite(step):
        return
    where = f"the scan positions are {step:.3g} px apart (sample-plane pixel {pixel_m:.3g} m, {frame_shape[1]} px frames)"
    if step < 0.1:
        warnings.warn(f"{where}: far below one pixel, likely a positions unit 1000x too small (nm for um, um "
                      "for mm?); check positions_unit / --positions-unit", stacklevel=3)
    elif step > frame_shape[1]:
        warnings.warn(f"{where}: wider than a frame, so the beams do not touch, or a positions unit 1000x too "
                      "large (um for nm?); check positions_unit / --positions-unit", stacklevel=3)


def sample_width_px(value, pixel_m: float, field: tuple[int, int]) -> int:
    """The sample's width in whole sample-plane pixels, checked against the object field.

    ``value`` is ``"VALUE UNIT"`` in ``px`` or a length; it becomes the default edge of the reconstructed
    volume.

    Parameters
    ----------
    value : str
        The width, e.g. ``"40 px"`` or ``"2.4 um"``.
    pixel_m : float
        Sample-plane pixel size in metres.
    field : tuple of int
        (H, W) of the object field.

    Returns
    -------
    int
        The width in pixels, rounded.

    Raises
    ------
    InputError
        When the width is not between 4 pixels and the field's width, or cannot be parsed.
    """
    m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*(px|pixels?)\s*", str(value))
    px = float(m.group(1)) if m else parse_quantity(value, "length", "sample_width") / pixel_m
    n = int(round(px))
    if not 4 <= n <= field[1]:
        raise InputError(f"sample_width {value!r} is {px:.1f} pixels; it must lie between 4 and the object field's "
                         f"{field[1]} pixels (or leave it out: the volume then spans the field)")
    return n


def _probe_and_mask(spec: NumpySpec, base: str, layout: FrameLayout, probe_raw=None, valid_raw=None):
    """Probe (final frame shape, complex64, real space, transposed with the frames) and the valid-pixel
    mask (DC-centred, converted layout); ``spec`` entries override the file's."""
    probe = probe_raw
    if spec.probe is not None:
        probe = load_array(spec.probe, base, "probe")
    if probe is not None:
        probe = np.asarray(probe)
        if probe.ndim == 3 and probe.shape[0] == 1:
            probe = probe[0]
        if layout.transpose:
            probe = probe.T
        if probe.shape != layout.shape:
            raise InputError(f"probe has shape {probe.shape} but the converted frames are {layout.shape}; give a "
                             "probe sampled like the (cropped) frames, or none to estimate it from the data")
        if not np.all(np.isfinite(probe)) or not np.any(probe != 0):
            raise InputError("probe holds NaN/infinite values or is zero everywhere; fix it or drop it")
        probe = probe.astype(np.complex64)
    valid = valid_raw
    if spec.mask is not None:
        valid = np.asarray(load_array(spec.mask, base, "mask")) != 0
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.ndim != 2:
            raise InputError(f"mask has shape {valid.shape}; give one value per detector pixel (h, w)")
        valid = layout.centred(valid)
        if valid.shape != layout.shape:
            raise InputError(f"mask has shape {valid.shape} after cropping, frames {layout.shape}; give one "
                             "value per detector pixel of the recorded frames")
        if not valid.any():
            raise InputError("mask marks every pixel invalid; 1 (non-zero) = valid pixel")
    return probe, valid


# --------------------------------------------------------------------------------------------------
# numpy source
# --------------------------------------------------------------------------------------------------

def convert_numpy(spec_path=None, out=None, overwrite: bool = False, overrides: dict | None = None,
                  command=None) -> Dataset | str:
    """Convert a scan described by a YAML / TOML :class:`NumpySpec` into a CXI file ``out``.

    Parameters
    ----------
    spec_path : str or path-like, optional
        Path of the description file (None: ``overrides`` only, paths relative to the cwd).
    out : str or path-like, optional
        Output CXI file; None returns the (lazily read) :class:`~hpc_pt.data.Dataset` instead.
    overwrite : bool, optional
        Replace an existing ``out``.
    overrides : dict, optional
        Spec keys (CLI flags) applied over the file's.
    command : list of str or str, optional
        The command line recorded in the file's provenance.

    Returns
    -------
    str or hpc_pt.data.Dataset
        The absolute output path, or the Dataset when ``out`` is None.

    Raises
    ------
    InputError
        One line for a missing key, a bad unit or value, arrays whose shapes or counts do not match, a
        non-square sample-plane pixel, or an output that cannot be written.
    """
    spec, base = load_spec(spec_path, overrides)
    for key in ("frames", "angles", "angles_unit", "positions", "positions_unit", "energy", "detector_distance",
                "detector_pixel"):
        if getattr(spec, key) is None:
            raise InputError(f"{spec_path or 'convert options'}: missing key {key!r}; see docs/your-data.md for "
                             "the description file")
    energy = parse_quantity(spec.energy, "energy", "energy")
    distance = parse_quantity(spec.detector_distance, "length", "detector_distance")
    det_pixel = _pixel_sizes(spec.detector_pixel)
    _check_geometry(energy, distance, det_pixel[0], det_pixel[1], "description")
    if spec.transpose_frames:
        det_pixel = det_pixel[::-1]
    deg_per = unit_factor(spec.angles_unit, "angle", "angles_unit")
    angles_raw = (np.asarray(spec.angles, dtype=np.float64) if isinstance(spec.angles, list)
                  else np.asarray(load_array(spec.angles, base, "angles"), dtype=np.float64)).reshape(-1)
    if not np.all(np.isfinite(angles_raw)):
        raise InputError("angles hold NaN or infinite values; give one finite angle per angle (or per frame)")
    angles_deg = angles_raw * deg_per
    sign = -1.0 if spec.positions_are == "sample" else 1.0

    # frames: per-angle sources (load callables) with their frame counts and positions rows
    files = _file_list(spec.frames, base, "frames")
    groups: list[tuple[Callable[[], np.ndarray], int, object]] = []  # (load, n, selector into positions)
    raw_shape = None
    if files is not None:
        for k, fname in enumerate(files):
            arr = load_array(fname, base, f"frames[{k}]", mmap=True)
            if arr.ndim not in (2, 3):
                raise InputError(f"frames[{k}] ({fname}) has shape {arr.shape}; each per-angle file holds "
                                 "(frames, h, w)")
            shp = arr.shape[-2:]
            if raw_shape is None:
                raw_shape = shp
            elif shp != raw_shape:
                raise InputError(f"frames[{k}] ({fname}) has {shp[0]}x{shp[1]} frames, the first file "
                                 f"{raw_shape[0]}x{raw_shape[1]}; all angles need one detector shape")
            groups.append(((lambda fn=fname, k=k: load_array(fn, base, f"frames[{k}]", mmap=True)),
                           1 if arr.ndim == 2 else arr.shape[0], k))
        per_angle = True
    else:
        stack = load_array(spec.frames, base, "frames", mmap=True)
        if stack.ndim == 4:
            raw_shape = stack.shape[-2:]
            groups = [((lambda a=a: stack[a]), stack.shape[1], a) for a in range(stack.shape[0])]
            per_angle = True
        elif stack.ndim == 3:
            raw_shape = stack.shape[-2:]
            n = stack.shape[0]
            if spec.angle_index is not None:
                idx = np.asarray(load_array(spec.angle_index, base, "angle_index")).reshape(-1)
                if idx.shape[0] != n:
                    raise InputError(f"angle_index has {idx.shape[0]} values for {n} frames; give one angle "
                                     "index per frame")
                if not np.all(np.equal(np.mod(idx, 1), 0)) or idx.min() < 0 or idx.max() >= angles_deg.size:
                    raise InputError(f"angle_index must hold integers 0..{angles_deg.size - 1} (indices into "
                                     "angles)")
                idx = idx.astype(np.int64)
            elif angles_deg.size == n and n > 1:  # one angle per frame: group equal angles
                uniq, idx = np.unique(np.round(angles_deg, 9), return_inverse=True)
                first = np.array([np.flatnonzero(idx == k)[0] for k in range(uniq.size)])
                ordr = np.argsort(first)  # keep the order of first appearance
                remap = np.empty_like(ordr)
                remap[ordr] = np.arange(ordr.size)
                idx = remap[idx]
                angles_deg = angles_deg[first[ordr]]
            elif angles_deg.size == 1:
                idx = np.zeros(n, dtype=np.int64)
            else:
                raise InputError(f"frames is one stack of {n} frames for {angles_deg.size} angles; give "
                                 "angle_index (one integer per frame), one angle per frame, or a 4D "
                                 "(angles, frames, h, w) stack")
            groups = []
            for a in range(angles_deg.size):
                sel = np.flatnonzero(idx == a)
                groups.append(((lambda sel=sel: stack[sel]), sel.size, sel))
            per_angle = False
        else:
            raise InputError(f"frames has shape {stack.shape}; give (angles, frames, h, w), (frames, h, w) with "
                             "angle_index, or one (frames, h, w) file per angle")
    if per_angle and angles_deg.size != len(groups):
        raise InputError(f"{len(groups)} angles of frames but {angles_deg.size} angles; give one angle per "
                         "angle of frames")
    square = math.isclose(det_pixel[0], det_pixel[1], rel_tol=1e-9)
    layout = make_layout(raw_shape, spec, square=square)
    probe, valid = _probe_and_mask(spec, base, layout)
    pixel_m = cv.sample_pixel_size_m(energy, distance, det_pixel[0], layout.shape[1])

    # positions
    pfiles = _file_list(spec.positions, base, "positions")
    stacked = None
    if pfiles is None:
        stacked = np.asarray(load_array(spec.positions, base, "positions"), dtype=np.float64)
    elif len(pfiles) != len(groups):
        raise InputError(f"positions: {len(pfiles)} files for {len(groups)} angles; give one positions file "
                         "per angle")
    angles: list[_Angle] = []
    offset = 0
    for a, (load, n, sel) in enumerate(groups):
        label = f"angle {a} ({angles_deg[a]:g} deg)"
        if pfiles is not None:
            raw = load_array(pfiles[a], base, f"positions[{a}]")
        elif stacked.ndim == 3:  # (A, F, 2|3) with a 4D stack
            if stacked.shape[0] != len(groups):
                raise InputError(f"positions have shape {stacked.shape} for {len(groups)} angles; give "
                                 "(angles, frames, 2) or one row per frame")
            raw = stacked[a]
        elif per_angle:  # rows in frame order, angle after angle
            raw = stacked[offset:offset + n]
        else:
            if stacked.shape[0] != sum(g[1] for g in groups):
                raise InputError(f"positions have {stacked.shape[0]} rows for {sum(g[1] for g in groups)} frames; "
                                 "give one position per frame, in the stack's frame order")
            raw = stacked[sel]
        offset += n
        xy = _xy_metres(raw, spec.positions_unit, spec.positions_columns, sign, spec.rotation_axis_x, pixel_m,
                        n, label)
        angles.append(_Angle(float(angles_deg[a]), load, n, xy, label))
    if pfiles is None and stacked.ndim == 2 and per_angle and offset != stacked.shape[0]:
        raise InputError(f"positions have {stacked.shape[0]} rows for {offset} frames; give one position per frame")
    attrs = {"converted_from": os.path.abspath(spec_path) if spec_path else "numpy arrays", "source_format": "numpy",
             "positions_are": spec.positions_are or "probe"}
    if spec.model is not None:
        attrs["model"] = spec.model
    if spec.sample_width is not None:
        attrs["sample_width"] = spec.sample_width
    ds = _dataset(angles, layout, energy, distance, det_pixel, probe, valid, attrs)
    return ds if out is None else write_cxi(ds, out, overwrite=overwrite, command=command)


# --------------------------------------------------------------------------------------------------
# NeXus NXcxi_ptycho source
# --------------------------------------------------------------------------------------------------

NX_DATA = ("instrument_1/detector_1/data", "data_1/data", "data/data")
NX_TRANS = ("instrument_1/detector_1/translation", "sample_1/geometry_1/translation", "data_1/translation")
NX_MOTORS = ("sample_1/transformations/x", "sample_1/transformations/y")
NX_ENERGY = ("instrument_1/beam_1/incident_beam_energy", "instrument_1/beam_1/energy")
NX_DIST = "instrument_1/detector_1/distance"
NX_XPIX = "instrument_1/detector_1/x_pixel_size"
NX_YPIX = "instrument_1/detector_1/y_pixel_size"
NX_MASK = "instrument_1/detector_1/pixel_mask"
NX_BEAM = ("instrument_1/detector_1/beam_center_x", "instrument_1/detector_1/beam_center_y")
NX_ANGLE = "sample_1/rotation_angle"
NX_ROT_GROUP = "sample_1/transformations"
NX_PROBE = "instrument_1/source_1/illumination"
NEXUS_SUFFIXES = (".nxs", ".h5", ".hdf5", ".hdf", ".cxi", ".nx5")


def _text(v) -> str:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray):
        return _text(v.reshape(-1)[0]) if v.size else ""
    return str(v)


def _get(e, path):
    try:
        return e[path]
    except KeyError:
        return None


def _first(e, paths):
    for p in paths:
        obj = _get(e, p)
        if isinstance(obj, h5py.Dataset):
            return p, obj
    return None, None


def _units(ds, label: str, what: str, default: str | None = None) -> str:
    u = ds.attrs.get("units")
    if u is None:
        if default is not None:
            return default
        raise InputError(f"{label}: {ds.name} has no units attribute; add @units to it (NeXus requires one), "
                         "or give the value in the description file")
    return _text(u)


def _nx_scalar(ds, label: str) -> float:
    v = np.asarray(ds[()], dtype=np.float64).reshape(-1)
    if v.size != 1:
        raise InputError(f"{label}: {ds.name} has {v.size} values; store one scalar")
    return float(v[0])


def _nx_length(e, p: str, label: str, key: str, what: str) -> float:
    ds = _get(e, p)
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{label}: missing {e.name}/{p} ({what}); add it or set {key} in the description file")
    return _nx_scalar(ds, label) * unit_factor(_units(ds, label, what), "length", f"{label}: {ds.name}")


def _nx_entries(path: str) -> list[tuple[str, str]]:
    """(file, entry name) of every NXentry, files sorted by name, entries by their trailing number."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory; check the input path")
    files = ([os.path.join(path, n) for n in sorted(os.listdir(path)) if n.lower().endswith(NEXUS_SUFFIXES)]
             if os.path.isdir(path) else [path])
    if not files:
        raise InputError(f"{path}: directory holds no NeXus files ({', '.join(NEXUS_SUFFIXES)})")
    out = []
    for fname in files:
        if not h5py.is_hdf5(fname):
            raise InputError(f"{fname}: not an HDF5 file; give a NeXus (HDF5) file")
        with h5py.File(fname, "r") as f:
            names = [k for k, g in f.items() if isinstance(g, h5py.Group)
                     and (_text(g.attrs.get("NX_class", "")) == "NXentry" or re.fullmatch(r"entry(_?\d+)?", k))]
            if not names:
                raise InputError(f"{fname}: no NXentry group; an NXcxi_ptycho file holds /entry_1/"
                                 f"{NX_DATA[0]} (one entry per rotation angle)")
            key = lambda s: int(re.findall(r"\d+", s)[-1]) if re.findall(r"\d+", s) else -1  # noqa: E731
            out += [(fname, n) for n in sorted(names, key=key)]
    return out


def _nx_angle(e, label: str) -> float | None:
    ds = _get(e, NX_ANGLE)
    if isinstance(ds, h5py.Dataset):
        return _nx_scalar(ds, label) * unit_factor(_units(ds, label, "rotation angle"), "angle", f"{label}: {ds.name}")
    grp = _get(e, NX_ROT_GROUP)
    if isinstance(grp, h5py.Group):
        for name, obj in grp.items():
            if isinstance(obj, h5py.Dataset) and _text(obj.attrs.get("transformation_type", "")) == "rotation":
                return _nx_scalar(obj, label) * unit_factor(_units(obj, label, "rotation"), "angle",
                                                            f"{label}: {obj.name}")
    return None


def convert_nexus(path, out=None, overwrite: bool = False, spec_path=None, overrides: dict | None = None,
                  command=None) -> Dataset | str:
    """Convert NXcxi_ptycho NeXus data (a file or a directory; one NXentry per rotation angle) to CXI.

    Per entry: frames ``instrument_1/detector_1/data`` ((F, h, w), or (nx, ny, h, w) for a raster,
    flattened in C order), translations ``instrument_1/detector_1/translation`` ((F, 3), @units) or the
    motors ``sample_1/transformations/x`` and ``y`` (@units), photon energy
    ``instrument_1/beam_1/incident_beam_energy`` (or ``beam_1/energy``; ``source_1/energy`` is the storage
    ring's and is not used), ``detector_1/distance``, ``x_pixel_size``, ``y_pixel_size`` (@units), the
    rotation angle (``sample_1/rotation_angle`` or a ``transformation_type = rotation`` field of
    ``sample_1/transformations``), optional ``detector_1/pixel_mask`` (NeXus: 0 = good pixel) and
    ``beam_center_x`` / ``beam_center_y`` (@units pixel or a length). The description file (``spec_path``,
    keys of :class:`NumpySpec`) and ``overrides`` fill in or override any of these.

    Parameters
    ----------
    path : str or path-like
        A NeXus file, or a directory of them (files sorted by name, entries by number).
    out : str or path-like, optional
        Output CXI file; None returns the (lazily read) :class:`~hpc_pt.data.Dataset` instead.
    overwrite : bool, optional
        Replace an existing ``out``. Default False.
    spec_path : str or path-like, optional
        A description file that fills in or overrides what the files hold.
    overrides : dict, optional
        Description keys (CLI flags) applied over the file's.
    command : list of str or str, optional
        As for :func:`convert_numpy`.

    Returns
    -------
    str or hpc_pt.data.Dataset
        As for :func:`convert_numpy`.

    Raises
    ------
    InputError
        One line for a missing dataset or unit, shapes or geometry that disagree between entries, a missing
        rotation angle, duplicate angles, or an output that cannot be written.
    """
    spec, base = load_spec(spec_path, overrides)
    entries = _nx_entries(os.fspath(path))
    given_angles = None
    if spec.angles is not None:
        if spec.angles_unit is None:
            raise InputError("angles are given but angles_unit is not; set angles_unit = \"deg\" or \"rad\"")
        given_angles = (np.asarray(spec.angles, dtype=np.float64) if isinstance(spec.angles, list)
                        else np.asarray(load_array(spec.angles, base, "angles"), dtype=np.float64)).reshape(-1)
        given_angles = given_angles * unit_factor(spec.angles_unit, "angle", "angles_unit")
        if given_angles.size != len(entries):
            raise InputError(f"angles has {given_angles.size} values for {len(entries)} entries; give one angle "
                             "per NXentry, in entry order")
    sign = 1.0 if spec.positions_are == "probe" else -1.0  # NXcxi_ptycho: sample-motor positions
    multi = len({f for f, _ in entries}) > 1
    geo0 = None
    raw_shape = None
    found: list[tuple] = []  # (file, entry, data path, angle, frames, raw (x, y), unit, label) per entry
    probe_raw = valid_raw = beam = None
    for k, (fname, name) in enumerate(entries):
        label = f"{os.path.basename(fname)}:{name}" if multi else name
        with h5py.File(fname, "r") as f:
            e = f[name]
            dpath, data = _first(e, NX_DATA)
            if data is None:
                raise InputError(f"{label}: no frames; NXcxi_ptycho stores them at {name}/{NX_DATA[0]}")
            if data.ndim not in (3, 4):
                raise InputError(f"{label}: {dpath} has shape {data.shape}; it must be (frames, h, w) or "
                                 "(nx, ny, h, w)")
            shp = tuple(data.shape[-2:])
            n = int(np.prod(data.shape[:-2]))
            if raw_shape is None:
                raw_shape = shp
            elif shp != raw_shape:
                raise InputError(f"{label}: frames are {shp[0]}x{shp[1]}, the first entry's {raw_shape[0]}x"
                                 f"{raw_shape[1]}; all angles need one detector shape")
            # energy and detector geometry (the description overrides)
            if spec.energy is not None:
                energy = parse_quantity(spec.energy, "energy", "energy")
            else:
                ep, eds = _first(e, NX_ENERGY)
                if eds is None:
                    raise InputError(f"{label}: no photon energy at {name}/{NX_ENERGY[0]} (source_1/energy is the "
                                     "storage ring's, not the photons'); add it or set energy = \"8 keV\" in the "
                                     "description file")
                energy = _nx_scalar(eds, label) * unit_factor(_units(eds, label, "energy"), "energy",
                                                              f"{label}: {eds.name}")
            if spec.detector_distance is not None:
                dist = parse_quantity(spec.detector_distance, "length", "detector_distance")
            else:
                dist = _nx_length(e, NX_DIST, label, "detector_distance", "detector distance")
            if spec.detector_pixel is not None:
                xpix, ypix = _pixel_sizes(spec.detector_pixel)
            else:
                xpix = _nx_length(e, NX_XPIX, label, "detector_pixel", "detector x pixel size")
                ypix = _nx_length(e, NX_YPIX, label, "detector_pixel", "detector y pixel size")
            geo = (energy, dist, xpix, ypix)
            _check_geometry(*geo, label)
            if geo0 is None:
                geo0 = geo
            elif not np.allclose(geo, geo0, rtol=1e-6, atol=0):
                raise InputError(f"{label}: energy/distance/pixel size {geo} differ from the first entry's "
                                 f"{geo0}; all angles must share one energy and detector geometry")
            # rotation angle
            if given_angles is not None:
                angle = float(given_angles[k])
            else:
                angle = _nx_angle(e, label)
                if angle is None:
                    raise InputError(f"{label}: no rotation angle ({name}/{NX_ANGLE}, or a rotation in "
                                     f"{name}/{NX_ROT_GROUP}); add it, or give angles (one per entry) and "
                                     "angles_unit in the description file")
            if not math.isfinite(angle):
                raise InputError(f"{label}: rotation angle is {angle}; store a finite angle")
            # positions: translation (F, 3) or x / y motors
            tpath, tds = _first(e, NX_TRANS)
            unit = spec.positions_unit
            if tds is not None:
                t = np.asarray(tds[()], dtype=np.float64)
                if t.ndim != 2 or t.shape[1] != 3:
                    raise InputError(f"{label}: {tpath} has shape {t.shape}; NXcxi_ptycho's translation is "
                                     "(frames, 3)")
                xy = t[:, :2]
                unit = unit or _units(tds, label, "translation")
            else:
                mx, my = _get(e, NX_MOTORS[0]), _get(e, NX_MOTORS[1])
                if not (isinstance(mx, h5py.Dataset) and isinstance(my, h5py.Dataset)):
                    raise InputError(f"{label}: no positions ({name}/{NX_TRANS[0]} or {name}/{NX_MOTORS[0]} and "
                                     f"{NX_MOTORS[1]}); add the translation dataset")
                ux, uy = _units(mx, label, "x motor", unit), _units(my, label, "y motor", unit)
                fx, fy = unit_factor(ux, "length", mx.name), unit_factor(uy, "length", my.name)
                xy = np.stack([np.asarray(mx[()], dtype=np.float64).reshape(-1) * fx,
                               np.asarray(my[()], dtype=np.float64).reshape(-1) * fy], axis=1)
                unit = "m"
            if xy.shape[0] != n:
                raise InputError(f"{label}: {n} frames but {xy.shape[0]} positions; give one position per frame")
            if k == 0:
                pds = _get(e, NX_PROBE)
                if isinstance(pds, h5py.Dataset):
                    probe_raw = pds[()]
                mds = _get(e, NX_MASK)
                if isinstance(mds, h5py.Dataset):
                    if mds.shape != raw_shape:
                        raise InputError(f"{label}: {mds.name} has shape {mds.shape}, frames {raw_shape}; give "
                                         "one value per detector pixel")
                    valid_raw = np.asarray(mds[()]) == 0  # NeXus pixel_mask: 0 = good pixel
                bx, by = _get(e, NX_BEAM[0]), _get(e, NX_BEAM[1])
                if isinstance(bx, h5py.Dataset) and isinstance(by, h5py.Dataset):
                    beam = []
                    for ds, pixel in ((by, ypix), (bx, xpix)):
                        u = _units(ds, label, "beam centre", "pixel").strip().lower()
                        v = _nx_scalar(ds, label)
                        beam.append(v if u in ("pixel", "pixels", "px") else
                                    v * unit_factor(u, "length", ds.name) / pixel - 0.5)
            found.append((fname, name, dpath, angle, n, xy, unit, label))
    layout = make_layout(raw_shape, spec, beam_centre=beam, square=math.isclose(geo0[2], geo0[3], rel_tol=1e-9))
    probe, valid = _probe_and_mask(spec, base, layout, probe_raw, valid_raw)
    energy, dist, xpix, ypix = geo0
    if layout.transpose:
        xpix, ypix = ypix, xpix
    pixel_m = cv.sample_pixel_size_m(energy, dist, xpix, layout.shape[1])
    angles = []
    for fname, name, dpath, angle, n, xy, unit, label in found:
        def load(fname=fname, name=name, dpath=dpath):
            with h5py.File(fname, "r") as f:
                d = f[name][dpath][()]
            return d.reshape((-1,) + d.shape[-2:])

        xy_m = _xy_metres(xy, unit, spec.positions_columns, sign, spec.rotation_axis_x, pixel_m, n, label)
        angles.append(_Angle(angle, load, n, xy_m, label))
    attrs = {"converted_from": os.path.abspath(os.fspath(path)), "source_format": "nexus (NXcxi_ptycho)",
             "positions_are": spec.positions_are or "sample"}
    if spec.model is not None:
        attrs["model"] = spec.model
    if spec.sample_width is not None:
        attrs["sample_width"] = spec.sample_width
    ds = _dataset(angles, layout, energy, dist, (xpix, ypix), probe, valid, attrs)
    return ds if out is None else write_cxi(ds, out, overwrite=overwrite, command=command)


def detect_format(source) -> str:
    """"numpy" for a .toml / .yaml / .yml description, "nexus" for an HDF5 file or a directory of them.

    Parameters
    ----------
    source : str or path-like
        The input path (only its name, and whether it is a directory, are looked at).

    Returns
    -------
    str
        "numpy" or "nexus".

    Raises
    ------
    InputError
        When the name fits neither (pass ``--format``).
    """
    s = os.fspath(source)
    if s.lower().endswith((".toml", ".yaml", ".yml")):
        return "numpy"
    if os.path.isdir(s) or s.lower().endswith(NEXUS_SUFFIXES):
        return "nexus"
    raise InputError(f"{s}: cannot tell the input format from its name; pass --format numpy (a .toml/.yaml "
                     "description) or --format nexus (an NXcxi_ptycho HDF5 file)")


def source_paths(source, fmt: str, config=None, overrides: dict | None = None) -> dict:
    """{label: path} of every file a conversion reads.

    The source (description file, NeXus file or folder), the NeXus ``config`` and each array file the
    description (with ``overrides``) names (lists and globs expanded, ``file.npz:key`` as its file).
    ``convert`` refuses an ``--out`` that touches any of them.

    Parameters
    ----------
    source : str or path-like
        The conversion's source.
    fmt : {"numpy", "nexus"}
        The source's format (the description is ``source`` for "numpy", ``config`` for "nexus").
    config : str or path-like, optional
        The description file of a NeXus source.
    overrides : dict, optional
        Description keys from the command line.

    Returns
    -------
    dict
        ``{label: path}`` (labels such as "the source", "--config", "the frames file 2").

    Raises
    ------
    InputError
        When the description cannot be read (:func:`load_spec`).
    """
    paths = {"the source": os.fspath(source)}
    if config is not None:
        paths["--config"] = os.fspath(config)
    spec, base = load_spec(os.fspath(source) if fmt == "numpy" else config, overrides)
    for key in ("frames", "angle_index", "angles", "positions", "probe", "mask"):
        ref = getattr(spec, key)
        if ref is None or (key == "angles" and isinstance(ref, list)):  # inline angles: no file
            continue
        files = []
        for r in (ref if isinstance(ref, list) else [ref]):
            m = re.fullmatch(r"(.+\.npz):(.+)", str(r))
            full = _resolve(m.group(1) if m else str(r), base)
            files += sorted(glob.glob(full)) if any(c in str(r) for c in "*?[") else [full]
        for k, f in enumerate(files):
            paths[f"the {key} file" + (f" {k + 1}" if len(files) > 1 else "")] = f
    return paths


def convert(source, out, fmt: str = "auto", overwrite: bool = False, config=None, overrides: dict | None = None,
            command=None) -> str:
    """``hpc-pt convert``: ``source`` (a description file or NeXus data) -> CXI file ``out``.

    ``fmt`` is "auto" (by the source's name), "numpy" or "nexus"; ``config`` an optional description file
    for a NeXus source; ``overrides`` description keys from the command line. Returns the output path.

    Parameters
    ----------
    source : str or path-like
        A description file (numpy) or a NeXus file or directory.
    out : str or path-like
        The CXI file to write; refused when it is, contains or lies inside an input.
    fmt : {"auto", "numpy", "nexus"}, optional
        The source's format. Default "auto".
    overwrite : bool, optional
        Replace an existing ``out``. Default False.
    config : str or path-like, optional
        Description file for a NeXus source.
    overrides : dict, optional
        Description keys from the command line.
    command : list of str or str, optional
        The command line recorded in the file's provenance.

    Returns
    -------
    str
        The absolute output path.

    Raises
    ------
    InputError
        For an unknown ``fmt``, ``config`` with a numpy source, an output that touches an input, or any
        problem :func:`convert_numpy` / :func:`convert_nexus` finds.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt == "numpy" and config is not None:
        raise InputError("--config goes with a NeXus source; for numpy arrays the source is the description "
                         "file itself")
    from .safety import refuse_overlap

    refuse_overlap({"--out": out}, source_paths(source, fmt, config, overrides))
    if fmt == "numpy":
        return convert_numpy(source, out, overwrite=overwrite, overrides=overrides, command=command)
    return convert_nexus(source, out, overwrite=overwrite, spec_path=config, overrides=overrides, command=command)
