"""Command line: ``hpc-pt {simulate,info,validate,reconstruct,ptycho2d,demo,evaluate,convert,schema}``. Parses arguments and delegates; no physics here.

Every user error (:class:`hpc_pt.errors.InputError`) becomes one line ``error: ...`` on stderr and exit
code 2; nothing is left half-written because the writers are atomic.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from . import __version__
from .cli_parser import ArgumentParser, add_model_flags, explain_defaults, show_value, subparsers
from .errors import BackendUnavailable, InputError


def build_parser() -> argparse.ArgumentParser:
    """The ``hpc-pt`` parser: one-line usage errors, and every option's help with its real default
    (:mod:`hpc_pt.cli_parser`; the simulate flags are :class:`~hpc_pt.simulate.SimulationConfig`'s fields)."""
    from .pipeline import DEFAULT_MODEL, ReconConfig, methods
    from .solvers.registry import all_specs
    from .simulate import SimulationConfig

    p = ArgumentParser(prog="hpc-pt", description="Joint ptycho-tomography reconstruction.")
    p.add_argument("--version", action="version", version=f"hpc-pt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate a ptycho-tomography dataset into a CXI file")
    s.add_argument("--config", help="YAML or TOML file with the same settings (flags override it; default: "
                                    "none)")
    add_model_flags(s, SimulationConfig)
    s.add_argument("--out", required=True, help="output CXI/HDF5 file")
    s.add_argument("--force", action="store_true", help="overwrite an existing output file")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_progress_flag(s)

    for name, hlp in (("info", "describe a CXI file or directory (metadata only, fast)"),
                      ("validate", "check every key, position and frame of a CXI input")):
        i = sub.add_parser(name, help=hlp)
        i.add_argument("path", help="CXI / HDF5 file, or a directory of them (one or more /entry_N each)")
        i.add_argument("--json", action="store_true", help="print one JSON object")
        _add_reader_flags(i)
        if name == "info":
            i.add_argument("--rotation-centre", action="store_true",
                           help="also estimate the rotation centre from the frames (reads every frame and runs "
                                "about 15 short reconstructions; what `reconstruct --rotation-centre auto` does)")

    r = sub.add_parser("reconstruct", help="reconstruct a volume from a CXI file", epilog=_method_options_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("data", help="CXI file or directory")
    r.add_argument("--config", help="YAML or TOML file with the same settings (flags override it; default: "
                                    "none)")
    flags = {a.dest: a for a in add_model_flags(r, ReconConfig, exclude=("options",))}  # the generic settings
    flags["method"].choices = methods()
    flags["method"].help += ": " + "; ".join(f"{name}: {spec.summary}" for name, spec in all_specs().items())
    flags["rotation_centre"].type = str  # "auto" or a column, checked by _parse_centre
    flags["prior_weight"].help += f" (default: {_method_defaults('prior_weight')})"
    flags["penalty"].help += f" (default: {_method_defaults('penalty')})"
    by_model = {}
    for method, model in DEFAULT_MODEL.items():
        by_model.setdefault(model or "the input's", []).append(method)
    flags["model"].help += (" (default: by method, unless the input records one: "
                            + "; ".join(f"{m} for {', '.join(ms)}" for m, ms in by_model.items()) + ")")
    r.add_argument("--backend", choices=["serial", "mpi", "dask"], default="serial",
                   help="serial (one process); mpi: run under `mpiexec -n P hpc-pt reconstruct ... "
                        "--backend mpi`; dask: one rank per Dask worker (--workers or --scheduler). Each rank "
                        "reads only its frames, rank 0 writes the output")
    r.add_argument("--workers", type=int, default=None,
                   help="--backend dask: start a local cluster of this many worker processes (with "
                        "--scheduler: use this many of its workers; default: all of them)")
    r.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="--backend dask: run on the workers of this Dask scheduler (default: none, a local "
                        "cluster of --workers processes)")
    r.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method-specific option, e.g. --option cg_max_iter=20 (repeatable; default: none, "
                        "the method's own defaults, docs/solvers.md)")
    _add_reader_flags(r)
    r.add_argument("--out", required=True, help="output Zarr store (a PNG is written next to it)")
    r.add_argument("--force", action="store_true", help="overwrite an existing output store")
    r.add_argument("--quiet", action="store_true", help="no per-iteration progress")
    _add_progress_flag(r)
    r.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                   help="save the whole solver state every K iterations (atomically, into OUT.ckpt; "
                        "default: 0, no checkpoints)")
    r.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default: OUT.ckpt)")
    r.add_argument("--resume", action="store_true",
                   help="continue from the latest intact checkpoint (same input, settings and ranks; "
                        "--iterations counts every iteration, the checkpoint's included, and may grow)")

    p2 = sub.add_parser("ptycho2d", help="2D ptychography of one angle (ePIE, DM or Poisson ML)")
    p2.add_argument("data", help="CXI file or directory")
    p2.add_argument("--angle", type=int, default=0, help="angle index (0-based, in file order)")
    p2.add_argument("--method", choices=["epie", "dm", "ml"], default="dm",
                    help="ePIE, difference map or Poisson maximum likelihood")
    p2.add_argument("--iterations", type=int, default=100, help="number of iterations")
    p2.add_argument("--probe-refine", action="store_true", help="refine the probe (default: off)")
    _add_reader_flags(p2)
    p2.add_argument("--out", help="write the object field and probe to this .npz file (default: none, "
                                  "print the R-factor only)")
    p2.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p2.add_argument("--quiet", action="store_true", help="no per-iteration progress")
    _add_progress_flag(p2)

    d = sub.add_parser("demo", help="simulate a small sparse-scan dataset and reconstruct it with APT")
    d.add_argument("--out-dir", default="hpc-pt-demo", help="folder for demo.h5, demo.zarr and demo.png")
    from .workflows import DEMO_RECONSTRUCTION

    d.add_argument("--iterations", type=int, default=None,
                   help=f"APT iterations (default: {DEMO_RECONSTRUCTION['iterations']})")
    d.add_argument("--force", action="store_true", help="overwrite an earlier demo's files")
    d.add_argument("--quiet", action="store_true", help="no per-iteration progress")
    _add_progress_flag(d)

    sc = sub.add_parser("schema", help="print the JSON Schema of a config file's settings (generated from the "
                                       "settings models and every method's options)")
    sc.add_argument("kind", choices=["reconstruct", "simulate"], help="which command's settings")

    e = sub.add_parser("evaluate", help="compare a reconstruction with the ground truth")
    e.add_argument("recon", help="reconstruction Zarr store")
    e.add_argument("--truth", required=True, help="simulated CXI file (its ground-truth group), a Zarr store, a "
                                                  ".npy volume, or a dataset of an HDF5 file: FILE.h5:/group/volume")
    e.add_argument("--json", action="store_true", help="print one JSON object")

    c = sub.add_parser("convert", help="write hpc-pt's CXI layout from NumPy arrays (described by a YAML/TOML "
                                       "file) or NXcxi_ptycho NeXus data (docs/your-data.md)")
    c.add_argument("source", help="description file (.toml/.yaml) naming .npy/.npz/.csv arrays, or a NeXus "
                                  "(NXcxi_ptycho) file or directory, one NXentry per angle")
    c.add_argument("--out", required=True, help="output CXI file")
    c.add_argument("--format", choices=["auto", "numpy", "nexus"], default="auto",
                   help="source layout (auto: .toml/.yaml is numpy, HDF5 or a directory is nexus)")
    c.add_argument("--config", help="with a NeXus source: description file whose keys fill in or override "
                                    "the file's values (angles, energy, positions_are, ...); default: none")
    c.add_argument("--probe", help="probe .npy (real space, centred, sampled like the converted frames); "
                                   "default: none, estimated from the data when read")
    c.add_argument("--mask", help="detector mask .npy laid out like the recorded frames (non-zero = valid); "
                                  "default: the description's or the file's, else none")
    c.add_argument("--positions-are", choices=["probe", "sample"], default=None,
                   help="positions of the probe on the sample, or of the sample stage (negated); default: "
                        "probe for numpy, sample for nexus")
    c.add_argument("--positions-unit", default=None, help="m, mm, um, nm or px (sample-plane pixels); default: "
                                                          "the description's, or the NeXus @units")
    c.add_argument("--frames-dc", choices=["centre", "corner"], default=None,
                   help="where the direct beam is in the stored frames (default: centre, as recorded)")
    c.add_argument("--transpose-frames", action="store_true", default=None,
                   help="frames (and probe, mask) are stored (x, y): swap their two axes")
    c.add_argument("--beam-centre", default=None, metavar="ROW,COL",
                   help="detector pixel of the direct beam: frames are cropped to the largest even window centred "
                        "on it; default: the NeXus beam_center, else the frame centre (no crop)")
    c.add_argument("--crop", type=int, default=None, metavar="N",
                   help="crop frames to N x N around the beam centre; default: no crop (or the largest window "
                        "with --beam-centre)")
    c.add_argument("--force", action="store_true", help="overwrite an existing output file")
    _explain(p, {"simulate": SimulationConfig, "reconstruct": ReconConfig})
    return p


def _explain(parser, models: dict) -> None:
    """Every subcommand's help shows each option's real default and choices (``models``: the settings model
    whose field defaults stand behind a subcommand's None-default flags); see :mod:`hpc_pt.cli_parser`."""
    for name, sub in subparsers(parser).items():
        explain_defaults(sub, models.get(name))


def _method_options_help(width: int = 100) -> str:
    """The epilog of ``reconstruct --help``: every method's ``--option`` names with their defaults and
    descriptions, generated from the methods' options models (:mod:`hpc_pt.solvers.registry`)."""
    import textwrap

    from .solvers.registry import all_specs

    out = ["method options (--option KEY=VALUE; the generic flags above set some of them):"]
    for name, spec in all_specs().items():
        takes = ", ".join(f"--{g.replace('_', '-')} -> {o}" for g, o in spec.generic.items()
                          if g not in ("iterations", "support_width"))
        out.append(f"  {name}" + (f"  ({takes})" if takes else ""))
        for key, fld in spec.options.model_fields.items():
            if key in spec.fixed:
                continue
            default = fld.default_factory() if fld.default_factory is not None else fld.default
            line = f"{key} = {show_value(default)}: {fld.description or ''}"
            out += textwrap.wrap(line, width, initial_indent="      ", subsequent_indent="          ")
    return "\n".join(out)


def _method_defaults(setting: str) -> str:
    """'apt 0.5, admm 0.02': the solver option each method maps a generic setting to, at its default
    (hpc_pt.pipeline passes prior_weight to APT's tv_rel and ADMM's prior_weight, penalty to APT's r2 and
    ADMM's rho_rel)."""
    from .solvers.admm import ADMMOptions
    from .solvers.apt import APTOptions

    where = {"prior_weight": (("apt", APTOptions, "tv_rel"), ("admm", ADMMOptions, "prior_weight")),
             "penalty": (("apt, apts", APTOptions, "r2"), ("admm", ADMMOptions, "rho_rel"))}[setting]
    shown = []
    for methods, cls, name in where:
        value = getattr(cls(), name)
        shown.append(f"{methods} {'chosen from the data' if value is None else show_value(value)}")
    return ", ".join(shown)


def _add_progress_flag(p):
    p.add_argument("--progress-every", default=None, metavar="K|Ts",
                   help="when the output is not a terminal (a log file): a progress line every K iterations "
                        "(e.g. 5) or every T seconds (e.g. 30s); default 10s, plus the first and last iteration")


def _add_reader_flags(p):
    p.add_argument("--flip-translations", action="store_true",
                   help="translations are sample-stage positions (negate x and y)")
    p.add_argument("--translation-layout", choices=["auto", "frames,3", "3,frames"], default="auto",
                   metavar="{auto | frames,3 | 3,frames}",
                   help="how translation arrays are stored: frames,3 or 3,frames (default: auto, decide by "
                        "shape)")
    p.add_argument("--field-shape", default=None, metavar="H,W",
                   help="object field the translations refer to, pixels (default: the file's, else the "
                        "smallest field holding every probe window)")
    p.add_argument("--fftshift", action="store_true",
                   help="the frames are stored with DC at index 0 (not fftshifted): use them as stored")


def _reader_kwargs(args) -> dict:
    kw = {"flip_translations": args.flip_translations, "translation_layout": args.translation_layout}
    if getattr(args, "fftshift", False):
        kw["fftshift"] = True
    if getattr(args, "field_shape", None) is not None:
        kw["field_shape"] = _parse_field_shape(args.field_shape)
    return kw


def _parse_field_shape(text: str) -> tuple[int, int]:
    parts = str(text).replace("x", ",").split(",")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        h = w = 0
    if h < 1 or w < 1:
        raise InputError(f"--field-shape {text!r} must be two positive integers H,W, e.g. --field-shape 61,61")
    return h, w


def _parse_centre(text):
    """``--rotation-centre``: 'auto' or a field column (float)."""
    if text is None or str(text).strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise InputError(f"--rotation-centre {text!r} must be a field column in pixels (e.g. 33.5) or auto")
    return value


def _simulate(args) -> int:
    from .io import check_output_path, write_cxi
    from .simulate import SimulationConfig, simulate_dataset

    overrides = {name: getattr(args, name) for name in SimulationConfig.model_fields
                 if getattr(args, name, None) is not None}
    scaled = []
    cfg = SimulationConfig.from_file(args.config, overrides, scaled=scaled) if args.config else \
        SimulationConfig.build(overrides, names="flags", scaled=scaled)
    from .io.safety import refuse_overlap

    refuse_overlap({"--out": args.out}, {"--config": args.config, "--probe-file": cfg.probe_file})
    check_output_path(args.out, overwrite=args.force)
    note = _scaled_note(cfg, scaled)
    if note:
        print(note, flush=True)
    from .progress import start_phase, step

    t0 = time.perf_counter()
    with _progress(args) as rep:
        start_phase(rep, "simulating", cfg.angles, unit="angles", tag="angles")
        ds = simulate_dataset(cfg, progress=None if rep is None else lambda done, _total: rep({"iteration": done}))
        with step(rep, f"writing {args.out}"):
            write_cxi(ds, args.out, overwrite=args.force, command=" ".join(sys.argv))
    dt = time.perf_counter() - t0
    snr = ds.attrs.get("snr_intensity_db")
    frames = int(ds.n_frames.sum())
    print(f"wrote {args.out}: {len(ds.angles)} angles, {frames} frames of {ds.frame_shape[0]}x{ds.frame_shape[1]}, "
          f"overlap {ds.attrs.get('overlap', float('nan')):.2f}"
          + (f", SNR_intensity {snr:.1f} dB" if snr is not None else "") + f" in {dt:.1f} s")
    return 0


def _scaled_note(cfg, scaled) -> str | None:
    """One line naming the size-dependent scan settings chosen from ``--size`` (None when there are none)."""
    if cfg.probe_kind == "file":  # the file fixes the probe; only the scan follows the size
        scaled = [k for k in scaled if k not in ("probe_size", "probe_fwhm")]
    if not scaled:
        return None
    chosen = ", ".join(f"{k} {show_value(getattr(cfg, k))}" for k in scaled)
    return (f"note: size {cfg.size}: {chosen} (the default sparse scan for this size; seed 001's geometry is "
            "examples/simulate_seed001.toml); set " + ", ".join("--" + k.replace("_", "-") for k in scaled)
            + " to choose")


def _progress(args):
    """The command's progress reporter (:class:`hpc_pt.progress.ProgressReporter`, on stdout: a rich bar on a
    terminal, plain lines in a log) as a context manager; ``None`` inside it with ``--quiet``."""
    import contextlib

    if getattr(args, "quiet", False):
        return contextlib.nullcontext(None)
    from .progress import ProgressReporter, parse_every

    every, interval = parse_every(getattr(args, "progress_every", None))
    return ProgressReporter(every=every, interval_s=interval)


def _json(d) -> str:
    """One strict-JSON object: NaN and infinities become null."""
    import math

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) or type(v).__module__ == "numpy":
            try:
                f = float(v)
            except (TypeError, ValueError):
                return v
            return f if math.isfinite(f) else None
        return v

    return json.dumps(clean(d))


def _info(args) -> int:
    from .io import describe, format_description

    d = describe(args.path, **_reader_kwargs(args))
    if args.rotation_centre:
        from .workflows import estimate_centre

        est = estimate_centre(args.path, _reader_kwargs(args))
        d["rotation_centre_estimate"] = est["centre"]
        d["rotation_centre_estimate_offset_px"] = est["offset_px"]
    _warn_angles(d)
    print(_json(d) if args.json else format_description(d))
    return 0


def _warn_angles(d: dict) -> None:
    """One ``warning:`` line on stderr when the input's angles look like radians."""
    from .conventions import radian_angles_warning

    line = radian_angles_warning(d.get("angles_deg", []))
    if line:
        print(line, file=sys.stderr, flush=True)


def _validate(args) -> int:
    from .io import format_description
    from .workflows import validate_input

    d = validate_input(args.path, **_reader_kwargs(args))
    _warn_angles(d)
    print(_json(d) if args.json else format_description(d) + "\nvalid: every frame checked")
    return 0


def _evaluate(args) -> int:
    from .workflows import evaluate_reconstruction, format_metrics

    m = evaluate_reconstruction(args.recon, args.truth)
    print(_json(m) if args.json else format_metrics(m))
    return 0


def _parse_option(text: str):
    if "=" not in text:
        raise InputError(f"--option {text!r} must look like KEY=VALUE, e.g. --option cg_max_iter=20")
    key, value = text.split("=", 1)
    try:
        import yaml

        parsed = yaml.safe_load(value)
    except Exception:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def _reconstruct(args) -> int:
    from .pipeline import ReconConfig, reconstruct

    flags = {k: getattr(args, k) for k in ReconConfig.model_fields
             if k not in ("options", "rotation_centre") and getattr(args, k) is not None}
    if args.rotation_centre is not None:
        flags["rotation_centre"] = _parse_centre(args.rotation_centre)
    if args.option:
        flags["options"] = dict(_parse_option(o) for o in args.option)
    cfg = ReconConfig.from_file(args.config, flags) if args.config else ReconConfig.build(flags)
    if args.checkpoint_every < 0:
        raise InputError(f"--checkpoint-every {args.checkpoint_every} must be >= 0 (0: no checkpoints)")
    ckpt = {"checkpoint_every": args.checkpoint_every, "resume": args.resume, "checkpoint_dir": args.checkpoint_dir,
            "inputs": {"--config": None if args.config is None else os.path.abspath(args.config)}}
    t0 = time.perf_counter()
    if args.backend == "dask":
        return _reconstruct_dask(args, cfg, ckpt, t0)
    with _progress(args) as progress:  # closed (the bar ends) before the summary line
        if args.backend == "mpi":
            # every rank scans the metadata and reads only its own frames (pipeline.build_rank_shard)
            from .parallel import MPIComm

            comm = MPIComm()
            res = reconstruct(args.data, out=args.out, config=cfg, overwrite=args.force, progress=progress,
                              command=" ".join(sys.argv), comm=comm, reader=_reader_kwargs(args), **ckpt)
        else:
            # the path, as on MPI ranks: the output, settings, memory and resume checks run on the metadata
            # before any frame is read (a one-rank shard plan reads them all)
            comm = None
            res = reconstruct(args.data, out=args.out, config=cfg, overwrite=args.force, progress=progress,
                              command=" ".join(sys.argv), reader=_reader_kwargs(args), **ckpt)
    if comm is not None and comm.rank != 0:
        return 0
    ranks = res.parallel.get("ranks", 1)
    where = f" on {ranks} MPI ranks" if args.backend == "mpi" else ""
    print(f"wrote {res.out} and {res.figure}: {cfg.method}, {cfg.iterations} iterations{_resumed(res)}{where} "
          f"in {time.perf_counter() - t0:.1f} s, {_final_r_factor(res)}")
    return 0


def _resumed(res) -> str:
    """`` (resumed after iteration K)`` for a run resumed from a checkpoint (``--iterations`` counts every
    iteration, the checkpoint's K included), else empty."""
    k = getattr(res, "resumed_from", None)
    return "" if k is None else f" (resumed after iteration {k})"


def _final_r_factor(res) -> str:
    """``final R-factor X`` of a reconstruction: the history's last finite R-factor; for the 2-step method
    the final volume's (through the forward model, ``solver_state.r_factor`` in the store) and its 2D
    stage's (the last stage-1 row of the history)."""
    if res.config.method == "two-step" and "r_factor" in res.state:
        return (f"final R-factor {res.state['r_factor']:.4g} (volume; 2D ptychography stage "
                f"{res.state.get('ptycho_r_factor', float('nan')):.4g})")
    rf = [v for v in res.history.get("r_factor", []) if v == v]
    return f"final R-factor {rf[-1] if rf else float('nan'):.4g}"


def _reconstruct_dask(args, cfg, ckpt, t0) -> int:
    """``--backend dask``: one rank task per worker runs the same ``reconstruct`` an MPI rank runs
    (:func:`hpc_pt.dask_run.run_dask`); progress rows come back to this process."""
    from .dask_run import run_dask
    from .parallel.dask import RankAborted, WorkerLost

    if args.workers is None and args.scheduler is None:
        raise InputError("--backend dask needs --workers K (a local cluster of K processes) or "
                         "--scheduler tcp://HOST:PORT (a running cluster)")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers} must be a positive number of Dask worker processes, "
                         "e.g. --workers 4")
    try:
        with _progress(args) as progress:  # rank 0's rows and status lines arrive here as Dask events
            res = run_dask(args.data, out=args.out, workers=args.workers, scheduler=args.scheduler, config=cfg,
                           overwrite=args.force, progress=progress, command=" ".join(sys.argv),
                           reader=_reader_kwargs(args), **ckpt)
    except (InputError, BackendUnavailable) as exc:
        if getattr(exc, "rank", None) is None:
            raise
        raise type(exc)(f"rank {exc.rank}: {exc}") from None
    except WorkerLost as exc:  # a worker process died: one line naming the rank, the worker and how it ended
        again = "; rerun with --resume to continue from the last checkpoint" if ckpt.get("checkpoint_every") \
            else "; rerun the command (--checkpoint-every K lets a rerun continue with --resume)"
        print(f"error: {exc}{again}", file=sys.stderr, flush=True)
        return DASK_WORKER_LOST_EXIT
    except Exception as exc:  # noqa: BLE001 - a rank task failed unexpectedly: one line, not its traceback
        if getattr(exc, "rank", None) is None:
            raise
        text = str(exc) if isinstance(exc, RankAborted) else f"rank {exc.rank}: {type(exc).__name__}: {exc}"
        print(f"error: {' '.join(text.split())}", file=sys.stderr, flush=True)
        return 1
    print(f"wrote {res.out} and {res.figure}: {cfg.method}, {cfg.iterations} iterations{_resumed(res)} on "
          f"{res.parallel.get('ranks', 1)} Dask workers in {time.perf_counter() - t0:.1f} s, "
          f"{_final_r_factor(res)}")
    return 0


def _ptycho2d(args) -> int:
    import numpy as np

    from .io import check_output_path
    from .pipeline import read_input
    from .progress import start_phase
    from .solvers.ptycho2d import ptycho2d

    if args.out:
        from .io.safety import refuse_overlap

        refuse_overlap({"--out": args.out}, {"the input": args.data})
        check_output_path(args.out, overwrite=args.force)
    with _progress(args) as progress:
        ds = read_input(args.data, _reader_kwargs(args), progress)
        if not 0 <= args.angle < len(ds.angles):
            raise InputError(f"--angle {args.angle} is out of range; the file has {len(ds.angles)} angles (0..."
                             f"{len(ds.angles) - 1})")
        start_phase(progress, f"{args.method}, angle {args.angle}", args.iterations)
        res = ptycho2d(ds, args.angle, method=args.method, iterations=args.iterations,
                       probe_refine=args.probe_refine,
                       callback=None if progress is None else lambda row, _obj: progress(row))
    rf = res.history.column("r_factor")
    print(f"angle {args.angle} ({ds.angles[args.angle].angle_deg:g} deg): {args.method}, {args.iterations} "
          f"iterations, final R-factor {rf[-1] if rf.size else float('nan'):.4g}")
    if args.out:
        from .io.cxi import atomic_output

        with atomic_output(args.out, args.force) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, object=res.obj, probe=res.probe, **{f"history_{k}": v
                                                                   for k, v in res.history.as_columns().items()})
        print(f"wrote {args.out}")
    return 0


def _demo(args) -> int:
    from .workflows import run_demo

    with _progress(args) as progress:
        summary = run_demo(args.out_dir, iterations=args.iterations, overwrite=args.force, progress=progress)
    print(f"demo: SNR {summary['snr_db']:.2f} dB, R-factor {summary['r_factor']:.4g}, "
          f"{summary['seconds']:.0f} s; wrote {summary['data']}, {summary['recon']}, {summary['figure']}")
    return 0


def _convert(args) -> int:
    from .io.convert import convert

    import os

    here = {k: None if v is None else os.path.abspath(v) for k, v in (("probe", args.probe), ("mask", args.mask))}
    overrides = {**here, "positions_are": args.positions_are,
                 "positions_unit": args.positions_unit, "frames_dc": args.frames_dc,
                 "transpose_frames": args.transpose_frames, "crop": args.crop}
    if args.beam_centre is not None:
        try:
            overrides["beam_centre"] = [float(v) for v in args.beam_centre.split(",")]
        except ValueError:
            raise InputError(f"--beam-centre {args.beam_centre!r} must be ROW,COL (detector pixels), "
                             "e.g. --beam-centre 130,127") from None
    path = convert(args.source, args.out, fmt=args.format, overwrite=args.force, config=args.config,
                   overrides=overrides, command=" ".join(sys.argv))
    print(f"wrote {path}; check it with `hpc-pt validate {args.out}`")
    return 0


def _schema(args) -> int:
    from .pipeline import config_schema

    print(json.dumps(config_schema(args.kind), indent=1))
    return 0


COMMANDS = {"schema": _schema, "simulate": _simulate, "info": _info, "validate": _validate, "evaluate": _evaluate,
            "reconstruct": _reconstruct, "ptycho2d": _ptycho2d, "demo": _demo, "convert": _convert}


#: subcommands that run in one process and write outputs: launched as several processes (``mpiexec -n P``,
#: ``srun``) each would do the whole work into the same files; only ``reconstruct --backend mpi`` uses ranks
SINGLE_PROCESS = ("simulate", "reconstruct", "ptycho2d", "demo", "convert")
#: exit code of ``reconstruct --backend dask`` when a rank's worker process died (killed, crashed, out of
#: memory) or left the cluster during the job: the job may succeed when rerun (user errors exit 2, an
#: unexpected exception on a rank 1)
DASK_WORKER_LOST_EXIT = 3
#: how long a failing MPI rank waits for the others to fail too (then one line, clean exit) before it
#: reports alone and aborts the job
MPI_ERROR_WAIT_S = 2.0
#: how long a rank waits for the others after an error known to be raised on every rank (a collective agreed
#: on it), before it gives up and aborts the job
MPI_TOGETHER_WAIT_S = 120.0


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a usage error, already printed as one line; --help and --version exit 0
        if exc.code in (0, None):
            raise
        return exc.code if isinstance(exc.code, int) else 2
    if (getattr(args, "workers", None) is not None or getattr(args, "scheduler", None) is not None) \
            and args.backend != "dask":
        print("error: --workers and --scheduler go with --backend dask; add --backend dask or drop them",
              file=sys.stderr)
        return 2
    try:
        _thread_policy(args)
    except InputError as exc:  # HPC_PT_THREADS that is not a positive integer
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "backend", "serial") == "mpi":
        return _main_mpi(args)
    refused = _refuse_multi_process(args)
    if refused is not None:
        return refused
    try:
        with _float_errors_quiet(), _one_line_warnings():
            return COMMANDS[args.command](args)
    except (InputError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _thread_policy(args) -> dict:
    """The execution policy's process environment (:func:`hpc_pt.execution.apply_thread_policy`), applied
    before any library starts its threads: threads per rank from the CPUs this process may use divided among
    the launcher's ranks on the node (or among the ``--workers`` of a local Dask cluster, which inherit it),
    OpenMP threads waiting passively; whatever the user set is kept."""
    from .execution import apply_thread_policy, threads_per_rank

    threads = threads_per_rank()
    if getattr(args, "backend", None) == "dask" and getattr(args, "scheduler", None) is None:
        threads = max(1, threads // max(1, int(getattr(args, "workers", None) or 1)))
    return apply_thread_policy(threads)


def _float_errors_quiet():
    """NumPy's overflow / invalid-value RuntimeWarnings off while a command runs: a run that turns NaN or
    infinite stops with one ``error:`` line naming the iteration and the quantity
    (:func:`hpc_pt.pipeline.check_finite_row`) instead of printing warnings each iteration."""
    import numpy as np

    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


@contextlib.contextmanager
def _one_line_warnings():
    """Python warnings (e.g. the 2-step's "did not converge") as one ``warning: <message>`` line on stderr,
    without the source path and line a plain ``warnings.warn`` prints; each message once."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _refuse_multi_process(args) -> int | None:
    """Exit code 2 when a one-process command was started as several processes (the launcher's environment,
    :func:`hpc_pt.parallel.launch.launch_world`): rank 0 prints one line naming the fix, the others nothing."""
    from .parallel.launch import launch_world

    world = launch_world() if args.command in SINGLE_PROCESS else None
    if world is None or world[1] < 2:
        return None
    rank, size = world
    if rank == 0:
        if args.command == "reconstruct":
            what = (f"--backend {args.backend} would run the whole reconstruction in each of them, into the same "
                    "output; add --backend mpi (or start one process)")
        else:
            what = (f"hpc-pt {args.command} runs in one process and each would write the same output; start it "
                    "as one process (no launcher, or mpiexec -n 1 / srun -n 1)")
        print(f"error: launched as {size} processes (mpiexec / srun), but {what}", file=sys.stderr)
    return 2


def _main_mpi(args) -> int:
    """Run under MPI. An error prints one line for the whole job: when every rank fails (errors before the
    solve are agreed on by every rank) rank 0 prints it and every rank exits cleanly; a rank failing alone
    prints its own line and aborts the job (``MPI_Abort``, with its banner silenced), so ``mpiexec`` exits
    non-zero within seconds instead of other ranks waiting forever."""
    from .parallel.launch import ErrorAgreement, launch_world

    try:
        from .parallel.mpi import load_mpi

        MPI = load_mpi()
    except BackendUnavailable as exc:
        launched = launch_world()
        if launched is None or launched[0] == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    agreement = ErrorAgreement(world) if size > 1 else None
    try:
        with _float_errors_quiet(), _one_line_warnings():
            return COMMANDS[args.command](args)
    except (InputError, BackendUnavailable) as exc:
        # secondary: "another rank failed" (the pipeline's agreement); that rank's message is the reason
        failure = (2, f"error: {exc}", bool(getattr(exc, "secondary", False)))
        together = bool(getattr(exc, "all_ranks", False))  # raised on every rank after a collective
    except KeyboardInterrupt:
        failure, together = (130, "interrupted", False), False
    except Exception:  # noqa: BLE001 - an unexpected failure: show it, then stop every rank
        import traceback

        failure, together = (1, traceback.format_exc().rstrip(), False), False
    code, text, secondary = failure
    if agreement is None:
        print(text, file=sys.stderr, flush=True)
        return code
    # an error every rank raises together (after a collective) is waited for however loaded the machine is;
    # a rank failing alone waits MPI_ERROR_WAIT_S for the others, then aborts the job
    if agreement.all_failed(MPI_TOGETHER_WAIT_S if together else MPI_ERROR_WAIT_S):
        reports = agreement.gather(failure)
        code, line = _one_report(reports)
        if rank == 0:
            print(line, file=sys.stderr, flush=True)
        return code
    if not secondary:
        print(_tagged(text, [rank], size), file=sys.stderr, flush=True)
    time.sleep(0.5)  # let mpiexec forward the message before the job is torn down
    _silence_stderr()  # MPI_Abort's own "Abort(2) on node 1 ..." banner would follow our line
    world.Abort(code)
    return code


def _tagged(text: str, ranks: list, size: int) -> str:
    """``error: rank 1 of 4: ...`` (``ranks 0, 2 of 4``; no tag when every rank said the same)."""
    if len(ranks) == size:
        return text
    who = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
    if text.startswith("error: "):
        return f"error: {who} of {size}: {text[len('error: '):]}"
    return f"{who} of {size}: {text}"


def _one_report(reports: list) -> tuple[int, str]:
    """(exit code, the one line to print) from every rank's (code, text, secondary) after all of them failed:
    the first rank's own error (not "another rank failed"), tagged with the ranks that share it."""
    own = [(r, c, t) for r, (c, t, sec) in enumerate(reports) if not sec] or \
        [(r, c, t) for r, (c, t, _) in enumerate(reports)]
    _, code, text = own[0]
    ranks = [r for r, _, t in own if t == text]
    line = _tagged(text, ranks, len(reports))
    others = len(own) - len(ranks)
    if others:
        line += f" [{others} other rank(s) failed with other errors]"
    return code, line


def _silence_stderr() -> None:
    """Point file descriptor 2 at the null device (after our own message is flushed)."""
    import os

    try:
        sys.stderr.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
