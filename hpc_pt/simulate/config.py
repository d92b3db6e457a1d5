"""Simulation settings as a validated pydantic model, read from YAML or TOML.

A file holds the fields of :class:`SimulationConfig` either at the top level or under a ``simulate:``
table (so one file can configure several stages). Keys may use ``-`` or ``_``. Unknown keys and bad values
raise :class:`hpc_pt.errors.InputError` with a one-line message naming the key and the fix.

Defaults follow seed 001 (section 3): 128^3 pure-phase Shepp-Logan, 64 x 64 Gaussian probe with FWHM 14,
grid step 32, angles over [0, pi). Seed 002's setup is ``phantom: wires, size: 64, probe_kind: disc,
probe_size: 63, probe_fwhm: 15, step: 4 or 10, angle_range: 360, per_angle_offset: 1, model: exp``.
"""
from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import InputError

PHANTOMS = ("shepp-logan", "wires", "ellipsoids")


class SimulationConfig(BaseModel):
    """Everything :func:`hpc_pt.simulate.simulate_dataset` needs; immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phantom: Literal["shepp-logan", "wires", "ellipsoids"] = "shepp-logan"
    size: int = Field(128, ge=8, description="volume edge N (voxels); the volume is N^3")
    angles: int = Field(12, ge=1, description="number of rotation angles")
    angle_range: Literal[180, 360] = Field(180, description="angular range in degrees, endpoint excluded")
    angle_kind: Literal["uniform", "golden"] = "uniform"
    probe_size: int = Field(64, ge=2, description="probe / detector frame edge M (pixels)")
    probe_fwhm: float = Field(14.0, gt=0, description="amplitude FWHM (gaussian, airy) or diameter (disc), px")
    probe_kind: Literal["gaussian", "airy", "disc", "file"] = "gaussian"
    probe_file: Path | None = None
    step: float = Field(32.0, gt=0, description="scan step (pixels)")
    scan: Literal["raster", "fermat"] = "raster"
    per_angle_offset: float = Field(0.0, ge=0, description="scan start shift per angle (pixels)")
    field_pad: int = Field(0, ge=0, description="pixels added on each side of the projection")
    model: Literal["linear", "exp"] = "linear"
    noise: Literal["none", "poisson"] = "none"
    peak: float = Field(1.0, gt=0, description="Poisson peak factor eta (seed 001)")
    energy_kev: float = Field(5.0, gt=0)
    voxel_nm: float = Field(10.0, gt=0)
    detector_pixel_um: float = Field(75.0, gt=0)
    seed: int = 0
    ellipsoids: int = Field(12, ge=1, description="number of ellipsoids of the 'ellipsoids' phantom")
    rotation_centre: float | None = Field(
        None, description="object-field column (pixel-centre coordinate) of the rotation axis; None: the "
                          "field centre (W - 1) / 2. The sample stays centred on the axis, so an off-centre "
                          "axis shifts its projections across the field (data with a misplaced axis)")
    phase_object_rad: float | None = Field(
        None, gt=0, description="seed 001's pure-phase sample for the linear model: u = exp(i phi s), s the "
                                "phantom's real part in [0, 1], phi this value (radians); None: u = s")

    @field_validator("peak", "energy_kev", "voxel_nm", "detector_pixel_um", "step", "probe_fwhm",
                     "per_angle_offset")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _consistent(self):
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
            raise ValueError(f"probe_size {self.probe_size} exceeds the object field {self.field_size} "
                             "(size + 2 * field_pad): lower probe_size or raise field_pad")
        return self

    @property
    def field_size(self) -> int:
        """Object-field edge N + 2 * field_pad (pixels)."""
        return self.size + 2 * self.field_pad

    @property
    def energy_ev(self) -> float:
        return self.energy_kev * 1000.0

    @property
    def voxel_m(self) -> float:
        return self.voxel_nm * 1e-9

    def to_dict(self) -> dict:
        """Plain JSON-compatible dict (paths as strings); ``SimulationConfig(**d)`` rebuilds it."""
        return self.model_dump(mode="json")

    @classmethod
    def from_mapping(cls, data: dict, source: str = "configuration") -> SimulationConfig:
        """Validate a mapping (flat or under ``simulate``), raising :class:`InputError` on any problem."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a table of settings, got {type(data).__name__}; "
                             "write key: value pairs")
        if "simulate" in data:
            data = data["simulate"]
            if not isinstance(data, dict):
                raise InputError(f"{source}: 'simulate' must be a table of settings")
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        try:
            return cls(**data)
        except ValidationError as exc:
            raise InputError(f"{source}: {_format_errors(exc)}") from None

    @classmethod
    def build(cls, overrides: dict | None = None, source: str = "command-line options") -> SimulationConfig:
        """Defaults updated by ``overrides`` (e.g. command-line flags), raising :class:`InputError`."""
        return cls.from_mapping(dict(overrides or {}), source)

    @classmethod
    def from_file(cls, path, overrides: dict | None = None) -> SimulationConfig:
        """Read a YAML (.yaml/.yml) or TOML (.toml) file (see the module docstring for the layout), then
        apply ``overrides`` (e.g. command-line flags) on top; problems raise :class:`InputError`."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"configuration file {p} does not exist; check the path")
        suffix = p.suffix.lower()
        if suffix not in (".yaml", ".yml", ".toml"):
            raise InputError(f"configuration file {p} has unknown type {suffix!r}; use .yaml, .yml or .toml")
        import yaml

        try:
            text = p.read_text()
            data = tomllib.loads(text) if suffix == ".toml" else (yaml.safe_load(text) or {})
        except (OSError, UnicodeDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
            msg = " ".join(str(exc).split())
            raise InputError(f"cannot parse {p} ({msg}); fix the file's syntax") from None
        if isinstance(data, dict) and isinstance(data.get("simulate"), dict):
            data = data["simulate"]
        if overrides:
            if not isinstance(data, dict):
                raise InputError(f"{p}: expected a table of settings, got {type(data).__name__}; "
                                 "write key: value pairs")
            data = {str(k).replace("-", "_"): v for k, v in data.items()}
            data.update({str(k).replace("-", "_"): v for k, v in overrides.items()})
        return cls.from_mapping(data, str(p))


def _format_errors(exc: ValidationError) -> str:
    """One line for all validation errors: 'key: problem (got value)'; unknown keys named with the fix."""
    parts = []
    allowed = ", ".join(SimulationConfig.model_fields)
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "settings"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r} (allowed keys: {allowed})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = "" if err["type"].startswith("value_error") and not err["loc"] else f" (got {err.get('input')!r})"
            parts.append(f"{loc}: {msg}{got}")
    return "; ".join(parts)
