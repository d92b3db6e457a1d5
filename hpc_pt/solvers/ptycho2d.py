"""2D ptychography of one angle's object field (or a stack of independent angles): ePIE, DM and ML-CG.

Model (same operator as the joint solvers, :class:`hpc_pt.operators.Ptychography`): the far field of frame
j is ``D_j = F(w o S_j psi)`` with ``S_j`` the (bilinear, sub-pixel) window at the top-left position
``positions[j]``, ``F`` the orthonormal 2D FFT with DC at index 0, and the measurement ``f_j = |D_j|^2``.
Detector pixels where ``mask`` is False carry no data constraint (the Fourier projection leaves them
alone; they drop out of the likelihood and the R-factor).

A "field" is (H, W) for one angle or (A, H, W) with ``angle_index`` for a stack of angles that share the
probe: the angles are independent problems except for the shared probe (and, for ML, the common CG step),
which is how :mod:`hpc_pt.solvers.twostep` solves all angles of a shard in one batched pass.

Algorithms
----------
``epie``  ePIE (Maiden & Rodenburg 2009; seed 003 Eqs. 10-12)::

        psi_j   = w o S_j O                                    (10)
        psi'_j  = F^-1 { sqrt(f_j) F psi_j / |F psi_j| }        (11)
        O      += alpha S_j^T [conj(w) / max|w|^2 (psi'_j - psi_j)]        (12)
        w      += beta  conj(S_j O) / max|S_j O|^2 (psi'_j - psi_j)        (probe, with the old S_j O)

    ePIE is sequential over frames. Here every epoch draws a random partition of the frames into
    *compact sets*: batches of frames whose probe footprints (|w|^2 >= ``footprint`` x peak) do not
    overlap, built without a Python loop over frames by colouring a grid of footprint-sized cells (2 x 2
    parities, the k-th frame of each cell in random order going to batch k of its parity; the cell grid gets
    a random origin each epoch) and visiting the batches in random order. Inside a batch the object updates
    touch disjoint footprints, so applying them together equals applying them one after the other (up to
    the probe's tails below the footprint threshold). The probe update of a batch is the mean of its
    frames' ePIE probe updates (one ePIE-sized probe step per batch, not one per frame).
    Python loops over batches only; each batch is one gather / FFT / IFFT / scatter.

``dm``    Difference map (Thibault et al. 2009), vectorised over all frames::

        O     <- sum_j S_j^T conj(w) psi_j / (sum_j S_j^T |w|^2 + eps)                 (overlap projection)
        w     <- sum_j conj(S_j O) psi_j / (sum_j |S_j O|^2 + eps)                      (optional)
        phi_j  = w o S_j O
        psi_j <- psi_j + P_F(2 phi_j - psi_j) - phi_j

    The exit waves live in Fourier space between iterations (two FFTs per iteration); ``eps`` (a small
    fraction of the peak illumination) keeps the unilluminated object at its previous value.

``ml``    Maximum likelihood by preconditioned nonlinear conjugate gradient (Polak-Ribiere with restart,
    Thibault & Guizar-Sicairos 2012). Poisson negative log-likelihood (``noise="poisson"``)
    ``L = sum (I - f log I)`` or the Gaussian amplitude misfit ``L = 1/2 sum (sqrt I - sqrt f)^2``
    (``noise="gaussian"``), with ``I = |D|^2``. Gradients (Wirtinger, dL/d conj)::

        chi_j = F^H [ L'(I_j) D_j ],   g_O = sum_j S_j^T (conj(w) chi_j),   g_w = sum_j conj(S_j O) chi_j

    preconditioned by 1 / (illumination + delta) (object) and 1 / (sum_j |S_j O|^2 + delta) (probe).
    Exact line search: along (dO, dw) the far field is the quadratic D(t) = D0 + t D1 + t^2 D2 with
    D1 = F(dw S O + w S dO), D2 = F(dw S dO) (D2 = 0 without probe refinement), so L(t) and its first two
    derivatives cost elementwise passes only; a few safeguarded Newton steps minimise it (no extra FFT).

Initial object (``obj_init``): "ones" (free-space transmission, default), "energy" (the real constant per
angle that matches the data energy, the sensible start for the linear Rytov model whose free space is 0),
a number, or an array of the field's shape.

Distributed stacks (``comm``, DM and ML). Every quantity that couples the angles is reduced over ranks so
the result does not depend on how the angles are spread: sums (statistics, probe updates, the ML line
search and Polak-Ribiere dot products) with ``comm.sum_scalar`` / ``allreduce_sum``, and the peak
illumination that scales DM's ``eps`` and ML's preconditioner with :func:`global_max`.

Checkpoints. Every method is an :class:`~hpc_pt.solvers.base.IterativeSolver` (:class:`EPIE`, :class:`DM`,
:class:`MLCG`) run by :func:`~hpc_pt.solvers.base.run` and takes a :class:`~hpc_pt.solvers.base.Checkpointer`:
its state dataclass (:class:`EPIEState`, :class:`DMState`, :class:`MLState`: the object ``obj``, the
``probe``, and the method's own carried values: DM's far-field exit waves ``Fpsi``; ML's previous
gradients, search directions, ``gh_prev`` and ``t_last``; ePIE's random generator state ``rng``) goes out
after the iterations the checkpointer asks for, and a run resumed from it is bitwise-equal to an
uninterrupted one on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backend import fft2c, get_xp, ifft2c, real_dtype, to_numpy
from ..operators import Ptychography
from ..comm import Comm, SerialComm
from .base import NO_CHECKPOINTS, Checkpointer, History, IterativeSolver, run, state_dict

METHODS = ("epie", "dm", "ml")


@dataclass
class Ptycho2DResult:
    """Recovered object field ((H, W) or (A, H, W)), probe (m1, m2), per-iteration history, solver state.

    Unpacks as ``obj, probe, history = result``.

    Parameters
    ----------
    obj : array
        The object field, (H, W) or (A, H, W).
    probe : array
        The probe (m1, m2), refined or as given.
    history : History
        One row per iteration (per epoch for ePIE).
    state : dict
        The method's name and values of its own (ePIE: the batch extent; ML: the noise model).
    """

    obj: object
    probe: object
    history: History
    state: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.obj, self.probe, self.history))


class _Problem:
    """Frames, mask, operator and the per-pixel helpers every method shares."""

    def __init__(self, frames, positions, probe, field_shape, angle_index, mask, dtype, comm: Comm | None,
                 frame_batch: int | None = None):
        xp = get_xp(frames)
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.rdtype = real_dtype(self.dtype)
        self.comm = comm if comm is not None else SerialComm()
        field_shape = tuple(int(s) for s in field_shape)
        if frames.ndim != 3 or tuple(frames.shape[1:]) != tuple(probe.shape):
            raise ValueError(f"frames {tuple(frames.shape)} must be (F, {probe.shape[0]}, {probe.shape[1]}) "
                             "to match the probe")
        if len(positions) != frames.shape[0]:
            raise ValueError(f"{len(positions)} positions for {frames.shape[0]} frames")
        self.positions = np.asarray(to_numpy(positions), dtype=np.float64).reshape(-1, 2)
        self.angle_index = (np.zeros(len(self.positions), np.int64) if angle_index is None
                            else np.asarray(to_numpy(angle_index), np.int64).ravel())
        self.field_shape = field_shape
        self.op = Ptychography(xp.asarray(probe).astype(self.dtype), self.positions, field_shape,
                               angle_index=angle_index if len(field_shape) == 3 else None, dtype=self.dtype,
                               frame_batch=frame_batch)
        self.f = xp.maximum(frames.astype(self.rdtype, copy=False), 0)
        self.a = xp.sqrt(self.f)
        if mask is None:
            self.mask = None
        else:
            m = xp.asarray(mask).astype(bool)
            if m.shape != tuple(probe.shape):
                raise ValueError(f"mask {m.shape} must match the frame shape {tuple(probe.shape)}")
            self.mask = None if bool(m.all()) else m
        w = self.mask if self.mask is not None else 1.0
        self.sum_a = self.comm.sum_scalar(float((self.a * w).sum()))
        self.sum_f = self.comm.sum_scalar(float((self.f * w).sum()))

    # -- data terms ---------------------------------------------------------------------------------
    def fourier_project(self, d):
        """Replace the modulus of ``d`` by sqrt(f) on valid pixels (phase 1 where d = 0)."""
        xp = self.xp
        mag = xp.abs(d)
        nz = mag > 0
        out = xp.where(nz, d * (self.a / xp.where(nz, mag, 1)), self.a).astype(self.dtype, copy=False)
        return out if self.mask is None else xp.where(self.mask, out, d)

    def amp_stats(self, d):
        """(0.5 sum (|d| - sqrt f)^2, R-factor) over valid pixels, reduced over ranks."""
        xp = self.xp
        r = xp.abs(d) - self.a
        if self.mask is not None:
            r = r * self.mask
        obj = self.comm.sum_scalar(0.5 * float((r * r).sum()))
        rf = self.comm.sum_scalar(float(xp.abs(r).sum())) / max(self.sum_a, 1e-300)
        return obj, rf

    def init_object(self, obj_init):
        xp = self.xp
        shape = self.field_shape
        if isinstance(obj_init, str):
            if obj_init == "ones":
                return xp.ones(shape, dtype=self.dtype)
            if obj_init == "energy":
                return self._energy_init()
            raise ValueError(f"unknown obj_init {obj_init!r}; use 'ones', 'energy', a number or an array")
        if np.isscalar(obj_init):
            return xp.full(shape, obj_init, dtype=self.dtype)
        o = xp.asarray(obj_init).astype(self.dtype)
        if o.shape != shape:
            raise ValueError(f"obj_init has shape {o.shape}, the field is {shape}")
        return o.copy()

    def _energy_init(self):
        """Real constant per angle c_a with ||F(w S_j c_a)||^2 summed over the angle's frames = its data."""
        xp = self.xp
        A = self.field_shape[0] if len(self.field_shape) == 3 else 1
        ones = xp.ones(self.field_shape, dtype=self.dtype)
        model_e = to_numpy((xp.abs(self.op.patches(ones) * self.op.probe) ** 2).sum(axis=(1, 2)))
        f = self.f if self.mask is None else self.f * self.mask
        # valid-pixel fraction: with a mask only part of the energy is seen; assume it is spread evenly
        frac = 1.0 if self.mask is None else float(self.mask.mean())
        data_e = to_numpy(f.sum(axis=(1, 2))) / max(frac, 1e-12)
        me = np.bincount(self.angle_index, weights=model_e, minlength=A)
        de = np.bincount(self.angle_index, weights=data_e, minlength=A)
        c = np.sqrt(np.where(me > 0, de / np.where(me > 0, me, 1), 1.0))
        if len(self.field_shape) == 2:
            return xp.full(self.field_shape, c[0], dtype=self.dtype)
        return (xp.ones(self.field_shape, dtype=self.dtype) * xp.asarray(c.astype(self.rdtype))[:, None, None])

    def illumination(self):
        return self.op.illumination()


def global_max(comm: Comm, x) -> float:
    """Largest value of array ``x`` over every rank (0.0 where empty), so every rank gets the serial run's maximum.

    One allreduce of one float per rank when ``comm.size`` > 1.

    Parameters
    ----------
    comm : Comm
        The communicator.
    x : array
        This rank's (real) values.

    Returns
    -------
    float
        The maximum over all ranks.
    """
    v = float(x.max()) if getattr(x, "size", 0) else 0.0
    size = int(getattr(comm, "size", 1))
    if size <= 1:
        return v
    buf = np.zeros(size, dtype=np.float64)
    buf[int(comm.rank)] = v
    return float(np.max(comm.allreduce_sum(buf)))


def _check(method_name, iterations, probe_start):
    if int(iterations) < 0:
        raise ValueError(f"{method_name}: iterations must be >= 0, got {iterations}")
    if int(probe_start) < 0:
        raise ValueError(f"{method_name}: probe_start must be >= 0, got {probe_start}")


# ----------------------------------------------------------------------------------------------------
# ePIE
# ----------------------------------------------------------------------------------------------------

def _footprint_extent(probe, threshold: float):
    """(rows, cols) extent and top-left offset of the box where |w|^2 >= threshold * max |w|^2."""
    p = np.abs(to_numpy(probe)) ** 2
    keep = p >= threshold * p.max()
    rows = np.flatnonzero(keep.any(axis=1))
    cols = np.flatnonzero(keep.any(axis=0))
    return (int(rows[-1] - rows[0] + 2), int(cols[-1] - cols[0] + 2)), (int(rows[0]), int(cols[0]))


def compact_batches(positions, angle_index, extent, rng, max_batch=None):
    """Random partition of frames into batches whose footprints (``extent`` = (rows, cols)) do not overlap.

    Cells of ``extent`` size on a randomly offset grid; frames of one angle in cells of equal (row, col)
    parity and different cells are at least one extent apart. Batch (parity, k) takes the k-th frame (random
    order) of every cell of that parity, over all angles.

    Parameters
    ----------
    positions : array
        (F, 2) top-left window positions.
    angle_index : array
        (F,) the angle of each frame (frames of different angles never overlap).
    extent : tuple of int
        (rows, cols), a footprint's box.
    rng : numpy.random.Generator
        Draws the grid's offset and the orders.
    max_batch : int, optional
        Larger batches are split into pieces of at most this many frames.

    Returns
    -------
    list of np.ndarray
        The batches' frame indices (int arrays), in random order.
    """
    pos = np.asarray(positions, dtype=np.float64)
    F = pos.shape[0]
    if F == 0:
        return []
    er, ec = float(extent[0]), float(extent[1])
    off = rng.uniform(0, 1, size=2) * np.array([er, ec])
    ci = np.floor((pos[:, 0] + off[0]) / er).astype(np.int64)
    cj = np.floor((pos[:, 1] + off[1]) / ec).astype(np.int64)
    ci -= ci.min()
    cj -= cj.min()
    aidx = np.asarray(angle_index, dtype=np.int64)
    cell = (aidx * (ci.max() + 1) + ci) * (cj.max() + 1) + cj
    order = np.lexsort((rng.random(F), cell))  # by cell, random within a cell
    cs = cell[order]
    start = np.r_[0, np.flatnonzero(np.diff(cs)) + 1]
    counts = np.diff(np.r_[start, F])
    rank = np.arange(F) - np.repeat(start, counts)  # k-th frame of its cell
    parity = (ci[order] % 2) * 2 + (cj[order] % 2)
    key = rank * 4 + parity
    _uk, inv = np.unique(key, return_inverse=True)
    groups = np.split(order[np.argsort(inv, kind="stable")], np.cumsum(np.bincount(inv))[:-1])
    if max_batch is not None and max_batch > 0:
        groups = [g[i:i + max_batch] for g in groups for i in range(0, len(g), max_batch)]
    perm = rng.permutation(len(groups))
    return [groups[i] for i in perm]


@dataclass
class EPIEState:
    """ePIE's loop state (the checkpoint's keys).

    Parameters
    ----------
    obj : array
        The object.
    probe : array
        The probe w.
    rng : dict
        The frame order's random generator state (a bit-generator state dict).
    """

    obj: object
    probe: object
    rng: dict


class EPIE(IterativeSolver):
    """ePIE in random compact (non-overlapping) batches (module docstring, seed 003 Eqs. 10-12).

    One step is one epoch, every frame visited once (:meth:`object_update` and :meth:`probe_update` per batch).

    Parameters
    ----------
    frames, positions, probe, field_shape, mask, angle_index, dtype
        The problem (see :func:`epie`).
    alpha, beta : float
        Object and probe steps.
    probe_refine : bool
        Update the probe from epoch ``probe_start`` on.
    probe_start : int
        The first epoch (0-based) with a probe update.
    obj_init, seed, footprint, max_batch, frame_batch
        As for :func:`epie`.
    """

    State = EPIEState

    def __init__(self, frames, positions, probe, field_shape=None, alpha: float = 1.0, beta: float = 1.0,
                 probe_refine: bool = False, probe_start: int = 2, obj_init="ones", mask=None, angle_index=None,
                 seed: int = 0, footprint: float = 0.01, max_batch: int | None = None, dtype=np.complex64,
                 frame_batch: int | None = None):
        field_shape = _default_field(field_shape, positions, probe)
        self.pb = pb = _Problem(frames, positions, probe, field_shape, angle_index, mask, dtype, None, frame_batch)
        self.xp = pb.xp
        self.alpha, self.beta, self.probe_refine, self.probe_start = alpha, beta, probe_refine, probe_start
        self.obj_init, self.max_batch, self.seed = obj_init, max_batch, seed
        self.extent, _ = _footprint_extent(pb.op.probe, footprint)  # from the initial probe, also on resume

    def start(self) -> EPIEState:
        """The initial object, a copy of the probe and the seeded generator (:meth:`IterativeSolver.start`)."""
        return EPIEState(obj=self.pb.init_object(self.obj_init), probe=self.pb.op.probe.copy(),
                         rng=np.random.default_rng(self.seed).bit_generator.state)

    def ready(self, resumed: bool) -> None:
        """The frame order's generator, set to the state's (see :meth:`IterativeSolver.ready`).

        Parameters
        ----------
        resumed : bool
            Unused: the generator's state is in the state either way.
        """
        self.rng = np.random.default_rng(self.seed)
        self.rng.bit_generator.state = self.state.rng

    def save_state(self) -> dict:
        """The state with the generator's current state as ``rng`` (see :meth:`IterativeSolver.save_state`).

        Returns
        -------
        dict
            The checkpoint's keys.
        """
        return {**state_dict(self.state), "rng": self.rng.bit_generator.state}

    def object_update(self, O, sel, dpsi, P, pmax):
        """O += alpha S_j^T [conj(w) / max|w|^2 (psi'_j - psi_j)] for the batch ``sel`` (seed 003 Eq. 12).

        In place, through the shared window operator (:meth:`~hpc_pt.operators.Ptychography.patches_adj`).

        Parameters
        ----------
        O : array
            The object, updated in place.
        sel : array
            The batch's frame indices.
        dpsi : array
            psi'_j - psi_j of the batch's frames.
        P : array
            The probe w.
        pmax : float
            max |w|^2.
        """
        self.pb.op.patches_adj((self.alpha / pmax) * self.xp.conj(P) * dpsi, frames=sel, out=O)

    def probe_update(self, P, pO, dpsi):
        """w += beta conj(S_j O) / max|S_j O|^2 (psi'_j - psi_j), the mean over the batch's frames.

        With the object before its update.

        Parameters
        ----------
        P : array
            The probe.
        pO : array
            S_j O of the batch's frames, before the object update.
        dpsi : array
            psi'_j - psi_j.

        Returns
        -------
        array
            The new probe (``P`` itself when the batch saw no object).
        """
        xp = self.xp
        omax = float((xp.abs(pO) ** 2).max())
        if omax > 0:
            P = P + (self.beta / (omax * len(pO))) * (xp.conj(pO) * dpsi).sum(axis=0)
        return P

    def step(self, k: int) -> dict:
        """One epoch: every frame once, in random compact batches (see :meth:`IterativeSolver.step`).

        Parameters
        ----------
        k : int
            The 0-based epoch; a refined probe is updated from ``probe_start`` on.

        Returns
        -------
        dict
            ``objective`` (the running error), ``r_factor`` and ``batches``.
        """
        st, pb, xp = self.state, self.pb, self.xp
        O, P = st.obj, st.probe
        batches = compact_batches(pb.positions, pb.angle_index, self.extent, self.rng, self.max_batch)
        refine = self.probe_refine and k >= self.probe_start
        err = rsum = 0.0
        pmax = float(xp.abs(P).max()) ** 2
        for sel in batches:
            pO = pb.op.patches(O, frames=sel)
            psi = P * pO  # (10)
            d = fft2c(psi)
            r = xp.abs(d) - pb.a[sel]
            if pb.mask is not None:
                r = r * pb.mask
            err += 0.5 * float((r * r).sum())
            rsum += float(xp.abs(r).sum())
            dpsi = ifft2c(pb_fourier(pb, d, sel), overwrite=True)  # (11)
            dpsi -= psi
            self.object_update(O, sel, dpsi, P, pmax)  # (12)
            if refine:
                P = self.probe_update(P, pO, dpsi)
                pmax = float(xp.abs(P).max()) ** 2
        st.probe = P
        return dict(objective=err, r_factor=rsum / max(pb.sum_a, 1e-300), batches=len(batches))

    def iterate(self):
        """The object field, what callbacks get after every epoch."""
        return self.state.obj

    def result(self, history: History) -> Ptycho2DResult:
        """The object, the probe, ``history``, and the method and batch extent as ``state``.

        The batch extent is the footprint box of the initial probe (:func:`compact_batches`' ``extent``).

        Parameters
        ----------
        history : History
            One row per epoch.

        Returns
        -------
        Ptycho2DResult
            ePIE's result.
        """
        return Ptycho2DResult(obj=self.state.obj, probe=self.state.probe, history=history,
                              state={"method": "epie", "batch_extent": self.extent})


def epie(frames, positions, probe, field_shape=None, iterations: int = 50, alpha: float = 1.0,
         beta: float = 1.0, probe_refine: bool = False, probe_start: int = 2, obj_init="ones", mask=None,
         angle_index=None, seed: int = 0, footprint: float = 0.01, max_batch: int | None = None,
         dtype=np.complex64, callback=None, checkpoints: Checkpointer = NO_CHECKPOINTS,
         frame_batch: int | None = None) -> Ptycho2DResult:
    """ePIE in random compact (non-overlapping) batches (:class:`EPIE`; module docstring).

    Parameters
    ----------
    frames : array
        Measured intensities (F, m1, m2), DC at index 0.
    positions : array
        (F, 2) top-left window positions (row, col), pixels.
    probe : array
        The (initial) probe (m1, m2).
    field_shape : tuple, optional
        (H, W), or (A, H, W) with ``angle_index``; default: just large enough for the positions.
    iterations : int
        Epochs (each visits every frame once).
    alpha, beta : float
        Object / probe steps.
    probe_refine : bool
        Turn the probe update on from epoch ``probe_start``.
    probe_start : int
        The first epoch with a probe update.
    obj_init : str, number or array
        The initial object ("ones", "energy", a number or an array of the field's shape).
    mask : array, optional
        (m1, m2), True where a detector pixel is valid.
    angle_index : array, optional
        (F,) the angle of each frame, for a stack of angles.
    seed : int
        Seeds the frame order.
    footprint : float
        The |w|^2 fraction of the peak that defines a window's footprint for batching.
    max_batch : int, optional
        The largest batch.
    dtype : dtype
        complex64 or complex128.
    callback : callable, optional
        ``callback(row, obj)`` after every epoch (iteration, for :func:`dm` and :func:`ml_cg`).
    checkpoints : Checkpointer
        Hands the loop state (:class:`EPIEState`, :class:`DMState`, :class:`MLState`) out and back on resume
        (bitwise).
    frame_batch : int, optional
        Frames per batch of the window operator (:class:`~hpc_pt.operators.Ptychography`; the run's
        ``Execution.frame_batch``, default its byte budget).

    Returns
    -------
    Ptycho2DResult
        The object, the probe (refined locally to this call) and the history: per epoch ``objective``
        (0.5 sum (|D| - sqrt f)^2 measured before each batch's update, the usual ePIE running error),
        ``r_factor`` and ``batches``.
    """
    _check("epie", iterations, probe_start)
    solver = EPIE(frames, positions, probe, field_shape, alpha, beta, probe_refine, probe_start, obj_init, mask,
                  angle_index, seed, footprint, max_batch, dtype, frame_batch)
    return run(solver, iterations, callback, checkpoints)


def pb_fourier(pb: _Problem, d, sel):
    """Fourier projection of a batch of far fields ``d`` onto the moduli of frames ``sel``.

    Phase 1 where d = 0; invalid detector pixels keep ``d``.

    Parameters
    ----------
    pb : _Problem
        The problem (its amplitudes and mask).
    d : array
        The batch's far fields.
    sel : array
        The batch's frame indices.

    Returns
    -------
    array
        The projected far fields.
    """
    xp = pb.xp
    a = pb.a[sel]
    mag = xp.abs(d)
    nz = mag > 0
    out = xp.where(nz, d * (a / xp.where(nz, mag, 1)), a).astype(pb.dtype, copy=False)
    return out if pb.mask is None else xp.where(pb.mask, out, d)


# ----------------------------------------------------------------------------------------------------
# Difference map
# ----------------------------------------------------------------------------------------------------

@dataclass
class DMState:
    """DM's loop state (the checkpoint's keys).

    Parameters
    ----------
    obj : array
        The object field.
    probe : array
        The probe (refined or not).
    Fpsi : array
        The far-field exit waves, one per frame.
    """

    obj: object
    probe: object
    Fpsi: object


class DM(IterativeSolver):
    """Difference map (Thibault et al. 2009), all frames at once (module docstring).

    One step is the overlap projection (:meth:`overlap_object`, and :meth:`overlap_probe` when refined) and the
    Fourier-space reflection.

    Parameters
    ----------
    frames, positions, probe, field_shape, mask, angle_index, dtype
        The problem (see :func:`dm`).
    probe_refine : bool
        Update the probe from iteration ``probe_start`` on.
    probe_start : int
        The first iteration (0-based) with a probe update.
    obj_init : str, number or array
        The initial object.
    eps : float
        The overlap projection's regulariser, relative to the peak illumination.
    comm : Comm, optional
        Sums over ranks when the frames of one probe are spread over several.
    iterations : int
        The run's length (the final overlap projection is done only when > 0).
    frame_batch : int, optional
        As for :func:`epie`.
    """

    State = DMState

    def __init__(self, frames, positions, probe, field_shape=None, probe_refine: bool = False, probe_start: int = 2,
                 obj_init="ones", mask=None, angle_index=None, eps: float = 1e-5, dtype=np.complex64,
                 comm: Comm | None = None, iterations: int = 100, frame_batch: int | None = None):
        field_shape = _default_field(field_shape, positions, probe)
        self.pb = _Problem(frames, positions, probe, field_shape, angle_index, mask, dtype, comm, frame_batch)
        self.xp, self.op = self.pb.xp, self.pb.op
        self.probe_refine, self.probe_start, self.obj_init, self.eps = probe_refine, probe_start, obj_init, eps
        self.iterations = int(iterations)

    def start(self) -> DMState:
        """The initial object, its exit waves w S_j O and their far fields (see :meth:`IterativeSolver.start`)."""
        op = self.op
        O = self.pb.init_object(self.obj_init)
        self.psi = op.probe * op.patches(O)
        return DMState(obj=O, probe=op.probe, Fpsi=fft2c(self.psi))

    def ready(self, resumed: bool) -> None:
        """The illumination and its peak over all ranks; on resume the probe and the exit waves from the state.

        Parameters
        ----------
        resumed : bool
            As for :meth:`IterativeSolver.ready`.
        """
        if resumed:
            self.op.probe = self.xp.asarray(self.state.probe)
            self.psi = ifft2c(self.state.Fpsi)
        self.illum = self.op.illumination()
        self.peak = global_max(self.pb.comm, self.illum)  # the peak of the current illumination, over all ranks

    def overlap_object(self, O, psi, illum):
        """O <- sum_j S_j^T conj(w) psi_j / (sum_j S_j^T |w|^2 + eps) (the overlap projection's object).

        Where the illumination is small against eps the object stays near ``O``.

        Parameters
        ----------
        O : array
            The current object.
        psi : array
            The exit waves (F, m1, m2).
        illum : array
            sum_j S_j^T |w|^2.

        Returns
        -------
        array
            The new object.
        """
        xp, op = self.xp, self.op
        e = self.eps * self.peak + 1e-30
        num = op.patches_adj(xp.conj(op.probe) * psi)
        return ((num + e * O) / (illum + e)).astype(self.pb.dtype, copy=False)

    def overlap_probe(self, O, psi):
        """w <- sum_j conj(S_j O) psi_j / (sum_j |S_j O|^2 + eps), summed over ranks.

        Parameters
        ----------
        O : array
            The object after its overlap projection.
        psi : array
            The exit waves.

        Returns
        -------
        array
            The new probe.
        """
        xp, op, comm = self.xp, self.op, self.pb.comm
        pO = op.patches(O)
        num = comm.allreduce_sum((xp.conj(pO) * psi).sum(axis=0))
        den = comm.allreduce_sum((xp.abs(pO) ** 2).sum(axis=0))
        e = self.eps * float(den.max()) + 1e-30
        return ((num + e * op.probe) / (den + e)).astype(self.pb.dtype, copy=False)

    def step(self, k: int) -> dict:
        """The overlap projection, then the Fourier-space reflection (see :meth:`IterativeSolver.step`).

        Parameters
        ----------
        k : int
            The 0-based iteration (the probe is refined from ``probe_start`` on).

        Returns
        -------
        dict
            ``objective`` and ``r_factor`` of the overlap-consistent estimate.
        """
        st, op, pb = self.state, self.op, self.pb
        O = self.overlap_object(st.obj, self.psi, self.illum)
        if self.probe_refine and k >= self.probe_start:
            op.probe = self.overlap_probe(O, self.psi)
            self.illum = op.illumination()
            self.peak = global_max(pb.comm, self.illum)
            O = self.overlap_object(O, self.psi, self.illum)
        phi = op.probe * op.patches(O)
        Fphi = fft2c(phi)
        obj, rf = pb.amp_stats(Fphi)
        y = 2 * Fphi - st.Fpsi
        st.Fpsi += pb.fourier_project(y)
        st.Fpsi -= Fphi
        self.psi = ifft2c(st.Fpsi)
        st.obj, st.probe = O, op.probe
        return dict(objective=obj, r_factor=rf)

    def iterate(self):
        """The object field of the state (:meth:`IterativeSolver.iterate`)."""
        return self.state.obj

    def result(self, history: History) -> Ptycho2DResult:
        """A last overlap projection of the object (when the run had iterations), the probe and ``history``.

        So the object returned is consistent with the last exit waves; ``state`` names the method.

        Parameters
        ----------
        history : History
            The rows of the run.

        Returns
        -------
        Ptycho2DResult
            DM's result.
        """
        O = self.state.obj
        if self.iterations:
            O = self.overlap_object(O, self.psi, self.illum)
        return Ptycho2DResult(obj=O, probe=self.op.probe, history=history, state={"method": "dm"})


def dm(frames, positions, probe, field_shape=None, iterations: int = 100, probe_refine: bool = False,
       probe_start: int = 2, obj_init="ones", mask=None, angle_index=None, eps: float = 1e-5,
       dtype=np.complex64, comm: Comm | None = None, callback=None,
       checkpoints: Checkpointer = NO_CHECKPOINTS, frame_batch: int | None = None) -> Ptycho2DResult:
    """Difference map (Thibault et al. 2009), all frames at once (:class:`DM`; module docstring).

    Parameters
    ----------
    frames, positions, probe, field_shape, iterations, probe_refine, probe_start, obj_init, mask, angle_index
        As for :func:`epie`, and ``dtype``.
    eps : float
        Regularises the overlap projection, relative to the peak illumination over all ranks.
    comm : Comm, optional
        Sums the probe update and the statistics over ranks when the frames of one probe are spread over
        several.
    callback, checkpoints, frame_batch
        As for :func:`epie`.

    Returns
    -------
    Ptycho2DResult
        The object, the probe and the history: ``objective`` = 0.5 sum (|F phi| - sqrt f)^2 of the
        overlap-consistent estimate phi = w S O, and ``r_factor``.
    """
    _check("dm", iterations, probe_start)
    solver = DM(frames, positions, probe, field_shape, probe_refine, probe_start, obj_init, mask, angle_index, eps,
                dtype, comm, iterations, frame_batch)
    return run(solver, iterations, callback, checkpoints)


# ----------------------------------------------------------------------------------------------------
# ML by nonlinear conjugate gradient
# ----------------------------------------------------------------------------------------------------

def _loss_terms(noise, I, f, a, mask, tiny, eps=0.0):
    """(G(I), G'(I), G''(I)) per pixel for the Poisson or Gaussian-amplitude likelihood.

    Poisson with background ``eps`` (seed 001 Eq. 2): G = (I + eps) - (f + eps) log(I + eps); ``f`` is then
    passed as f + eps.
    """
    xp = get_xp(I)
    Ic = xp.maximum(I + eps, tiny) if eps else xp.maximum(I, tiny)
    if noise == "poisson":
        r = f / Ic
        g0 = Ic - f * xp.log(Ic)
        g1 = 1 - r
        g2 = r / Ic
    else:
        s = xp.sqrt(Ic)
        r = a / s
        g0 = 0.5 * (s - a) ** 2
        g1 = 0.5 * (1 - r)
        g2 = 0.25 * r / Ic
    if mask is not None:
        g0, g1, g2 = g0 * mask, g1 * mask, g2 * mask
    return g0, g1, g2


@dataclass
class MLState:
    """ML-CG's loop state (the checkpoint's keys).

    The gradients, preconditioned gradients and directions are None before the first iteration, and the
    probe's while it is not refined.

    Parameters
    ----------
    obj, probe : array
        The object and the probe.
    gO, gP : array, optional
        The previous gradients.
    hO, hP : array, optional
        The previous preconditioned gradients.
    dO, dP : array, optional
        The search directions.
    gh_prev : float
        <g, h> of the previous iteration.
    t_last : float
        The last accepted step (the next line search's guess).
    """

    obj: object
    probe: object
    gO: object = None
    gP: object = None
    hO: object = None
    hP: object = None
    dO: object = None
    dP: object = None
    gh_prev: float = 0.0
    t_last: float = 1.0


class MLCG(IterativeSolver):
    """Maximum likelihood by preconditioned Polak-Ribiere nonlinear CG with an exact (Newton) line search.

    Along the quadratic far-field path (module docstring; Thibault & Guizar-Sicairos 2012). One step is
    :meth:`gradient` (object and probe), :meth:`direction` (Polak-Ribiere with restart) and the line search.

    Parameters
    ----------
    frames, positions, probe, field_shape, mask, angle_index, dtype
        The problem.
    probe_refine, probe_start, obj_init, noise, background, precondition, newton_steps, comm, frame_batch
        As for :func:`ml_cg`.

    Raises
    ------
    ValueError
        For an unknown noise model.
    """

    State = MLState

    def __init__(self, frames, positions, probe, field_shape=None, probe_refine: bool = False, probe_start: int = 2,
                 obj_init="ones", mask=None, angle_index=None, noise: str = "poisson", background: float = 0.0,
                 precondition: float = 1e-2, newton_steps: int = 3, dtype=np.complex64, comm: Comm | None = None,
                 frame_batch: int | None = None):
        if noise not in ("poisson", "gaussian"):
            raise ValueError(f"unknown noise model {noise!r}; use 'poisson' or 'gaussian'")
        field_shape = _default_field(field_shape, positions, probe)
        self.pb = pb = _Problem(frames, positions, probe, field_shape, angle_index, mask, dtype, comm, frame_batch)
        xp, comm = pb.xp, pb.comm
        self.xp, self.op, self.comm = xp, pb.op, comm
        self.probe_refine, self.probe_start, self.obj_init = probe_refine, probe_start, obj_init
        self.noise, self.precondition, self.newton_steps = noise, precondition, newton_steps
        f, mask = pb.f, pb.mask
        self.tiny = tiny = 1e-9 * max(pb.sum_f / max(comm.sum_scalar(float(f.size)), 1.0), 1e-30)
        # Poisson background eps (seed 001 Eq. 2), relative to the mean valid count
        n_valid = comm.sum_scalar(float(f.shape[0] * (f[0].size if mask is None else int(mask.sum()))))
        self.eps = eps = float(background) * pb.sum_f / max(n_valid, 1.0) if noise == "poisson" else 0.0
        self.fl = fl = f + eps if eps else f
        self.const = 0.0
        if noise == "poisson":  # makes the objective 0 at I = f (reported only)
            lf = fl - fl * xp.log(xp.maximum(fl, tiny))
            self.const = comm.sum_scalar(float((lf if mask is None else lf * mask).sum()))

    def start(self) -> MLState:
        """The initial object and probe, no directions yet (see :meth:`IterativeSolver.start`)."""
        return MLState(obj=self.pb.init_object(self.obj_init), probe=self.op.probe)

    def ready(self, resumed: bool) -> None:
        """On resume, the state's probe goes back into the operator.

        Parameters
        ----------
        resumed : bool
            Whether the state came from a checkpoint.
        """
        if resumed:
            self.op.probe = self.xp.asarray(self.state.probe)

    def odot(self, x, y) -> float:
        """Re <x, y> over every rank's object fields (spread over ranks by angle).

        Parameters
        ----------
        x, y : array
            Object-shaped fields of this rank.

        Returns
        -------
        float
            The global inner product.
        """
        return self.comm.sum_scalar(_rdot(x, y))

    def gradient(self, O, P, pO, D0, g1, refine: bool):
        """The Wirtinger gradients g_O = sum_j S_j^T (conj(w) chi_j), g_w = sum_j conj(S_j O) chi_j, preconditioned.

        chi_j = F^H[L'(I_j) D_j]; preconditioned by 1 / (illumination + delta) and 1 / (sum_j |S_j O|^2 +
        delta).

        Parameters
        ----------
        O, P : array
            The object and the probe.
        pO : array
            S_j O, the object's patches (F, m1, m2).
        D0 : array
            The far fields F(w S_j O).
        g1 : array
            L'(I) per pixel.
        refine : bool
            Also the probe's gradient.

        Returns
        -------
        tuple
            (gO, hO, gP, hP, <g, h>); gP and hP are None without probe refinement.
        """
        xp, op, comm, delta = self.xp, self.op, self.comm, self.precondition
        chi = ifft2c(g1 * D0, overwrite=True)
        gO = op.patches_adj(xp.conj(P) * chi)
        illum = op.illumination()
        hO = gO / (illum + delta * global_max(comm, illum) + 1e-30)
        gh = self.odot(gO, hO)
        if refine:
            gP = comm.allreduce_sum((xp.conj(pO) * chi).sum(axis=0))
            den = comm.allreduce_sum((xp.abs(pO) ** 2).sum(axis=0))
            hP = gP / (den + delta * float(den.max()) + 1e-30)
            gh += _rdot(gP, hP)
        else:
            gP = hP = None
        return gO, hO, gP, hP, gh

    def direction(self, gO, hO, gP, hP, gh, refine: bool) -> float:
        """Polak-Ribiere (with the preconditioned gradient) d = -h + beta d_prev, with restarts.

        Restarted (beta = 0) when beta < 0 or the probe turns on; stores the new direction and gradients in the state.

        Parameters
        ----------
        gO, hO, gP, hP, gh
            :meth:`gradient`'s output.
        refine : bool
            Whether the probe is refined in this iteration.

        Returns
        -------
        float
            beta.
        """
        st = self.state
        beta = 0.0
        if st.gO is not None and st.gh_prev > 0 and (refine == (st.gP is not None)):
            num = gh - self.odot(gO, st.hO)
            if refine:
                num -= _rdot(gP, st.hP)
            beta = max(0.0, num / st.gh_prev)
        st.dO = -hO + beta * st.dO if (beta > 0 and st.dO is not None) else -hO
        if refine:
            st.dP = -hP + beta * st.dP if (beta > 0 and st.dP is not None) else -hP
        else:
            st.dP = None
        st.gO, st.gP, st.hO, st.hP, st.gh_prev = gO, gP, hO, hP, gh
        return beta

    def step(self, k: int) -> dict:
        """Gradient, direction and the exact line search along the far-field path (:meth:`IterativeSolver.step`).

        Parameters
        ----------
        k : int
            The 0-based iteration; the probe takes part from ``probe_start`` on when refined.

        Returns
        -------
        dict
            ``objective``, ``r_factor``, ``amplitude_objective`` (at the start of the iteration), ``step``
            and ``beta``.
        """
        st, pb, op = self.state, self.pb, self.op
        refine = self.probe_refine and k >= self.probe_start
        O, P = st.obj, st.probe
        pO = op.patches(O)
        D0 = fft2c(P * pO)
        I0 = (D0.real ** 2 + D0.imag ** 2)
        g0, g1, _ = _loss_terms(self.noise, I0, self.fl, pb.a, pb.mask, self.tiny, self.eps)
        L0 = self.comm.sum_scalar(float(g0.sum(dtype=np.float64)))
        obj, rf = pb.amp_stats(D0)
        beta = self.direction(*self.gradient(O, P, pO, D0, g1, refine), refine)
        dO, dP = st.dO, st.dP
        # exact line search along the quadratic far-field path
        pdO = op.patches(dO)
        D1 = fft2c(P * pdO if dP is None else P * pdO + dP * pO)
        D2 = None if dP is None else fft2c(dP * pdO)
        t = _line_search(self.noise, D0, D1, D2, self.fl, pb.a, pb.mask, self.tiny, L0, self.comm, self.newton_steps,
                         st.t_last, self.eps)
        st.t_last = t if t > 0 else st.t_last
        st.obj = O + t * dO
        if dP is not None:
            st.probe = P + t * dP
            op.probe = st.probe
        return dict(objective=L0 - self.const, r_factor=rf, amplitude_objective=obj, step=t, beta=beta)

    def iterate(self):
        """The current object, for callbacks."""
        return self.state.obj

    def result(self, history: History) -> Ptycho2DResult:
        """The object, the probe and ``history``; ``state`` names the method and the noise model.

        The object and probe are those after the last line search.

        Parameters
        ----------
        history : History
            The rows, one per iteration.

        Returns
        -------
        Ptycho2DResult
            The ML result.
        """
        return Ptycho2DResult(obj=self.state.obj, probe=self.state.probe, history=history,
                              state={"method": "ml", "noise": self.noise})


def _rdot(x, y) -> float:
    return float(get_xp(x).vdot(x, y).real)


def ml_cg(frames, positions, probe, field_shape=None, iterations: int = 100, probe_refine: bool = False,
          probe_start: int = 2, obj_init="ones", mask=None, angle_index=None, noise: str = "poisson",
          background: float = 0.0, precondition: float = 1e-2, newton_steps: int = 3, dtype=np.complex64,
          comm: Comm | None = None, callback=None, checkpoints: Checkpointer = NO_CHECKPOINTS,
          frame_batch: int | None = None) -> Ptycho2DResult:
    """Maximum likelihood by preconditioned Polak-Ribiere nonlinear CG with exact (Newton) line search (:class:`MLCG`).

    Note: on noise-free data with a large dynamic range (e.g. the linear Rytov model, whose free space is 0)
    the Poisson metric can stall near R = 0.02 where the amplitude metric converges (measured on a 24-px
    Shepp-Logan projection: 19 vs 84 dB after 100 iterations); use ``noise="gaussian"`` there.

    Parameters
    ----------
    frames, positions, probe, field_shape, iterations, probe_refine, probe_start, obj_init, mask, angle_index, dtype
        As for :func:`epie`.
    noise : str
        "poisson" (default) or "gaussian" (amplitude).
    background : float
        Seed 001's eps of the Poisson metric, relative to the mean count (default 0).
    precondition : float
        delta relative to the peak of the diagonal preconditioner's denominators.
    newton_steps : int
        Newton steps of the line search.
    comm : Comm, optional
        Reduces the probe gradient and the line-search sums over ranks.
    callback, checkpoints, frame_batch
        As for :func:`epie`.

    Returns
    -------
    Ptycho2DResult
        The object, the probe and the history: ``objective`` (the negative log-likelihood, Poisson up to
        the constant that makes it 0 at I = f) and ``r_factor``, both at the start of each iteration.

    Raises
    ------
    ValueError
        For an unknown noise model or negative iterations / probe_start.
    """
    _check("ml", iterations, probe_start)
    solver = MLCG(frames, positions, probe, field_shape, probe_refine, probe_start, obj_init, mask, angle_index,
                  noise, background, precondition, newton_steps, dtype, comm, frame_batch)
    return run(solver, iterations, callback, checkpoints)


def _line_search(noise, D0, D1, D2, f, a, mask, tiny, L0, comm: Comm, newton_steps, t_guess=1.0, eps=0.0):
    """Minimise L(D0 + t D1 + t^2 D2) over t >= 0 by safeguarded Newton steps (elementwise work only).

    I(t) = |D(t)|^2 is a real polynomial per pixel (quadratic, or quartic with D2), so its coefficients are
    formed once and every evaluation of L, L', L'' is a few real passes (sums in float64).
    """
    get_xp(D0)
    c0 = D0.real ** 2 + D0.imag ** 2
    c1 = 2 * (D0.real * D1.real + D0.imag * D1.imag)
    c2 = D1.real ** 2 + D1.imag ** 2
    if D2 is not None:
        c2 = c2 + 2 * (D0.real * D2.real + D0.imag * D2.imag)
        c3 = 2 * (D1.real * D2.real + D1.imag * D2.imag)
        c4 = D2.real ** 2 + D2.imag ** 2
    else:
        c3 = c4 = None

    def evaluate(t):
        if c3 is None:
            I = c0 + t * (c1 + t * c2)
            Ip = c1 + (2 * t) * c2
            Ipp = 2 * c2
        else:
            I = c0 + t * (c1 + t * (c2 + t * (c3 + t * c4)))
            Ip = c1 + t * (2 * c2 + t * (3 * c3 + (4 * t) * c4))
            Ipp = 2 * c2 + t * (6 * c3 + (12 * t) * c4)
        g0, g1, g2 = _loss_terms(noise, I, f, a, mask, tiny, eps)
        L = comm.sum_scalar(float(g0.sum(dtype=np.float64)))
        d1 = comm.sum_scalar(float((g1 * Ip).sum(dtype=np.float64)))
        d2 = comm.sum_scalar(float((g1 * Ipp + g2 * Ip * Ip).sum(dtype=np.float64)))
        return L, d1, d2

    t = 0.0
    L, d1, d2 = evaluate(0.0)
    if not d1 < 0:
        return 0.0
    best_t, best_L = 0.0, L
    for _ in range(max(1, newton_steps)):
        # Newton where L is convex along the path; else (the Poisson loss is not, where I << f) the last step
        t_new = t - d1 / d2 if d2 > 0 else (2 * t if t > 0 else t_guess)
        if not np.isfinite(t_new) or t_new <= 0:
            break
        L_new, d1n, d2n = evaluate(t_new)
        tries = 0
        while not (np.isfinite(L_new) and L_new <= best_L) and tries < 40:
            t_new = 0.5 * (t_new + t)
            L_new, d1n, d2n = evaluate(t_new)
            tries += 1
        if not (np.isfinite(L_new) and L_new <= best_L):
            break
        converged = abs(t_new - t) <= 1e-2 * abs(t_new)
        t, L, d1, d2 = t_new, L_new, d1n, d2n
        best_t, best_L = t, L
        if converged:
            break
    return float(best_t)


# ----------------------------------------------------------------------------------------------------
# dispatch and the Dataset-level wrapper
# ----------------------------------------------------------------------------------------------------

def _default_field(field_shape, positions, probe):
    if field_shape is not None:
        return tuple(int(s) for s in field_shape)
    pos = np.asarray(to_numpy(positions), dtype=np.float64)
    m1, m2 = probe.shape
    return (int(np.ceil(pos[:, 0].max())) + m1, int(np.ceil(pos[:, 1].max())) + m2)


def solve(method: str, frames, positions, probe, field_shape=None, iterations: int = 100, **kw):
    """Run ``method`` ("epie", "dm" or "ml") with keyword arguments of that method.

    ePIE takes no communicator: a ``comm`` keyword is dropped for it.

    Parameters
    ----------
    method : str
        "epie", "dm" or "ml" (also "ml_cg").
    frames, positions, probe, field_shape, iterations
        As for :func:`epie`.
    **kw
        The method's other keywords (:func:`epie`, :func:`dm`, :func:`ml_cg`).

    Returns
    -------
    Ptycho2DResult
        The method's result.

    Raises
    ------
    ValueError
        For an unknown method.
    """
    if method == "epie":
        kw.pop("comm", None)
        return epie(frames, positions, probe, field_shape, iterations, **kw)
    if method == "dm":
        return dm(frames, positions, probe, field_shape, iterations, **kw)
    if method in ("ml", "ml_cg"):
        return ml_cg(frames, positions, probe, field_shape, iterations, **kw)
    raise ValueError(f"unknown ptychography method {method!r}; use one of {METHODS}")


def ptycho2d(dataset, angle_index: int, method: str = "dm", iterations: int = 100, probe_refine: bool = False,
             obj_init="ones", dtype=np.complex64, **kw) -> Ptycho2DResult:
    """2D ptychography of angle ``angle_index`` of an :class:`hpc_pt.data.Dataset` (the CLI's ``ptycho2d``).

    Uses the dataset's frames (DC at index 0), positions, probe, mask and field shape
    (``dataset.geometry.field_shape``).

    Parameters
    ----------
    dataset : Dataset
        The data set.
    angle_index : int
        The angle (0-based).
    method : str
        "epie", "dm" (default) or "ml".
    iterations, probe_refine, obj_init, dtype
        As for :func:`epie`.
    **kw
        Extra keywords go to the method (``alpha``, ``beta``, ``seed``, ``noise``, ``eps``, ``probe_start`` ...).

    Returns
    -------
    Ptycho2DResult
        Object field (H, W), probe, history (unpacks as a tuple); ``state`` also has ``angle_index`` and
        ``angle_deg``.

    Raises
    ------
    ValueError
        For an angle index out of range or an unknown method.
    """
    n = len(dataset.angles)
    if not (0 <= int(angle_index) < n):
        raise ValueError(f"angle index {angle_index} out of range: the dataset has {n} angles (0..{n - 1})")
    if method not in METHODS and method != "ml_cg":
        raise ValueError(f"unknown ptychography method {method!r}; use one of {METHODS}")
    ang = dataset.angles[int(angle_index)]
    field_shape = tuple(dataset.geometry.field_shape)
    res = solve(method, np.asarray(ang.frames), np.asarray(ang.positions), np.asarray(dataset.probe),
                field_shape, iterations, probe_refine=probe_refine, obj_init=obj_init, mask=dataset.mask,
                dtype=dtype, **kw)
    res.state.update(angle_index=int(angle_index), angle_deg=float(ang.angle_deg))
    return res


__all__ = ["METHODS", "Ptycho2DResult", "compact_batches", "dm", "epie", "global_max", "ml_cg", "ptycho2d",
           "solve"]
