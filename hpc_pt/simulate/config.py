"""Simulation settings as a validated pydantic model, read from YAML or TOML.

A file holds the fields of :class:`SimulationConfig` either at the top level or under a ``simulate:``
table (so one file can configure several stages). Keys may use ``-`` or ``_``. Unknown keys and bad values
raise :class:`hpc_pt.errors.InputError` with a one-line message naming the key and the fix.

Defaults: a 128^3 Shepp-Logan, 12 angles over [0, pi), and a sparse joint-reconstruction scan that follows
the volume edge N (:func:`scaled_defaults`: probe window N // 2, Gaussian FWHM N / 8, raster step N / 8, free
space N // 6 around the sample and a 1-pixel raster shift per angle), so the defaults hold for every
N >= 16. Seed 001's setup (64 x 64 probe, FWHM 14, step 32, no free space) is
examples/simulate_seed001.toml; seed 002's is ``phantom: wires, size: 64, probe_kind: disc, probe_size: 63, probe_fwhm: 15,
step: 4 or 10, angle_range: 360, per_angle_offset: 1, model: exp``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..errors import InputError, plain_message

PHANTOMS = ("shepp-logan", "wires", "ellipsoids")

#: how each size-dependent default follows the volume edge N when it is not given
SIZE_SCALED = {"probe_size": "N // 2", "probe_fwhm": "N / 8", "step": "N / 8",
               "field_pad": "N // 6 when no scan geometry is given, else 0",
               "per_angle_offset": "1 when no scan geometry is given, else 0"}
#: the scan-geometry settings; when none is given, free space and a per-angle shift join the defaults
GEOMETRY_KEYS = ("probe_size", "probe_fwhm", "step", "field_pad", "per_angle_offset")


def scaled_defaults(size: int, whole_geometry: bool = True) -> dict:
    """The scan geometry for an N^3 volume when it is not given: a sparse joint-reconstruction scan.

    A probe window of half the field, a beam FWHM of N / 8 and a raster step of one FWHM (adjacent beams
    barely touch: 2D ptychography alone cannot solve it, the joint solvers can), with N / 6 pixels of free
    space around the sample so the beam reaches its edges and a 1-pixel raster shift per angle so the
    angles see different positions. Measured at N = 48 with 24 angles, noise-free, APT with defaults:
    21.2 dB (the geometry scaled from seed 001's step-32 scan, step N / 4 and no free space: 3.6 dB).
    Seed 001's own settings are examples/simulate_seed001.toml.

    Parameters
    ----------
    size : int
        Volume edge N (>= 8).
    whole_geometry : bool
        True when no geometry setting is given: include ``field_pad`` and ``per_angle_offset``. With some
        given, only the missing probe window, FWHM and step are filled and the free space stays as given
        (0 by default).

    Returns
    -------
    dict
        ``{"probe_size": int, "probe_fwhm": float, "step": float[, "field_pad": int, "per_angle_offset": float]}``.
    """
    n = int(size)
    out = {"probe_size": max(2, n // 2), "probe_fwhm": round(n / 8.0, 2), "step": round(n / 8.0, 2)}
    if whole_geometry:
        out.update(field_pad=n // 6, per_angle_offset=1.0)
    return out


class SimulationConfig(BaseModel):
    """Everything :func:`hpc_pt.simulate.simulate_dataset` needs; immutable once validated.

    Parameters
    ----------
    **fields
        The settings, by keyword: every field below, each documented by its ``Field(description=...)``
        (``hpc-pt simulate --help`` lists them). Unknown keys are refused; ``probe_size``, ``probe_fwhm``,
        ``step`` (and, when no scan-geometry key is given, ``field_pad`` and ``per_angle_offset``) default to
        :func:`scaled_defaults` of ``size``. Constructing it directly raises pydantic's ``ValidationError``;
        :meth:`from_mapping`, :meth:`build` and :meth:`from_file` turn that into a one-line
        :class:`~hpc_pt.errors.InputError`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    phantom: Literal["shepp-logan", "wires", "ellipsoids"] = Field("shepp-logan", description="sample phantom")
    size: int = Field(128, ge=8, description="volume edge N (voxels); the volume is N^3")
    angles: int = Field(12, ge=1, description="number of rotation angles")
    angle_range: Literal[180, 360] = Field(180, description="angular range in degrees, endpoint excluded: "
                                                             "180 is [0, pi), 360 is [0, 2 pi)")
    angle_kind: Literal["uniform", "golden"] = Field("uniform", description="angle spacing")
    probe_size: int = Field(64, ge=2, description="probe window / detector frame edge M (M x M pixels) "
                                                  f"(default: {SIZE_SCALED['probe_size']})")
    probe_fwhm: float = Field(14.0, gt=0, description="probe amplitude FWHM (gaussian, airy) or disc diameter, "
                                                      f"pixels (default: {SIZE_SCALED['probe_fwhm']})")
    probe_kind: Literal["gaussian", "airy", "disc", "file"] = Field("gaussian", description="probe shape")
    probe_file: Path | None = Field(None, description="probe to load (.npy, .h5, .cxi) with probe_kind file "
                                                      "(default: none)")
    step: float = Field(32.0, gt=0, description=f"scan step in pixels (default: {SIZE_SCALED['step']})")
    scan: Literal["raster", "fermat"] = Field("raster", description="scan pattern")
    per_angle_offset: float = Field(0.0, ge=0, description="raster start shift per angle (pixels) (default: "
                                                           f"{SIZE_SCALED['per_angle_offset']})")
    field_pad: int = Field(0, ge=0, description="pixels of free space added on each side of the projection "
                                                f"(default: {SIZE_SCALED['field_pad']})")
    model: Literal["linear", "exp"] = Field("linear", description="forward model: linear (Rytov, seed 001) or "
                                                                 "exp (projection approximation)")
    noise: Literal["none", "poisson"] = Field("none", description="noise model of the intensities")
    peak: float = Field(1.0, gt=0, description="Poisson peak factor eta (seed 001)")
    energy_kev: float = Field(5.0, gt=0, description="photon energy in keV")
    voxel_nm: float = Field(10.0, gt=0, description="voxel size in nm")
    detector_pixel_um: float = Field(75.0, gt=0, description="detector pixel size in micrometres")
    seed: int = Field(0, description="random seed (noise, random phantoms)")
    ellipsoids: int = Field(12, ge=1, description="number of random ellipsoids of the 'ellipsoids' phantom")
    rotation_centre: float | None = Field(
        None, description="object-field column (pixel-centre coordinate) of the rotation axis (default: "
                          "none, the field centre (W - 1) / 2). The sample stays centred on the axis, so an off-centre "
                          "axis shifts its projections across the field (data with a misplaced axis)")
    phase_object_rad: float | None = Field(
        None, gt=0, description="seed 001's pure-phase sample for the linear model: u = exp(i phi s), s the "
                                "phantom's real part in [0, 1], phi this value in radians (default: none, u = s)")

    @model_validator(mode="before")
    @classmethod
    def _scale_with_size(cls, data, info: ValidationInfo):
        """Fill probe_size, probe_fwhm and step from the size when they are not given (:func:`scaled_defaults`);
        the names filled go to ``info.context["scaled"]`` when the caller passed such a list."""
        if not isinstance(data, dict):
            return data
        raw = data.get("size", cls.model_fields["size"].default)
        if isinstance(raw, int) and not isinstance(raw, bool):
            size = raw
        elif isinstance(raw, str) and raw.strip().isdigit():
            size = int(raw)
        elif isinstance(raw, float) and raw.is_integer():
            size = int(raw)
        else:
            return data  # the size's own validation reports it
        if size < 8:
            return data
        data = dict(data)
        filled = []
        whole = not any(k in data for k in GEOMETRY_KEYS)
        for key, value in scaled_defaults(size, whole).items():
            if key not in data:
                data[key] = value
                filled.append(key)
        if isinstance(info.context, dict) and isinstance(info.context.get("scaled"), list):
            info.context["scaled"].extend(filled)
        return data

    @field_validator("peak", "energy_kev", "voxel_nm", "detector_pixel_um", "step", "probe_fwhm",
                     "per_angle_offset")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo):
        flags = isinstance(info.context, dict) and info.context.get("names") == "flags"

        def name(key: str) -> str:
            return "--" + key.replace("_", "-") if flags else key

        if self.phase_object_rad is not None and self.model != "linear":
            raise ValueError("phase_object_rad describes a pure-phase sample u for the linear (Rytov) model; "
                             "with model 'exp' the phantom is delta + i beta: drop phase_object_rad")
        if self.probe_kind == "file" and self.probe_file is None:
            raise ValueError("probe_kind 'file' needs probe_file: set probe_file to a .npy or HDF5/CXI probe")
        if self.probe_kind != "file" and self.probe_file is not None:
            raise ValueError("probe_file is given but probe_kind is not 'file': set probe_kind: file")
        if self.rotation_centre is not None and not (
                math.isfinite(self.rotation_centre) and 0 <= self.rotation_centre <= self.field_size - 1):
            raise ValueError(f"rotation_centre {self.rotation_centre} must be a column of the {self.field_size}-"
                             "pixel object field (0 .. size + 2 * field_pad - 1)")
        if self.probe_kind != "file" and self.probe_size > self.field_size:
            pad = math.ceil((self.probe_size - self.size) / 2)
            raise ValueError(f"probe_size {self.probe_size} exceeds the object field {self.field_size} "
                             f"(size {self.size} + 2 x field_pad {self.field_pad}); use {name('probe_size')} "
                             f"<= {self.field_size} or {name('field_pad')} >= {pad}")
        return self

    @property
    def field_size(self) -> int:
        """Object-field edge N + 2 * field_pad (pixels)."""
        return self.size + 2 * self.field_pad

    @property
    def energy_ev(self) -> float:
        """Photon energy in eV (``energy_kev`` x 1000)."""
        return self.energy_kev * 1000.0

    @property
    def voxel_m(self) -> float:
        """Voxel size in metres (``voxel_nm`` x 1e-9)."""
        return self.voxel_nm * 1e-9

    def to_dict(self) -> dict:
        """Plain JSON-compatible dict (paths as strings); ``SimulationConfig(**d)`` rebuilds it.

        Returns
        -------
        dict
            Every field by name (pydantic's ``model_dump(mode="json")``).
        """
        return self.model_dump(mode="json")

    @classmethod
    def from_mapping(cls, data: dict, source: str = "configuration", names: str = "keys",
                     scaled: list | None = None) -> SimulationConfig:
        """Validate a mapping (flat or under ``simulate``), raising :class:`InputError` on any problem.

        Parameters
        ----------
        data : dict
            The settings; keys may use ``-`` or ``_``.
        source : str
            Where they came from, for the error message (a file name, "command-line options").
        names : {"keys", "flags"}
            How an error message names a setting it asks to change: ``probe_size`` or ``--probe-size``.
        scaled : list, optional
            Receives the names of the size-dependent settings filled from ``size`` because ``data`` did
            not give them (see :func:`scaled_defaults`).

        Returns
        -------
        SimulationConfig
            The validated settings.

        Raises
        ------
        InputError
            One line naming every bad key or value (unknown keys with the allowed ones), or ``data`` (or its
            ``simulate`` entry) not being a table.
        """
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a table of settings, got {type(data).__name__}; "
                             "write key: value pairs")
        if "simulate" in data:
            data = data["simulate"]
            if not isinstance(data, dict):
                raise InputError(f"{source}: 'simulate' must be a table of settings")
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        context = {"names": names, "scaled": scaled if scaled is not None else []}
        try:
            return cls.model_validate(data, context=context)
        except ValidationError as exc:
            raise InputError(f"{source}: {_format_errors(exc)}; see `hpc-pt simulate --help`") from None

    @classmethod
    def build(cls, overrides: dict | None = None, source: str = "command-line options", names: str = "keys",
              scaled: list | None = None) -> SimulationConfig:
        """Defaults updated by ``overrides`` (e.g. command-line flags), raising :class:`InputError`.

        Parameters
        ----------
        overrides : dict, optional
            Settings that replace the defaults (keys may use ``-`` or ``_``).
        source : str, optional
            Where they came from, for the error message. Default "command-line options".
        names : {"keys", "flags"}, optional
            See :meth:`from_mapping`.
        scaled : list, optional
            See :meth:`from_mapping`.

        Returns
        -------
        SimulationConfig
            The validated settings (:meth:`from_mapping` of the updated defaults).

        Raises
        ------
        InputError
            As :meth:`from_mapping`.
        """
        return cls.from_mapping(dict(overrides or {}), source, names=names, scaled=scaled)

    @classmethod
    def from_file(cls, path, overrides: dict | None = None, scaled: list | None = None) -> SimulationConfig:
        """Read a YAML (.yaml/.yml) or TOML (.toml) file, then apply ``overrides`` on top.

        See the module docstring for the layout; ``overrides`` are e.g. command-line flags.

        Parameters
        ----------
        path : str or path-like
            The configuration file.
        overrides : dict, optional
            Settings that replace the file's (keys may use ``-`` or ``_``).
        scaled : list, optional
            See :meth:`from_mapping`.

        Returns
        -------
        SimulationConfig
            The validated settings of the file and ``overrides``.

        Raises
        ------
        InputError
            One line for a missing or unreadable file, a syntax error, or any bad key or value
            (:meth:`from_mapping`).
        """
        from ..configfile import load_settings

        p = Path(path)
        data = load_settings(p, "configuration file")  # one-line errors: syntax, NUL bytes, duplicate keys
        if isinstance(data, dict) and isinstance(data.get("simulate"), dict):
            data = data["simulate"]
        if overrides:
            if not isinstance(data, dict):
                raise InputError(f"{p}: expected a table of settings, got {type(data).__name__}; "
                                 "write key: value pairs")
            data = {str(k).replace("-", "_"): v for k, v in data.items()}
            data.update({str(k).replace("-", "_"): v for k, v in overrides.items()})
        return cls.from_mapping(data, str(p), scaled=scaled)


def _format_errors(exc: ValidationError) -> str:
    """One line for all validation errors: 'key: problem (got value)'; unknown keys named with the fix."""
    parts = []
    allowed = ", ".join(SimulationConfig.model_fields)
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "settings"
        if not err["loc"] and err["type"] == "value_error":  # a whole-model check: its message names the keys
            parts.append(err["msg"].removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r} (allowed keys: {allowed})")
        else:
            msg = plain_message(err["msg"])
            got = "" if err["type"].startswith("value_error") and not err["loc"] else f" (got {err.get('input')!r})"
            parts.append(f"{loc}: {msg}{got}")
    return "; ".join(parts)
