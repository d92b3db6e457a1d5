"""The joint forward model: volume u -> projections -> object field psi -> far field -> intensities.

    linear (seed 001 Eq. 1, Rytov):          psi_theta = Pad(P_theta u)
    exp (seeds 000/002, projection approx.): psi_theta = exp(i c Pad(P_theta u)),  c = k dz
    far field D_{j,theta} = F(w o S_j psi_theta),   f_{j,theta} = |D_{j,theta}|^2
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp
from .expmap import ExpMap
from .pad import Pad
from .projector import Projector
from .ptycho import Ptychography

MODELS = ("linear", "exp")


class ForwardModel:
    """Composition of :class:`Projector`, :class:`Pad`, the optional :class:`ExpMap` and :class:`Ptychography`.

    Parameters
    ----------
    volume_shape : (nz, n, n).
    angles : radians, shape (A,).
    probe : (m1, m2) complex.
    positions : list of A arrays (F_a, 2) of top-left (row, col) positions in the field (ragged allowed).
    field_shape : (H, W) per angle; the volume's nz rows sit at row ``row_offset`` (default (H - nz) // 2);
        the rotation axis is at column ``center`` (default (W-1)/2).
    model : "linear" or "exp"; c : k dz for the exp model.
    dtype : complex64 or complex128.
    gpu : build cufinufft projector plans (inputs CuPy; a CuPy probe puts the far field on the GPU too).
    frame_batch : frames per far-field batch of :class:`Ptychography` (None: its default).

    Raises
    ------
    ValueError
        For an unknown ``model``, non-square slices or a number of position sets other than of angles.
    """

    def __init__(self, volume_shape, angles, probe, positions, field_shape, row_offset=None, center=None,
                 model="linear", c=1.0, dtype=np.complex64, gpu=False, frame_batch=None):
        if model not in MODELS:
            raise ValueError(f"unknown forward model {model!r}; use one of {MODELS}")
        nz, n, n2 = volume_shape
        if n != n2:
            raise ValueError(f"volume slices must be square, got {volume_shape}")
        H, W = (int(s) for s in field_shape)
        A = len(angles)
        if len(positions) != A:
            raise ValueError(f"{len(positions)} position sets for {A} angles")
        self.model = model
        self.dtype = np.dtype(dtype)
        self.angles = np.asarray(angles, dtype=np.float64)
        self.volume_shape = (int(nz), int(n), int(n))
        self.field_shape = (H, W)
        row_offset = (H - nz) // 2 if row_offset is None else int(row_offset)
        self.projector = Projector(n, nz, self.angles, n_det=W, center=center, dtype=self.dtype, gpu=gpu)
        self.pad = Pad((A, nz, W), (H, W), (row_offset, 0), dtype=self.dtype)
        self.counts = np.array([len(p) for p in positions], dtype=np.int64)
        allpos = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in positions])
        aidx = np.repeat(np.arange(A), self.counts)
        self.ptycho = Ptychography(probe, allpos, (A, H, W), angle_index=aidx, dtype=self.dtype,
                                   frame_batch=frame_batch)
        self.expmap = ExpMap(c) if model == "exp" else None

    def projections(self, u):
        """P u on the field rows: (A, H, W) (zero outside the volume's rows).

        Parameters
        ----------
        u : array (nz, n, n)
            The volume (delta + i beta).

        Returns
        -------
        array (A, H, W)
            ``pad.fwd(projector.fwd(u))``.
        """
        return self.pad.fwd(self.projector.fwd(u))

    def exit_wave(self, u):
        """psi for every angle: (A, H, W).

        Parameters
        ----------
        u : array (nz, n, n)
            The volume.

        Returns
        -------
        array (A, H, W)
            Pad(P u) (linear model) or exp(i c Pad(P u)) (exp model).
        """
        x = self.projections(u)
        return x if self.expmap is None else self.expmap.fwd(x)

    def farfield(self, u):
        """D(w, u) for every frame of every angle, concatenated by angle: (sum F_a, m1, m2).

        Parameters
        ----------
        u : array (nz, n, n), the volume

        Returns
        -------
        complex array (sum F_a, m1, m2)
        """
        return self.ptycho.fwd(self.exit_wave(u))

    def intensity(self, u):
        """|D(w, u)|^2: (sum F_a, m1, m2), real.

        Parameters
        ----------
        u : array (nz, n, n)

        Returns
        -------
        real array (sum F_a, m1, m2)
            float32 for complex64 models, float64 otherwise; computed one frame batch at a time.
        """
        psi = self.exit_wave(u)
        xp = get_xp(psi)
        pt = self.ptycho
        out = xp.empty(pt.shape_out, dtype=np.float32 if self.dtype == np.complex64 else np.float64)
        for sl in pt.batches():  # one batch of complex far field at a time
            d = pt.fwd(psi, sl)
            out[sl] = d.real ** 2 + d.imag ** 2
        return out

    def split(self, frames):
        """Split a (sum F_a, ...) array into the per-angle list.

        Parameters
        ----------
        frames : array (sum F_a, ...)

        Returns
        -------
        list of arrays
            One (F_a, ...) array (a view) per angle.
        """
        cuts = np.cumsum(self.counts)[:-1].tolist()  # Python ints: both namespaces take them
        return get_xp(frames).split(frames, cuts) if len(self.counts) > 1 else [frames]
