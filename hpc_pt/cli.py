"""Command line: ``hpc-pt {simulate,info,validate,evaluate}``. Parses arguments and delegates; no physics here.

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
    "--probe-kind": ("probe_kind", str, "gaussian, disc or file"),
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


def _info(args) -> int:
    from .io import describe, format_description

    d = describe(args.path, **_reader_kwargs(args))
    print(json.dumps(d, default=float) if args.json else format_description(d))
    return 0


def _validate(args) -> int:
    from .io import format_description
    from .workflows import validate_input

    d = validate_input(args.path, **_reader_kwargs(args))
    print(json.dumps(d, default=float) if args.json else format_description(d) + "\nvalid: every frame checked")
    return 0


def _evaluate(args) -> int:
    from .workflows import evaluate_reconstruction, format_metrics

    m = evaluate_reconstruction(args.recon, args.truth)
    print(json.dumps(m, default=float) if args.json else format_metrics(m))
    return 0


COMMANDS = {"simulate": _simulate, "info": _info, "validate": _validate, "evaluate": _evaluate}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
