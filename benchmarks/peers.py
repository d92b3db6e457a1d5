"""hpc-pt's 2D ptychography solvers against Pty-Chi's engines on one simulated angle.

Same data, same known probe, same number of iterations (epochs) for both; reports time per iteration and
the final object error (SNR after the optimal complex scale and integer shift, over the illuminated
region, vs the truth), and the ratios hpc-pt / Pty-Chi, all from one run on this machine's CPU.

    hpc-pt epie  vs  Pty-Chi EPIE   (object step alpha = 1 both)
    hpc-pt dm    vs  Pty-Chi DM
    hpc-pt ml    vs  Pty-Chi LSQML  (hpc-pt: ML-CG with the Gaussian amplitude likelihood, which is what
                                     LSQML's default GAUSSIAN noise model fits; Poisson ML-CG also reported)

Pty-Chi (``pip install ptychi``) needs PyTorch; install the CPU wheel first so pip never pulls a CUDA
build: ``pip install torch==2.13.0`` then ``pip install --no-deps ptychi`` plus pandas, scikit-learn,
tqdm and the matching torchvision. Where Pty-Chi does not import or fails, the JSON says exactly why and
only hpc-pt's numbers are written. Conventions mapped for Pty-Chi: frames fftshifted (its ``fft_shift``
expects DC at the centre, as measured), probe divided by m (its far field is the unnormalised FFT),
positions = probe centres relative to the object centre, (row, col) = (y, x).

Usage: python benchmarks/peers.py [--iterations 30] [--field 192] [--probe 64] [--step 8] [--out DIR]
Writes DIR/peers.json and DIR/peers.png (DIR defaults to benchmarks/results). Never asserts on time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from scipy import ndimage

from hpc_pt.metrics import snr_db
from hpc_pt.operators import Ptychography
from hpc_pt.simulate import gaussian_probe, raster_scan
from hpc_pt.solvers.ptycho2d import dm, epie, ml_cg


def make_scene(field: int, m: int, fwhm: float, step: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    ph = ndimage.gaussian_filter(rng.standard_normal((field, field)), 3)
    ph *= 1.2 / ph.std()
    am = 1 - 0.4 * ndimage.gaussian_filter(rng.random((field, field)), 3) / 0.6
    obj = (np.clip(am, 0.2, 1) * np.exp(1j * ph)).astype(np.complex64)
    probe = gaussian_probe(m, fwhm)
    pos = raster_scan((field, field), (m, m), step)
    pos = np.clip(pos + rng.integers(-1, 2, pos.shape), 0, field - m).astype(np.float64)
    op = Ptychography(probe, pos, (field, field))
    frames = (np.abs(op.fwd(obj)) ** 2).astype(np.float32)
    ill = op.illumination()
    roi = ill > 0.05 * ill.max()
    return obj, probe, pos, frames, roi


def score(rec, obj, roi):
    """SNR (dB) after the optimal complex scale and an integer shift (|T| <= 2), on the illuminated box."""
    rows = np.flatnonzero(roi.any(axis=1))
    cols = np.flatnonzero(roi.any(axis=0))
    sl = (slice(rows[0] + 4, rows[-1] - 3), slice(cols[0] + 4, cols[-1] - 3))
    return snr_db(np.asarray(rec)[sl], obj[sl], max_shift=2)


def run_hpcpt(frames, pos, probe, field, iterations, obj, roi):
    out = {}
    runs = {
        "epie": lambda: epie(frames, pos, probe, (field, field), iterations=iterations, alpha=1.0, seed=0),
        "dm": lambda: dm(frames, pos, probe, (field, field), iterations=iterations),
        "ml": lambda: ml_cg(frames, pos, probe, (field, field), iterations=iterations, noise="gaussian"),
        "ml_poisson": lambda: ml_cg(frames, pos, probe, (field, field), iterations=iterations),
    }
    spread = []
    for seed in (1, 2, 3):  # ePIE's result depends on the random frame order: report the spread too
        r = epie(frames, pos, probe, (field, field), iterations=iterations, alpha=1.0, seed=seed)
        spread.append(score(r.obj, obj, roi))
    out["epie_other_seeds_snr_db"] = spread
    for name, fn in runs.items():
        t0 = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t0
        out[name] = {"time_s": dt, "time_per_iter_s": dt / iterations, "snr_db": score(res.obj, obj, roi),
                     "r_factor": float(res.history.column("r_factor")[-1])}
        print(f"hpc-pt {name:10s} {dt / iterations * 1e3:8.1f} ms/it  SNR {out[name]['snr_db']:6.2f} dB",
              flush=True)
    return out


def _torchvision_shim():
    """Make ``from torchvision.transforms import GaussianBlur`` work without a usable torchvision.

    Pty-Chi imports torchvision only for ``GaussianBlur`` (in ``ptychi.utils.generate_gaussian_random_image``,
    which the benchmarked engines never call). PyPI's torchvision wheels link CUDA libraries
    (libc10_cuda.so) and fail to load next to the CPU torch; a CPU torchvision wheel is not on PyPI. When
    the real one does not import, this registers a minimal stand-in (a separable Gaussian blur in torch).
    Returns a note for the JSON, or None when the real torchvision works.
    """
    try:
        import torchvision  # noqa: F401

        return None
    except Exception as exc:  # noqa: BLE001 - a broken torchvision raises RuntimeError, not ImportError
        reason = f"{type(exc).__name__}: {exc}"
    import types

    import torch

    class GaussianBlur:
        def __init__(self, kernel_size, sigma):
            self.k, self.s = kernel_size, sigma

        def __call__(self, img):
            out = img
            for axis, (k, s) in enumerate(zip(self.k, self.s)):
                x = torch.arange(k, dtype=img.dtype) - (k - 1) / 2
                w = torch.exp(-0.5 * (x / s) ** 2)
                w = (w / w.sum()).reshape((1, 1, k, 1) if axis == 0 else (1, 1, 1, k))
                pad = (0, 0, k // 2, k // 2) if axis == 0 else (k // 2, k // 2, 0, 0)
                out = torch.nn.functional.conv2d(torch.nn.functional.pad(out, pad, mode="reflect"), w)
            return out

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    tr.GaussianBlur = GaussianBlur
    tv.transforms = tr
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.transforms"] = tr
    return (f"torchvision does not load ({reason}); a GaussianBlur stand-in was registered for Pty-Chi's "
            "only torchvision import (unused by the EPIE/DM/LSQML engines benchmarked)")


def run_ptychi(frames, pos, probe, field, iterations, obj, roi, threads):
    """Pty-Chi's EPIE, DM and LSQML on the same data; raises ImportError if Pty-Chi is not available."""
    import torch

    shim = _torchvision_shim()
    from ptychi import api
    from ptychi.api.task import PtychographyTask

    torch.set_num_threads(threads)
    m1, m2 = probe.shape
    data = np.fft.fftshift(frames, axes=(-2, -1)).astype(np.float32)
    centres = pos + np.array([m1 / 2.0, m2 / 2.0]) - field / 2.0
    probe_pc = (probe / np.sqrt(m1 * m2)).astype(np.complex64)[None, None]  # (modes, opr, m, m)
    out = {"versions": {"ptychi": _version("ptychi"), "torch": torch.__version__}}
    if shim:
        out["note"] = shim

    def common(options):
        options.data_options.data = data
        options.object_options.initial_guess = torch.ones((1, field, field), dtype=torch.complex64)
        options.object_options.pixel_size_m = 1e-8
        options.object_options.optimizable = True
        options.probe_options.initial_guess = torch.as_tensor(probe_pc)
        options.probe_options.optimizable = False
        options.probe_position_options.position_x_px = torch.as_tensor(centres[:, 1], dtype=torch.float32)
        options.probe_position_options.position_y_px = torch.as_tensor(centres[:, 0], dtype=torch.float32)
        options.probe_position_options.optimizable = False
        options.reconstructor_options.num_epochs = iterations
        options.reconstructor_options.default_device = api.Devices.CPU
        options.reconstructor_options.random_seed = 0
        return options

    engines = {"epie": "EPIEOptions", "dm": "DMOptions", "ml": "LSQMLOptions"}
    for name, cls in engines.items():
        try:
            options = common(getattr(api, cls)())
            if name == "epie":
                options.object_options.alpha = 1.0
                options.reconstructor_options.batch_size = 1  # classic sequential ePIE
            if name == "ml":
                options.reconstructor_options.batch_size = max(1, len(pos) // 10)
            task = PtychographyTask(options)
            t0 = time.perf_counter()
            task.run()
            dt = time.perf_counter() - t0
            rec = task.get_data_to_cpu("object", as_numpy=True)[0]
            out[name] = {"engine": cls.replace("Options", ""), "time_s": dt, "time_per_iter_s": dt / iterations,
                         "snr_db": score(rec, obj, roi)}
            print(f"ptychi {name:10s} {dt / iterations * 1e3:8.1f} ms/it  SNR {out[name]['snr_db']:6.2f} dB",
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - report any engine failure, never fake numbers
            out[name] = {"engine": cls.replace("Options", ""), "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc(limit=3)}
            print(f"ptychi {name}: failed: {exc}", flush=True)
    return out


def _version(mod):
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return None


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["epie", "dm", "ml"]
    ours = result["hpc_pt"]
    peer = result.get("ptychi", {})
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    x = np.arange(len(names))
    t_o = [ours[n]["time_per_iter_s"] * 1e3 for n in names]
    s_o = [ours[n]["snr_db"] for n in names]
    t_p = [peer.get(n, {}).get("time_per_iter_s", np.nan) * 1e3 for n in names]
    s_p = [peer.get(n, {}).get("snr_db", np.nan) for n in names]
    ax[0].bar(x - 0.2, t_o, 0.4, label="hpc-pt")
    ax[0].bar(x + 0.2, t_p, 0.4, label="Pty-Chi")
    ax[0].set_xticks(x, ["ePIE", "DM", "ML / LSQML"])
    ax[0].set_ylabel("time per iteration (ms)")
    ax[0].set_yscale("log")
    ax[0].legend()
    ax[1].bar(x - 0.2, s_o, 0.4, label="hpc-pt")
    ax[1].bar(x + 0.2, s_p, 0.4, label="Pty-Chi")
    ax[1].set_xticks(x, ["ePIE", "DM", "ML / LSQML"])
    ax[1].set_ylabel(f"object SNR after {result['iterations']} it (dB)")
    cfg = result["config"]
    fig.suptitle(f"one angle: field {cfg['field']}, probe {cfg['probe']} (FWHM {cfg['fwhm']}), "
                 f"{cfg['frames']} frames, {result['threads']} CPU threads", fontsize=9)
    if "error" in result.get("ptychi", {}):
        ax[0].text(0.5, 0.5, "Pty-Chi unavailable", transform=ax[0].transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--field", type=int, default=192)
    ap.add_argument("--probe", type=int, default=64)
    ap.add_argument("--fwhm", type=float, default=20.0)
    ap.add_argument("--step", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for both (1 avoids oversubscribing the shared 2-core machine)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HPC_PT_FFT_WORKERS", str(args.threads))
    os.environ.setdefault("HPC_PT_NUFFT_THREADS", str(args.threads))
    obj, probe, pos, frames, roi = make_scene(args.field, args.probe, args.fwhm, args.step)
    print(f"{len(pos)} frames of {args.probe}x{args.probe}, field {args.field}", flush=True)
    result = {"iterations": args.iterations, "threads": args.threads,
              "config": {"field": args.field, "probe": args.probe, "fwhm": args.fwhm, "step": args.step,
                         "frames": len(pos), "probe_known": True, "object_init": "ones"},
              "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                          "cpu_count": os.cpu_count(), "load_avg": list(os.getloadavg())},
              "metric": "object SNR (dB) after optimal complex scale and integer shift |T|<=2, illuminated box"}
    result["hpc_pt"] = run_hpcpt(frames, pos, probe, args.field, args.iterations, obj, roi)
    try:
        result["ptychi"] = run_ptychi(frames, pos, probe, args.field, args.iterations, obj, roi, args.threads)
    except ImportError as exc:
        result["ptychi"] = {"error": f"Pty-Chi not available: {type(exc).__name__}: {exc}. Install it in the "
                                     "benchmark environment: pip install torch==2.13.0 && pip install "
                                     "--no-deps ptychi (plus pandas scikit-learn tqdm torchvision)"}
        print(result["ptychi"]["error"], flush=True)
    ratios = {}
    for n in ("epie", "dm", "ml"):
        p = result["ptychi"].get(n, {})
        if "time_per_iter_s" in p:
            o = result["hpc_pt"][n]
            ratios[n] = {"speedup_ptychi_over_hpcpt_time": p["time_per_iter_s"] / o["time_per_iter_s"],
                         "snr_difference_db_hpcpt_minus_ptychi": o["snr_db"] - p["snr_db"]}
    result["ratios"] = ratios
    result["load_avg_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(result, indent=2, default=float))
    plot(result, out / "peers.png")
    print(json.dumps(ratios, indent=2))
    return result


if __name__ == "__main__":
    main()
