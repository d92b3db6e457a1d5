"""One pass over the frames: data objective, R-factor sums and the data gradient, batch by batch.

The far fields z = D psi of every frame are the largest temporaries of the exponential-model solvers (GD,
three-way ADMM, the 2-step's final data fit): one complex array of every frame's detector pixels, plus the
moduli and residuals derived from it. The solvers need z only through three reductions, so
:func:`farfield_pass` forms them over the operator's frame batches (:meth:`Ptychography.batches`) and never
holds more than one batch of far-field-sized arrays (docs/architecture.md §4):

- the data objective per frame, sum over pixels of G(z) (seed 001 Eq. 2 / seed 002 Eq. 4;
  :func:`hpc_pt.solvers.prox.frame_objective`),
- sum over valid pixels of | |z| - sqrt f | (the R-factor's numerator; its denominator is the fixed
  sum of sqrt f),
- optionally the field-space gradient D^H r(z), r = 2 dG/d conj(z) (:func:`hpc_pt.solvers.prox.data_residual`;
  seed 002 Eq. 5 up to the exponential map and the projection).

With a single batch (every problem up to ``FRAME_BATCH_BYTES`` of far field) the arithmetic is that of the
unbatched expressions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import get_xp, is_cupy
from .prox import data_residual, frame_objective


@dataclass
class FarfieldPass:
    """What :func:`farfield_pass` forms: the three reductions of the far fields.

    Parameters
    ----------
    per_frame : array
        (F,) data objective of each frame (this shard's frames).
    abs_misfit : float
        The sum over this shard's valid pixels of | |z| - sqrt f |.
    field : array, optional
        D^H r(z) in the object field's shape, when asked for.
    misfit_per_frame : array, optional
        (F,) ``abs_misfit``'s sum per frame (for rank-independent reductions).
    """

    per_frame: object  # (F,) data objective of each frame (this shard's frames)
    abs_misfit: float  # sum over this shard's valid pixels of | |z| - sqrt f |
    field: object = None  # D^H r(z) in the object field's shape, when asked for
    misfit_per_frame: object = None  # (F,) the same sum per frame (for rank-independent reductions)

    @property
    def objective(self) -> float:
        """This shard's data objective (sum of ``per_frame``)."""
        return float(self.per_frame.sum())


def farfield_pass(pt, psi, f, sqrt_f, metric: str, mask=None, grad: bool = False) -> FarfieldPass:
    """Objective per frame, R-factor numerator and (``grad``) D^H r(z) for z = pt.fwd(psi) (module docstring).

    One frame batch of ``pt`` at a time.

    Parameters
    ----------
    pt : Ptychography
        The operator: its frames, batches and probe.
    psi : array
        The object fields (``pt.field_shape``).
    f, sqrt_f : array
        The measured intensities (F, m1, m2) and their square roots.
    metric : str
        "gaussian" or "poisson" (:func:`~hpc_pt.solvers.prox.frame_objective`).
    mask : array, optional
        (m1, m2), True where a detector pixel is valid.
    grad : bool
        Also form D^H r(z), as ``field``.

    Returns
    -------
    FarfieldPass
        The reductions (``field`` None without ``grad``).
    """
    xp = get_xp(psi)
    per_frame = xp.zeros(pt.n_frames, dtype=psi.real.dtype)
    misfit_frames = xp.zeros(pt.n_frames, dtype=psi.real.dtype)
    misfit = 0.0
    field = xp.zeros(pt.field_shape, dtype=pt.dtype) if grad else None
    for sl in pt.batches():
        z = pt.fwd(psi, sl)
        if not is_cupy(z) and z.dtype == np.complex64 and z.flags.c_contiguous:
            from ._fused import farfield_reduce  # one compiled pass (numba loads on first use)

            obj_b, mis_b = farfield_reduce(z, f[sl], sqrt_f[sl], mask, metric, grad)
            per_frame[sl] = obj_b
            misfit_frames[sl] = mis_b
            misfit += float(misfit_frames[sl].sum())
            if grad:
                pt.adj(z, sl, out=field)  # z now holds the residual
            del z
            continue
        mag = xp.abs(z)
        fb, ab = f[sl], sqrt_f[sl]
        per_frame[sl] = frame_objective(mag, fb, ab, metric, mask)
        d = xp.abs(mag - ab)
        if mask is not None:
            d = d * mask
        misfit_frames[sl] = d.reshape(d.shape[0], -1).sum(axis=1)  # one frame per row: batch-independent
        misfit += float(misfit_frames[sl].sum())
        del d
        del mag
        if grad:
            pt.adj(data_residual(z, fb, ab, metric, mask), sl, out=field)
        del z
    return FarfieldPass(per_frame=per_frame, abs_misfit=misfit, field=field, misfit_per_frame=misfit_frames)


__all__ = ["FarfieldPass", "farfield_pass"]
