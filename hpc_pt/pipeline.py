"""``hpc_pt.reconstruct``: one call from a CXI file (or an in-memory Dataset) to a reconstructed volume.

Builds the forward model and the data shard, runs the chosen method, and (with ``out``) writes the Zarr
store with the volume, the refined probe and the per-iteration history, plus a PNG of the central slices and
the convergence curves next to it. The CLI's ``reconstruct`` and ``demo`` delegate here.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
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
    volume_size: int | None = Field(None, ge=4, description="edge N of the reconstructed (nz, N, N) volume "
                                    "(default: the simulated sample size, else the object-field width)")
    device: Literal["cpu", "gpu"] = "cpu"
    frame_batch: int | None = Field(None, ge=1, description="frames per far-field batch: bounds the solvers' "
                                    "far-field temporaries (default: 16 MiB of complex64 far field)")
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
    bytes_read: int = 0  # frame bytes this rank read from the input file (0 for an in-memory Dataset)
    parallel: dict = field(default_factory=dict)  # backend, ranks, bytes_read_per_rank, shards


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
    """The serial shard (all angles, all frames) and the forward model on ``device`` (``frame_batch``: see
    :class:`~hpc_pt.operators.Ptychography`; ``centre``: field column of the rotation axis, default the
    dataset's ``geometry.rotation_centre``, else (W - 1) / 2)."""
    from .backend import require_gpu
    from .operators import ForwardModel
    from .solvers.base import Shard

    gpu = device == "gpu"
    xp = require_gpu() if gpu else np
    H, W = ds.geometry.field_shape
    c = cv.k_dz(ds.geometry.energy_ev, ds.geometry.pixel_m)
    probe = xp.asarray(ds.probe.astype(np.complex64))
    centre = _centre_of(ds, centre)
    fm = ForwardModel(volume_shape_for(ds, volume_size), ds.angles_rad, probe, [a.positions for a in ds.angles],
                      (H, W), center=centre, model=model, c=c, gpu=gpu, frame_batch=frame_batch)
    f = xp.asarray(np.concatenate([a.frames for a in ds.angles]).astype(np.float32))
    mask = None if ds.mask is None else xp.asarray(ds.mask.astype(bool))
    space = make_space(ds, [[(a, 0, len(e.positions)) for a, e in enumerate(ds.angles)]], comm, device,
                       volume_size, centre)
    return Shard(fm, f, np.arange(len(ds.angles)), mask=mask, space=space)


#: methods whose per-angle variables (object fields psi, multipliers, per-angle step sizes and
#: illumination) need all frames of an angle on one rank
WHOLE_ANGLES = ("two-step", "admm")


def build_rank_shard(meta, plan, comm, model: str, device: str = "cpu", volume_size: int | None = None,
                     frame_batch: int | None = None, centre: float | None = None):
    """This rank's shard: frames ``start:stop`` of each (angle, start, stop) in ``plan[comm.rank]`` (see
    :func:`hpc_pt.parallel.plan_shards`), with a forward model over those angles (global angle values)
    and only those frames' positions. An angle split over ranks appears on each of them with its part.

    ``meta`` is a :class:`~hpc_pt.io.cxi.CxiIndex` (frames are read with ``read_frames``, only this
    rank's slices) or an in-memory :class:`Dataset` (sliced, nothing read). The volume shape comes from
    the metadata, so it is the same on every rank; so does the rotation axis (``centre``, default the
    metadata's ``geometry.rotation_centre``, else (W - 1) / 2). Returns (Shard, bytes_read): the frame bytes
    read from the file, at the file's dtype.
    """
    from .backend import require_gpu
    from .operators import ForwardModel
    from .solvers.base import Shard

    gpu = device == "gpu"
    xp = require_gpu() if gpu else np
    H, W = meta.geometry.field_shape
    from_file = not isinstance(meta, Dataset)
    if from_file:
        from .io.cxi import read_frames

        m1, m2 = meta.frame_shape
        itemsize = np.dtype(meta.frame_dtype).itemsize
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
    c = cv.k_dz(meta.geometry.energy_ev, meta.geometry.pixel_m)
    probe = xp.asarray(np.asarray(meta.probe).astype(np.complex64))
    centre = _centre_of(meta, centre)
    fm = ForwardModel(volume_shape_for(meta, volume_size), np.deg2rad(angles), probe, positions, (H, W),
                      center=centre, model=model, c=c, gpu=gpu, frame_batch=frame_batch)
    f = xp.asarray(np.concatenate(frames).astype(np.float32))
    mask = None if meta.mask is None else xp.asarray(meta.mask.astype(bool))
    space = make_space(meta, plan, comm, device, volume_size, centre)
    return Shard(fm, f, np.asarray(ids, dtype=np.int64), mask=mask, space=space), int(nbytes)


def _centre_of(meta, centre: float | None) -> float:
    """The rotation axis's field column: ``centre``, else the metadata's, else (W - 1) / 2."""
    if centre is None:
        centre = getattr(meta.geometry, "rotation_centre", None)
    W = meta.geometry.field_shape[1]
    return (W - 1) / 2.0 if centre is None else float(centre)


def _angles_deg(meta) -> list[float]:
    return [a.angle_deg for a in meta.angles] if isinstance(meta, Dataset) else list(meta.angles_deg)


#: generic settings each method uses (setting any other one explicitly is an error, not silently ignored)
USES = {"apt": {"noise", "prior", "prior_weight", "penalty", "probe_refine", "init"},
        "apts": {"noise", "prior", "penalty", "probe_refine", "init"},
        "gd": {"noise", "init"},
        "admm": {"noise", "prior", "prior_weight", "penalty", "init"},
        "two-step": {"noise", "probe_refine"}}
GENERIC = {"noise", "prior", "prior_weight", "penalty", "probe_refine", "init"}


def check_settings(cfg: ReconConfig, model: str) -> None:
    """Reject settings the chosen method would ignore, and model/method mismatches, before any work."""
    unused = sorted((cfg.model_fields_set & GENERIC) - USES[cfg.method])
    if cfg.method == "apts" and cfg.prior != "none" and "prior" in cfg.model_fields_set:
        unused.append("prior")
    if unused:
        flags = ", ".join("--" + u.replace("_", "-") for u in unused)
        raise InputError(f"method {cfg.method!r} does not use {flags}; drop it or choose a method that does "
                         "(see docs/solvers.md)")
    if cfg.method in ("apt", "apts") and model != "linear":
        raise InputError(f"{cfg.method} uses the linear (Rytov) model; drop --model exp or use --method admm/gd")
    if cfg.method in ("gd", "admm") and model != "exp":
        raise InputError(f"{cfg.method} uses the exponential model; drop --model linear or use --method apt")
    if cfg.method in ("gd", "admm") and cfg.init == "constant" and "init" in cfg.model_fields_set:
        raise InputError(f"{cfg.method} starts from zeros (free space) or a given volume; use --init zeros or FILE")


def _coerce(cls, values: dict) -> dict:
    """Convert option values to the dataclass fields' types, with a one-line error naming the option."""
    types = {f.name: f.type for f in fields(cls)}
    out = {}
    for k, v in values.items():
        t = str(types[k])
        if t.endswith(" | None"):  # optional: None / "none" / "null" stay None, anything else the base type
            if v is None or str(v).lower() in ("none", "null"):
                out[k] = None
                continue
            t = t[: -len(" | None")]
        try:
            if t in ("int", "<class 'int'>") and not isinstance(v, bool):
                fv = float(v)
                if not fv.is_integer():
                    raise ValueError(v)
                v = int(fv)
            elif t in ("float", "<class 'float'>"):
                v = float(v)
            elif t in ("bool", "<class 'bool'>") and not isinstance(v, bool):
                v = {"true": True, "false": False, "1": True, "0": False}[str(v).lower()]
        except (ValueError, TypeError, KeyError):
            raise InputError(f"option {k}={v!r} must be of type {t.replace(chr(39), '')}") from None
        out[k] = v
    return out


def _options(cls, cfg: ReconConfig, mapped: dict):
    """Instantiate a solver's options dataclass from the generic settings plus ``cfg.options``."""
    names = {f.name for f in fields(cls)}
    extra = dict(cfg.options)
    unknown = sorted(set(extra) - names)
    if unknown:
        raise InputError(f"unknown option(s) {unknown} for method {cfg.method!r}; known: {sorted(names)}")
    values = {k: v for k, v in mapped.items() if k in names and v is not None}
    values.update(_coerce(cls, extra))
    return cls(**values)


def _run_method(cfg: ReconConfig, shard, comm, callback, u0, support=None, checkpoints=None):
    from .solvers.base import NO_CHECKPOINTS

    ck = {"checkpoints": checkpoints or NO_CHECKPOINTS}
    if cfg.method in ("apt", "apts"):
        from .solvers.apt import APTOptions, run_apt

        if cfg.prior not in ("tv", "none") and cfg.method == "apt":
            raise InputError(f"APT's prior is TV (seed 001); use --method admm for the {cfg.prior!r} prior")
        tv = cfg.method == "apt" and cfg.prior == "tv"
        opts = _options(APTOptions, cfg, {"iterations": cfg.iterations, "metric": cfg.noise, "tv": tv,
                                          "tv_rel": cfg.prior_weight, "r2": cfg.penalty,
                                          "probe_refine": cfg.probe_refine, "init": cfg.init})
        return run_apt(shard, comm, opts, callback=callback, u0=u0, **ck)
    if cfg.method == "gd":
        from .solvers.gd import GDOptions, run_gd

        opts = _options(GDOptions, cfg, {"iterations": cfg.iterations, "metric": cfg.noise,
                                         "probe_refine": cfg.probe_refine})
        return run_gd(shard, comm, opts, callback=callback, u0=u0, **ck)
    if cfg.method == "admm":
        from .solvers.admm import ADMMOptions, run_admm

        opts = _options(ADMMOptions, cfg, {"iterations": cfg.iterations, "metric": cfg.noise, "prior": cfg.prior,
                                           "prior_weight": cfg.prior_weight, "rho_rel": cfg.penalty,
                                           "probe_refine": cfg.probe_refine})
        return run_admm(shard, comm, opts, callback=callback, u0=u0, **ck)
    from .solvers.twostep import TwoStepOptions, run_twostep

    opts = _options(TwoStepOptions, cfg, {"iterations": cfg.iterations, "noise": cfg.noise,
                                          "probe_refine": cfg.probe_refine, "support_width": support})
    return run_twostep(shard, comm, opts, callback=callback, **ck)


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


#: volumes up to this size are gathered onto every rank for :attr:`ReconResult.volume` (larger ones: None)
GATHER_LIMIT_BYTES = 2 << 30


def reconstruct(data, out=None, config: ReconConfig | dict | None = None, overwrite: bool = False,
                comm=None, progress=None, command=None, input_path=None, reader: dict | None = None,
                checkpoint_every: int = 0, resume: bool = False, checkpoint_dir=None,
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
    """
    from .backend import to_numpy
    from .parallel import SerialComm, plan_shards, split_angles

    comm = comm or SerialComm()
    rank, size = int(comm.rank), int(comm.size)
    err = None
    ckpt = None
    try:
        if isinstance(config, ReconConfig):
            cfg = config if not settings else ReconConfig.build({**config.model_dump(), **settings})
        else:
            cfg = ReconConfig.build({**(config or {}), **settings})
        if isinstance(data, Dataset):
            meta = data
        else:
            from .io.cxi import scan_cxi

            input_path = os.fspath(data)
            meta = scan_cxi(input_path, **(reader or {}))  # metadata only; frames below, this rank's only
        figure = None
        if out is not None:
            figure = os.path.splitext(os.path.abspath(out))[0] + ".png"
            if rank == 0:
                from .io import check_output_path

                check_output_path(out, overwrite=overwrite)
                check_output_path(figure, overwrite=overwrite)
        model = cfg.model or DEFAULT_MODEL[cfg.method] or meta.attrs.get("model", "linear")
        check_settings(cfg, model)
        counts = meta.n_frames
        try:
            plan = plan_shards(counts, size)
        except ValueError as e:
            raise InputError(f"{e} (the input has {int(counts.sum())} frames)") from None
        split = split_angles(plan)
        if split and cfg.method in WHOLE_ANGLES:
            raise InputError(f"{cfg.method} needs whole angles on every rank, but {size} ranks for "
                             f"{len(counts)} angles split angle(s) {split}; run with at most {len(counts)} "
                             "ranks (mpiexec -n ...)")
        if checkpoint_every or resume:
            from .io.checkpoint import CheckpointStore

            where = checkpoint_dir or (None if out is None else os.path.abspath(out) + ".ckpt")
            if where is None:
                raise InputError("checkpoints need a place: give --out (checkpoints go to OUT.ckpt) "
                                 "or --checkpoint-dir")
            ckpt = CheckpointStore(where, rank, size, cfg.model_dump(), plan)
            if resume:
                ckpt.check_resumable()
        if cfg.device == "gpu":
            from .parallel.devices import select_gpu

            select_gpu(comm)  # one GPU per rank, from the local rank and CUDA_VISIBLE_DEVICES
        if size == 1 and isinstance(meta, Dataset):
            shard, bytes_read = build_shard(meta, model, cfg.device, cfg.volume_size, comm=comm,
                                            frame_batch=cfg.frame_batch), 0
        else:
            shard, bytes_read = build_rank_shard(meta, plan, comm, model, cfg.device, cfg.volume_size,
                                                 cfg.frame_batch)
        u0 = _initial_volume(cfg.init, shard.global_volume_shape)
        if u0 is not None:
            u0 = shard.space.local(u0)
    except Exception as e:  # noqa: BLE001 - re-raised below, after the ranks agree
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
    per_rank = np.zeros(size, dtype=np.float64)
    per_rank[rank] = bytes_read
    per_rank = comm.allreduce_sum(per_rank) if size > 1 else per_rank
    space = shard.space
    parallel = {"backend": getattr(comm, "name", type(comm).__name__), "ranks": size,
                "bytes_read_per_rank": [int(v) for v in per_rank],
                "shards": [[list(p) for p in pieces] for pieces in plan],
                "slabs": [list(b) for b in space.bounds]}
    stats = getattr(comm, "stats", None)
    last = {"snap": stats.snapshot() if stats is not None else {}, "io": 0.0}

    def callback(row, u):
        """Per-iteration communication bytes / time and checkpoint I/O time into the history row."""
        if stats is not None:
            snap = stats.snapshot()
            for k, v in snap.items():
                row[k] = float(v - last["snap"].get(k, 0))
            last["snap"] = snap
            row["compute_time_s"] = max(float(row.get("iter_time_s", 0.0)) - row.get("comm_time_s", 0.0), 0.0)
        row["io_time_s"], last["io"] = last["io"], 0.0
        if progress is not None and rank == 0:
            progress(row)

    checkpoints = None
    if ckpt is not None:
        from .solvers.base import Checkpointer

        def save(state):
            import time as _t

            t0 = _t.perf_counter()
            ckpt.save(state, comm)
            last["io"] += _t.perf_counter() - t0

        checkpoints = Checkpointer(checkpoint_every, save, ckpt.load() if resume else None)
    support = meta.attrs.get("size") if cfg.method == "two-step" else None  # simulated sample width
    try:
        res = _run_method(cfg, shard, comm, callback, u0, support=support, checkpoints=checkpoints)
    except (ValueError, TypeError) as e:  # option values the solvers' own checks reject
        if isinstance(e, InputError):
            raise
        raise InputError(f"{cfg.method}: {e}") from None
    res.state["bytes_read"] = bytes_read
    slab = to_numpy(res.volume).astype(np.complex64)
    probe = to_numpy(res.probe).astype(np.complex64)
    hist = res.history.as_columns()
    nbytes = int(np.prod(space.global_shape)) * 8
    volume = space.allgather(slab) if nbytes <= GATHER_LIMIT_BYTES else None
    result = ReconResult(volume, probe, hist, cfg, bytes_read=bytes_read, parallel=parallel)
    result.slab = (space.z0, space.z1)
    if out is not None:
        result.figure, result.out = _write_outputs(out, figure, slab, space, probe, hist, res, cfg, model, meta,
                                                   parallel, overwrite, command, input_path, comm)
    return result


def _write_outputs(out, figure, slab, space, probe, hist, res, cfg, model, meta, parallel, overwrite,
                   command, input_path, comm):
    """Every rank writes its slab's rows (whole chunks); rank 0 the figure first (a failure leaves no
    store), the metadata, and the final rename. Returns (figure, store path)."""
    from .io.cxi import atomic_output
    from .io.zarr_store import begin_volume, finish_volume, write_volume_rows
    from .parallel import chunk_rows
    from .plots import recon_figure

    nz, n, _ = space.global_shape
    mid = [nz // 2]
    central = {"xy": space.gather_rows(slab, mid)[0], "xz": space.gather_plane(slab, 1, n // 2),
               "yz": space.gather_plane(slab, 2, n // 2)}
    token = comm.bcast(int(os.getpid()) if comm.rank == 0 else 0, root=0)
    err = None
    tmp = None
    try:
        if comm.rank == 0:
            with atomic_output(figure, overwrite) as t:
                recon_figure(central, hist, t, title=f"hpc-pt {cfg.method}: {os.path.basename(os.path.abspath(out))}")
            attrs = {"method": cfg.method, "model": model, "reconstruction": cfg.model_dump(),
                     "solver_state": {k: v for k, v in res.state.items() if np.isscalar(v)},
                     "energy_ev": meta.geometry.energy_ev, "angles_deg": _angles_deg(meta),
                     "parallel": parallel}
            tmp = begin_volume(out, space.global_shape, meta.geometry.pixel_m, attrs=attrs, overwrite=overwrite,
                               chunks_z=chunk_rows(nz, n, comm.size), command=command, config=cfg.model_dump(),
                               input_path=input_path, tables={"history": hist}, arrays={"probe": probe},
                               token=str(token))
    except Exception as e:  # noqa: BLE001 - agreed on below
        err = e
    if comm.size > 1 and comm.sum_scalar(1.0 if err is not None else 0.0) and err is None:
        err = RuntimeError("rank 0 could not start the output store")
    if err is not None:
        raise err
    tmp = os.path.abspath(os.fspath(out)) + f".tmp-{token}"
    _, after = space.halo(slab) if comm.size > 1 else (None, None)
    write_volume_rows(tmp, space.z0, slab, next_row=after if space.z1 < nz else None)
    comm.sum_scalar(0.0)  # every rank's rows are on disk before the store is finished
    path = os.path.abspath(os.fspath(out))
    if comm.rank == 0:
        path = finish_volume(tmp, out, overwrite)
    return figure, path
