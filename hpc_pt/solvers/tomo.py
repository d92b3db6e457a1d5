"""Tomography of recovered projections (the second step of the 2-step baseline).

Layout. The functions take a :class:`~hpc_pt.operators.Projector` and projections of its shape
(``projector.shape_out`` = (A, rows, n_det), every angle of ``projector.angles``) and return a volume of
``projector.shape_in`` = (rows, n, n). Standalone that is the whole volume and its projections, with no
communicator. Distributed, it is the slab layout (docs/architecture.md §3): each rank passes its
:class:`~hpc_pt.parallel.SlabSpace`'s ``space.P`` (ALL angles, its own rows) and its rows of every angle's
projection (``space.to_slabs`` of the per-angle data), so P and P^T are local and the only communication
is scalar sums (``comm.sum_scalar``, ``comm.volume_dot``) and, with the Laplacian term, the one-row halos
of the slab finite differences (``space``). Every rank runs the same iterations.

Engines
-------
``cg``   Damped least squares by CGLS (conjugate gradient on the normal equations, in the numerically
         stable form that keeps the data residual)::

             min_x 1/2 ||P x - p||^2 + mu/2 ||x||^2 + lam/2 ||grad x||^2

         ``mu`` (Tikhonov) and ``lam`` (Laplacian: lam ||grad x||^2 has the normal operator -lam Laplacian)
         default to 0. Stops when ||s|| <= tol ||s_0|| (s = the normal-equation residual, i.e. the
         gradient) or after ``iterations``. History per iteration: ``objective`` (the value above),
         ``residual`` (||s|| / ||s_0||).
``fbp``  Filtered back-projection: f = (pi / A) sum_a P_a^T (h * p_a), A the total number of angles (pi / A
         is the angular step of a uniform scan of [0, pi); for [0, 2 pi) every line is seen twice and the
         same factor holds). ``h`` is the discrete Ram-Lak kernel of Kak & Slaney (h(0) = 1/4,
         h(k odd) = -1/(pi k)^2, h(k even) = 0), applied by FFT with zero padding to >= 2 n_det (no
         wrap-around), whose transfer function is the band-limited ramp |w| / (2 pi) without the
         DC error of a sampled ramp; "shepp-logan" multiplies it by sinc(w / (2 pi)), "hann" by
         (1 + cos w) / 2. The back-projection is the projector's exact adjoint, which for the NUFFT
         projector is a band-limited (Dirichlet-kernel) interpolating back-projection.
``tomopy`` tomopy's ``recon`` (gridrec, art, sirt, ...) when ``import tomopy`` works (tomopy is
         conda-only; see :func:`tomopy_available`). Real and imaginary parts are reconstructed separately;
         distributed, each rank reconstructs its slab's rows from every angle. tomopy's angle sign and
         slice orientation are not ours, so the result is put in our orientation by trying the eight flips /
         transposes of the slice and keeping the one whose re-projection by our
         :class:`~hpc_pt.operators.Projector` best fits the data (misfits summed over ranks, so every slab
         takes the same orientation; a cheap, convention-proof check).

Checkpoints (CG). ``checkpoint(k, state)`` is called after CG iteration ``k`` with the whole loop state
(x, the residuals r / r_mu / r_lam, the direction d, gamma, gamma0, the scaled mu and lam, the history);
``resume=state`` continues from it, bitwise-equal to an uninterrupted run on the CPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..backend import asarray_on, fftc, get_xp, ifftc, to_numpy
from ..operators import divergence, gradient
from ..comm import SerialComm
from .base import History, power_lipschitz

ENGINES = ("cg", "fbp", "tomopy")
FILTERS = ("ramp", "ram-lak", "shepp-logan", "hann")


@dataclass
class TomoOptions:
    engine: str = "cg"  # "cg", "fbp" or "tomopy"
    iterations: int = 50  # CG iterations (tomopy: iterative algorithms' num_iter)
    tol: float = 1e-4  # CG stop: ||normal residual|| <= tol * initial
    damping: float = 0.0  # Tikhonov mu, relative to ||P^T P|| (estimated)
    smoothing: float = 0.0  # Laplacian lam, relative to ||P^T P|| / 12
    filter: str = "ramp"  # FBP filter
    algorithm: str = "gridrec"  # tomopy algorithm


def _norm_estimate(projector, comm, n_iter=10, like=None, space=None):
    """||P^T P|| by power iteration, on ``like``'s backend (the serial start vector in the slab layout)."""
    if space is not None:
        return power_lipschitz(lambda x: projector.adj(projector.fwd(x)), space.global_shape, comm,
                               projector.dtype, n_iter=n_iter, like=like, rows=(space.z0, space.z1))
    return power_lipschitz(lambda x: projector.adj(projector.fwd(x)), projector.shape_in, comm,
                           projector.dtype, n_iter=n_iter, like=like)


def tomo_cg(projector, projections, comm=None, x0=None, iterations: int = 50, tol: float = 1e-4,
            damping: float = 0.0, smoothing: float = 0.0, relative: bool = True, callback=None, space=None,
            resume: dict | None = None, checkpoint=None, weights=None):
    """CGLS for min 1/2||P x - p||^2 + mu/2||x||^2 + lam/2||grad x||^2; returns (volume, History).

    ``weights`` (optional, real >= 0, the projections' shape): the data term becomes
    1/2 ||sqrt(w) (P x - p)||^2, i.e. CGLS on the operator sqrt(w) P with data sqrt(w) p; w = 0 drops a ray
    (the 2-step baseline passes the probe's lit-pixel mask, so pixels without data are not fitted).

    With ``relative`` (default), ``damping`` and ``smoothing`` are given relative to ||P^T P|| (and
    ||P^T P|| / 12 for the Laplacian, whose norm is at most 12), so they are scale-free.
    ``callback(row, x)`` is called after every iteration, then ``checkpoint(k, state)``; ``resume``
    continues from such a state (module docstring). Distributed (slab layout, module docstring): pass
    ``comm`` and ``space`` (the rank's :class:`~hpc_pt.parallel.SlabSpace`, for the halos of the
    Laplacian term and the serial power-iteration start vector); ``projector`` is then ``space.P``.
    """
    comm = comm if comm is not None else SerialComm()
    xp = get_xp(projections)
    p = projections.astype(projector.dtype, copy=False)
    if tuple(p.shape) != tuple(projector.shape_out):
        raise ValueError(f"projections {tuple(p.shape)} do not match the projector's {projector.shape_out}")
    if weights is not None:
        if tuple(weights.shape) != tuple(p.shape):
            raise ValueError(f"weights {tuple(weights.shape)} do not match the projections {tuple(p.shape)}")
        sw = xp.sqrt(xp.maximum(xp.asarray(weights).real, 0)).astype(p.real.dtype)
        p = sw * p

    def fwd(v):
        return projector.fwd(v) if weights is None else sw * projector.fwd(v)

    grad = space.gradient if space is not None else gradient
    div = space.divergence if space is not None else divergence

    def total(a):  # a sum over this rank's part of a distributed array, summed over ranks
        return comm.sum_scalar(float((xp.abs(a) ** 2).sum()))

    if resume is None:
        mu, lam = float(damping), float(smoothing)
        if relative and (mu > 0 or lam > 0):
            nrm = _norm_estimate(projector, comm, like=p, space=space)
            mu *= nrm
            lam *= nrm / 12.0
    else:
        mu, lam = float(resume["mu"]), float(resume["lam"])
    smu, slam = float(np.sqrt(mu)), float(np.sqrt(lam))  # Python floats: the arrays keep the projector's dtype

    def normal_residual(r, r_mu, r_lam):
        s = projector.adj(r if weights is None else sw * r)
        if r_mu is not None:
            s = s + smu * r_mu
        if r_lam is not None:
            s = s - slam * div(r_lam)  # grad^H = -div
        return s

    def objective(r, r_mu, r_lam):
        v = total(r)
        if r_mu is not None:
            v += total(r_mu)
        if r_lam is not None:
            v += total(r_lam)
        return 0.5 * v

    if resume is None:
        x = xp.zeros(projector.shape_in, dtype=projector.dtype) if x0 is None else x0.astype(projector.dtype)
        r = p - fwd(x)
        r_mu = -smu * x if mu > 0 else None
        r_lam = -slam * grad(x) if lam > 0 else None
        s = normal_residual(r, r_mu, r_lam)
        d = s.copy()
        gamma = comm.volume_dot(s, s)
        gamma0 = gamma
        hist = History()
    else:
        def arr(key):
            v = resume.get(key)
            return None if v is None else xp.asarray(v).copy()

        x, r, r_mu, r_lam, d = (arr(k) for k in ("x", "r", "r_mu", "r_lam", "d"))
        gamma, gamma0 = float(resume["gamma"]), float(resume["gamma0"])
        hist = History(resume["history"])
    for k in range(len(hist), int(iterations)):
        if gamma <= (tol ** 2) * gamma0 or gamma == 0:
            break
        t0 = time.perf_counter()
        q = fwd(d)
        delta = total(q)
        q_mu = smu * d if mu > 0 else None
        q_lam = slam * grad(d) if lam > 0 else None
        if q_mu is not None:
            delta += comm.volume_dot(q_mu, q_mu)
        if q_lam is not None:
            delta += total(q_lam)
        if not delta > 0:
            break
        alpha = gamma / delta
        x += alpha * d
        r -= alpha * q
        if q_mu is not None:
            r_mu -= alpha * q_mu
        if q_lam is not None:
            r_lam -= alpha * q_lam
        s = normal_residual(r, r_mu, r_lam)
        gamma_new = comm.volume_dot(s, s)
        d *= gamma_new / gamma
        d += s
        gamma = gamma_new
        row = hist.append(iteration=k + 1, objective=objective(r, r_mu, r_lam),
                          residual=float(np.sqrt(gamma / gamma0)) if gamma0 > 0 else 0.0,
                          iter_time_s=time.perf_counter() - t0)
        if callback is not None:
            callback(row, x)
        if checkpoint is not None:
            checkpoint(k + 1, {"iteration": k + 1, "history": hist.rows, "x": x, "r": r, "r_mu": r_mu,
                               "r_lam": r_lam, "d": d, "gamma": gamma, "gamma0": gamma0, "mu": mu, "lam": lam})
    return x, hist


def filter_response(n_pad: int, kind: str = "ramp", dtype=np.float64):
    """Transfer function (length n_pad, DC at 0) of the Kak-Slaney Ram-Lak kernel times the window."""
    if kind not in FILTERS:
        raise ValueError(f"unknown FBP filter {kind!r}; use one of {FILTERS}")
    k = np.arange(n_pad)
    k = np.where(k > n_pad // 2, k - n_pad, k)
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = (k % 2) != 0
    h[odd] = -1.0 / (np.pi * k[odd]) ** 2
    H = np.fft.fft(h).real  # ~ |w| / (2 pi), w = 2 pi k / n_pad
    w = 2 * np.pi * k / n_pad
    if kind == "shepp-logan":
        H = H * np.sinc(w / (2 * np.pi))
    elif kind == "hann":
        H = H * 0.5 * (1 + np.cos(w))
    return H.astype(dtype)


def fbp(projector, projections, filter: str = "ramp"):
    """Filtered back-projection (see the module docstring); returns the (rows, n, n) volume.

    Local in the slab layout too: every rank holds every angle of its rows, so A = ``len(projector.angles)``
    and the back-projection needs no reduction."""
    xp = get_xp(projections)
    p = projections.astype(projector.dtype, copy=False)
    if tuple(p.shape) != tuple(projector.shape_out):
        raise ValueError(f"projections {tuple(p.shape)} do not match the projector's {projector.shape_out}")
    n_det = p.shape[-1]
    n_pad = 1 << int(np.ceil(np.log2(max(2 * n_det, 2))))
    Hf = xp.asarray(filter_response(n_pad, filter, np.float64)).astype(p.real.dtype)
    q = xp.zeros(p.shape[:-1] + (n_pad,), dtype=p.dtype)
    q[..., :n_det] = p
    q = ifftc(fftc(q, axis=-1) * Hf, axis=-1)[..., :n_det].astype(projector.dtype)
    n_angles = float(len(projector.angles))
    return (np.pi / max(n_angles, 1.0)) * projector.adj(xp.ascontiguousarray(q))


# ----------------------------------------------------------------------------------------------------
# tomopy (optional)
# ----------------------------------------------------------------------------------------------------

def tomopy_available() -> bool:
    """True when ``import tomopy`` works (tomopy is distributed through conda-forge only)."""
    try:
        import tomopy  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _orientations(s):
    """The eight flips / transposes of the last two axes."""
    out = []
    for t in (s, np.swapaxes(s, -1, -2)):
        out += [t, t[..., ::-1, :], t[..., :, ::-1], t[..., ::-1, ::-1]]
    return out


def tomopy_recon(projector, projections, algorithm: str = "gridrec", iterations: int = 50, comm=None,
                 **kwargs):
    """tomopy's reconstruction of the (A, rows, n_det) projections (every angle: the whole volume, or a
    rank's slab in the slab layout), in our orientation; returns (rows, n, n). With ``comm`` the
    orientation's misfit is summed over ranks, so every slab takes the same one.

    Raises :class:`ImportError` with the fix when tomopy is not installed.
    """
    if not tomopy_available():
        raise ImportError("tomopy is not installed (it is distributed through conda-forge only: "
                          "conda install -c conda-forge tomopy); use the built-in 'cg' or 'fbp' engines")
    import tomopy

    p = to_numpy(projections)
    n, _n_det = projector.n, p.shape[-1]
    kw = dict(kwargs)
    if algorithm not in ("gridrec", "fbp"):
        kw.setdefault("num_iter", int(iterations))

    def rec(part):
        v = tomopy.recon(np.ascontiguousarray(part, dtype=np.float32), projector.angles,
                         center=projector.center, algorithm=algorithm, sinogram_order=False, **kw)
        # tomopy reconstructs on an n_det x n_det grid centred on the rotation axis: crop to n x n
        lo = (v.shape[-1] - n) // 2
        return v[:, lo:lo + n, lo:lo + n] if v.shape[-1] >= n else v

    vol = rec(p.real).astype(np.float64)
    if np.iscomplexobj(p) and np.any(p.imag != 0):
        vol = vol + 1j * rec(p.imag)
    if vol.shape[-1] != n:
        raise ValueError(f"tomopy returned a {vol.shape} volume for a {n}-pixel slice")
    cands = [np.ascontiguousarray(c).astype(projector.dtype) for c in _orientations(vol)]
    errs = np.array([float(np.linalg.norm(to_numpy(projector.fwd(asarray_on(c, projections))) - p)) ** 2
                     for c in cands])
    if comm is not None and getattr(comm, "size", 1) > 1:
        errs = comm.allreduce_sum(errs)
    return cands[int(np.argmin(errs))]


def reconstruct(projector, projections, comm=None, opts: TomoOptions | None = None, callback=None, space=None,
                resume: dict | None = None, checkpoint=None, weights=None):
    """Dispatch on ``opts.engine``; returns (volume, History). ``space``, ``resume``, ``checkpoint``,
    ``weights``: see :func:`tomo_cg` (only CG iterates and weighs rays; FBP and tomopy take the projections
    with zero-weight rays set to 0)."""
    opts = TomoOptions() if opts is None else opts
    if opts.engine == "cg":
        return tomo_cg(projector, projections, comm, iterations=opts.iterations, tol=opts.tol,
                       damping=opts.damping, smoothing=opts.smoothing, callback=callback, space=space,
                       resume=resume, checkpoint=checkpoint, weights=weights)
    if weights is not None:
        xp = get_xp(projections)
        projections = xp.where(xp.asarray(weights) > 0, projections, 0)
    if opts.engine == "fbp":
        return fbp(projector, projections, opts.filter), History()
    if opts.engine == "tomopy":
        vol = tomopy_recon(projector, projections, opts.algorithm, opts.iterations, comm=comm)
        xp = get_xp(projections)
        return xp.asarray(vol), History()
    raise ValueError(f"unknown tomography engine {opts.engine!r}; use one of {ENGINES}")


__all__ = [
    "ENGINES",
    "FILTERS",
    "TomoOptions",
    "fbp",
    "filter_response",
    "reconstruct",
    "tomo_cg",
    "tomopy_available",
    "tomopy_recon",
]
