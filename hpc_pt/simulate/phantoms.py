"""3D phantoms u = delta + i beta on a (z, y, x) voxel grid (axis 0 = rotation axis).

Shared geometry: normalised coordinates span [-1, 1] across the n voxels of a slice. Voxel k's centre
(continuous coordinate k + 0.5) sits at x_k = (k + 0.5 - n/2) * 2/n; rows and slices run downwards
(y_i = (n/2 - i - 0.5) * 2/n, z_k = (nz/2 - k - 0.5) * 2/n) so that ``u[z]`` and the projections show the
phantom upright with ``imshow``. Slices use the same scale as rows and columns, so ``nz < n`` cuts the
central slab of the n^3 phantom (and ``nz > n`` pads it with empty slices).

Edges are area-weighted: every voxel is the mean of its 2 x 2 x 2 sub-voxel samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .materials import MATERIALS, refractive_index

#: sub-samples per voxel and axis (2 -> 8 samples per voxel)
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in normalised (z, y, x) coordinates.

    ``rotation`` maps world offsets (z, y, x) - ``center`` to the ellipsoid's own frame, whose semi-axes
    along (z', y', x') are ``semi_axes``; ``value`` is added to every point inside.

    Parameters
    ----------
    center : tuple of float
        (z, y, x) of its centre, normalised coordinates (the module docstring).
    semi_axes : tuple of float
        Semi-axes along (z', y', x').
    rotation : numpy.ndarray
        (3, 3) rotation from world offsets (z, y, x) to the ellipsoid's frame.
    value : complex
        delta + i beta added inside.
    """

    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    rotation: np.ndarray
    value: complex


def euler_rotation(phi_deg: float, theta_deg: float = 0.0, psi_deg: float = 0.0) -> np.ndarray:
    """Schabel's z-x-z Euler matrix acting on (x, y, z) vectors (MATLAB ``phantom3d``, tomopy ``shepp3d``).

    Parameters
    ----------
    phi_deg : float
        First rotation, about z, in degrees.
    theta_deg : float, optional
        Second rotation, about x, in degrees. Default 0.
    psi_deg : float, optional
        Third rotation, about z, in degrees. Default 0.

    Returns
    -------
    numpy.ndarray
        (3, 3) float64 rotation matrix.
    """
    p, t, s = (math.radians(v) for v in (phi_deg, theta_deg, psi_deg))
    cp, sp, ct, st, cs, ss = math.cos(p), math.sin(p), math.cos(t), math.sin(t), math.cos(s), math.sin(s)
    return np.array([
        [cs * cp - ct * sp * ss, cs * sp + ct * cp * ss, ss * st],
        [-ss * cp - ct * sp * cs, -ss * sp + ct * cp * cs, cs * st],
        [st * sp, -st * cp, ct],
    ])


#: (x, y, z) <-> (z, y, x) permutation
_REV = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])

#: The 3D modified Shepp-Logan phantom (Schabel's ``phantom3d``, also tomopy's ``shepp3d``): the 2D
#: Shepp-Logan / Kak-Slaney ellipses (Kak & Slaney 1988, p. 55) extended to ellipsoids, with Toft's (1996)
#: contrast-enhanced intensities, so values lie in [0, 1] (skull 1, brain 0.2, features 0 .. 0.4).
#: Columns: A, a, b, c (semi-axes along x', y', z'), x0, y0, z0, phi, theta, psi (degrees).
MODIFIED_SHEPP_LOGAN = (
    (1.0, 0.6900, 0.920, 0.810, 0.00, 0.0000, 0.00, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.780, 0.00, -0.0184, 0.00, 0.0, 0.0, 0.0),
    (-0.2, 0.1100, 0.310, 0.220, 0.22, 0.0000, 0.00, -18.0, 0.0, 10.0),
    (-0.2, 0.1600, 0.410, 0.280, -0.22, 0.0000, 0.00, 18.0, 0.0, 10.0),
    (0.1, 0.2100, 0.250, 0.410, 0.00, 0.3500, -0.15, 0.0, 0.0, 0.0),
    (0.1, 0.0460, 0.046, 0.050, 0.00, 0.1000, 0.25, 0.0, 0.0, 0.0),
    (0.1, 0.0460, 0.046, 0.050, 0.00, -0.1000, 0.25, 0.0, 0.0, 0.0),
    (0.1, 0.0460, 0.023, 0.050, -0.08, -0.6050, 0.00, 0.0, 0.0, 0.0),
    (0.1, 0.0230, 0.023, 0.020, 0.00, -0.6060, 0.00, 0.0, 0.0, 0.0),
    (0.1, 0.0230, 0.046, 0.020, 0.06, -0.6050, 0.00, 0.0, 0.0, 0.0),
)


def shepp_logan_ellipsoids() -> list[Ellipsoid]:
    """The ten ellipsoids of the modified 3D Shepp-Logan phantom.

    As in ``phantom3d``, a point r = (x, y, z) is inside when |diag(1/(a,b,c)) (alpha r - r0)| <= 1, i.e.
    the centre r0 is given in the rotated frame (world centre alpha^T r0).

    Returns
    -------
    list of Ellipsoid
        The rows of :data:`MODIFIED_SHEPP_LOGAN` in (z, y, x) coordinates, values A (real).
    """
    out = []
    for A, a, b, c, x0, y0, z0, phi, theta, psi in MODIFIED_SHEPP_LOGAN:
        alpha = euler_rotation(phi, theta, psi)
        center_xyz = alpha.T @ np.array([x0, y0, z0])
        out.append(Ellipsoid(tuple(_REV @ center_xyz), (c, b, a), _REV @ alpha @ _REV, A))
    return out


def _axis_coords(count: int, n: int, flip: bool) -> np.ndarray:
    """Normalised coordinates of the ``SUPERSAMPLE`` sub-samples of each of ``count`` voxels (scale n)."""
    s = SUPERSAMPLE
    k = (np.arange(count * s) + 0.5) / s  # continuous coordinate of every sub-sample
    x = (k - count / 2.0) * (2.0 / n)
    return (-x if flip else x).astype(np.float64)


def _voxel_mean(samples: np.ndarray) -> np.ndarray:
    """Average (s*a, s*b, s*c) sub-samples into (a, b, c) voxels."""
    s = SUPERSAMPLE
    a, b, c = (d // s for d in samples.shape)
    return samples.reshape(a, s, b, s, c, s).mean(axis=(1, 3, 5))


def rasterize_ellipsoids(ellipsoids, n: int, nz: int | None = None, dtype=np.complex64) -> np.ndarray:
    """Sum of ``value`` x (fraction of each voxel inside the ellipsoid) over ``ellipsoids``: (nz, n, n).

    Each ellipsoid is evaluated only on the voxels of its bounding box (2 x 2 x 2 sub-samples each).

    Parameters
    ----------
    ellipsoids : iterable of Ellipsoid
        The ellipsoids, in normalised coordinates.
    n : int
        Voxels along y and x (the normalising scale).
    nz : int, optional
        Slices along z; default ``n``.
    dtype : dtype_like, optional
        Dtype of the volume. Default complex64.

    Returns
    -------
    numpy.ndarray
        Array of shape (nz, n, n).
    """
    nz = n if nz is None else int(nz)
    vol = np.zeros((nz, n, n), dtype=dtype)
    axes = (_axis_coords(nz, n, True), _axis_coords(n, n, True), _axis_coords(n, n, False))
    counts = (nz, n, n)
    s = SUPERSAMPLE
    for e in ellipsoids:
        R = np.asarray(e.rotation, dtype=np.float64)
        semi = np.asarray(e.semi_axes, dtype=np.float64)
        half = np.sqrt(((R * semi[:, None]) ** 2).sum(axis=0))  # world-axis half extents
        sl = []
        for ax in range(3):
            sign = -1.0 if ax < 2 else 1.0  # z and y run downwards
            c = e.center[ax] * sign
            lo_cont = (c - half[ax]) * n / 2.0 + counts[ax] / 2.0
            hi_cont = (c + half[ax]) * n / 2.0 + counts[ax] / 2.0
            lo = max(math.floor(lo_cont) - 1, 0)
            hi = min(math.ceil(hi_cont) + 1, counts[ax])
            sl.append(slice(lo, hi))
        if any(q.stop <= q.start for q in sl):
            continue
        d = [axes[ax][sl[ax].start * s: sl[ax].stop * s] - e.center[ax] for ax in range(3)]
        dz, dy, dx = d[0][:, None, None], d[1][None, :, None], d[2][None, None, :]
        q = np.zeros((d[0].size, d[1].size, d[2].size))
        for k in range(3):
            q += ((R[k, 0] * dz + R[k, 1] * dy + R[k, 2] * dx) / semi[k]) ** 2
        frac = _voxel_mean((q <= 1.0).astype(np.float32))
        vol[tuple(sl)] += (e.value * frac).astype(dtype)
    return vol


def shepp_logan_3d(n: int, nz: int | None = None, dtype=np.complex64) -> np.ndarray:
    """Modified 3D Shepp-Logan phantom as a pure-phase object (seed 001, section 3), shape (nz, n, n).

    The ten ellipsoids of :data:`MODIFIED_SHEPP_LOGAN` (Kak-Slaney geometry, Toft's intensities): the real
    part (delta-like) lies in [0, 1], the imaginary part is 0. Seed 001 uses n = 128 (its Fig. 1(a) shows
    slice 64, the central one, which here shows the classic modified Shepp-Logan section).

    Parameters
    ----------
    n : int
        Voxels along y and x, at least 2.
    nz : int, optional
        Slices along z; default ``n`` (fewer cut the central slab, more pad with empty slices).
    dtype : dtype_like, optional
        Complex dtype of the volume. Default complex64.

    Returns
    -------
    numpy.ndarray
        Array of shape (nz, n, n).

    Raises
    ------
    ValueError
        When ``n`` < 2.
    """
    if n < 2:
        raise ValueError(f"phantom size must be at least 2, got {n}")
    vol = rasterize_ellipsoids(shepp_logan_ellipsoids(), int(n), nz, dtype=dtype)
    vol.real = np.clip(vol.real, 0.0, 1.0)  # rounding of the partial-volume sums only
    vol.imag = 0.0
    return vol


# --- seed 002's wire phantom -------------------------------------------------------------------------

@dataclass(frozen=True)
class Wire:
    """A straight cylindrical wire, in normalised coordinates.

    Parameters
    ----------
    material : int
        Index into :data:`MATERIALS`.
    point : tuple of float
        A point on its axis, (z, y, x).
    direction : tuple of float
        Its direction (z, y, x) (unit length as :func:`wire_layout` builds it).
    radius : float
        Its radius.
    """

    material: int
    point: tuple[float, float, float]
    direction: tuple[float, float, float]
    radius: float


def wire_layout(seed: int = 0) -> list[Wire]:
    """Interlaced wires of seed 002's four materials, cycling Au, Pt, ZnO, TiO2.

    Four vertical wires (along the rotation axis) at the corners of a square, horizontal wires along x
    and along y passing between them at different heights, and two tilted wires through the centre.
    ``seed`` jitters positions (by up to 0.04) and tilts reproducibly; seed 0 is the reference layout.
    Wires are drawn in order, later ones over earlier ones where they cross.

    Parameters
    ----------
    seed : int, optional
        Jitter seed; 0 (default) is the reference layout.

    Returns
    -------
    list of Wire
        Ten wires of radius 0.1.
    """
    rng = np.random.default_rng(seed)
    r = 0.1
    base = [
        (0, (0.0, -0.4, -0.4), (1.0, 0.0, 0.0)),
        (1, (0.0, 0.4, 0.4), (1.0, 0.0, 0.0)),
        (2, (0.0, -0.4, 0.4), (1.0, 0.0, 0.0)),
        (3, (0.0, 0.4, -0.4), (1.0, 0.0, 0.0)),
        (1, (-0.55, 0.0, 0.0), (0.0, 0.0, 1.0)),
        (0, (0.55, 0.0, 0.0), (0.0, 0.0, 1.0)),
        (3, (-0.2, 0.0, 0.0), (0.0, 1.0, 0.0)),
        (2, (0.2, 0.0, 0.0), (0.0, 1.0, 0.0)),
        (0, (0.0, 0.0, 0.0), (0.45, 0.63, 0.63)),
        (3, (0.0, 0.0, 0.0), (-0.45, 0.63, -0.63)),
    ]
    wires = []
    for mat, p, d in base:
        p = np.asarray(p) + (rng.uniform(-0.04, 0.04, 3) if seed else 0.0)
        d = np.asarray(d) + (rng.uniform(-0.08, 0.08, 3) if seed else 0.0)
        d = d / np.linalg.norm(d)
        wires.append(Wire(mat, tuple(p), tuple(d), r))
    return wires


def _wire_labels(wires, z, y, x) -> np.ndarray:
    """Material label (0 = vacuum, k + 1 = MATERIALS[k]) at the sample points z x y x x."""
    Z, Y, X = z[:, None, None], y[None, :, None], x[None, None, :]
    lab = np.zeros((z.size, y.size, x.size), dtype=np.int8)
    inside_box = ((Y ** 2 + X ** 2) <= 0.9 ** 2) & (np.abs(Z) <= 0.9)  # inside the rotation cylinder
    for w in wires:
        dz, dy, dx = Z - w.point[0], Y - w.point[1], X - w.point[2]
        t = dz * w.direction[0] + dy * w.direction[1] + dx * w.direction[2]
        dist2 = dz ** 2 + dy ** 2 + dx ** 2 - t ** 2
        lab[(dist2 <= w.radius ** 2) & inside_box] = w.material + 1
    return lab


def wire_phantom(n: int = 64, energy_ev: float = 5000.0, voxel_m: float = 10e-9, seed: int = 0,
                 dtype=np.complex64) -> np.ndarray:
    """Seed 002's phantom (section 3.1): interlaced wires of Au, Pt, ZnO and TiO2 in an n^3 box.

    The seed uses 64^3 voxels of 10 nm at 5 keV. Voxels hold u = delta + i beta of their material
    (:func:`hpc_pt.simulate.materials.refractive_index`, densities 19.32, 21.45, 5.606, 4.23 g/cm^3;
    the seed's "9.32" for gold is a typo for 19.32) and vacuum (0) elsewhere, area-weighted at edges.
    The layout (:func:`wire_layout`) is defined in fractions of the box, so ``voxel_m`` only sets the
    physical scale (wire diameter 0.1 n voxels: 64 nm at the seed's 64 x 10 nm).

    Parameters
    ----------
    n : int, optional
        Box edge in voxels, at least 2. Default 64.
    energy_ev : float, optional
        Photon energy in eV, for the refractive indices. Default 5000.
    voxel_m : float, optional
        Voxel size in metres, positive. Default 10e-9.
    seed : int, optional
        Layout jitter (:func:`wire_layout`). Default 0.
    dtype : dtype_like, optional
        As for :func:`shepp_logan_3d`.

    Returns
    -------
    numpy.ndarray
        Array of shape (n, n, n).

    Raises
    ------
    ValueError
        When ``n`` < 2 or ``voxel_m`` is not positive.
    InputError
        When the refractive index cannot be computed at ``energy_ev`` (:func:`refractive_index`).
    """
    if n < 2:
        raise ValueError(f"phantom size must be at least 2, got {n}")
    if not voxel_m > 0:
        raise ValueError(f"voxel size must be positive, got {voxel_m} m")
    table = np.zeros(len(MATERIALS) + 1, dtype=np.complex128)
    for k, m in enumerate(MATERIALS):
        delta, beta = refractive_index(m.formula, m.density_g_cm3, energy_ev)
        table[k + 1] = delta + 1j * beta
    wires = wire_layout(seed)
    zc, yc, xc = _axis_coords(n, n, True), _axis_coords(n, n, True), _axis_coords(n, n, False)
    vol = np.empty((n, n, n), dtype=dtype)
    s = SUPERSAMPLE
    block = max(1, 2 ** 22 // (4 * n * n * s ** 3))  # voxel slices per block, ~4 M sub-samples
    for z0 in range(0, n, block):
        z1 = min(n, z0 + block)
        lab = _wire_labels(wires, zc[z0 * s: z1 * s], yc, xc)
        vals = table[lab]
        vol[z0:z1] = (_voxel_mean(vals.real) + 1j * _voxel_mean(vals.imag)).astype(dtype)
    return vol


def random_ellipsoids(n: int, count: int = 12, seed: int = 0, nz: int | None = None,
                      dtype=np.complex64) -> np.ndarray:
    """``count`` randomly placed, sized and oriented ellipsoids, reproducible by ``seed``: (nz, n, n).

    Each ellipsoid adds delta ~ U(0.2, 1) and beta = delta x U(0.05, 0.5), so both parts are
    non-negative; every ellipsoid lies inside the sphere of radius 0.9 (inside the rotation cylinder).

    Parameters
    ----------
    n : int
        Voxels along y and x.
    count : int, optional
        Number of ellipsoids, at least 1. Default 12.
    seed : int, optional
        Random seed. Default 0.
    nz : int, optional
        Slices along z; default ``n``.
    dtype : dtype_like, optional
        As for :func:`shepp_logan_3d`.

    Returns
    -------
    numpy.ndarray
        Array of shape (nz, n, n), real and imaginary parts non-negative.

    Raises
    ------
    ValueError
        When fewer than one ellipsoid is asked for (``count`` < 1).
    """
    if count < 1:
        raise ValueError(f"need at least one ellipsoid, got {count}")
    rng = np.random.default_rng(seed)
    ells = []
    for _ in range(int(count)):
        semi = rng.uniform(0.08, 0.35, 3)
        rot, _r = np.linalg.qr(rng.normal(size=(3, 3)))
        reach = 0.9 - semi.max()
        direction = rng.normal(size=3)
        center = direction / np.linalg.norm(direction) * reach * rng.uniform(0.0, 1.0) ** (1 / 3)
        delta = rng.uniform(0.2, 1.0)
        beta = delta * rng.uniform(0.05, 0.5)
        ells.append(Ellipsoid(tuple(center), tuple(semi), rot, complex(delta, beta)))
    vol = rasterize_ellipsoids(ells, int(n), nz, dtype=dtype)
    np.maximum(vol.real, 0.0, out=vol.real)
    np.maximum(vol.imag, 0.0, out=vol.imag)
    return vol
