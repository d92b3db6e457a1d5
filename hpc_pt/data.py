"""In-memory description of a ptycho-tomography dataset, shared by ``simulate`` (which builds one) and
``io`` (which writes and reads one). Plain containers: no computation, no file access."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Geometry:
    """Experiment geometry in SI units (files) and the derived pixel-unit layout (solvers)."""

    energy_ev: float
    detector_distance_m: float
    detector_pixel_m: tuple[float, float]  # (x, y) detector pixel sizes
    pixel_m: float  # sample-plane pixel = voxel size (derived: lambda z / (m * detector pixel))
    field_shape: tuple[int, int]  # (H, W) object field per angle, pixels
    rotation_centre: float | None = None  # field column (pixel-centre coordinate) of the axis; None: (W-1)/2


@dataclass
class AngleData:
    """One rotation angle: its frames (intensities, DC at index 0) and their probe positions."""

    angle_deg: float
    frames: np.ndarray  # (F, m1, m2) float32, photon counts or intensities
    positions: np.ndarray  # (F, 2) float64 top-left (row, col) in the object field, pixels


@dataclass
class Dataset:
    """A whole measurement: per-angle data, the probe, the geometry, and optional ground truth."""

    angles: list[AngleData]
    probe: np.ndarray | None  # (m1, m2) complex64, scaled so that E[frames] = |F(probe * S_j psi)|^2;
    # None only for data written without a probe (readers estimate one: hpc_pt.io.cxi.ensure_probe)
    geometry: Geometry
    mask: np.ndarray | None = None  # (m1, m2) bool, True = valid detector pixel
    truth: dict | None = None  # e.g. {"volume": (nz, n, n) complex64, "model": "linear", ...}
    attrs: dict = field(default_factory=dict)  # provenance / simulation settings

    @property
    def n_frames(self) -> np.ndarray:
        return np.array([a.frames.shape[0] for a in self.angles], dtype=np.int64)

    @property
    def frame_shape(self) -> tuple[int, int]:
        if self.probe is None:  # a dataset to be written without a probe (hpc_pt.io.convert)
            return tuple(self.angles[0].frames.shape[-2:])
        return tuple(self.probe.shape)

    @property
    def angles_rad(self) -> np.ndarray:
        return np.deg2rad([a.angle_deg for a in self.angles])
