"""Workflows that combine io, operators and metrics for the CLI (DESIGN.md layer 8 delegates here)."""
from __future__ import annotations

import numpy as np

from .errors import InputError


def load_truth(path):
    """Ground-truth volume from a simulated CXI file's truth group, a Zarr store, or a .npy file."""
    import os

    if not os.path.exists(path):
        raise InputError(f"truth {path} does not exist; pass the simulated .h5 file or a Zarr volume store")
    if os.path.isdir(path):
        from .io import read_volume

        vol, _ = read_volume(path)
        return vol, {}
    if path.endswith(".npy"):
        return np.load(path), {}
    from .io import read_truth

    truth = read_truth(path)
    return truth["volume"], truth


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
    keys = ["snr_db", "nrmse", "psnr_db", "ssim"]
    lines = [f"{k:>8}: {m[k]:.4g}" for k in keys if k in m]
    lines += [f"{k:>8}: {v:.4g}" for k, v in m.items() if k not in keys and isinstance(v, float)]
    return "\n".join(lines)


def validate_input(path, chunk_frames: int = 4096, **scan_kwargs) -> dict:
    """Check a CXI input completely: metadata (keys, shapes, counts, geometry, duplicate angles, positions
    in the field) and every frame (finite, non-negative), reading ``chunk_frames`` frames at a time.

    Raises :class:`InputError` on the first problem; returns the ``info`` summary when all is well.
    """
    from .io import describe, read_frames, scan_cxi

    index = scan_cxi(path, **scan_kwargs)
    for a, entry in enumerate(index.entries):
        for start in range(0, entry.n_frames, chunk_frames):
            read_frames(index, a, start, min(start + chunk_frames, entry.n_frames))
    return describe(index)
