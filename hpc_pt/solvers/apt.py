"""APT and APTs: ADMM for joint ptycho-tomography with the Rytov-linear model (seed 001, Algorithm 1).

Variables: volume u, far-field splitting z_j = D_j u, gradient splitting p = grad u (APT only), scaled
multipliers Lambda2 (per frame) and Lambda1 (per voxel). One outer iteration:

  Step 1  u   <- CG solve of  L u = -r1 div(p + Lambda1) + r2 sum_j D_j^H (z_j + Lambda2_j)      (Eq. 5-6)
              with L = -r1 Laplacian + r2 sum_j D_j^H D_j  (symmetric positive definite; sum_j D_j^H D_j =
              P^T Pad^T [sum_j S_j^T |w|^2 S_j] Pad P because the FFT is unitary)
              Distributed: u, p, Lambda1 live in slabs (:class:`hpc_pt.parallel.SlabSpace`); the bracket
              is a per-angle 3x3 stencil moved to the slab layout once, so a CG iteration is local except
              for dot products and one-row halos. One transpose brings sum_j D_j^H(...) to the slabs, one
              takes P u back to the angles, per outer iteration.
  Step 2  z_j <- prox_{G, r2}(D_j u - Lambda2_j)                      (pAGM or pIPM, closed form)
          p   <- soft_threshold(grad u - Lambda1, lambda / r1)        (isotropic TV)
  Step 3  Lambda2_j += z_j - D_j u,  Lambda1 += p - grad u
  Probe   w <- sum_j conj(S_j psi) F^H(z_j + Lambda2_j) / sum_j |S_j psi|^2   (seed 001 section 2.2.2)

APTs (APT simplified) is the same with lambda = r1 = 0 and no p, Lambda1.

Scale. The text fixes neither r1, r2 nor lambda. hpc-pt makes the defaults scale-free: the initial
volume is the constant c that matches the data energy (||D(c 1)||^2 = sum f, seed 001 starts at u = 1),
r2 is chosen from the data (:func:`choose_r2`, below; the z-prox weight is dimensionless), r1 = r1_rel *
||sum D^H D|| / 12 (12 bounds the Laplacian's norm, so r1_rel compares the two terms of L), and the TV
threshold lambda / r1 = tv_rel * c.

The data penalty r2. A smaller r2 converges much faster on noise-free data but, through the smaller
lambda = tv_rel c r1 (r1 is proportional to r2), over-fits noise. Measured, 100 iterations, SNR against
the truth: 32^3 Shepp-Logan (24 angles, 16 px probe FWHM 3.5, sparse scan, step 5), noise-free:
r2 = 1 / 0.1 / 0.01 -> 6 / 11 / 18 dB; the demo's 48^3 geometry (``hpc_pt.workflows.DEMO_SIMULATION``):
noise-free 0.3 / 0.1 / 0.01 -> 24.2 / 30.5 / 35.9 dB; Poisson peak 100 (SNR_intensity 38.6 dB) 1 / 0.3 /
0.1 / 0.01 -> 14.4 / 16.7 / 14.0 / 8.1 dB; Poisson peak 10^4 (58.5 dB) 0.3 / 0.1 / 0.03 -> 23.9 / 28.6 /
28.8 dB; seed 001 Table 2's noise (SNR_intensity 48 / 38 dB, and its 50 / 40 dB training phantom): 0.3,
with 0.1 and 1 worse. So ``r2=None`` (the default) takes, from the frames (:func:`choose_r2`):

* photon counts (every valid pixel a non-negative integer: Poisson-limited data) with Poisson intensity
  SNR 10 log10(sum f^2 / sum f) below ``POISSON_SNR_DB`` = 54 dB: r2 = 0.3 (``R2_NOISY``); above: 0.1;
* frames that are not counts and are recorded as noise-free (the simulator's ``noise: none``): 0.01
  (``R2_CLEAN``);
* other frames (e.g. processed real data, whose noise level the values do not tell): 0.1 (``R2_DEFAULT``).

These reproduce the settings seed 001's tables use (``benchmarks/seed_tables.py``: 0.01 noise-free, 0.3
Poisson). 4 CG iterations per outer iteration give the same quality as 12 at a third of the cost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

import numpy as np

from ..backend import get_xp, is_cupy
from ..comm import Comm
from .base import (History, IterativeSolver, Shard, SlabNormalStencil, SolverOptions, SolverResult, conjugate_gradient, frame_sum,
                   frames_array_sum, per_frame_total, power_lipschitz, solver_runner)
from .prox import frame_objective, prox_amplitude, prox_poisson, prox_tv
from .registry import SolverSpec


class APTOptions(SolverOptions):
    """APT / APTs options (seed 001 Algorithm 1; the module docstring explains the scale-free defaults)."""

    iterations: int = Field(100, ge=0, description="outer ADMM iterations")
    metric: Literal["gaussian", "poisson"] = Field("gaussian", description="data metric: pAGM (amplitude) "
                                                   "or pIPM (Poisson)")
    prior: Literal["tv", "none"] = Field("tv", description="tv: APT (isotropic TV splitting p = grad u); "
                                         "none: APTs")
    tv_rel: float = Field(0.5, ge=0, description="TV threshold lambda / r1, in units of the volume scale c")
    r1_rel: float = Field(0.05, gt=0, description="r1 relative to r2 ||sum D^H D|| / 12")
    r2: float | None = Field(None, gt=0, description="data penalty r2 (None: chosen from the data's noise "
                             "level, choose_r2)")
    cg_tol: float = Field(1e-2, gt=0, description="CG stop, relative to the warm start's residual")
    cg_max_iter: int = Field(4, ge=1, description="CG iterations per outer iteration (at most)")
    probe_refine: bool = Field(False, description="refine the probe (seed 001 section 2.2.2)")
    probe_refine_start: int = Field(5, ge=0, description="first iteration (0-based) with a probe update")
    init: Literal["constant", "zeros"] = Field("constant", description="constant: energy-matched, seed "
                                               "001's u0 = 1; zeros")

    @property
    def tv(self) -> bool:
        """Whether the TV term is on (APT) or off (APTs)."""
        return self.prior == "tv"


#: r2 for Poisson-limited counts, for noise-free data, and when the noise level is unknown (module docstring)
R2_NOISY, R2_CLEAN, R2_DEFAULT = 0.3, 0.01, 0.1
#: Poisson intensity SNR (dB) below which counts get ``R2_NOISY``
POISSON_SNR_DB = 54.0


def choose_r2(f, mask, comm: Comm, noise_free: bool = False) -> tuple[float, str]:
    """APT's data penalty r2 from the frames, and the reason in one phrase (module docstring).

    Parameters
    ----------
    f : array
        This rank's frames (F_local, m1, m2); the statistics are collective over ``comm``.
    mask : array or None
        (m1, m2), True where a detector pixel is valid.
    comm : Comm
        The communicator.
    noise_free : bool
        The data are recorded as noise-free (a simulation with ``noise: none``); it counts only for frames
        that are not photon counts.

    Returns
    -------
    r2 : float
        ``R2_NOISY``, ``R2_DEFAULT`` or ``R2_CLEAN``.
    reason : str
        Why, for the user (the counts' mean and Poisson SNR, or what the frames are).
    """
    xp = get_xp(f)
    bad = n = total = square = 0.0
    step = max(1, (16 << 20) // max(1, int(np.prod(f.shape[1:])) * 8))  # 16 MiB of float64 per block
    for i in range(0, f.shape[0], step):
        fb = f[i:i + step].astype(np.float64)
        if mask is not None:
            fb = fb[:, xp.asarray(mask, dtype=bool)]
        bad += float(xp.count_nonzero((fb < 0) | (fb != xp.round(fb))))
        n += float(fb.size)
        total += float(fb.sum())
        square += float((fb * fb).sum())
    bad, n, total, square = (comm.sum_scalar(v) for v in (bad, n, total, square))
    if bad == 0 and total > 0:
        snr = 10.0 * np.log10(square / total)
        mean = total / max(n, 1.0)
        low = snr < POISSON_SNR_DB
        return (R2_NOISY if low else R2_DEFAULT,
                f"photon counts, mean {mean:.3g} photons/frame pixel, Poisson SNR {snr:.1f} dB "
                f"{'<' if low else '>='} {POISSON_SNR_DB:g} dB")
    if noise_free:
        return R2_CLEAN, "noise-free data: simulated without noise"
    return R2_DEFAULT, "the frames are not photon counts, so their noise level is unknown: the default"


class LinearJointOperator:
    """The linear joint operator D u = Ptycho(Pad(P u)) of this shard, and its normal operator on the slab.

    ``D`` is a :class:`~hpc_pt.operators.ProductOperator`: its adjoint is summed over ranks, on this rank's
    slab; the normal operator L_D = sum_j D_j^H D_j = P^T Pad^T N Pad P is applied on the slab through the
    :class:`~.base.SlabNormalStencil` (no transpose).

    Parameters
    ----------
    shard : Shard
        This rank's shard, set up with the linear model.
    comm : Comm
        The communicator (the stencil's set-up is a collective).

    Raises
    ------
    ValueError
        When the shard was set up with the exponential model.
    """

    def __init__(self, shard: Shard, comm: Comm):
        m = shard.model
        if m.expmap is not None:
            raise ValueError("APT/APTs use the linear (Rytov) model; this dataset was set up with model 'exp'")
        self.space, self.pad, self.pt, self.comm = shard.space, m.pad, m.ptycho, comm
        self.x = self.pad @ shard.slab_projection()  # u -> Pad(P u), the per-angle fields
        self.D = self.pt @ self.x
        self.stencil = SlabNormalStencil(self.pt, self.pad, self.space, comm)

    def refresh(self):
        """Rebuild the slab-layout stencil of N after a probe change (one transpose per non-zero map)."""
        self.stencil.refresh()

    def psi(self, u):
        """Pad(P u), the per-angle fields.

        Parameters
        ----------
        u : array
            This rank's volume slab.

        Returns
        -------
        array
            The fields of the shard's angles (A_local, H, W): one transpose.
        """
        return self.x.fwd(u)

    def fwd(self, u):
        """D u, the far fields of the shard's frames.

        Parameters
        ----------
        u : array
            A volume slab of this rank.

        Returns
        -------
        array
            (F_local, m1, m2) far fields.
        """
        return self.D.fwd(u)

    def adj(self, y):
        """D^H y, summed over every rank's frames, on this rank's slab.

        Parameters
        ----------
        y : array
            Far fields of this shard's frames (F_local, m1, m2).

        Returns
        -------
        array
            The slab.
        """
        return self.D.adj(y)

    def normal(self, u):
        """L_D u = sum_j D_j^H D_j u by the slab stencil (no transpose).

        Parameters
        ----------
        u : array
            A slab, e.g. CG's search direction.

        Returns
        -------
        array
            L_D u on this rank's slab.
        """
        return self.stencil.normal(u)


@dataclass
class APTState:
    """APT's loop state (the checkpoint's keys).

    Parameters
    ----------
    u : array
        The volume slab.
    z, lambda2 : array
        The far-field splitting and its multiplier (per frame).
    p, lambda1 : array
        The gradient splitting and its multiplier (per voxel; zeros for APTs).
    probe : array
        The probe (refined or not).
    scale : float
        The volume scale c: a set-up value that is not bitwise reproducible.
    normal_norm : float
        ||sum_j D_j^H D_j||, by power iteration: the other such set-up value.
    """

    u: object
    z: object
    lambda2: object
    p: object
    lambda1: object
    probe: object
    scale: float
    normal_norm: float


class APT(IterativeSolver):
    """Seed 001 Algorithm 1 (APT, or APTs with ``opts.prior = "none"``) on this rank's shard and slab.

    Each step is Step 1 (:meth:`u_update`), Step 2 (:meth:`z_update`, :meth:`p_update`), Step 3
    (:meth:`multiplier_update`) and, when refined, the probe (:meth:`probe_update`); see the module
    docstring for the equations and the scale-free defaults.

    Parameters
    ----------
    shard : Shard
        This rank's frames, forward model (linear model only) and slab space.
    comm : Comm
        The communicator (collectives over ranks).
    opts : APTOptions, optional
        The options (defaults: :class:`APTOptions`).
    u0 : array, optional
        The initial volume slab (overrides ``opts.init``).

    Raises
    ------
    ValueError
        For an unknown noise metric or a shard set up with the exponential model.
    """

    State = APTState

    def __init__(self, shard: Shard, comm: Comm, opts: APTOptions | None = None, u0=None):
        self.opts = opts = opts or APTOptions()
        if opts.metric not in ("gaussian", "poisson"):
            raise ValueError(f"unknown noise metric {opts.metric!r}; use 'gaussian' or 'poisson'")
        self.shard, self.comm, self.u0 = shard, comm, u0
        self.sp = shard.space
        self.xp = get_xp(shard.intensities)
        self.D = LinearJointOperator(shard, comm)
        self.r2 = opts.r2 if opts.r2 is not None else choose_r2(shard.intensities, shard.mask, comm)[0]
        self.prox = prox_amplitude if opts.metric == "gaussian" else prox_poisson
        self.data = shard.amplitudes if opts.metric == "gaussian" else shard.intensities
        self.sum_sqrt_f = frame_sum(comm, shard, shard.amplitudes, shard.mask)

    def normal(self, u):
        """sum_j D_j^H D_j u on the slab (timed as the CG phase).

        Parameters
        ----------
        u : array
            A slab of the volume.

        Returns
        -------
        array
            The product, on the slab.
        """
        with self.comm.phase("cg"):
            return self.D.normal(u)

    def start(self) -> APTState:
        """The scale-free start (see :meth:`IterativeSolver.start`).

        c from the data energy, ||sum D^H D|| by power iteration, u = c 1 (or zeros, or ``u0``), z = D u,
        zero multipliers.

        Returns
        -------
        APTState
            The state before the first iteration.
        """
        sh, comm, sp, xp, opts = self.shard, self.comm, self.sp, self.xp, self.opts
        dtype, shape = sh.model.dtype, sh.volume_shape
        ones = xp.ones(shape, dtype=dtype)
        energy_model = frame_sum(comm, sh, xp.abs(self.D.fwd(ones)) ** 2, sh.mask)
        energy_data = frame_sum(comm, sh, sh.intensities, sh.mask)
        c = float(np.sqrt(energy_data / energy_model)) if energy_model > 0 else 1.0
        nrm = power_lipschitz(self.normal, sp.global_shape, comm, dtype, like=sh.intensities,
                              rows=(sp.z0, sp.z1), dot=sp.dot)
        if self.u0 is not None:
            u = xp.asarray(self.u0, dtype=dtype).copy()
        else:
            u = (c * ones) if opts.init == "constant" else xp.zeros(shape, dtype=dtype)
        z = self.D.fwd(u)
        p = xp.zeros((3,) + shape, dtype=dtype)
        return APTState(u=u, z=z, lambda2=xp.zeros_like(z), p=p, lambda1=xp.zeros_like(p), probe=self.D.pt.probe,
                        scale=c, normal_norm=nrm)

    def ready(self, resumed: bool) -> None:
        """The penalties from the state's scale and norm (see :meth:`IterativeSolver.ready`).

        r1 = r1_rel r2 ||sum D^H D|| / 12 (0 for APTs), the TV threshold lambda / r1 = tv_rel c; a resumed
        probe is put back into the operator.

        Parameters
        ----------
        resumed : bool
            The state came from a checkpoint (its probe then replaces the operator's, and N is rebuilt).
        """
        st, opts = self.state, self.opts
        if resumed:
            self.D.pt.probe = self.xp.asarray(st.probe)
            self.D.refresh()
        self.r1 = opts.r1_rel * self.r2 * st.normal_norm / 12.0 if opts.tv else 0.0
        self.thresh = opts.tv_rel * st.scale
        self.lam = self.thresh * self.r1

    def apply_l(self, x):
        """L x = r2 sum_j D_j^H D_j x - r1 Laplacian x (seed 001 Eq. 6's system matrix).

        Parameters
        ----------
        x : array
            A volume slab (CG's iterate).

        Returns
        -------
        array
            L x.
        """
        out = self.r2 * self.normal(x)
        if self.opts.tv:
            out -= self.r1 * self.sp.laplacian(x)
        return out

    def u_update(self):
        """Step 1 (seed 001 Eqs. 5-6): u <- CG solve of L u = r2 sum_j D_j^H (z_j + Lambda2_j) - r1 div(p + Lambda1).

        Warm-started at the current u (``cg_max_iter`` iterations at most).

        Returns
        -------
        CGInfo
            CG's iterations and final relative residual.
        """
        st, sp, comm = self.state, self.sp, self.comm
        with comm.phase("project"):
            rhs = self.r2 * self.D.adj(st.z + st.lambda2)
        if self.opts.tv:
            rhs -= self.r1 * sp.divergence(st.p + st.lambda1)
        st.u, cg = conjugate_gradient(self.apply_l, rhs, st.u, sp.dot, tol=self.opts.cg_tol,
                                      max_iter=self.opts.cg_max_iter)
        return cg

    def z_update(self, du):
        """Step 2, far field (seed 001 Eqs. 7-8): z_j <- prox_{G, r2}(D_j u - Lambda2_j).

        The closed-form amplitude (pAGM) or Poisson (pIPM) proximal map, per detector pixel.

        Parameters
        ----------
        du : array
            D u, the far fields of the new volume (F_local, m1, m2).
        """
        st = self.state
        with self.comm.phase("prox"):
            st.z = self.prox(du - st.lambda2, self.data, self.r2, self.shard.mask)

    def p_update(self, gu):
        """Step 2, TV (seed 001 Eq. 9): p <- soft_threshold(grad u - Lambda1, lambda / r1), isotropic.

        Parameters
        ----------
        gu : array
            grad u (3, rows, n, n).
        """
        st = self.state
        with self.comm.phase("prox"):
            st.p = prox_tv(gu - st.lambda1, self.thresh)

    def multiplier_update(self, du, gu=None):
        """Step 3 (seed 001 Eq. 10): Lambda2_j += z_j - D_j u and (APT) Lambda1 += p - grad u.

        Parameters
        ----------
        du : array
            D u.
        gu : array, optional
            grad u (APT only).
        """
        st = self.state
        with self.comm.phase("prox"):
            st.lambda2 += st.z - du
            if gu is not None:
                st.lambda1 += st.p - gu

    def probe_update(self, psi):
        """w <- sum_j conj(S_j psi) F^H(z_j + Lambda2_j) / sum_j |S_j psi|^2 (seed 001 section 2.2.2).

        Then the slab stencil of the normal operator is rebuilt for the new probe.

        Parameters
        ----------
        psi : array
            Pad(P u), the per-angle fields (A_local, H, W).
        """
        with self.comm.phase("ptycho"):
            _update_probe(self.D, psi, self.state.z + self.state.lambda2, self.comm, self.shard)
        self.state.probe = self.D.pt.probe
        self.D.refresh()

    def step(self, k: int) -> dict:
        """One outer iteration: Steps 1-3 and, when refined, the probe (see :meth:`IterativeSolver.step`).

        Parameters
        ----------
        k : int
            The 0-based iteration; the probe is refined from ``probe_refine_start`` on.

        Returns
        -------
        dict
            ``objective``, ``r_factor``, ``primal_residual``, ``rel_change``, ``cg_iterations``,
            ``cg_residual``.
        """
        st, sh, comm, sp, xp, opts = self.state, self.shard, self.comm, self.sp, self.xp, self.opts
        f, sqrt_f, mask = sh.intensities, sh.amplitudes, sh.mask
        u_old = st.u
        cg = self.u_update()
        u = st.u
        with comm.phase("project"):
            psi = self.D.psi(u)
        with comm.phase("ptycho"):
            du = self.D.pt.fwd(psi)
        if is_cupy(du):
            self.z_update(du)
        else:  # Step 2's z-prox, Step 3's Lambda2 update and the frame monitors in one compiled pass
            with comm.phase("prox"):
                from ._fused import far_field_step  # numba loads on first use (~0.2 s)

                st.z, primal_f, obj_f, rnum_f = far_field_step(du, st.lambda2, sqrt_f, f, self.r2, mask,
                                                               opts.metric)
        gu = sp.gradient(u) if opts.tv else None
        fused_tv = opts.tv and not is_cupy(du) and gu.dtype == np.complex64 and gu.flags.c_contiguous
        if fused_tv:  # Step 2's p, Step 3's Lambda1, the TV residual and TV(u) in one compiled pass
            from ._fused import tv_step

            with comm.phase("prox"):
                st.p, primal_tv_rows, tv_rows = tv_step(gu, st.lambda1, self.thresh)
        elif opts.tv:
            self.p_update(gu)
        if is_cupy(du):
            self.multiplier_update(du, gu)
            primal = frame_sum(comm, sh, xp.abs(st.z - du) ** 2)
            mag = xp.abs(du)
            obj = frame_sum(comm, sh, frame_objective(mag, f, sqrt_f, opts.metric, mask))
            rf = frame_sum(comm, sh, xp.abs(mag - sqrt_f), mask) / self.sum_sqrt_f
        else:
            if gu is not None and not fused_tv:
                with comm.phase("prox"):
                    st.lambda1 += st.p - gu
            primal = per_frame_total(comm, sh, primal_f)
            obj = per_frame_total(comm, sh, obj_f)
            rf = per_frame_total(comm, sh, rnum_f) / self.sum_sqrt_f
        if fused_tv:
            primal += sp.sum_rows(primal_tv_rows)
            obj += self.lam * sp.sum_rows(tv_rows)
        elif opts.tv:  # TV(u) from the p-update's grad u (no second gradient, no second halo)
            primal += sp.sum_rows((xp.abs(st.p - gu) ** 2).sum(axis=0))
            obj += self.lam * sp.sum_rows(xp.sqrt((xp.abs(gu) ** 2).sum(axis=0)))
        if opts.probe_refine and k >= opts.probe_refine_start:
            self.probe_update(psi)
        change = np.sqrt(sp.dot(u - u_old, u - u_old) / max(sp.dot(u, u), 1e-300))
        return dict(objective=obj, r_factor=rf, primal_residual=np.sqrt(primal), rel_change=change,
                    cg_iterations=cg.iterations, cg_residual=cg.residual)

    def iterate(self):
        """The volume slab ``u`` (see :meth:`IterativeSolver.iterate`)."""
        return self.state.u

    def result(self, history: History) -> SolverResult:
        """The volume slab, the probe and ``history`` (see :meth:`IterativeSolver.result`).

        ``state`` has r1, r2, lambda and the scale c.

        Parameters
        ----------
        history : History
            The run's rows.

        Returns
        -------
        SolverResult
            APT's output.
        """
        return SolverResult(volume=self.state.u, probe=self.D.pt.probe, history=history,
                            state={"r1": self.r1, "r2": self.r2, "lambda": self.lam, "scale": self.state.scale})


run_apt = solver_runner(APT, APTOptions, "Seed 001 Algorithm 1 (:class:`APT`; APTs with ``opts.prior = \"none\"``) on this rank's shard and slab.")


def _update_probe(D: LinearJointOperator, psi, target, comm: Comm, shard: Shard):
    """w <- sum_j conj(S_j psi) F^H(target_j) / sum_j |S_j psi|^2 (seed 001 section 2.2.2)."""
    from ..backend import ifft2c

    xp = get_xp(psi)
    patches = D.pt.patches(psi)
    num = frames_array_sum(comm, shard, xp.conj(patches) * ifft2c(target))
    den = frames_array_sum(comm, shard, xp.abs(patches) ** 2)
    eps = 1e-6 * float(den.max()) if den.size else 0.0
    D.pt.probe = (num / (den + eps)).astype(D.pt.dtype)


def _prepare(shard: Shard, comm: Comm, opts: APTOptions, noise_free: bool = False):
    """The data penalty r2 from the data's noise level when neither ``penalty`` nor ``r2`` was given
    (:func:`choose_r2`, a collective).

    Parameters
    ----------
    shard, comm
        This rank's frames and the communicator.
    opts : APTOptions
        The validated options.
    noise_free : bool
        The data are recorded as noise-free.

    Returns
    -------
    tuple
        (the options with r2 set, the line that tells the user, or None when r2 was given).
    """
    if opts.r2 is not None:
        return opts, None
    r2, why = choose_r2(shard.intensities, shard.mask, comm, noise_free=noise_free)
    return opts.model_copy(update={"r2": r2}), f"penalty {r2:g} chosen from the data ({why}); override with --penalty"


def _spec(name: str, tv: bool) -> SolverSpec:
    generic = {"iterations": "iterations", "noise": "metric", "penalty": "r2", "probe_refine": "probe_refine",
               "init": "init"}
    if tv:
        generic.update(prior="prior", prior_weight="tv_rel")
    return SolverSpec(name=name, options=APTOptions, run=run_apt, models=("linear",), default_model="linear",
                      generic=generic, fixed={} if tv else {"prior": "none"}, deterministic="default",
                      refines_probe=True, prepare=_prepare,
                      summary="seed 001's ADMM for the linear model" + (" with TV (APT)" if tv else ", no prior (APTs)"))


APT_SPEC = _spec("apt", True)
APTS_SPEC = _spec("apts", False)
