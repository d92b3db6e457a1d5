"""Dataset assembly: phantom -> projections -> exit waves -> far-field intensities (-> Poisson counts).

The physics is :class:`hpc_pt.operators.ForwardModel` (seed 001 Eq. 1 for ``linear``, the projection
approximation of seeds 000/002 for ``exp`` with c = k dz); this module only builds its inputs and runs it
over batches of angles, so at most ``max_frames_per_batch`` frames exist in complex form at a time.

Scaling (seed 001, section 3): stored frames are f = eta |D|^2 (``noise: none``) or f ~ Poisson(eta |D|^2)
(``noise: poisson``), where D = F(w o S_j psi) with the unscaled probe w. The dataset's probe is
sqrt(eta) w, so E[f] = |F(probe o S_j psi)|^2 holds exactly for the stored probe; ``truth["probe"]``
keeps w. (With the default eta = 1 the two are equal.)
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..conventions import detector_distance_for, ev_to_joule, implausible_geometry, k_dz
from ..data import AngleData, Dataset, Geometry
from ..errors import InputError
from ..operators import ForwardModel, Ptychography
from .angles import make_angles
from .config import SimulationConfig
from .noise import poisson_noise, snr_from_sums, snr_sums
from .phantoms import random_ellipsoids, shepp_logan_3d, wire_phantom
from .probes import airy_probe, disc_probe, gaussian_probe, load_probe, probe_diameter_px
from .scans import overlap_ratio, scan_for_angle

#: complex frames computed at once (3,468 64 x 64 frames = 114 MB of complex64 is one batch)
MAX_FRAMES_PER_BATCH = 4096


def make_phantom(cfg: SimulationConfig) -> np.ndarray:
    """The configured phantom u, complex64 (N, N, N).

    ``phantom`` picks :func:`shepp_logan_3d`, :func:`wire_phantom` or :func:`random_ellipsoids`; with
    ``phase_object_rad`` set, u = exp(i phi Re s) (seed 001's pure-phase sample).

    Parameters
    ----------
    cfg : SimulationConfig
        The settings (``phantom``, ``size``, ``seed``, ``ellipsoids``, ``energy_kev``, ``voxel_nm``,
        ``phase_object_rad``).

    Returns
    -------
    numpy.ndarray
        complex64 array of shape (N, N, N), N = ``cfg.size``.
    """
    n = cfg.size
    if cfg.phantom == "shepp-logan":
        vol = shepp_logan_3d(n)
    elif cfg.phantom == "wires":
        vol = wire_phantom(n, cfg.energy_ev, cfg.voxel_m, seed=cfg.seed)
    else:
        vol = random_ellipsoids(n, cfg.ellipsoids, seed=cfg.seed)
    if cfg.phase_object_rad is not None:  # seed 001 section 3: "a synthetic 3D sample with pure phase"
        vol = np.exp(1j * cfg.phase_object_rad * vol.real).astype(np.complex64)
    return vol


def make_probe(cfg: SimulationConfig) -> np.ndarray:
    """The configured (unscaled) probe w, complex64.

    Parameters
    ----------
    cfg : SimulationConfig
        The settings (``probe_kind``, ``probe_size``, ``probe_fwhm``, ``probe_file``, ``size``, ``field_pad``).

    Returns
    -------
    numpy.ndarray
        complex64 array: (M, M) with M = ``cfg.probe_size`` for the built-in shapes, the file's (m1, m2) for
        ``probe_kind = "file"``.

    Raises
    ------
    InputError
        When a probe file cannot be read (:func:`load_probe`) or its probe exceeds the object field.
    """
    if cfg.probe_kind == "gaussian":
        return gaussian_probe(cfg.probe_size, cfg.probe_fwhm)
    if cfg.probe_kind == "airy":
        return airy_probe(cfg.probe_size, cfg.probe_fwhm)
    if cfg.probe_kind == "disc":
        return disc_probe(cfg.probe_size, cfg.probe_fwhm)
    probe = load_probe(cfg.probe_file)
    H = W = cfg.field_size
    if probe.shape[0] > H or probe.shape[1] > W:
        raise InputError(f"the {probe.shape[0]}x{probe.shape[1]} probe in {cfg.probe_file} exceeds the "
                         f"{H}x{W} object field; raise size or field_pad")
    return probe


def make_positions(cfg: SimulationConfig, probe_shape, field_hw) -> list[np.ndarray]:
    """Per-angle top-left scan positions in the object field (seed 002's per-angle start shift applied).

    Parameters
    ----------
    cfg : SimulationConfig
        The settings (``scan``, ``step``, ``angles``, ``per_angle_offset``).
    probe_shape : tuple of int
        (m1, m2) of the probe window.
    field_hw : tuple of int
        (H, W) of the object field.

    Returns
    -------
    list of numpy.ndarray
        One (F_a, 2) float64 array of (row, col) positions per angle (:func:`scan_for_angle`).
    """
    return [scan_for_angle(cfg.scan, field_hw, probe_shape, cfg.step, a, cfg.per_angle_offset)
            for a in range(cfg.angles)]


def angle_batches(counts, max_frames: int) -> list[tuple[int, int]]:
    """Split angles into consecutive [start, stop) ranges of at most ``max_frames`` frames (>= 1 angle).

    A single angle with more than ``max_frames`` frames forms a range of its own.

    Parameters
    ----------
    counts : sequence of int
        Frames per angle.
    max_frames : int
        Largest number of frames in one range (unless one angle alone exceeds it).

    Returns
    -------
    list of tuple of int
        The ``(start, stop)`` angle ranges, covering every angle in order.
    """
    out, start, acc = [], 0, 0
    for a, c in enumerate(counts):
        if a > start and acc + c > max_frames:
            out.append((start, a))
            start, acc = a, 0
        acc += int(c)
    out.append((start, len(counts)))
    return out


def iter_intensities(volume, probe, angles, positions, field_hw, model: str = "linear", c: float = 1.0,
                     max_frames_per_batch: int = MAX_FRAMES_PER_BATCH, center: float | None = None):
    """Yield (angle_start, angle_stop, |F(w o S_j psi_theta)|^2 float32 frames) over batches of angles.

    All exit waves come from one :class:`ForwardModel` call (one NUFFT for all angles, (A, H, W) complex);
    the far fields are then computed one batch of angles at a time with :class:`Ptychography`.
    ``center``: field column of the rotation axis (default (W - 1) / 2).

    Parameters
    ----------
    volume : array_like
        The phantom u, (nz, n, n) (cast to complex64).
    probe : array_like
        The probe w, complex (m1, m2).
    angles : array_like
        Rotation angles in radians, shape (A,).
    positions : list of array_like
        One (F_a, 2) array of top-left (row, col) positions per angle.
    field_hw : tuple of int
        (H, W) of the object field.
    model : {"linear", "exp"}, optional
        The forward model. Default "linear".
    c : float, optional
        k dz, the exponent's scale of the ``exp`` model. Default 1.0.
    max_frames_per_batch : int, optional
        Frames per batch of angles (:func:`angle_batches`). Default :data:`MAX_FRAMES_PER_BATCH`.
    center : float, optional
        Field column of the rotation axis; default (W - 1) / 2.

    Yields
    ------
    angle_start, angle_stop : int
        The batch's angles ``[angle_start, angle_stop)``.
    frames : numpy.ndarray
        float32 array (sum of F_a over the batch, m1, m2): the noise-free far-field intensities, DC at index 0,
        angle after angle.
    """
    vol = np.asarray(volume, dtype=np.complex64)
    fm = ForwardModel(vol.shape, angles, probe, positions, field_hw, center=center, model=model, c=c,
                      dtype=np.complex64)
    psi = fm.exit_wave(vol)
    H, W = fm.field_shape
    for a0, a1 in angle_batches(fm.counts, max_frames_per_batch):
        pos = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in positions[a0:a1]])
        aidx = np.repeat(np.arange(a1 - a0), fm.counts[a0:a1])
        op = Ptychography(fm.ptycho.probe, pos, (a1 - a0, H, W), angle_index=aidx, dtype=np.complex64)
        d = op.fwd(np.ascontiguousarray(psi[a0:a1]))
        yield a0, a1, (d.real ** 2 + d.imag ** 2).astype(np.float32, copy=False)


def simulate_dataset(cfg: SimulationConfig, progress: Callable[[int, int], None] | None = None,
                     max_frames_per_batch: int = MAX_FRAMES_PER_BATCH) -> Dataset:
    """Simulate a ptycho-tomography measurement as configured (seed 001 section 3 / seed 002 section 3.1).

    Builds the phantom u, the probe w, the angles and per-angle raster/Fermat positions in an
    (N + 2 pad, N + 2 pad) object field; computes f = |F(w o S_j psi_theta)|^2 with psi = P u (linear) or
    exp(i k dz P u) (exp) in batches of angles; scales by eta and draws Poisson counts when asked.
    ``progress(done_angles, total_angles)`` is called after every batch.

    Parameters
    ----------
    cfg : SimulationConfig
        The settings.
    progress : callable, optional
        ``progress(done_angles, total_angles)``, called after every batch of angles.
    max_frames_per_batch : int, optional
        Complex frames computed at once. Default :data:`MAX_FRAMES_PER_BATCH`.

    Returns
    -------
    hpc_pt.data.Dataset
        A :class:`hpc_pt.data.Dataset` whose probe is sqrt(eta) w (see the module docstring), with
        ``truth`` = {volume, probe (unscaled), model, k_dz, field_pad, snr_intensity_db} and ``attrs`` = the
        configuration plus ``overlap``, ``probe_shape`` and ``snr_intensity_db`` (None without noise).

    Raises
    ------
    InputError
        When the geometry is implausible for a real experiment (checked before the work), the far fields
        overflow (NaN or infinite values), or the probe file cannot be used.
    """
    volume = make_phantom(cfg)
    probe = make_probe(cfg)
    m1, m2 = probe.shape
    field_hw = (cfg.field_size, cfg.field_size)
    angles = make_angles(cfg.angles, cfg.angle_kind, cfg.angle_range)
    positions = make_positions(cfg, (m1, m2), field_hw)
    c = k_dz(cfg.energy_ev, cfg.voxel_m)
    geometry = make_geometry(cfg, (m1, m2), field_hw)
    problem = implausible_geometry(ev_to_joule(cfg.energy_ev), geometry.detector_distance_m,
                                   geometry.detector_pixel_m)
    if problem is not None:  # before the work: write_cxi and every reader would refuse the file
        what = problem.split(": it looks")[0].split(";")[0]
        raise InputError(f"simulated geometry (energy_kev {cfg.energy_kev:g}, voxel_nm {cfg.voxel_nm:g}, "
                         f"detector_pixel_um {cfg.detector_pixel_um:g}): {what}; choose settings a real "
                         "experiment has")
    eta = float(cfg.peak)
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 1]))  # noise stream
    frames: list[np.ndarray] = [None] * cfg.angles  # type: ignore[list-item]
    err = ref = 0.0
    for a0, a1, inten in iter_intensities(volume, probe, angles, positions, field_hw, cfg.model, c,
                                          max_frames_per_batch, center=cfg.rotation_centre):
        bad = int(np.count_nonzero(~np.isfinite(inten)))
        if bad:  # never write a file hpc-pt's own readers refuse
            raise InputError(f"the simulated far fields of angles {a0}..{a1 - 1} hold {bad} NaN or infinite "
                             f"values ({cfg.model} model, k dz = {c:.4g} rad per voxel and unit of u): the phantom's "
                             "values overflow the forward model; lower the phantom's contrast or --voxel-nm, or "
                             "use --model linear")
        if eta != 1.0:
            inten *= np.float32(eta)
        if cfg.noise == "poisson":
            noisy = poisson_noise(inten, 1.0, rng)  # inten already holds f^eta = eta |D|^2
            e, r = snr_sums(noisy, inten)
            err, ref = err + e, ref + r
            inten = noisy
        counts = [len(p) for p in positions[a0:a1]]
        for k, chunk in enumerate(np.split(inten, np.cumsum(counts)[:-1])):
            frames[a0 + k] = np.ascontiguousarray(chunk)
        if progress is not None:
            progress(a1, cfg.angles)
    snr = None
    if cfg.noise == "poisson":
        snr = snr_from_sums(err, ref) if ref > 0 else None
        if snr is not None and math.isinf(snr):
            snr = None
    data = [AngleData(float(np.degrees(t)), f, np.asarray(p, dtype=np.float64))
            for t, f, p in zip(angles, frames, positions)]
    overlap = overlap_ratio(positions[0], probe_diameter_px(probe))
    attrs = cfg.to_dict()
    attrs.update(overlap=overlap, probe_shape=[int(m1), int(m2)], snr_intensity_db=snr)
    truth = {"volume": volume, "probe": probe, "model": cfg.model, "k_dz": c, "field_pad": cfg.field_pad,
             "snr_intensity_db": snr}
    return Dataset(angles=data, probe=(probe * np.float32(math.sqrt(eta))).astype(np.complex64),
                   geometry=geometry, mask=None, truth=truth, attrs=attrs)


def make_geometry(cfg: SimulationConfig, probe_shape, field_hw) -> Geometry:
    """Geometry whose sample-plane pixel equals the voxel.

    z = voxel m2 det_x / lambda, and the detector's y pixel set so that rows give the same sample pixel
    (det_y = det_x m2 / m1; equal for square frames).

    Parameters
    ----------
    cfg : SimulationConfig
        The settings (``energy_kev``, ``voxel_nm``, ``detector_pixel_um``, ``rotation_centre``).
    probe_shape : tuple of int
        (m1, m2) of the frames.
    field_hw : tuple of int
        (H, W) of the object field.

    Returns
    -------
    hpc_pt.data.Geometry
        Energy, detector distance z, detector pixel sizes (x, y), pixel size, field shape and rotation centre.
    """
    m1, m2 = probe_shape
    det_x = cfg.detector_pixel_um * 1e-6
    dist = detector_distance_for(cfg.energy_ev, cfg.voxel_m, det_x, m2)
    return Geometry(energy_ev=cfg.energy_ev, detector_distance_m=dist,
                    detector_pixel_m=(det_x, det_x * m2 / m1), pixel_m=cfg.voxel_m,
                    field_shape=(int(field_hw[0]), int(field_hw[1])), rotation_centre=cfg.rotation_centre)
