"""Far-field ptychography operator: D_j psi = F(w o S_j psi) (seed 001 Eq. 1, without the modulus).

``S_j`` cuts the probe-sized window at scan position j out of the object field with bilinear sub-pixel
interpolation, ``w`` is the probe, ``F`` the orthonormal 2D FFT (DC at index 0, no fftshift).
All frames of all angles are processed in one batched gather / FFT / scatter: positions may be ragged
across angles because frames are addressed by a flat (angle, row, col) index.

Position convention (docs/conventions.md): ``positions[f] = (row, col)`` of the window's top-left corner
in the object field of its angle, in pixels, float. A window covers rows row .. row + m1 - 1 (plus one more
row when the position is fractional, for the interpolation), and must lie inside the field.
"""
from __future__ import annotations

import numpy as np

from ..backend import asarray_on, fft2c, get_xp, ifft2c, scatter_add
from .base import LinearOperator, check_shape


def validate_positions(positions, probe_shape, field_shape) -> None:
    """Raise ValueError if any window (with its interpolation margin) leaves the object field."""
    pos = np.asarray(positions, dtype=np.float64)
    H, W = field_shape[-2:]
    m1, m2 = probe_shape
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must have shape (frames, 2), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions contain NaN or infinite values")
    lo_ok = (pos >= 0).all(axis=1)
    need = np.ceil(pos) + np.array([m1, m2])  # last index touched + 1
    hi_ok = (need[:, 0] <= H) & (need[:, 1] <= W)
    bad = np.flatnonzero(~(lo_ok & hi_ok))
    if bad.size:
        f = int(bad[0])
        raise ValueError(
            f"{bad.size} scan positions put the {m1}x{m2} probe window outside the {H}x{W} object field "
            f"(first: frame {f} at row {pos[f, 0]:.2f}, col {pos[f, 1]:.2f})")


class Ptychography(LinearOperator):
    """psi field (H, W) or (A, H, W) -> far-field frames (F, m1, m2).

    Parameters
    ----------
    probe : complex array (m1, m2).
    positions : (F, 2) top-left (row, col) of each window, pixels, float.
    field_shape : (H, W) for one angle or (A, H, W) for a stack of angles.
    angle_index : (F,) int, the angle (first field axis) of each frame; required when A is given.
    """

    def __init__(self, probe, positions, field_shape, angle_index=None, dtype=np.complex64):
        self.dtype = np.dtype(dtype)
        xp = get_xp(probe)
        self.probe = probe.astype(self.dtype, copy=False)
        m1, m2 = probe.shape
        field_shape = tuple(int(s) for s in field_shape)
        stacked = len(field_shape) == 3
        A = field_shape[0] if stacked else 1
        H, W = field_shape[-2:]
        pos = np.asarray(positions, dtype=np.float64)
        validate_positions(pos, (m1, m2), field_shape)
        F = pos.shape[0]
        if angle_index is None:
            if stacked and A != 1:
                raise ValueError("angle_index is required when the field is a stack of angles")
            aidx = np.zeros(F, dtype=np.int64)
        else:
            aidx = np.asarray(angle_index, dtype=np.int64).ravel()
            if aidx.shape[0] != F:
                raise ValueError(f"angle_index has {aidx.shape[0]} entries for {F} positions")
            if F and (aidx.min() < 0 or aidx.max() >= A):
                raise ValueError(f"angle_index out of range 0..{A - 1}")
        self.field_shape = field_shape
        self.shape_in = field_shape
        self.shape_out = (F, m1, m2)
        ipos = np.floor(pos).astype(np.int64)
        frac = pos - ipos
        self.fractional = bool(np.any(frac != 0))
        base = aidx * (H * W) + ipos[:, 0] * W + ipos[:, 1]
        grid = (np.arange(m1)[:, None] * W + np.arange(m2)[None, :]).astype(np.int64)
        self._base = asarray_on(base, probe)
        self._grid = asarray_on(grid, probe)
        self._W = W
        rdt = np.float32 if self.dtype == np.complex64 else np.float64
        self._fy = asarray_on(frac[:, 0].astype(rdt)[:, None, None], probe)
        self._fx = asarray_on(frac[:, 1].astype(rdt)[:, None, None], probe)
        self._size = int(np.prod(field_shape))
        self._xp = xp

    # -- window extraction S_j and its adjoint -------------------------------------------------------
    def _corners(self):
        """(offset, weight) of the four bilinear taps; one tap when every position is integral."""
        if not self.fractional:
            return [(0, None)]
        fy, fx = self._fy, self._fx
        return [(0, (1 - fy) * (1 - fx)), (1, (1 - fy) * fx), (self._W, fy * (1 - fx)), (self._W + 1, fy * fx)]

    def _taps(self):
        idx = self._base[:, None, None] + self._grid[None]
        for off, wgt in self._corners():
            yield (idx + off) if off else idx, wgt

    def patches(self, psi):
        """S_j psi for every frame: (F, m1, m2)."""
        flat = psi.reshape(-1)
        out = None
        for idx, wgt in self._taps():
            if wgt is None:
                return flat[idx]
            # zero-weight taps at the field edge may point one past the end: clip them
            vals = flat[self._xp.minimum(idx, self._size - 1)] * wgt
            out = vals if out is None else out + vals
        return out

    def patches_adj(self, patches):
        """Sum_j S_j^T patches_j into a zero field (accumulating overlaps)."""
        xp = get_xp(patches)
        field = xp.zeros(self._size, dtype=self.dtype)
        for idx, wgt in self._taps():
            vals = patches if wgt is None else patches * wgt
            scatter_add(field, xp.minimum(idx, self._size - 1).ravel(), vals.ravel())
        return field.reshape(self.field_shape)

    # -- full operator ---------------------------------------------------------------------------------
    def fwd(self, psi):
        """Far field F(w o S_j psi) of every frame: (F, m1, m2)."""
        check_shape(psi, self.shape_in, "Ptychography.fwd")
        return fft2c(self.probe * self.patches(psi)).astype(self.dtype, copy=False)

    def adj(self, y):
        """Sum_j S_j^T (conj(w) o F^H y_j): (F, m1, m2) -> field."""
        check_shape(y, self.shape_out, "Ptychography.adj")
        return self.patches_adj(self._xp.conj(self.probe) * ifft2c(y))

    def illumination(self):
        """W = sum_j S_j^T |w|^2, the probe intensity summed over the scan (seed 001 Algorithm 1)."""
        xp = self._xp
        inten = xp.broadcast_to(xp.abs(self.probe) ** 2, self.shape_out).astype(self.dtype)
        return self.patches_adj(inten).real


def intensity(farfield):
    """|D psi|^2 per detector pixel."""
    xp = get_xp(farfield)
    return xp.abs(farfield) ** 2
