"""Simulation (layer `simulate`, docs/architecture.md): phantoms, probes, scan patterns, angles, noise and dataset assembly.

Seeds: 001 (section 3: pure-phase 3D Shepp-Logan, Gaussian probe, grid scans, Poisson noise with a peak
factor eta and SNR_intensity) and 002 (section 3.1: four-material wire phantom, disc probe, per-angle
shifted scans over [0, 2 pi)).
"""
from .angles import make_angles
from .config import SimulationConfig
from .dataset import (
    iter_intensities,
    make_geometry,
    make_phantom,
    make_positions,
    make_probe,
    simulate_dataset,
)
from .materials import MATERIALS, Material, refractive_index
from .noise import poisson_noise, snr_intensity
from .phantoms import random_ellipsoids, shepp_logan_3d, wire_phantom
from .probes import airy_probe, disc_probe, gaussian_probe, load_probe, probe_diameter_px
from .scans import fermat_scan, overlap_ratio, raster_scan, scan_for_angle

__all__ = [
    "MATERIALS",
    "Material",
    "SimulationConfig",
    "airy_probe",
    "disc_probe",
    "fermat_scan",
    "gaussian_probe",
    "iter_intensities",
    "load_probe",
    "make_angles",
    "make_geometry",
    "make_phantom",
    "make_positions",
    "make_probe",
    "overlap_ratio",
    "poisson_noise",
    "probe_diameter_px",
    "random_ellipsoids",
    "raster_scan",
    "refractive_index",
    "scan_for_angle",
    "shepp_logan_3d",
    "simulate_dataset",
    "snr_intensity",
    "wire_phantom",
]
