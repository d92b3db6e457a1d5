"""``hpc_pt.reconstruct``: one call from a CXI file (or an in-memory Dataset) to a reconstructed volume.

Builds the forward model and the data shard, runs the chosen method, and (with ``out``) writes the Zarr
store with the volume, the refined probe and the per-iteration history, plus a PNG of the central slices and
the convergence curves next to it. The CLI's ``reconstruct`` and ``demo`` delegate here.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import conventions as cv
from .data import Dataset
from .errors import InputError, plain_message

class _SpecView(Mapping):
    """A read-only, always current table ``method -> value`` over the solver registry
    (:mod:`hpc_pt.solvers.registry`): one field of every registered :class:`SolverSpec`."""

    def __init__(self, get):
        self._get = get

    def _specs(self):
        from .solvers.registry import all_specs

        return all_specs()

    def __getitem__(self, method):
        return self._get(self._specs()[method])

    def __iter__(self):
        return iter(self._specs())

    def __len__(self):
        return len(self._specs())


#: each method's forward model when neither ``--model`` nor the input file names one (None: the method has no
#: preferred model; it follows the file, else ``FALLBACK_MODEL``)
DEFAULT_MODEL = _SpecView(lambda spec: spec.default_model)
FALLBACK_MODEL = "linear"
#: the forward models each method reconstructs with (docs/solvers.md "Forward models")
SUPPORTED_MODELS = _SpecView(lambda spec: spec.models)


def methods() -> tuple[str, ...]:
    """The registered reconstruction methods (``--method``), built-ins first."""
    from .solvers.registry import available_solvers

    return available_solvers()


def _spec(method: str):
    from .solvers.registry import solver_spec

    return solver_spec(method)


class ReconConfig(BaseModel):
    """Reconstruction settings (CLI flags, config files and the Python API share them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field("apt", description="reconstruction method (docs/solvers.md)")
    iterations: int = Field(100, ge=1, description="outer iterations (two-step: of its 2D stage)")
    noise: Literal["gaussian", "poisson"] = Field("gaussian", description="data metric: gaussian amplitude (pAGM) "
                                                  "or poisson intensity (pIPM)")
    prior: str = Field("tv", description="tv, none, or a registered denoiser (admm)")
    prior_weight: float | None = Field(None, ge=0, allow_inf_nan=False,
                                       description="the prior's threshold over its coupling penalty, in units of "
                                                   "the volume's scale (APT tv_rel, ADMM prior_weight)")
    penalty: float | None = Field(None, gt=0, allow_inf_nan=False,
                                  description="data penalty, dimensionless: APT r2, ADMM rho_rel")
    probe_refine: bool = Field(False, description="refine the probe (default: off; on for apt, apts and two-step "
                               "when the input has no probe and it is estimated from the data)")
    init: str = Field("constant", description="constant, zeros, or a .npy / Zarr volume")
    model: Literal["linear", "exp"] | None = Field(None, description="forward model")
    volume_size: int | None = Field(None, ge=4, description="edge N of the reconstructed (nz, N, N) volume "
                                    "(default: the simulated sample size, else the object-field width)")
    device: Literal["cpu", "gpu"] = Field("cpu", description="where the arrays live")
    frame_batch: int | None = Field(None, ge=1, description="frames per far-field batch: caps the solvers' "
                                    "far-field temporaries at N frames (default: 16 MiB of complex far field); "
                                    "lower it when the frames do not fit in memory",
                                    json_schema_extra={"metavar": "N"})
    rotation_centre: float | Literal["auto"] | None = Field(
        None, description="object-field column of the rotation axis (pixel-centre coordinate), or auto "
                          "to estimate it from the frames (default: the input's, else (W - 1) / 2)",
        json_schema_extra={"metavar": "PX|auto"})
    options: dict = Field(default_factory=dict, description="method-specific options, by name")
    deterministic: bool | None = Field(None, description="reduce every sum in a fixed global order (per volume "
                                       "row, per angle), so 1, 2, 3, ... MPI ranks or Dask workers give bitwise "
                                       "identical volumes when each rank holds whole angles; --no-deterministic "
                                       "saves its few % per iteration (docs/parallel.md) (default: on for apt, "
                                       "apts and gd; off for admm, where it costs 6-15 %, and two-step, which "
                                       "does not implement it)")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        known = methods()
        if v not in known:
            raise ValueError(f"unknown method {v!r}; use one of {', '.join(known)}")
        return v

    @classmethod
    def build(cls, values: dict | None = None, source: str = "options") -> "ReconConfig":
        data = {k.replace("-", "_"): v for k, v in (values or {}).items()}
        try:
            return cls(**data)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "configuration"
            raise InputError(f"{source}: {loc}: {plain_message(err['msg'])}; see `hpc-pt reconstruct --help`") \
                from None

    @classmethod
    def from_file(cls, path, overrides: dict | None = None) -> "ReconConfig":
        from .configfile import load_settings

        p = Path(path)
        data = load_settings(p, "config file")  # one-line errors: syntax, NUL bytes, duplicate keys, ...
        data = dict(data.get("reconstruct", data))
        data.update(overrides or {})
        return cls.build(data, source=str(p))


def config_schema(kind: str = "reconstruct") -> dict:
    """The JSON Schema of a config file's settings, generated from the settings models.

    ``"reconstruct"``: :class:`ReconConfig`'s fields, with ``options`` checked against the chosen method's
    options model (``method`` absent: the default method's), one ``if`` / ``then`` rule per registered method;
    ``"simulate"``: :class:`hpc_pt.simulate.SimulationConfig`. A config file may also put the settings under a
    ``[reconstruct]`` / ``[simulate]`` table; the schema describes that table.

    Parameters
    ----------
    kind : str
        "reconstruct" or "simulate".

    Returns
    -------
    dict
        The schema (JSON Schema draft 2020-12, as pydantic writes it).

    Raises
    ------
    InputError
        For another ``kind``.
    """
    if kind == "simulate":
        from .simulate import SimulationConfig

        return SimulationConfig.model_json_schema()
    if kind != "reconstruct":
        raise InputError(f"no settings schema for {kind!r}; use reconstruct or simulate")
    from .solvers.registry import all_specs

    schema = ReconConfig.model_json_schema()
    default = ReconConfig.model_fields["method"].default

    def options_rule(spec):
        opts = spec.options.model_json_schema()
        return {"properties": {"options": {"type": "object", "properties": opts.get("properties", {}),
                                           "additionalProperties": False}}}

    rules = [{"if": {"properties": {"method": {"const": name}}, "required": ["method"]}, "then": options_rule(spec)}
             for name, spec in all_specs().items()]
    rules.append({"if": {"not": {"required": ["method"]}}, "then": options_rule(all_specs()[default])})
    schema["properties"]["method"]["enum"] = list(all_specs())
    schema["allOf"] = rules
    return schema


@dataclass
class ReconResult:
    volume: np.ndarray
    probe: np.ndarray
    history: dict
    config: ReconConfig
    out: str | None = None
    figure: str | None = None
    bytes_read: int = 0  # frame bytes this rank read from the input file (0 for an in-memory Dataset)
    parallel: dict = field(default_factory=dict)  # backend, ranks, bytes_read_per_rank, shards
    state: dict = field(default_factory=dict)  # the solver's scalar state (the store's solver_state attribute)
    resumed_from: int | None = None  # the checkpoint's iteration (history row) a resumed run continued after


def volume_shape_for(ds, volume_size: int | None = None) -> tuple[int, int, int]:
    """(nz, N, N) of the reconstruction, from a :class:`Dataset` or a :class:`~hpc_pt.io.cxi.CxiIndex`
    (both carry ``geometry`` and ``attrs``, so every rank of a distributed run gets the same shape from the
    metadata alone). N: ``volume_size``, else the sample size hpc-pt's simulator records
    (a support the solvers then need not fill with free space), else the object-field width W. nz: N for a
    simulated sample of that size, else the field height H. The volume sits centred in the field."""
    H, W = ds.geometry.field_shape
    size = ds.attrs.get("size")
    n = int(volume_size or size or W)
    if n > W:
        raise InputError(f"volume size {n} is wider than the {W}-pixel object field; choose --volume-size <= {W}")
    nz = n if (size and n == int(size) and n <= H) else H
    return nz, n, n


def make_space(meta, plan, comm, device: str = "cpu", volume_size: int | None = None,
               centre: float | None = None):
    """This rank's :class:`~hpc_pt.parallel.SlabSpace`: the volume's rows split over the ranks in blocks of
    the Zarr chunk height (so every rank writes whole chunks), all angles, the shard plan's angle lists;
    ``centre`` is the field column of the rotation axis (default (W - 1) / 2)."""
    from .parallel import SerialComm, SlabSpace, chunk_rows

    comm = comm or SerialComm()
    shape = volume_shape_for(meta, volume_size)
    angles = np.deg2rad(_angles_deg(meta))
    rank_angles = [[a for a, _s, _e in pieces] for pieces in plan]
    align = chunk_rows(shape[0], shape[1], comm.size)
    try:
        return SlabSpace(comm, angles, rank_angles, shape, n_det=meta.geometry.field_shape[1], center=centre,
                         gpu=device == "gpu", align=align)
    except ValueError as e:
        raise InputError(f"{e} ({comm.size} ranks, volume {shape})") from None


def build_shard(ds: Dataset, model: str, device: str = "cpu", volume_size: int | None = None, comm=None,
                frame_batch: int | None = None, centre: float | None = None):
    """The serial shard (all angles, all frames) and the forward model on ``device``: :func:`build_rank_shard`
    with a one-rank plan, the one shard path of every run.

    Parameters
    ----------
    ds : Dataset
        The measurement.
    model, device, volume_size, frame_batch, centre
        As for :func:`build_rank_shard`.
    comm : Comm, optional
        A one-rank communicator (default serial).

    Returns
    -------
    Shard
        Every frame of ``ds`` and its slab space (one slab).
    """
    from .parallel import SerialComm, plan_shards

    comm = comm if comm is not None else SerialComm()
    return build_rank_shard(ds, plan_shards(ds.n_frames, 1), comm, model, device, volume_size, frame_batch,
                            centre=centre)[0]


def build_rank_shard(meta, plan, comm, model: str, device: str = "cpu", volume_size: int | None = None,
                     frame_batch: int | None = None, centre: float | None = None, progress=None):
    """This rank's shard: frames ``start:stop`` of each (angle, start, stop) in ``plan[comm.rank]`` (see
    :func:`hpc_pt.parallel.plan_shards`), with a forward model over those angles (global angle values)
    and only those frames' positions. An angle split over ranks appears on each of them with its part.

    ``meta`` is a :class:`~hpc_pt.io.cxi.CxiIndex` (frames are read with ``read_frames``, only this
    rank's slices) or an in-memory :class:`Dataset` (sliced, nothing read). The volume shape comes from
    the metadata, so it is the same on every rank; so does the rotation axis (``centre``, default the
    metadata's ``geometry.rotation_centre``, else (W - 1) / 2). Returns (Shard, bytes_read): the frame bytes
    read from the file, at the file's dtype. ``progress`` (see :mod:`hpc_pt.progress`) gets the status
    lines of the read and of building the forward model (the last step is left open for the caller).
    """
    from .backend import require_gpu
    from .operators import ForwardModel
    from .progress import describe_frames, report_status
    from .solvers.base import Shard

    gpu = device == "gpu"
    xp = require_gpu() if gpu else np
    H, W = meta.geometry.field_shape
    from_file = not isinstance(meta, Dataset)
    if from_file:
        from .io.cxi import read_frames

        m1, m2 = meta.frame_shape
        itemsize = np.dtype(meta.frame_dtype).itemsize
        n_local = sum(stop - start for _a, start, stop in plan[comm.rank])
        report_status(progress, "reading " + describe_frames(
            n_local, (m1, m2), itemsize, of=int(np.sum(meta.n_frames)) if comm.size > 1 else None)
            + (f" on rank {comm.rank} of {comm.size}" if comm.size > 1 else ""))
    frames, positions, angles, ids = [], [], [], []
    nbytes = 0
    for a, start, stop in plan[comm.rank]:
        if from_file:
            e = meta.entries[a]
            fr = read_frames(meta, a, start, stop)
            nbytes += (stop - start) * m1 * m2 * itemsize
        else:
            e = meta.angles[a]
            fr = e.frames[start:stop]
        frames.append(np.asarray(fr, dtype=np.float32))
        positions.append(np.asarray(e.positions)[start:stop])
        angles.append(e.angle_deg)
        ids.append(a)
    report_status(progress, _building_text(volume_shape_for(meta, volume_size), model, len(ids), device,
                                           of=len(meta.n_frames) if comm.size > 1 else None))
    c = cv.k_dz(meta.geometry.energy_ev, meta.geometry.pixel_m)
    probe = xp.asarray(np.asarray(meta.probe).astype(np.complex64))
    centre = _centre_of(meta, centre)
    fm = ForwardModel(volume_shape_for(meta, volume_size), np.deg2rad(angles), probe, positions, (H, W),
                      center=centre, model=model, c=c, gpu=gpu, frame_batch=frame_batch)
    f = xp.asarray(np.concatenate(frames).astype(np.float32))
    mask = None if meta.mask is None else xp.asarray(meta.mask.astype(bool))
    space = make_space(meta, plan, comm, device, volume_size, centre)
    return Shard(fm, f, np.asarray(ids, dtype=np.int64), mask=mask, space=space), int(nbytes)


def _building_text(shape, model: str, n_angles: int, device: str, of: int | None = None) -> str:
    """The status line of building the forward model and moving the frames to the device (``of``: all
    angles, when this rank has only ``n_angles`` of them)."""
    angles = f"{n_angles} of {of} angles" if of is not None else f"{n_angles} angles"
    return (f"building the forward model ({model}, {angles}, volume {'x'.join(str(int(v)) for v in shape)}"
            f"{', GPU' if device == 'gpu' else ''})")


def _centre_of(meta, centre: float | None) -> float:
    """The rotation axis's field column: ``centre``, else the metadata's, else (W - 1) / 2."""
    if centre is None:
        centre = getattr(meta.geometry, "rotation_centre", None)
    W = meta.geometry.field_shape[1]
    if centre is None:
        return (W - 1) / 2.0
    c = float(centre)
    if not (np.isfinite(c) and 0.0 <= c <= W - 1):
        raise InputError(f"rotation centre {c:g} lies outside the {W}-column object field (columns 0 to {W - 1}); "
                         f"give a column inside it (the field's middle is {(W - 1) / 2:g}) or --rotation-centre auto")
    return c


def _angles_deg(meta) -> list[float]:
    return [a.angle_deg for a in meta.angles] if isinstance(meta, Dataset) else list(meta.angles_deg)


def read_input(path, reader: dict | None = None, progress=None, **kwargs) -> Dataset:
    """:func:`hpc_pt.io.read_cxi` of ``path`` with ``reader`` flags (and ``kwargs``), reported as one set-up
    step of ``progress`` (``"reading 4,218 frames of 63x63 (67 MB)"``, from the metadata, before the read)."""
    from .io.cxi import read_cxi, scan_cxi
    from .progress import describe_frames, step

    flags = {**(reader or {}), **kwargs}
    if getattr(progress, "status", None) is None:
        return read_cxi(path, **flags)
    index = scan_cxi(path, **{k: v for k, v in flags.items()
                              if k in ("flip_translations", "translation_layout", "field_shape", "fftshift")})
    text = describe_frames(int(np.sum(index.n_frames)), index.frame_shape, np.dtype(index.frame_dtype).itemsize)
    with step(progress, f"reading {text}"):
        return read_cxi(path, **flags)


#: methods whose every reduction follows the communicator's deterministic mode (docs/parallel.md), from the
#: specs: ``deterministic`` "default" (on unless turned off: its measured cost per outer iteration is 9-14 %,
#: benchmarks/results/determinism.json, docs/parallel.md) or "optional" (ADMM, whose per-row TV-prox norms
#: cost it 12-15 %)
DETERMINISTIC = _SpecView(lambda spec: spec.deterministic)


def refine_estimated_probe(cfg: ReconConfig, attrs: dict) -> ReconConfig:
    """``cfg`` with ``probe_refine`` on when the probe was estimated from the frames
    (``attrs["probe_source"] == "estimated"``, :func:`hpc_pt.io.cxi.ensure_probe`) and the method refines
    probes, unless ``probe_refine`` was set explicitly; otherwise ``cfg`` unchanged."""
    if (attrs.get("probe_source") == "estimated" and _spec(cfg.method).refines_probe
            and "probe_refine" not in cfg.model_fields_set):
        return cfg.model_copy(update={"probe_refine": True})
    return cfg


#: generic settings a method may take (setting one the method does not take explicitly is an error, not
#: silently ignored); each spec's ``generic`` says which it takes and which of its options each one sets
def _generic_flags() -> set:
    """The generic settings a user gives (the registry's :data:`~hpc_pt.solvers.registry.GENERIC` less the
    pipeline's own: ``iterations`` every method takes, ``support_width`` from the input)."""
    from .solvers.registry import GENERIC

    return set(GENERIC) - {"iterations", "support_width"}


def check_settings(cfg: ReconConfig, model: str) -> None:
    """Reject settings the chosen method would ignore, and model/method mismatches, before any work."""
    spec = _spec(cfg.method)
    unused = sorted((cfg.model_fields_set & _generic_flags()) - set(spec.generic))
    if "prior" in spec.fixed and cfg.prior != spec.fixed["prior"] and "prior" in cfg.model_fields_set:
        unused.append("prior")
    if unused:
        flags = ", ".join("--" + u.replace("_", "-") for u in unused)
        raise InputError(f"method {cfg.method!r} does not use {flags}; drop it or choose a method that does "
                         "(see docs/solvers.md)")
    if model not in SUPPORTED_MODELS[cfg.method]:
        why = ("--model exp asks for" if cfg.model == "exp" else "the input records")
        raise InputError(f"{cfg.method} reconstructs with the linear (Rytov) model only (seed 001's ADMM needs a far "
                         f"field linear in the volume), but {why} the exponential model; use --method gd, admm or "
                         "two-step for exp data" + (", or drop --model exp" if cfg.model == "exp" else ""))
    if cfg.method in ("gd", "admm") and "init" in cfg.model_fields_set:
        if model == "exp" and cfg.init == "constant":
            raise InputError(f"{cfg.method} with the exponential model starts from zeros (free space) or a given "
                             "volume; use --init zeros or FILE")
        if model == "linear" and cfg.init == "zeros":
            raise InputError(f"{cfg.method} with the linear model cannot start from zeros (no far field, zero "
                             "gradient); use --init constant (the default) or FILE")
    _check_names(cfg)


def _options_class(method: str):
    """The solver options model of ``method`` (what ``--option KEY=VALUE`` names)."""
    return _spec(method).options


def _check_names(cfg: ReconConfig) -> None:
    """Unknown ``--option`` keys and an unknown ``--prior`` (ADMM's registry), from the settings alone: refused
    before any frame is read, with the same one-line messages the solvers' own set-up gives."""
    _refuse_unknown_options(_options_class(cfg.method), cfg)
    if cfg.method == "apt" and cfg.prior not in ("tv", "none"):
        raise InputError(f"APT's prior is TV (seed 001); use --method admm for the {cfg.prior!r} prior")
    if cfg.method == "admm" and cfg.prior not in ("tv", "none"):
        from .priors import available_denoisers

        if str(cfg.prior).strip().lower() not in available_denoisers():
            raise InputError(f"unknown prior {cfg.prior!r}; known: {', '.join(available_denoisers())} "
                             "(register more with hpc_pt.priors.register_denoiser)")


def choose_model(cfg: ReconConfig, attrs: dict) -> tuple[str, str, str | None]:
    """The forward model of a reconstruction: ``cfg.model`` (``--model``), else the model the input records
    (the ``hpc_pt_model`` root attribute / the simulation's ``model``, in ``attrs``), else the method's
    :data:`DEFAULT_MODEL`.

    Returns (model, source, message): source is "option", "file" or "default"; message is one line for
    the user (a ``warning:`` when the method's default and the file disagree, or ``--model`` overrides the
    file; a ``note:`` when the input records no model), or None.
    """
    recorded = attrs.get("model")
    if recorded is not None and recorded not in ("linear", "exp"):
        raise InputError(f"the input records forward model {recorded!r}, which hpc-pt does not know; "
                         "pass --model linear or --model exp")
    preferred = DEFAULT_MODEL[cfg.method]
    default = preferred or FALLBACK_MODEL
    if cfg.model is not None:
        msg = None
        if recorded is not None and recorded != cfg.model:
            msg = (f"warning: --model {cfg.model} overrides the {recorded} model the input was simulated with; "
                   f"drop --model to use {recorded}")
        return cfg.model, "option", msg
    if recorded is not None:
        msg = None
        if preferred is not None and recorded != preferred:
            msg = (f"warning: {cfg.method}'s default model is {default}, but the input was simulated with the "
                   f"{recorded} model; reconstructing with {recorded} (pass --model {default} to override)")
        return recorded, "file", msg
    return default, "default", (f"note: the input records no forward model; {cfg.method} uses its default, "
                                f"{default} (pass --model linear or --model exp to choose)")


def _calibrate(shard, comm, cfg: ReconConfig) -> dict:
    """Before the first iteration, collectively (:mod:`hpc_pt.calibrate`): rescale an exponential-model
    probe stored at another intensity scale than the counts, and estimate the rotation centre for
    ``rotation_centre: auto``. One line each on stderr (the probe's only when it was rescaled).
    Returns {"rotation_centre": field column used, "probe_scale": amplitude factor applied}."""
    from .calibrate import calibrate_probe_scale, estimate_rotation_centre

    factor = calibrate_probe_scale(shard, comm)
    if factor != 1.0:
        _tell(comm, f"warning: probe rescaled by {factor:.4g} in amplitude ({factor ** 2:.4g} in intensity): the "
                    "stored probe's power did not match the frames' total counts (free-space frames, Parseval)")
    W = shard.space.n_det
    if cfg.rotation_centre == "auto":
        est = estimate_rotation_centre(shard, comm)
        _tell(comm, f"rotation centre: estimated column {est['centre']:.2f} ({est['offset_px']:+.2f} px from the "
                    f"field centre {est['default']:.1f}, {len(est['trials'])} trials of {est['iterations']} GD "
                    "iterations)")
    return {"rotation_centre": float(shard.space.P.center), "rotation_centre_offset_px":
            float(shard.space.P.center - (W - 1) / 2.0), "probe_scale": float(factor)}


def _resume_refusal(cfg, man: dict, where) -> str | None:
    """Why a run with settings ``cfg`` cannot continue the checkpoint whose manifest is ``man`` (None: it
    can). ``iterations`` counts every iteration of the run, the checkpoint's included: a resumed run stops
    where an uninterrupted run with the same ``iterations`` would, so a checkpoint past it is refused, and
    one at it only writes the output. A two-step checkpoint in the tomography stage needs the ``iterations``
    its 2D stage ran."""
    k = int(man["iteration"])
    st = man.get("state") if isinstance(man.get("state"), dict) else {}
    if cfg.method == "two-step" and st.get("stage") == "tomo":
        done = int(st.get("ptycho_rows", k))
        if int(cfg.iterations) != done:
            return (f"the checkpoint in {where} (row {k}) is in the tomography stage, after {done} 2D "
                    f"iterations, not --iterations {cfg.iterations}; resume with --iterations {done}")
        return None
    if k > int(cfg.iterations):
        return (f"the checkpoint in {where} is at iteration {k}, past --iterations {cfg.iterations} "
                f"(--iterations counts every iteration, the resumed ones included); resume with --iterations "
                f"{k} or more")
    return None


def _tell(comm, line: str | None) -> None:
    """One line for the user on stderr (rank 0 only)."""
    if line and int(getattr(comm, "rank", 0)) == 0:
        import sys

        print(line, file=sys.stderr, flush=True)


def _option_type(cls, name: str):
    """``(type, optional)`` of field ``name`` of the options dataclass ``cls``, from its resolved type hints
    (``int | None`` gives ``(int, True)``)."""
    import types
    import typing

    t = typing.get_type_hints(cls)[name]
    if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in typing.get_args(t):
        rest = [a for a in typing.get_args(t) if a is not type(None)]
        return (rest[0] if len(rest) == 1 else t), True
    return t, False


def _coerce(cls, values: dict) -> dict:
    """Convert option values to the dataclass fields' types, with a one-line error naming the option."""
    out = {}
    for k, v in values.items():
        t, optional = _option_type(cls, k)
        if optional and (v is None or str(v).lower() in ("none", "null")):  # optional: None stays None
            out[k] = None
            continue
        try:
            if t is int and not isinstance(v, bool):
                fv = float(v)
                if not fv.is_integer():
                    raise ValueError(v)
                v = int(fv)
            elif t is float:
                v = float(v)
            elif t is bool and not isinstance(v, bool):
                v = {"true": True, "false": False, "1": True, "0": False}[str(v).lower()]
        except (ValueError, TypeError, KeyError):
            raise InputError(f"option {k}={v!r} must be of type {getattr(t, '__name__', t)}") from None
        if isinstance(v, float) and not np.isfinite(v):  # inf / nan would make every objective nan
            raise InputError(f"option {k}={v!r} must be a finite number; give a finite value")
        out[k] = v
    return out


def _refuse_unknown_options(cls, cfg: ReconConfig) -> set:
    """The field names of the options dataclass ``cls``; an ``--option`` key outside them is refused."""
    names = set(cls.model_fields)
    unknown = sorted(set(cfg.options) - names)
    if unknown:
        raise InputError(f"unknown option(s) {unknown} for method {cfg.method!r}; known: {sorted(names)}")
    return names


def _options(cls, cfg: ReconConfig, mapped: dict, fixed=None):
    """Instantiate a solver's options model from option values ``mapped`` plus ``cfg.options``, then the
    options the method pins (``fixed``, which win)."""
    names = _refuse_unknown_options(cls, cfg)
    values = {k: v for k, v in mapped.items() if k in names and v is not None}
    values.update(_coerce(cls, dict(cfg.options)))
    values.update(fixed or {})
    return cls(**values)


def _generic_values(cfg: ReconConfig, support=None) -> dict:
    """The generic settings a run passes to its method's options (before the spec translates them): the
    given ones, ``init`` only when it was set to "zeros" or "constant" (a volume file goes as u0, and unset
    each method keeps its own start), and the 2-step's simulated sample width."""
    out = {"iterations": cfg.iterations, "noise": cfg.noise, "prior": cfg.prior, "prior_weight": cfg.prior_weight,
           "penalty": cfg.penalty, "probe_refine": cfg.probe_refine, "support_width": support}
    if "init" in cfg.model_fields_set and cfg.init in ("zeros", "constant"):
        out["init"] = cfg.init
    return out


def method_options(cfg: ReconConfig, support=None):
    """The options model instance a run of ``cfg`` hands its solver (before the spec's data-dependent
    ``prepare``).

    Parameters
    ----------
    cfg : ReconConfig
        The settings.
    support : float, optional
        The simulated sample width (the 2-step method's free-space band).

    Returns
    -------
    BaseModel
        The validated options (``cfg.options`` override the generic settings; the spec's pinned options win).
    """
    spec = _spec(cfg.method)
    values = {spec.generic[k]: v for k, v in _generic_values(cfg, support).items() if k in spec.generic}
    return _options(spec.options, cfg, values, spec.fixed)


def _run_method(cfg: ReconConfig, shard, comm, callback, u0, support=None, checkpoints=None,
                noise_free: bool = False):
    """Build ``cfg``'s method's options, apply the spec's data-dependent defaults (``prepare``) and run it."""
    from .solvers.base import NO_CHECKPOINTS

    spec = _spec(cfg.method)
    opts = method_options(cfg, support)
    note = None
    if spec.prepare is not None:  # after the options passed their checks: a refused run prints only its error
        opts, note = spec.prepare(shard, comm, opts, noise_free)
    if note is not None:
        _tell(comm, f"{cfg.method}: {note}")
    res = spec.run(shard, comm, opts, callback=callback, u0=u0 if spec.takes_u0 else None,
                   checkpoints=checkpoints or NO_CHECKPOINTS)
    if note is not None:
        res.state["r2_chosen_from"] = note
    return res


def progress_stages(cfg: ReconConfig, support=None) -> list[dict]:
    """The counted phases a run of ``cfg`` reports (:class:`hpc_pt.progress.StageTracker`): one for most
    methods; the 2-step method's two stages (:func:`hpc_pt.solvers.twostep.progress_stages`)."""
    if cfg.method == "two-step":
        from .solvers.twostep import progress_stages as twostep_stages

        return twostep_stages(method_options(cfg, support))
    return [{"stage": None, "label": cfg.method, "total": cfg.iterations}]


def _initial_volume(init: str, shape):
    if init in ("constant", "zeros"):
        return None
    if not os.path.exists(init):
        raise InputError(f"initial guess {init} does not exist; use constant, zeros, or a .npy / Zarr volume")
    if init.endswith(".npy"):
        try:  # memory-mapped: the shape and dtype are checked before anything is read; never unpickled
            vol = np.load(init, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"initial guess {init} is not a plain .npy array ({' '.join(str(e).split())}); "
                             "save the volume with numpy.save (no pickled objects)") from None
    elif os.path.isdir(init):
        from .io import read_volume

        vol, _ = read_volume(init)
    else:
        raise InputError(f"initial guess {init} is neither a .npy file nor a Zarr store; use constant, zeros, "
                         "a .npy volume or the .zarr store of an earlier reconstruction")
    if not isinstance(vol, np.ndarray) or not np.issubdtype(vol.dtype, np.number):
        raise InputError(f"initial guess {init} holds {getattr(vol, 'dtype', type(vol).__name__)} values; "
                         "it must be a numeric (nz, n, n) volume")
    if tuple(vol.shape) != tuple(shape):
        raise InputError(f"initial guess {init} has shape {vol.shape}; the reconstruction needs {tuple(shape)}")
    vol = np.asarray(vol).astype(np.complex64)
    if not np.all(np.isfinite(vol)):
        raise InputError(f"initial guess {init} holds {int(np.count_nonzero(~np.isfinite(vol)))} NaN or "
                         "infinite values; give a finite volume")
    return vol


#: history columns whose NaN or infinite value stops a run (every rank computes them from reduced sums)
GUARDED_COLUMNS = ("objective", "r_factor")


def check_finite_row(row: dict, method: str = "") -> None:
    """Raise :class:`~hpc_pt.errors.DivergedError` when a history row's objective or R-factor is NaN or
    infinite, naming the iteration and the quantity.

    Rows are computed from quantities reduced over every rank, so every rank of a distributed run sees the
    same value and raises at the same iteration (no rank is left waiting in a collective). A column a row
    lacks is not checked (the 2-step method's tomography rows have no R-factor).
    """
    from .errors import DivergedError

    for name in GUARDED_COLUMNS:
        v = row.get(name)
        if v is None or not isinstance(v, (int, float, np.floating, np.integer)):
            continue
        if not np.isfinite(v):
            it = int(row.get("iteration", 0))
            stage = f" (2-step stage {int(row['stage'])})" if row.get("stage") is not None else ""
            err = DivergedError(
                f"{method + ': ' if method else ''}the {name.replace('_', '-')} is {float(v)} at iteration "
                f"{it}{stage}: the reconstruction diverged and nothing was written; check the probe scale "
                "and the forward model (--model), lower --penalty or --prior-weight, or try --noise poisson",
                iteration=it, quantity=name)
            err.all_ranks = True  # every rank raises here together
            raise err


def _check_signal(shard, comm) -> None:
    """Refuse data with no signal: every frame zero (inside the detector mask). Collective."""
    f = shard.intensities
    local = float(f.sum(dtype=np.float64) if shard.mask is None
                  else (f.sum(axis=0, dtype=np.float64)[shard.mask]).sum()) if f.size else 0.0
    total = comm.sum_scalar(local)
    if not total > 0:
        where = " inside the detector mask" if shard.mask is not None else ""
        err = InputError(f"every frame is zero{where}: there is nothing to reconstruct (the R-factor would "
                         "divide by zero); check that the right frames (and mask) were written")
        err.all_ranks = True
        raise err


#: environment variable: the bytes each rank may use (e.g. 64G, 512M), instead of what the machine reports;
#: ``off`` skips the memory check
MEMORY_ENV = "HPC_PT_MEMORY_LIMIT"
#: launcher variables holding the number of ranks on this node (they share its RAM)
LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


def _parse_bytes(text: str) -> int:
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in scale:
            return int(float(t[:-1]) * scale[t[-1]])
        return int(float(t))
    except ValueError:
        raise InputError(f"{MEMORY_ENV}={text!r} must be a size such as 64G or 512M, or off") from None


def memory_available(device: str = "cpu") -> tuple[int | None, str]:
    """(bytes, where the figure comes from) this rank may use on ``device``: ``HPC_PT_MEMORY_LIMIT`` when
    set, else the GPU's free memory or the host's available RAM and cgroup room
    (:func:`hpc_pt.backend.host_memory_available`), shared by the ranks of this node."""
    from .backend import gpu_memory_available, host_memory_available

    env = os.environ.get(MEMORY_ENV)
    if env is not None and env.strip():
        return _parse_bytes(env), f"{MEMORY_ENV}={env.strip()}"
    if device == "gpu":
        return gpu_memory_available()
    avail, where = host_memory_available()
    local = 1
    for var in LOCAL_SIZE_VARS:
        v = os.environ.get(var, "").split("(")[0].split(",")[0]
        if v.strip().isdigit() and int(v) > 1:
            local = int(v)
            break
    if avail is not None and local > 1:
        return avail // local, f"{where}, shared by {local} ranks on this node"
    return avail, where


def preflight_memory(path, cfg: ReconConfig, reader: dict | None = None) -> dict:
    """:func:`check_memory` for a one-process run of the input file ``path`` (``reader``: ``scan_cxi`` flags),
    from its metadata alone: what the serial CLI calls before it reads the frames."""
    from .io.cxi import scan_cxi
    from .parallel import plan_shards

    index = scan_cxi(path, **{k: v for k, v in (reader or {}).items()
                              if k in ("flip_translations", "translation_layout", "field_shape", "fftshift")})
    return check_memory(index, cfg, plan_shards(index.n_frames, 1), 0)


def check_memory(meta, cfg: ReconConfig, plan, rank: int = 0) -> dict:
    """Refuse a run whose arrays cannot fit, before any frame is read or solver state allocated.

    Estimates this rank's bytes (:func:`hpc_pt.io.summary.rank_memory_estimate`, the terms ``hpc-pt info``
    prints, for this rank's frames, angles and volume slab) and compares them with
    :func:`memory_available` on ``cfg.device``. Raises one-line :class:`InputError` naming the estimate and
    the ways to fit (more ranks, ``--frame-batch``, the other ``--device``); returns the estimate.
    """
    from .io.summary import format_bytes, rank_memory_estimate

    env = os.environ.get(MEMORY_ENV, "").strip().lower()
    pieces = plan[rank]
    size = len(plan)
    nz, n, _ = volume_shape_for(meta, cfg.volume_size)
    frame_shape = tuple(meta.frame_shape)
    field = meta.geometry.field_shape

    def estimate(frames, angles, ranks):
        rows = -(-nz // ranks)
        return rank_memory_estimate(frames, frame_shape, angles, field, (rows, n, n), cfg.method,
                                    cfg.frame_batch)

    n_local = sum(int(stop) - int(start) for _a, start, stop in pieces)
    est = estimate(n_local, len({a for a, _s, _e in pieces}), size)
    if env == "off":
        return est
    avail, where = memory_available(cfg.device)
    if avail is None or est["total"] <= avail:
        return est
    total_frames, total_angles = int(np.sum(meta.n_frames)), len(meta.n_frames)
    ranks = size
    while ranks < max(total_frames, 1) and estimate(-(-total_frames // ranks), -(-total_angles // ranks),
                                                    ranks)["total"] > avail:
        ranks *= 2
    parts = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in est.items() if k != "total" and v)
    fits = estimate(-(-total_frames // ranks), -(-total_angles // ranks), ranks)["total"] <= avail
    ways = [f"run on about {ranks} ranks (mpiexec -n {ranks} ... --backend mpi)" if fits else
            f"run on more ranks (even {ranks} are not enough: lower --volume-size)",
            f"pass a smaller --frame-batch (far-field batches take {format_bytes(est['far_field_batch'])})",
            "try --device gpu (GPU memory)" if cfg.device == "cpu" else "try --device cpu (host memory)"]
    raise InputError(f"{cfg.method} needs about {format_bytes(est['total'])} per rank ({parts}), but "
                     f"{format_bytes(avail)} is available ({where}); to fit, " + ", ".join(ways[:-1])
                     + f" or {ways[-1]} ({MEMORY_ENV}=off skips this check)")


#: volumes up to this size are gathered onto every rank for :attr:`ReconResult.volume` (larger ones: None)
GATHER_LIMIT_BYTES = 2 << 30


def reconstruct(data, out=None, config: ReconConfig | dict | None = None, overwrite: bool = False,
                comm=None, progress=None, command=None, input_path=None, reader: dict | None = None,
                checkpoint_every: int = 0, resume: bool = False, checkpoint_dir=None, inputs: dict | None = None,
                **settings) -> ReconResult:
    """Reconstruct ``data`` (CXI path or :class:`Dataset`) with ``config`` / keyword ``settings``
    (see :class:`ReconConfig`); write ``out`` (Zarr) and ``out`` with suffix .png when given.

    ``comm`` (default serial) is a :class:`hpc_pt.parallel.Comm`; with several ranks (e.g.
    ``MPIComm()`` under ``mpiexec``) every rank calls this function, reads the file's metadata, takes its
    part of :func:`hpc_pt.parallel.plan_shards` and reads only those frames. The volume is split in slabs
    (:class:`hpc_pt.parallel.SlabSpace`): every rank writes its own rows of ``out`` (whole chunks), rank 0
    the metadata and the PNG, and calls ``progress``. A failure on any rank before the solve raises on
    every rank. ``reader`` holds ``scan_cxi`` flags (flip_translations, translation_layout) for a path input.

    Checkpoints: with ``checkpoint_every`` K > 0 the whole solver state is saved every K iterations into
    ``checkpoint_dir`` (default ``<out>.ckpt``), atomically (see :mod:`hpc_pt.io.checkpoint`); with
    ``resume`` the run continues from the latest checkpoint there and ends bitwise-equal (CPU) to an
    uninterrupted run. ``ReconResult.volume`` is the whole volume on every rank when it is at most
    ``GATHER_LIMIT_BYTES``, else None (read ``out``).

    Inputs are never damaged: ``out``, its PNG and the checkpoint folder may not be, contain or lie inside
    the input file, the ``init`` volume or any further file this run reads (``inputs``, ``{label: path}``,
    e.g. the CLI's ``{"--config": path}``), whatever ``overwrite`` says. The store and the PNG are written
    under temporary names and replace an existing result only once both are complete; on any failure
    every temporary is removed (a full disk or quota: one-line :class:`InputError` with the bytes needed).
    ``resume`` may replace an existing ``out`` without ``overwrite`` (it completes the same run) and first
    removes the temporaries an earlier, killed run of the same output left
    (:func:`hpc_pt.io.safety.stale_temporaries`).
    """
    from .parallel import SerialComm

    comm = comm or SerialComm()
    run = _prepare(data, out, config, settings, overwrite, comm, progress, reader, checkpoint_every, resume,
                   checkpoint_dir, inputs, input_path)
    res = _solve(run, comm, progress)
    return _write(run, res, comm, command, progress)


@dataclass
class _Run:
    """What :func:`reconstruct`'s set-up hands to the solve and the write (one run, this rank)."""

    cfg: ReconConfig
    meta: object
    input_path: str | None
    out: object
    figure: str | None
    replace: bool
    read_paths: dict
    model: str
    model_source: str
    model_msg: str | None
    plan: list
    ckpt: object
    shard: object
    bytes_read: int
    u0: object
    execution: object
    checkpoint_every: int = 0
    resume: bool = False
    resumed_state: dict | None = None
    stages: list | None = None
    tracker: object = None


def _prepare(data, out, config, settings, overwrite, comm, progress, reader, checkpoint_every, resume,
             checkpoint_dir, inputs, input_path) -> _Run:
    """:func:`reconstruct`'s set-up, collective: the settings, the input's metadata, the output and input
    checks, the forward model, the shard plan, the checkpoint store, the execution policy, this rank's
    shard and the initial volume; a failure on any rank raises on every rank (before the solve). Then, on
    resume, the latest intact checkpoint, and the data's signal check."""
    from .execution import Execution
    from .parallel import plan_shards, split_angles
    from .progress import report_status, step

    rank, size = int(comm.rank), int(comm.size)
    say = progress if rank == 0 else None  # set-up status lines: rank 0 only
    err = None
    ckpt = None
    model_msg = None
    try:
        if isinstance(config, ReconConfig):
            cfg = config if not settings else ReconConfig.build({**config.model_dump(), **settings})
        else:
            cfg = ReconConfig.build({**(config or {}), **settings})
        det_methods = [m for m, d in DETERMINISTIC.items() if d != "no"]
        if cfg.deterministic and DETERMINISTIC[cfg.method] == "no":
            raise InputError(f"deterministic mode is implemented for {', '.join(det_methods)}, "
                             f"not {cfg.method}; run {cfg.method} without --deterministic")
        # the reduction mode of every collective sum below
        comm.deterministic = (DETERMINISTIC[cfg.method] == "default" if cfg.deterministic is None
                              else bool(cfg.deterministic))
        # the execution policy, built once (the CLI applies its threads to the process environment before
        # any library starts its threads: docs/parallel.md "Threads"); recorded with the result
        execution = Execution.from_environment(device=cfg.device, frame_batch=cfg.frame_batch)
        if isinstance(data, Dataset):
            meta = data
        else:
            from .io.cxi import ensure_probe, scan_cxi

            input_path = os.fspath(data)
            meta = scan_cxi(input_path, **(reader or {}))  # metadata only; frames below, this rank's only
            ensure_probe(meta)  # a file without a probe: estimated from a sample of whole angles (every rank)
        figure = None
        replace = overwrite or resume  # --resume completes its own run's result: it never needs --force
        where = None
        if checkpoint_every or resume:
            where = checkpoint_dir or (None if out is None else os.path.abspath(out) + ".ckpt")
        if out is not None:
            figure = os.path.splitext(os.path.abspath(out))[0] + ".png"
        read_paths = _read_paths(input_path, cfg.init, inputs)
        if rank == 0:
            _refuse_damaging(out, figure, where, read_paths)
            if out is not None:
                from .io import check_output_path

                check_output_path(out, overwrite=replace)
                check_output_path(figure, overwrite=replace)
        model, model_source, model_msg = choose_model(cfg, meta.attrs)
        cfg = refine_estimated_probe(cfg, meta.attrs)
        check_settings(cfg, model)
        counts = meta.n_frames
        try:
            plan = plan_shards(counts, size)
        except ValueError as e:
            raise InputError(f"{e} (the input has {int(counts.sum())} frames)") from None
        split = split_angles(plan)
        if split and _spec(cfg.method).whole_angles:
            raise InputError(f"{cfg.method} needs whole angles on every rank, but {size} ranks for "
                             f"{len(counts)} angles split angle(s) {split}; run with at most {len(counts)} "
                             "ranks (mpiexec -n ...)")
        if checkpoint_every or resume:
            from .io.checkpoint import CheckpointStore

            if where is None:
                raise InputError("checkpoints need a place: give --out (checkpoints go to OUT.ckpt) "
                                 "or --checkpoint-dir")
            ckpt = CheckpointStore(where, rank, size, cfg.model_dump(), plan)
            if resume:  # settings, ranks, layout, --iterations: before reading frames (the input: below)
                ckpt.precheck(lambda man: _resume_refusal(cfg, man, ckpt.where))
            if rank == 0:  # rank 0 writes the manifests; on resume it broadcasts this (CheckpointStore.resume)
                from .io.checkpoint import input_fingerprint

                ckpt.fingerprint = input_fingerprint(meta)
        if execution.device == "gpu":
            from .parallel.devices import select_gpu

            select_gpu(comm)  # one GPU per rank, from the local rank and CUDA_VISIBLE_DEVICES
        check_memory(meta, cfg, plan, rank)  # before reading frames or allocating solver state
        centre = cfg.rotation_centre if isinstance(cfg.rotation_centre, (int, float)) else None
        # one shard path: a file's frames are read for this rank only, a Dataset's sliced (serial: one rank)
        shard, bytes_read = build_rank_shard(meta, plan, comm, model, execution.device, cfg.volume_size,
                                             execution.frame_batch, centre=centre, progress=say)
        if cfg.init not in ("constant", "zeros"):
            report_status(say, f"reading the initial guess {cfg.init}")
        u0 = _initial_volume(cfg.init, shard.global_volume_shape)
        if u0 is not None:
            u0 = shard.space.local(u0)
        report_status(say, None)
    except Exception as e:  # noqa: BLE001 - re-raised below, after the ranks agree
        report_status(say, None, ok=False)
        err = e
    if size > 1:  # collective: a rank that failed alone would leave the others waiting in the solver
        failed = comm.sum_scalar(1.0 if err is not None else 0.0)
        if err is None and failed:
            err = InputError(f"{int(failed)} other rank(s) of {size} failed before the solve; "
                             "see their error messages")
            err.secondary = True  # this rank's own setup was fine
        if err is not None:
            err.all_ranks = True  # every rank raises here: callers need not abort the job
    if err is not None:
        raise err
    run = _Run(cfg, meta, input_path, out, figure, replace, read_paths, model, model_source, model_msg, plan, ckpt,
               shard, bytes_read, u0, execution, checkpoint_every, resume)
    if resume:  # collective: every rank takes the same intact checkpoint, or every rank raises
        with step(say, f"loading the latest checkpoint from {ckpt.where}"):
            run.resumed_state, man, skipped = ckpt.resume(comm, lambda m: _resume_refusal(cfg, m, ckpt.where))
        for name, why in skipped:
            _tell(comm, f"warning: checkpoint {name} in {ckpt.where} is damaged ({why}); resuming from the one "
                        f"before it, {os.path.basename(ckpt.previous)} (iteration {int(man['iteration'])})")
        if rank == 0:  # what a killed earlier run of this output left (it is resumed now, so it is not running)
            _sweep_stale(out, figure, ckpt.where, read_paths, comm)
    _check_signal(shard, comm)  # collective: every rank sees the same total and raises together
    return run


def _solve(run: _Run, comm, progress):
    """Run the method on this rank's shard (collective): calibration, the per-iteration callback (communication
    and I/O times, finite-row check, progress), checkpoints; returns the solver's result."""
    from .progress import StageTracker, report_status

    rank = int(comm.rank)
    say = progress if rank == 0 else None
    cfg, meta, shard, ckpt = run.cfg, run.meta, run.shard, run.ckpt
    _tell(comm, run.model_msg)  # after a set-up every rank passed: a failed run prints only its error
    _tell(comm, cv.radian_angles_warning(_angles_deg(meta)))
    calibration = _calibrate(shard, comm, cfg)
    stats = getattr(comm, "stats", None)
    last = {"snap": stats.snapshot() if stats is not None else {}, "io": 0.0}

    def callback(row, u):
        """Per-iteration communication bytes / time and checkpoint I/O time into the history row; a row
        whose objective or R-factor is NaN or infinite stops the run (:func:`check_finite_row`)."""
        check_finite_row(row, cfg.method)
        if stats is not None:
            snap = stats.snapshot()
            for k, v in snap.items():
                row[k] = float(v - last["snap"].get(k, 0))
            last["snap"] = snap
            row["compute_time_s"] = max(float(row.get("iter_time_s", 0.0)) - row.get("comm_time_s", 0.0), 0.0)
        row["io_time_s"], last["io"] = last["io"], 0.0
        if run.tracker is not None:
            run.tracker.row(row)

    checkpoints = None
    if ckpt is not None:
        from .solvers.base import Checkpointer

        def save(state):
            import time as _t

            t0 = _t.perf_counter()
            ckpt.save(state, comm)
            last["io"] += _t.perf_counter() - t0

        checkpoints = Checkpointer(run.checkpoint_every, save, run.resumed_state)
    support = meta.attrs.get("size") if cfg.method == "two-step" else None  # simulated sample width
    try:
        run.stages = progress_stages(cfg, support)
        run.tracker = StageTracker(progress, run.stages) if progress is not None and rank == 0 else None
        if run.tracker is not None:  # the first stage's phase (a 2-step run resumed in its tomography: stage 2)
            resumed = run.resumed_state or {}
            run.tracker.begin(2 if cfg.method == "two-step" and resumed.get("stage") == "tomo"
                              else run.stages[0]["stage"])
            callback.status = getattr(say, "status", None)  # solvers may report steps of their own
        report_status(say, f"setting up {cfg.method} (initial volume, step sizes)" if cfg.method != "two-step"
                      else "setting up the 2D ptychography")  # ended by the first row (minus its own time)
        res = _run_method(cfg, shard, comm, callback, run.u0, support=support, checkpoints=checkpoints,
                          noise_free=meta.attrs.get("noise") == "none")
    except (ValueError, TypeError) as e:  # option values the solvers' own checks reject
        if isinstance(e, InputError):
            raise
        raise InputError(f"{cfg.method}: {e}") from None
    res.state["bytes_read"] = run.bytes_read
    res.state.update(calibration)
    return res


def _write(run: _Run, res, comm, command, progress) -> ReconResult:
    """The result (the whole volume on every rank when small enough) and, with ``out``, the store and the
    figure (:func:`_write_outputs`; collective)."""
    from .backend import to_numpy
    from .progress import step

    rank, size = int(comm.rank), int(comm.size)
    cfg, space = run.cfg, run.shard.space
    per_rank = np.zeros(size, dtype=np.float64)
    per_rank[rank] = run.bytes_read
    per_rank = comm.allreduce_sum(per_rank) if size > 1 else per_rank
    parallel = {"backend": getattr(comm, "name", type(comm).__name__), "ranks": size,
                "bytes_read_per_rank": [int(v) for v in per_rank],
                "shards": [[list(p) for p in pieces] for pieces in run.plan],
                "slabs": [list(b) for b in space.bounds], "execution": run.execution.describe()}
    slab = to_numpy(res.volume).astype(np.complex64)
    probe = to_numpy(res.probe).astype(np.complex64)
    hist = res.history.as_columns()
    nbytes = int(np.prod(space.global_shape)) * 8
    volume = space.allgather(slab) if nbytes <= GATHER_LIMIT_BYTES else None
    result = ReconResult(volume, probe, hist, cfg, bytes_read=run.bytes_read, parallel=parallel,
                         state={k: v for k, v in res.state.items() if np.isscalar(v)})
    result.slab = (space.z0, space.z1)
    result.model, result.model_source = run.model, run.model_source  # the forward model used, and its source
    result.resumed_from = None if run.resumed_state is None else int(run.resumed_state["iteration"])
    if run.out is not None:
        with step(progress if rank == 0 else None, f"writing {os.path.abspath(run.out)} and {os.path.basename(run.figure)}"):
            result.figure, result.out = _write_outputs(run.out, run.figure, slab, space, probe, hist, res, cfg,
                                                       run.model, run.meta, parallel, run.replace, command,
                                                       run.input_path, comm, model_source=run.model_source,
                                                       stages=run.stages, volume=volume)
    return result


def _read_paths(input_path, init, inputs: dict | None) -> dict:
    """{label: path} of the files a reconstruction reads: the input, an ``init`` volume, and ``inputs``
    (the caller's further files, e.g. ``{"--config": path}``)."""
    paths = {"the input": None if input_path is None else os.fspath(input_path)}
    if init not in ("constant", "zeros"):
        paths["--init"] = init
    for label, p in (inputs or {}).items():
        if p is not None:
            paths[label] = os.fspath(p)
    return paths


def _refuse_damaging(out, figure, where, read_paths: dict) -> None:
    """One-line error when the store ``out``, its ``figure`` or the checkpoint folder ``where`` is, contains or
    lies inside a file the run reads (``read_paths``), or the store or figure is or contains the checkpoint
    folder (replacing the store would remove it); ``--force`` changes nothing here."""
    from .io.safety import refuse_overlap

    outputs = {"--out": out, "the figure": figure, "the checkpoint folder": where}
    refuse_overlap(outputs, read_paths)
    if where is not None:
        refuse_overlap({"--out": out, "the figure": figure}, {"the checkpoint folder": where},
                       relations=("is", "contains"), what="the checkpoints")


def _sweep_stale(out, figure, where, read_paths: dict, comm) -> None:
    """``--resume``: remove the temporaries an earlier, killed run of ``out`` left (stores and figures being
    written or replaced, unfinished checkpoints), never an input; one ``note:`` line says how many."""
    from .io.safety import stale_checkpoint_parts, stale_temporaries, sweep

    removed = sweep((stale_temporaries(out, figure) if out is not None else []) + stale_checkpoint_parts(where),
                    read_paths)
    if removed:
        _tell(comm, f"note: removed {len(removed)} temporary file(s) an earlier run left: "
                    + ", ".join(os.path.basename(p) for p in removed))


def _write_outputs(out, figure, slab, space, probe, hist, res, cfg, model, meta, parallel, overwrite,
                   command, input_path, comm, model_source=None, stages=None, volume=None):
    """Write the store, then the figure, each under a temporary name (``OUT.tmp-<token>``,
    ``.FIGURE.tmp-<token>``), and move both into place only once both are complete
    (:func:`hpc_pt.io.safety.commit`): an existing result is replaced only by a whole new one.

    Rank 0 renders the figure into memory (before anything is written) and begins the store with all
    metadata; every rank writes its slab's rows (whole chunks); rank 0 consolidates the store, writes the
    figure and moves both. Each step's failure is agreed on by every rank (all raise; the failing rank's
    error is the message) and removes every temporary of this run; a full disk or quota is one line with
    the bytes the result needs (:func:`hpc_pt.io.zarr_store.estimate_volume_bytes` plus the figure's).
    ``volume``: the gathered volume or None; with it and a small enough volume the figure's title gets the
    SNR against the input's ground truth, if it has one. Returns (figure, store path)."""
    import io
    import warnings

    from .io.cxi import read_truth
    from .io.safety import agree_on_failure, commit, remove_path, write_file
    from .io.zarr_store import begin_volume, consolidate_volume, estimate_volume_bytes, write_volume_rows
    from .parallel import chunk_rows
    from .plots import SNR_MAX_VOXELS, recon_figure, truth_snr_db

    nz, n, _ = space.global_shape
    mid = [nz // 2]
    central = {"xy": space.gather_rows(slab, mid)[0], "xz": space.gather_plane(slab, 1, n // 2),
               "yz": space.gather_plane(slab, 2, n // 2)}
    token = str(comm.bcast(int(os.getpid()) if comm.rank == 0 else 0, root=0))
    path = os.path.abspath(os.fspath(out))
    tmp = f"{path}.tmp-{token}"
    png_tmp = os.path.join(os.path.dirname(figure), f".{os.path.basename(figure)}.tmp-{token}")
    chunks_z = chunk_rows(nz, n, comm.size)
    attrs = {"method": cfg.method, "model": model, "model_source": model_source,
             "reconstruction": cfg.model_dump(),
             "solver_state": {k: v for k, v in res.state.items() if np.isscalar(v)},
             "energy_ev": meta.geometry.energy_ev, "angles_deg": _angles_deg(meta),
             "parallel": parallel}
    if stages and len(stages) > 1:  # the history's ``stage`` column values, named
        attrs["history_stages"] = {str(s["stage"]): s["name"] for s in stages}
    needed = 0  # rank 0: the whole result's bytes (store estimate + the rendered figure); other ranks 0

    def cleanup():
        remove_path(tmp)
        remove_path(png_tmp)

    err, png = None, b""
    try:
        if comm.rank == 0:
            needed = estimate_volume_bytes(space.global_shape, chunks_z, {"history": hist}, {"probe": probe}, attrs)
            snr = None
            if volume is not None and volume.size <= SNR_MAX_VOXELS:  # the SNR's alignment stays cheap
                try:
                    truth = meta.truth if isinstance(meta, Dataset) and meta.truth else \
                        (read_truth(input_path) if input_path else None)  # read_cxi leaves the truth on disk
                    snr = truth_snr_db(volume, (truth or {}).get("volume"))
                except (OSError, KeyError, ValueError) as e:  # a figure annotation never fails the run
                    warnings.warn(f"no SNR in the figure: the ground truth could not be read ({e})", stacklevel=2)
            names = {s["stage"]: s["name"] for s in stages} if stages and len(stages) > 1 else None
            buf = io.BytesIO()
            recon_figure(central, hist, buf, title=f"hpc-pt {cfg.method}: {os.path.basename(path)}",
                         voxel_size_m=meta.geometry.pixel_m, model=model, snr_db=snr, stage_names=names,
                         slices=(nz // 2, n // 2, n // 2), r_factor=res.state.get("r_factor"))
            png = buf.getvalue()
            needed += len(png)
            begin_volume(out, space.global_shape, meta.geometry.pixel_m, attrs=attrs, overwrite=overwrite,
                         chunks_z=chunks_z, command=command, config=cfg.model_dump(), input_path=input_path,
                         tables={"history": hist}, arrays={"probe": probe}, token=token)
    except Exception as e:  # noqa: BLE001 - agreed on below
        err = e
    agree_on_failure(comm, err, path, needed, cleanup)
    _, after = space.halo(slab) if comm.size > 1 else (None, None)
    try:
        write_volume_rows(tmp, space.z0, slab, next_row=after if space.z1 < nz else None)
    except Exception as e:  # noqa: BLE001 - agreed on below
        err = e
    agree_on_failure(comm, err, path, needed, cleanup)  # every rank's rows are on disk before the store is finished
    try:
        if comm.rank == 0:
            consolidate_volume(tmp)
            write_file(png_tmp, png)
            if not overwrite:  # checked before the solve; an output that appeared since is not replaced
                for p in (path, figure):
                    if os.path.lexists(p):
                        raise InputError(f"{p} already exists; pass --force (overwrite=True) to replace it")
            commit([(tmp, path), (png_tmp, figure)], token)
    except Exception as e:  # noqa: BLE001 - agreed on below
        err = e
        if comm.rank == 0:
            cleanup()
    agree_on_failure(comm, err, path, needed, cleanup)
    return figure, path
