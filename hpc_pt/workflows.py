"""Workflows that combine io, operators and metrics for the CLI (layer `pipeline`; docs/architecture.md)."""
from __future__ import annotations

import numpy as np

from .errors import InputError


def load_truth(path):
    """Ground-truth volume from a simulated CXI file's truth group, a Zarr store, a .npy file, or a dataset
    of any HDF5 file named ``FILE.h5:/group/volume``. Returns (volume, truth dict)."""
    import os

    path = os.fspath(path)
    if not os.path.exists(path) and ":" in path:
        file, _, inner = path.rpartition(":")
        if os.path.isfile(file):
            return _hdf5_dataset(file, inner), {}
    if not os.path.exists(path):
        raise InputError(f"truth {path} does not exist; pass the simulated .h5 file, a Zarr volume store, a .npy "
                         "volume or FILE.h5:/path/to/dataset")
    if os.path.isdir(path):
        from .io import read_volume

        vol, _ = read_volume(path)
        return vol, {}
    if path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False), {}
        except (ValueError, OSError) as e:
            raise InputError(f"truth {path} is not a plain .npy array ({e}); save the volume with np.save") from None
    from .io import read_truth

    truth = read_truth(path)
    if truth is None or "volume" not in truth:
        raise InputError(f"{path} holds no /hpc_pt_truth group; pass the file hpc-pt simulate wrote, "
                         "a Zarr volume store or a .npy volume")
    return truth["volume"], truth


def _hdf5_dataset(file: str, inner: str) -> np.ndarray:
    """The array at ``inner`` (e.g. ``/group/volume``) of the HDF5 ``file``, with one-line errors."""
    import h5py

    if not h5py.is_hdf5(file):
        raise InputError(f"truth {file} is not an HDF5 file; FILE:/dataset names a dataset inside an HDF5 file")
    with h5py.File(file, "r") as f:
        obj = f.get(inner)
        if not isinstance(obj, h5py.Dataset):
            what = "is a group, not a dataset" if isinstance(obj, h5py.Group) else "does not exist"
            raise InputError(f"truth {file}:{inner} {what}; name an HDF5 dataset holding the volume "
                             f"(`h5ls -r {file}` lists them)")
        if not (np.issubdtype(obj.dtype, np.number) and obj.ndim == 3):
            raise InputError(f"truth {file}:{inner} has dtype {obj.dtype} and shape {obj.shape}; it must be a "
                             "numeric (nz, n, n) volume")
        return np.asarray(obj[()])


def estimate_centre(path, reader: dict | None = None, model: str | None = None) -> dict:
    """``hpc-pt info --rotation-centre``: read every frame of ``path`` and estimate the rotation centre
    (:func:`hpc_pt.calibrate.estimate_rotation_centre`) with the ``model`` the input records (default
    linear), on one process. Returns its dict."""
    from .calibrate import calibrate_probe_scale, estimate_rotation_centre
    from .io import read_cxi
    from .pipeline import build_shard

    ds = read_cxi(path, **(reader or {}))
    recorded = ds.attrs.get("model")
    model = model or (recorded if recorded in ("linear", "exp") else "linear")
    shard = build_shard(ds, model)
    calibrate_probe_scale(shard)
    return estimate_rotation_centre(shard)


def evaluate_reconstruction(recon_path, truth_path) -> dict:
    """Quality metrics of a reconstruction store against the ground truth (seed 001 SNR and friends)."""
    from .io import read_volume
    from .metrics import evaluate

    recon, attrs = read_volume(recon_path)
    truth, _ = load_truth(truth_path)
    if recon.ndim != 3 or truth.ndim != 3:
        raise InputError(f"evaluate needs 3D volumes, got {recon.shape} and {truth.shape}")
    if any(r < t for r, t in zip(recon.shape, truth.shape)):
        raise InputError(f"reconstruction {recon.shape} is smaller than the truth {truth.shape}; "
                         "compare volumes reconstructed on the simulated field")
    out = evaluate(recon, truth)
    out["recon_shape"] = list(recon.shape)
    out["truth_shape"] = list(truth.shape)
    return out


def format_metrics(m: dict) -> str:
    """The metrics of :func:`evaluate_reconstruction` as text: one value a line, then what they compared
    (the cropped block, the optimal scale the SNR applied) and a note when the stored values are off in scale,
    so a quoted NRMSE / PSNR / SSIM is not read as the SNR's scale-free agreement."""
    keys = ["snr_db", "nrmse", "psnr_db", "ssim"]
    shown = [k for k in keys if k in m] + [k for k, v in m.items() if k not in keys and isinstance(v, float)]
    width = max((len(k) for k in shown), default=8)
    lines = [f"{k:>{width}}: {m[k]:.4g}" for k in shown]
    rs, ts = m.get("recon_shape"), m.get("truth_shape")
    if rs and ts and list(rs) != list(ts):
        lines.append(f"compared: the central {'x'.join(map(str, ts))} block of the {'x'.join(map(str, rs))} "
                     "reconstruction (the truth's support)")
    za, zp = m.get("zeta_abs"), m.get("zeta_phase_rad")
    if isinstance(za, float) and za > 0:
        lines.append(f"snr_db is scale-free: it first multiplies the volume by the best complex factor "
                     f"|zeta| {za:.4g}, phase {zp:.3g} rad, and shifts it by {m.get('shift')}; nrmse, psnr_db and "
                     "ssim compare the stored values")
        if not 0.8 <= za <= 1.25:
            lines.append(f"note: the stored values are {1 / za:.3g}x the truth's scale; quote values only from a "
                         "run with a measured probe (with the linear model and an estimated probe the overall "
                         "scale is not fixed by the data)")
    return "\n".join(lines)


def validate_input(path, chunk_frames: int | None = None, **scan_kwargs) -> dict:
    """Check a CXI input completely: metadata (keys, shapes, counts, geometry, duplicate angles, positions
    in the field) and every frame (finite, non-negative; not all zero inside the mask), reading
    ``chunk_frames`` frames at a time (default: 256 MiB of frames, :func:`hpc_pt.io.cxi.frames_per_read`,
    so memory stays bounded whatever the detector).

    Raises :class:`InputError` on the first problem; returns the ``info`` summary when all is well.
    """
    from .io import describe, read_frames, scan_cxi
    from .io.cxi import frames_per_read

    index = scan_cxi(path, **scan_kwargs)
    step = int(chunk_frames) if chunk_frames else frames_per_read(index.frame_shape)
    total = 0.0
    for a, entry in enumerate(index.entries):
        for start in range(0, entry.n_frames, step):
            fr = read_frames(index, a, start, min(start + step, entry.n_frames))
            total += float(fr.sum(axis=0, dtype=np.float64)[index.mask].sum() if index.mask is not None
                           else fr.sum(dtype=np.float64))
    if total <= 0 and int(index.n_frames.sum()):
        raise InputError(f"{index.path}: every frame is zero" + (" inside the detector mask" if index.mask is not
                                                                 None else "") + "; there is nothing to "
                         "reconstruct: check that the right dataset (and mask) was written")
    return describe(index)


#: The demo's dataset: 48^3 Shepp-Logan, 24 angles, a raster of step 4 px under a 6 px FWHM beam (linear
#: overlap 1 - d/D = 0.37, D the measured beam FWHM), Poisson noise at a peak of 100 photons, and
#: free space around the sample so the beam reaches its edges.
DEMO_SIMULATION = dict(phantom="shepp-logan", size=48, angles=24, angle_range=180, probe_size=24, probe_fwhm=6.0,
                       step=4.0, scan="raster", per_angle_offset=1.0, field_pad=8, model="linear", noise="poisson",
                       peak=100.0, seed=0)
#: The demo's reconstruction: APT's defaults (the penalty is chosen from the photon counts, see
#: :func:`hpc_pt.solvers.apt.choose_r2`), so `hpc-pt reconstruct demo.h5 --out r.zarr` gives the same result.
DEMO_RECONSTRUCTION = dict(method="apt", iterations=100)


def run_demo(out_dir, iterations=None, overwrite: bool = False, progress=None) -> dict:
    """``hpc-pt demo``: simulate :data:`DEMO_SIMULATION`, reconstruct with APT, evaluate against the truth."""
    import os
    import time

    from .io import check_output_path, write_cxi
    from .metrics import evaluate
    from .pipeline import reconstruct
    from .simulate import SimulationConfig, simulate_dataset

    t0 = time.perf_counter()
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {out_dir}: {e.strerror}; choose a writable --out-dir") from None
    data, recon = os.path.join(out_dir, "demo.h5"), os.path.join(out_dir, "demo.zarr")
    check_output_path(data, overwrite)
    check_output_path(recon, overwrite)
    from .progress import step

    with step(progress, "simulating the demo dataset ({size}^3, {angles} angles)".format(**DEMO_SIMULATION)):
        ds = simulate_dataset(SimulationConfig(**DEMO_SIMULATION))
        write_cxi(ds, data, overwrite=overwrite, command="hpc-pt demo")
    settings = dict(DEMO_RECONSTRUCTION)
    if iterations is not None:
        settings["iterations"] = int(iterations)
    res = reconstruct(data, out=recon, overwrite=overwrite, progress=progress, command="hpc-pt demo", **settings)
    metrics = evaluate(res.volume, ds.truth["volume"])
    return {"snr_db": float(metrics["snr_db"]), "r_factor": float(res.history["r_factor"][-1]),
            "nrmse": float(metrics["nrmse"]), "seconds": time.perf_counter() - t0, "data": data,
            "recon": res.out, "figure": res.figure}
