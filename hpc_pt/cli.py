"""Command line: ``hpc-pt {simulate,info,validate,reconstruct,ptycho2d,demo,evaluate}``. Parses arguments and delegates; no physics here.

Every user error (:class:`hpc_pt.errors.InputError`) becomes one line ``error: ...`` on stderr and exit
code 2; nothing is left half-written because the writers are atomic.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import __version__
from .errors import BackendUnavailable, InputError

SIM_FLAGS = {
    # flag: (config field, type, help)
    "--phantom": ("phantom", str, "shepp-logan, wires or ellipsoids"),
    "--size": ("size", int, "volume edge N (volume is N^3)"),
    "--angles": ("angles", int, "number of rotation angles"),
    "--angle-range": ("angle_range", int, "180 ([0, pi)) or 360 ([0, 2 pi))"),
    "--angle-kind": ("angle_kind", str, "uniform or golden"),
    "--probe-size": ("probe_size", int, "probe window / detector size M (M x M)"),
    "--probe-fwhm": ("probe_fwhm", float, "Gaussian FWHM or disc diameter in pixels"),
    "--probe-kind": ("probe_kind", str, "gaussian, airy, disc or file"),
    "--probe-file": ("probe_file", str, "probe to load (.npy, .h5, .cxi) with --probe-kind file"),
    "--step": ("step", float, "scan step in pixels"),
    "--scan": ("scan", str, "raster or fermat"),
    "--per-angle-offset": ("per_angle_offset", float, "raster start shift per angle, pixels"),
    "--field-pad": ("field_pad", int, "pixels of free space around the volume's projection"),
    "--model": ("model", str, "linear (Rytov, seed 001) or exp (projection approximation)"),
    "--noise": ("noise", str, "none or poisson"),
    "--peak": ("peak", float, "Poisson peak factor eta (seed 001)"),
    "--energy-kev": ("energy_kev", float, "photon energy in keV"),
    "--voxel-nm": ("voxel_nm", float, "voxel size in nm"),
    "--detector-pixel-um": ("detector_pixel_um", float, "detector pixel size in micrometres"),
    "--ellipsoids": ("ellipsoids", int, "number of random ellipsoids for --phantom ellipsoids"),
    "--phase-object-rad": ("phase_object_rad", float,
                           "seed 001's pure-phase sample u = exp(i PHI s) (linear model; default: u = s)"),
    "--seed": ("seed", int, "random seed"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpc-pt", description="Joint ptycho-tomography reconstruction.")
    p.add_argument("--version", action="version", version=f"hpc-pt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate a ptycho-tomography dataset into a CXI file")
    s.add_argument("--config", help="YAML or TOML file with the same settings (flags override it)")
    for flag, (_, typ, hlp) in SIM_FLAGS.items():
        s.add_argument(flag, type=typ, default=None, help=hlp)
    s.add_argument("--out", required=True, help="output CXI/HDF5 file")
    s.add_argument("--force", action="store_true", help="overwrite an existing output file")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    for name, hlp in (("info", "describe a CXI file or directory (metadata only, fast)"),
                      ("validate", "check every key, position and frame of a CXI input")):
        i = sub.add_parser(name, help=hlp)
        i.add_argument("path")
        i.add_argument("--json", action="store_true", help="print one JSON object")
        _add_reader_flags(i)

    r = sub.add_parser("reconstruct", help="reconstruct a volume from a CXI file")
    r.add_argument("data", help="CXI file or directory")
    r.add_argument("--config", help="YAML or TOML file with the same settings (flags override it)")
    r.add_argument("--method", choices=["apt", "apts", "admm", "gd", "two-step"], default=None)
    r.add_argument("--iterations", type=int, default=None)
    r.add_argument("--noise", choices=["gaussian", "poisson"], default=None,
                   help="data metric: gaussian amplitude (pAGM) or poisson intensity (pIPM)")
    r.add_argument("--prior", default=None, help="tv, none, or a registered denoiser (admm)")
    r.add_argument("--prior-weight", type=float, default=None, help="relative prior strength")
    r.add_argument("--penalty", type=float, default=None, help="ADMM data penalty (dimensionless)")
    r.add_argument("--probe-refine", action="store_true", default=None, help="refine the probe")
    r.add_argument("--init", default=None, help="constant, zeros, or a .npy / Zarr volume")
    r.add_argument("--model", choices=["linear", "exp"], default=None, help="forward model (default: by method)")
    r.add_argument("--device", choices=["cpu", "gpu"], default=None)
    r.add_argument("--backend", choices=["serial", "mpi", "dask"], default="serial",
                   help="serial (one process); mpi: run under `mpiexec -n P hpc-pt reconstruct ... "
                        "--backend mpi`; dask: one rank per Dask worker (--workers or --scheduler). Each rank "
                        "reads only its frames, rank 0 writes the output")
    r.add_argument("--workers", type=int, default=None,
                   help="--backend dask: start a local cluster of this many worker processes (with "
                        "--scheduler: use this many of its workers)")
    r.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="--backend dask: run on the workers of this Dask scheduler")
    r.add_argument("--volume-size", type=int, default=None,
                   help="edge N of the reconstructed volume (default: simulated sample size or field width)")
    r.add_argument("--frame-batch", type=int, default=None, metavar="N",
                   help="frames per far-field batch: caps the solvers' far-field temporaries at N frames "
                        "(default: 16 MiB of complex far field); lower it when the frames do not fit in memory")
    r.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method-specific option, e.g. --option cg_max_iter=20 (repeatable)")
    _add_reader_flags(r)
    r.add_argument("--out", required=True, help="output Zarr store (a PNG is written next to it)")
    r.add_argument("--force", action="store_true", help="overwrite an existing output store")
    r.add_argument("--quiet", action="store_true", help="no per-iteration progress")
    r.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                   help="save the whole solver state every K iterations (atomically, into OUT.ckpt)")
    r.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default: OUT.ckpt)")
    r.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint (same settings and ranks; --iterations may grow)")

    p2 = sub.add_parser("ptycho2d", help="2D ptychography of one angle (ePIE, DM or Poisson ML)")
    p2.add_argument("data", help="CXI file or directory")
    p2.add_argument("--angle", type=int, default=0, help="angle index (0-based, in file order)")
    p2.add_argument("--method", choices=["epie", "dm", "ml"], default="dm")
    p2.add_argument("--iterations", type=int, default=100)
    p2.add_argument("--probe-refine", action="store_true")
    _add_reader_flags(p2)
    p2.add_argument("--out", help="write the object field and probe to this .npz file")
    p2.add_argument("--force", action="store_true")

    d = sub.add_parser("demo", help="simulate a small sparse-scan dataset and reconstruct it with APT")
    d.add_argument("--out-dir", default="hpc-pt-demo", help="folder for demo.h5, demo.zarr and demo.png")
    d.add_argument("--iterations", type=int, default=None)
    d.add_argument("--force", action="store_true", help="overwrite an earlier demo's files")
    d.add_argument("--quiet", action="store_true", help="no per-iteration progress")

    e = sub.add_parser("evaluate", help="compare a reconstruction with the ground truth")
    e.add_argument("recon", help="reconstruction Zarr store")
    e.add_argument("--truth", required=True, help="simulated CXI file (its ground-truth group) or a Zarr store")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _add_reader_flags(p):
    p.add_argument("--flip-translations", action="store_true",
                   help="translations are sample-stage positions (negate x and y)")
    p.add_argument("--translation-layout", choices=["auto", "frames,3", "3,frames"], default="auto",
                   help="how translation arrays are stored (default: decide by shape)")


def _reader_kwargs(args) -> dict:
    return {"flip_translations": args.flip_translations, "translation_layout": args.translation_layout}


def _simulate(args) -> int:
    from .io import check_output_path, write_cxi
    from .simulate import SimulationConfig, simulate_dataset

    overrides = {field: getattr(args, flag[2:].replace("-", "_"))
                 for flag, (field, _, _) in SIM_FLAGS.items()
                 if getattr(args, flag[2:].replace("-", "_")) is not None}
    cfg = SimulationConfig.from_file(args.config, overrides) if args.config else SimulationConfig.build(overrides)
    check_output_path(args.out, overwrite=args.force)
    t0 = time.perf_counter()
    ds = _with_progress(lambda cb: simulate_dataset(cfg, progress=cb), "simulating", args.quiet)
    write_cxi(ds, args.out, overwrite=args.force, command=" ".join(sys.argv))
    dt = time.perf_counter() - t0
    snr = ds.attrs.get("snr_intensity_db")
    frames = int(ds.n_frames.sum())
    print(f"wrote {args.out}: {len(ds.angles)} angles, {frames} frames of {ds.frame_shape[0]}x{ds.frame_shape[1]}, "
          f"overlap {ds.attrs.get('overlap', float('nan')):.2f}"
          + (f", SNR_intensity {snr:.1f} dB" if snr is not None else "") + f" in {dt:.1f} s")
    return 0


def _with_progress(run, label, quiet):
    if quiet or not sys.stderr.isatty():
        return run(None)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=None)
        return run(lambda done, total: bar.update(task, completed=done, total=total))


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
    print(_json(d) if args.json else format_description(d))
    return 0


def _validate(args) -> int:
    from .io import format_description
    from .workflows import validate_input

    d = validate_input(args.path, **_reader_kwargs(args))
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

    flags = {k: getattr(args, k) for k in ("method", "iterations", "noise", "prior", "prior_weight", "penalty",
                                           "probe_refine", "init", "model", "device", "volume_size",
                                           "frame_batch")
             if getattr(args, k) is not None}
    if args.option:
        flags["options"] = dict(_parse_option(o) for o in args.option)
    cfg = ReconConfig.from_file(args.config, flags) if args.config else ReconConfig.build(flags)
    progress = None if args.quiet else _print_row
    if args.checkpoint_every < 0:
        raise InputError(f"--checkpoint-every {args.checkpoint_every} must be >= 0 (0: no checkpoints)")
    ckpt = {"checkpoint_every": args.checkpoint_every, "resume": args.resume, "checkpoint_dir": args.checkpoint_dir}
    t0 = time.perf_counter()
    if args.backend == "dask":
        return _reconstruct_dask(args, cfg, progress, ckpt, t0)
    if args.backend == "mpi":
        # every rank scans the metadata and reads only its own frames (pipeline.build_rank_shard)
        from .parallel import MPIComm

        comm = MPIComm()
        res = reconstruct(args.data, out=args.out, config=cfg, overwrite=args.force, progress=progress,
                          command=" ".join(sys.argv), comm=comm, reader=_reader_kwargs(args), **ckpt)
        if comm.rank != 0:
            return 0
    else:
        from .io import read_cxi

        data = read_cxi(args.data, **_reader_kwargs(args))
        res = reconstruct(data, out=args.out, config=cfg, overwrite=args.force, progress=progress,
                          command=" ".join(sys.argv), input_path=args.data, **ckpt)
    rf = [v for v in res.history.get("r_factor", []) if v == v]  # two-step's last rows are tomography rows
    ranks = res.parallel.get("ranks", 1)
    where = f" on {ranks} MPI ranks" if args.backend == "mpi" else ""
    print(f"wrote {res.out} and {res.figure}: {cfg.method}, {cfg.iterations} iterations{where} "
          f"in {time.perf_counter() - t0:.1f} s, final R-factor {rf[-1] if rf else float('nan'):.4g}")
    return 0


def _reconstruct_dask(args, cfg, progress, ckpt, t0) -> int:
    """``--backend dask``: one rank task per worker runs the same ``reconstruct`` an MPI rank runs
    (:func:`hpc_pt.parallel.dask.run_dask`); progress rows come back to this process."""
    from .parallel.dask import run_dask

    if args.workers is None and args.scheduler is None:
        raise InputError("--backend dask needs --workers K (a local cluster of K processes) or "
                         "--scheduler tcp://HOST:PORT (a running cluster)")
    try:
        res = run_dask(args.data, out=args.out, workers=args.workers, scheduler=args.scheduler, config=cfg,
                       overwrite=args.force, progress=progress, command=" ".join(sys.argv),
                       reader=_reader_kwargs(args), **ckpt)
    except (InputError, BackendUnavailable) as exc:
        if getattr(exc, "rank", None) is None:
            raise
        raise type(exc)(f"rank {exc.rank}: {exc}") from None
    rf = [v for v in res.history.get("r_factor", []) if v == v]
    print(f"wrote {res.out} and {res.figure}: {cfg.method}, {cfg.iterations} iterations on "
          f"{res.parallel.get('ranks', 1)} Dask workers in {time.perf_counter() - t0:.1f} s, "
          f"final R-factor {rf[-1] if rf else float('nan'):.4g}")
    return 0


def _print_row(row: dict) -> None:
    keys = ("objective", "r_factor", "primal_residual", "rel_change")
    vals = "  ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)
    print(f"iter {int(row['iteration']):4d}  {vals}  ({row.get('iter_time_s', 0):.2f} s)", flush=True)


def _ptycho2d(args) -> int:
    import numpy as np

    from .io import check_output_path, read_cxi
    from .solvers.ptycho2d import ptycho2d

    if args.out:
        check_output_path(args.out, overwrite=args.force)
    ds = read_cxi(args.data, **_reader_kwargs(args))
    if not 0 <= args.angle < len(ds.angles):
        raise InputError(f"--angle {args.angle} is out of range; the file has {len(ds.angles)} angles (0..."
                         f"{len(ds.angles) - 1})")
    res = ptycho2d(ds, args.angle, method=args.method, iterations=args.iterations, probe_refine=args.probe_refine)
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

    summary = run_demo(args.out_dir, iterations=args.iterations, overwrite=args.force,
                       progress=None if args.quiet else _print_row)
    print(f"demo: SNR {summary['snr_db']:.2f} dB, R-factor {summary['r_factor']:.4g}, "
          f"{summary['seconds']:.0f} s; wrote {summary['data']}, {summary['recon']}, {summary['figure']}")
    return 0


COMMANDS = {"simulate": _simulate, "info": _info, "validate": _validate, "evaluate": _evaluate,
            "reconstruct": _reconstruct, "ptycho2d": _ptycho2d, "demo": _demo}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if (getattr(args, "workers", None) is not None or getattr(args, "scheduler", None) is not None) \
            and args.backend != "dask":
        print("error: --workers and --scheduler go with --backend dask", file=sys.stderr)
        return 2
    if getattr(args, "backend", "serial") == "mpi":
        return _main_mpi(args)
    try:
        return COMMANDS[args.command](args)
    except (InputError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _main_mpi(args) -> int:
    """Run under MPI: an exception on any rank prints its one-line error there and aborts the whole job
    (``MPI_Abort``), so ``mpiexec`` exits non-zero within seconds instead of other ranks waiting forever."""
    try:
        from .parallel.mpi import load_mpi

        MPI = load_mpi()
    except BackendUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    tag = f"rank {rank} of {size}: " if size > 1 else ""
    try:
        return COMMANDS[args.command](args)
    except (InputError, BackendUnavailable) as exc:
        if not getattr(exc, "secondary", False):  # "another rank failed": that rank prints the reason
            print(f"error: {tag}{exc}", file=sys.stderr, flush=True)
        if getattr(exc, "all_ranks", False):  # raised on every rank at once (pipeline setup): exit cleanly
            return 2
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        code = 130
    except Exception:  # noqa: BLE001 - an unexpected failure: show it, then stop every rank
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        code = 1
    if size > 1:
        time.sleep(0.5)  # let mpiexec forward the message before the job is torn down
        world.Abort(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
