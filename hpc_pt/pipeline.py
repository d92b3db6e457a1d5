"""``hpc_pt.reconstruct``: one call from a CXI file (or an in-memory Dataset) to a reconstructed volume.

Builds the forward model and the data shard, runs the chosen method, and (with ``out``) writes the Zarr
store with the volume, the refined probe and the per-iteration history, plus a PNG of the central slices and
the convergence curves next to it. The CLI's ``reconstruct`` and ``demo`` delegate here.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import conventions as cv
from .data import Dataset
from .errors import InputError

METHODS = ("apt", "apts", "admm", "gd", "two-step")
DEFAULT_MODEL = {"apt": "linear", "apts": "linear", "admm": "exp", "gd": "exp", "two-step": None}


class ReconConfig(BaseModel):
    """Reconstruction settings (CLI flags, config files and the Python API share them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["apt", "apts", "admm", "gd", "two-step"] = "apt"
    iterations: int = Field(50, ge=1)
    noise: Literal["gaussian", "poisson"] = Field("gaussian", description="pAGM or pIPM data metric")
    prior: str = Field("tv", description="tv, none, or a registered denoiser")
    prior_weight: float | None = Field(None, ge=0, description="relative prior strength (None: default)")
    penalty: float | None = Field(None, gt=0, description="ADMM data penalty, dimensionless (APT r2, ADMM rho_rel)")
    probe_refine: bool = False
    init: str = Field("constant", description="constant, zeros, or a .npy / Zarr volume")
    model: Literal["linear", "exp"] | None = Field(None, description="forward model (default: by method)")
    device: Literal["cpu", "gpu"] = "cpu"
    options: dict = Field(default_factory=dict, description="method-specific options, by name")

    @classmethod
    def build(cls, values: dict | None = None, source: str = "options") -> "ReconConfig":
        data = {k.replace("-", "_"): v for k, v in (values or {}).items()}
        try:
            return cls(**data)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "configuration"
            raise InputError(f"{source}: {loc}: {err['msg']}; see `hpc-pt reconstruct --help`") from None

    @classmethod
    def from_file(cls, path, overrides: dict | None = None) -> "ReconConfig":
        p = Path(path)
        if not p.is_file():
            raise InputError(f"config file {p} does not exist; pass an existing YAML or TOML file")
        try:
            if p.suffix == ".toml":
                data = tomllib.loads(p.read_text())
            elif p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(p.read_text()) or {}
            else:
                raise InputError(f"config file {p}: unknown extension; use .toml, .yaml or .yml")
        except (tomllib.TOMLDecodeError, ValueError) as e:
            raise InputError(f"config file {p} is not valid: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise InputError(f"config file {p} must hold a table of settings")
        data = dict(data.get("reconstruct", data))
        data.update(overrides or {})
        return cls.build(data, source=str(p))


@dataclass
class ReconResult:
    volume: np.ndarray
    probe: np.ndarray
    history: dict
    config: ReconConfig
    out: str | None = None
    figure: str | None = None


def build_shard(ds: Dataset, model: str, device: str = "cpu"):
    """The serial shard (all angles, all frames) and the forward model on ``device``."""
    from .backend import require_gpu
    from .operators import ForwardModel
    from .solvers.base import Shard

    gpu = device == "gpu"
    xp = require_gpu() if gpu else np
    H, W = ds.geometry.field_shape
    c = cv.k_dz(ds.geometry.energy_ev, ds.geometry.pixel_m)
    probe = xp.asarray(ds.probe.astype(np.complex64))
    fm = ForwardModel((H, W, W), ds.angles_rad, probe, [a.positions for a in ds.angles], (H, W), model=model,
                      c=c, gpu=gpu)
    f = xp.asarray(np.concatenate([a.frames for a in ds.angles]).astype(np.float32))
    mask = None if ds.mask is None else xp.asarray(ds.mask.astype(bool))
    return Shard(fm, f, np.arange(len(ds.angles)), mask=mask)


def _options(cls, cfg: ReconConfig, mapped: dict):
    """Instantiate a solver's options dataclass from the generic settings plus ``cfg.options``."""
    names = {f.name for f in fields(cls)}
    if cfg.probe_refine and "probe_refine" not in names:
        raise InputError(f"method {cfg.method!r} keeps the probe fixed; drop --probe-refine or use apt/apts "
                         "or two-step")
    extra = dict(cfg.options)
    unknown = sorted(set(extra) - names)
    if unknown:
        raise InputError(f"unknown option(s) {unknown} for method {cfg.method!r}; known: {sorted(names)}")
    values = {k: v for k, v in mapped.items() if k in names and v is not None}
    values.update(extra)
    return cls(**values)


def _run_method(cfg: ReconConfig, shard, comm, callback, u0):
    if cfg.method in ("apt", "apts"):
        from .solvers.apt import APTOptions, run_apt

        if cfg.prior not in ("tv", "none") and cfg.method == "apt":
            raise InputError(f"APT's prior is TV (seed 001); use --method admm for the {cfg.prior!r} prior")
        tv = cfg.method == "apt" and cfg.prior == "tv"
        opts = _options(APTOptions, cfg, {"iterations": cfg.iterations, "metric": cfg.noise, "tv": tv,
                                          "tv_rel": cfg.prior_weight, "r2": cfg.penalty,
                                          "probe_refine": cfg.probe_refine, "init": cfg.init})
        return run_apt(shard, comm, opts, callback=callback, u0=u0)
    if cfg.method == "gd":
        from .solvers.gd import GDOptions, run_gd

        opts = _options(GDOptions, cfg, {"iterations": cfg.iterations, "metric": cfg.noise,
                                         "probe_refine": cfg.probe_refine})
        return run_gd(shard, comm, opts, callback=callback, u0=u0)
    if cfg.method == "admm":
        from .solvers.admm import ADMMOptions, run_admm

        opts = _options(ADMMOptions, cfg, {"iterations": cfg.iterations, "metric": cfg.noise, "prior": cfg.prior,
                                           "prior_weight": cfg.prior_weight, "rho_rel": cfg.penalty,
                                           "probe_refine": cfg.probe_refine})
        return run_admm(shard, comm, opts, callback=callback, u0=u0)
    from .solvers.twostep import TwoStepOptions, run_twostep

    opts = _options(TwoStepOptions, cfg, {"iterations": cfg.iterations, "noise": cfg.noise,
                                          "probe_refine": cfg.probe_refine})
    return run_twostep(shard, comm, opts, callback=callback)


def _initial_volume(init: str, shape):
    if init in ("constant", "zeros"):
        return None
    if not os.path.exists(init):
        raise InputError(f"initial guess {init} does not exist; use constant, zeros, or a .npy / Zarr volume")
    if init.endswith(".npy"):
        vol = np.load(init)
    else:
        from .io import read_volume

        vol, _ = read_volume(init)
    if tuple(vol.shape) != tuple(shape):
        raise InputError(f"initial guess {init} has shape {vol.shape}; the reconstruction needs {tuple(shape)}")
    return vol.astype(np.complex64)


def reconstruct(data, out=None, config: ReconConfig | dict | None = None, overwrite: bool = False,
                comm=None, progress=None, command=None, **settings) -> ReconResult:
    """Reconstruct ``data`` (CXI path or :class:`Dataset`) with ``config`` / keyword ``settings``
    (see :class:`ReconConfig`); write ``out`` (Zarr) and ``out`` with suffix .png when given."""
    from .backend import to_numpy
    from .parallel import SerialComm

    if isinstance(config, ReconConfig):
        cfg = config if not settings else ReconConfig.build({**config.model_dump(), **settings})
    else:
        cfg = ReconConfig.build({**(config or {}), **settings})
    input_path = None
    if isinstance(data, Dataset):
        ds = data
    else:
        from .io import read_cxi

        input_path = os.fspath(data)
        ds = read_cxi(input_path)
    if out is not None:
        from .io import check_output_path

        check_output_path(out, overwrite=overwrite)
    model = cfg.model or DEFAULT_MODEL[cfg.method] or ds.attrs.get("model", "linear")
    if cfg.method in ("apt", "apts") and model != "linear":
        raise InputError(f"{cfg.method} uses the linear (Rytov) model; drop --model exp or use --method admm/gd")
    shard = build_shard(ds, model, cfg.device)
    u0 = _initial_volume(cfg.init, shard.volume_shape)
    comm = comm or SerialComm()
    callback = None
    if progress is not None:
        def callback(row, u):
            progress(row)
    res = _run_method(cfg, shard, comm, callback, u0)
    volume = to_numpy(res.volume).astype(np.complex64)
    probe = to_numpy(res.probe).astype(np.complex64)
    hist = res.history.as_columns()
    result = ReconResult(volume, probe, hist, cfg)
    if out is not None and comm.rank == 0:
        from .io import write_volume
        from .plots import recon_figure

        attrs = {"method": cfg.method, "model": model, "reconstruction": cfg.model_dump(),
                 "solver_state": {k: v for k, v in res.state.items() if np.isscalar(v)},
                 "energy_ev": ds.geometry.energy_ev, "angles_deg": [a.angle_deg for a in ds.angles]}
        result.out = write_volume(out, volume, ds.geometry.pixel_m, attrs=attrs, overwrite=overwrite,
                                  command=command, config=cfg.model_dump(), input_path=input_path,
                                  tables={"history": hist}, arrays={"probe": probe})
        result.figure = recon_figure(volume, hist, os.path.splitext(os.path.abspath(out))[0] + ".png",
                                     title=f"hpc-pt {cfg.method}: {os.path.basename(os.path.abspath(out))}")
    return result
