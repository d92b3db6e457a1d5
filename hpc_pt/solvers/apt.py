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

import time
from dataclasses import dataclass

import numpy as np

from ..backend import get_xp
from ..operators import apply_stencil
from .base import (NO_CHECKPOINTS, Checkpointer, History, Shard, SolverResult, conjugate_gradient, frame_sum,
                   frames_array_sum, power_lipschitz)
from .prox import frame_objective, prox_amplitude, prox_poisson, prox_tv


@dataclass
class APTOptions:
    iterations: int = 100
    metric: str = "gaussian"  # "gaussian" (pAGM) or "poisson" (pIPM)
    tv: bool = True  # False: APTs
    tv_rel: float = 0.5  # soft threshold lambda / r1 in units of the volume scale c
    r1_rel: float = 0.05  # r1 relative to ||sum D^H D|| / 12
    r2: float | None = None  # None: chosen from the data (choose_r2)
    cg_tol: float = 1e-2
    cg_max_iter: int = 4
    probe_refine: bool = False
    probe_refine_start: int = 5
    init: str = "constant"  # "constant" (energy-matched, seed 001's u0 = 1) or "zeros"


#: r2 for Poisson-limited counts, for noise-free data, and when the noise level is unknown (module docstring)
R2_NOISY, R2_CLEAN, R2_DEFAULT = 0.3, 0.01, 0.1
#: Poisson intensity SNR (dB) below which counts get ``R2_NOISY``
POISSON_SNR_DB = 54.0


def choose_r2(f, mask, comm, noise_free: bool = False) -> tuple[float, str]:
    """APT's data penalty r2 from the frames ``f`` (this rank's; collective over ``comm``) and the
    reason, one phrase (module docstring). ``noise_free``: the data are recorded as noise-free (a
    simulation with ``noise: none``); it counts only for frames that are not photon counts."""
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
    """D u = Ptycho(Pad(P u)) for this shard, its adjoint (summed over ranks, on this rank's slab), and the
    normal operator L_D = sum_j D_j^H D_j = P^T Pad^T N Pad P on the slab (no transpose: N, the
    ptychographic normal operator sum_j S_j^T |w|^2 S_j, is a 3x3 stencil per angle, moved to the slab
    layout once by :meth:`refresh`)."""

    def __init__(self, shard: Shard, comm):
        m = shard.model
        if m.expmap is not None:
            raise ValueError("APT/APTs use the linear (Rytov) model; this dataset was set up with model 'exp'")
        self.space, self.pad, self.pt, self.comm = shard.space, m.pad, m.ptycho, comm
        self.refresh()

    def refresh(self):
        """(Re)build the slab-layout stencil of N after a probe change (one transpose per non-zero map)."""
        sp, r0 = self.space, self.pad.offset[0]
        nz = sp.global_shape[0]
        maps = self.pt.normal_stencil()[:, :, r0:r0 + nz]
        xp = get_xp(maps)
        off = self.comm.sum_scalar(float(xp.abs(maps[[0, 1, 2, 3, 5, 6, 7, 8]]).sum()))
        vert = self.comm.sum_scalar(float(xp.abs(maps[[0, 1, 2, 6, 7, 8]]).sum()))
        keep = range(9) if off > 0 else (4,)
        self.maps = xp.stack([sp.to_slabs(xp.ascontiguousarray(maps[k])) for k in keep])
        self.vertical = vert > 0

    def psi(self, u):
        return self.pad.fwd(self.space.project(u))

    def fwd(self, u):
        return self.pt.fwd(self.psi(u))

    def adj(self, y):
        return self.space.backproject(self.pad.adj(self.pt.adj(y)))

    def normal(self, u):
        P = self.space.P
        q = P.fwd(u)
        lo, hi = self.space.halo(q, axis=1) if self.vertical else (None, None)
        return P.adj(apply_stencil(self.maps, q, lo, hi))


def run_apt(shard: Shard, comm, opts: APTOptions | None = None, callback=None, u0=None,
            checkpoints: Checkpointer = NO_CHECKPOINTS) -> SolverResult:
    """Seed 001 Algorithm 1 (APT, or APTs with ``opts.tv = False``) on this rank's shard and slab.

    ``u0``: initial volume slab (overrides ``opts.init``); ``callback(row, u)`` runs after every iteration;
    ``checkpoints`` hands the loop state out every K iterations and back on resume (bitwise continuation).
    """
    opts = opts or APTOptions()
    if opts.metric not in ("gaussian", "poisson"):
        raise ValueError(f"unknown noise metric {opts.metric!r}; use 'gaussian' or 'poisson'")
    sp = shard.space
    xp = get_xp(shard.intensities)
    f, sqrt_f, mask = shard.intensities, shard.amplitudes, shard.mask
    dtype = shard.model.dtype
    shape = shard.volume_shape
    st = checkpoints.resume
    if st is not None:
        shard.model.ptycho.probe = xp.asarray(st["probe"])
    D = LinearJointOperator(shard, comm)

    def normal(u):
        with comm.phase("cg"):
            return D.normal(u)

    # --- scale-free defaults (module docstring)
    ones = xp.ones(shape, dtype=dtype)
    if st is None:
        d1 = D.fwd(ones)
        energy_model = frame_sum(comm, shard, xp.abs(d1) ** 2, mask)
        energy_data = frame_sum(comm, shard, f, mask)
        c = float(np.sqrt(energy_data / energy_model)) if energy_model > 0 else 1.0
        nrm = power_lipschitz(normal, sp.global_shape, comm, dtype, like=shard.intensities,
                              rows=(sp.z0, sp.z1), dot=sp.dot)
    else:
        c, nrm = float(st["scale"]), float(st["normal_norm"])
    r2 = opts.r2 if opts.r2 is not None else choose_r2(f, mask, comm)[0]
    r1 = opts.r1_rel * r2 * nrm / 12.0 if opts.tv else 0.0
    thresh = opts.tv_rel * c
    lam = thresh * r1

    if st is not None:
        u, z, lam2 = (xp.asarray(st[k]) for k in ("u", "z", "lambda2"))
        p, lam1 = (xp.asarray(st[k]) for k in ("p", "lambda1"))
    else:
        if u0 is not None:
            u = xp.asarray(u0, dtype=dtype).copy()
        else:
            u = (c * ones) if opts.init == "constant" else xp.zeros(shape, dtype=dtype)
        z = D.fwd(u)
        lam2 = xp.zeros_like(z)
        p = xp.zeros((3,) + shape, dtype=dtype)
        lam1 = xp.zeros_like(p)
    prox = prox_amplitude if opts.metric == "gaussian" else prox_poisson
    data = sqrt_f if opts.metric == "gaussian" else f

    def apply_l(x):
        out = r2 * normal(x)
        if opts.tv:
            out -= r1 * sp.laplacian(x)
        return out

    hist = History(st["history"] if st is not None else None)
    sum_sqrt_f = frame_sum(comm, shard, sqrt_f, mask)
    for k in range(len(hist), opts.iterations):
        t0 = time.perf_counter()
        # Step 1: u-update by CG
        with comm.phase("project"):
            rhs = r2 * D.adj(z + lam2)
        if opts.tv:
            rhs -= r1 * sp.divergence(p + lam1)
        u_old = u
        u, cg = conjugate_gradient(apply_l, rhs, u, sp.dot, tol=opts.cg_tol, max_iter=opts.cg_max_iter)
        with comm.phase("project"):
            psi = D.psi(u)
        with comm.phase("ptycho"):
            du = D.pt.fwd(psi)
        # Step 2: z and p proxes
        with comm.phase("prox"):
            z = prox(du - lam2, data, r2, mask)
            # Step 3: multipliers
            lam2 += z - du
        primal = frame_sum(comm, shard, xp.abs(z - du) ** 2)
        if opts.tv:
            gu = sp.gradient(u)
            with comm.phase("prox"):
                p = prox_tv(gu - lam1, thresh)
                lam1 += p - gu
            primal += sp.sum_rows((xp.abs(p - gu) ** 2).sum(axis=0))
        if opts.probe_refine and k >= opts.probe_refine_start:
            with comm.phase("ptycho"):
                _update_probe(D, psi, z + lam2, comm, shard)
            D.refresh()
        mag = xp.abs(du)
        obj = frame_sum(comm, shard, frame_objective(mag, f, sqrt_f, opts.metric, mask))
        if opts.tv:
            obj += lam * sp.tv_value(u)
        rf = frame_sum(comm, shard, xp.abs(mag - sqrt_f), mask) / sum_sqrt_f
        change = np.sqrt(sp.dot(u - u_old, u - u_old) / max(sp.dot(u, u), 1e-300))
        row = hist.append(iteration=k + 1, objective=obj, r_factor=rf, primal_residual=np.sqrt(primal),
                          rel_change=change, cg_iterations=cg.iterations, cg_residual=cg.residual,
                          iter_time_s=time.perf_counter() - t0)
        if callback is not None:
            callback(row, u)
        if checkpoints.due(k + 1):
            checkpoints.save({"iteration": k + 1, "u": u, "z": z, "lambda2": lam2, "p": p, "lambda1": lam1,
                              "probe": D.pt.probe, "scale": c, "normal_norm": nrm, "history": hist.rows})
    return SolverResult(volume=u, probe=D.pt.probe, history=hist,
                        state={"r1": r1, "r2": r2, "lambda": lam, "scale": c})


def _update_probe(D: LinearJointOperator, psi, target, comm, shard: Shard):
    """w <- sum_j conj(S_j psi) F^H(target_j) / sum_j |S_j psi|^2 (seed 001 section 2.2.2)."""
    from ..backend import ifft2c

    xp = get_xp(psi)
    patches = D.pt.patches(psi)
    num = frames_array_sum(comm, shard, xp.conj(patches) * ifft2c(target))
    den = frames_array_sum(comm, shard, xp.abs(patches) ** 2)
    eps = 1e-6 * float(den.max()) if den.size else 0.0
    D.pt.probe = (num / (den + eps)).astype(D.pt.dtype)
