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

Checkpoints (CG). CGLS is an :class:`~hpc_pt.solvers.base.IterativeSolver` (:class:`CGLS`): its whole loop
state (:class:`CGLSState`: x, the residuals r / r_mu / r_lam, the direction d, gamma, gamma0, the scaled mu
and lam) goes to the :class:`~hpc_pt.solvers.base.Checkpointer` with the history, and a run resumed from
it is bitwise-equal to an uninterrupted run on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import asarray_on, fftc, get_xp, ifftc, to_numpy
from ..operators import divergence, gradient
from ..comm import Comm, SerialComm
from .base import NO_CHECKPOINTS, Checkpointer, History, IterativeSolver, power_lipschitz, run

ENGINES = ("cg", "fbp", "tomopy")
FILTERS = ("ramp", "ram-lak", "shepp-logan", "hann")


@dataclass
class TomoOptions:
    """The tomography's settings (:func:`reconstruct`).

    Parameters
    ----------
    engine : str
        "cg", "fbp" or "tomopy".
    iterations : int
        CG iterations (tomopy: the iterative algorithms' ``num_iter``).
    tol : float
        CG stop: ||normal residual|| <= tol * initial.
    damping : float
        Tikhonov mu, relative to ||P^T P|| (estimated).
    smoothing : float
        Laplacian lam, relative to ||P^T P|| / 12.
    filter : str
        The FBP filter (one of ``FILTERS``).
    algorithm : str
        The tomopy algorithm.
    """

    engine: str = "cg"  # "cg", "fbp" or "tomopy"
    iterations: int = 50  # CG iterations (tomopy: iterative algorithms' num_iter)
    tol: float = 1e-4  # CG stop: ||normal residual|| <= tol * initial
    damping: float = 0.0  # Tikhonov mu, relative to ||P^T P|| (estimated)
    smoothing: float = 0.0  # Laplacian lam, relative to ||P^T P|| / 12
    filter: str = "ramp"  # FBP filter
    algorithm: str = "gridrec"  # tomopy algorithm


def _norm_estimate(projector, comm: Comm, n_iter=10, like=None, space=None):
    """||P^T P|| by power iteration, on ``like``'s backend (the serial start vector in the slab layout)."""
    if space is not None:
        return power_lipschitz(lambda x: projector.adj(projector.fwd(x)), space.global_shape, comm,
                               projector.dtype, n_iter=n_iter, like=like, rows=(space.z0, space.z1))
    return power_lipschitz(lambda x: projector.adj(projector.fwd(x)), projector.shape_in, comm,
                           projector.dtype, n_iter=n_iter, like=like)


@dataclass
class CGLSState:
    """CGLS's loop state (the checkpoint's keys).

    Parameters
    ----------
    x : array
        The volume.
    r : array
        The data residual.
    r_mu, r_lam : array or None
        The Tikhonov and gradient residuals (None when that term is off).
    d : array
        The direction.
    gamma, gamma0 : float
        ||normal residual||^2 and its start.
    mu, lam : float
        The absolute weights (from a power-iteration norm when given relative).
    """

    x: object
    r: object
    r_mu: object
    r_lam: object
    d: object
    gamma: float
    gamma0: float
    mu: float
    lam: float


class CGLS(IterativeSolver):
    """CGLS for min 1/2 ||sqrt(w)(P x - p)||^2 + mu/2 ||x||^2 + lam/2 ||grad x||^2 (see :func:`tomo_cg`).

    Its stopping rule is ||normal residual|| <= tol x its start.

    Parameters
    ----------
    projector : LinearOperator
        P (a :class:`~hpc_pt.operators.Projector`, or ``space.P`` on a slab).
    projections : array
        p, the projector's output shape.
    comm : Comm, optional
        Sums over ranks (serial when None).
    x0 : array, optional
        The start (zeros by default).
    tol, damping, smoothing, relative, space, weights
        See :func:`tomo_cg`.

    Raises
    ------
    ValueError
        When the projections or weights do not match the projector's output shape.
    """

    State = CGLSState

    def __init__(self, projector, projections, comm: Comm | None = None, x0=None, tol: float = 1e-4,
                 damping: float = 0.0, smoothing: float = 0.0, relative: bool = True, space=None, weights=None):
        self.comm = comm if comm is not None else SerialComm()
        self.xp = xp = get_xp(projections)
        p = projections.astype(projector.dtype, copy=False)
        if tuple(p.shape) != tuple(projector.shape_out):
            raise ValueError(f"projections {tuple(p.shape)} do not match the projector's {projector.shape_out}")
        self.sw = None
        if weights is not None:
            if tuple(weights.shape) != tuple(p.shape):
                raise ValueError(f"weights {tuple(weights.shape)} do not match the projections {tuple(p.shape)}")
            self.sw = xp.sqrt(xp.maximum(xp.asarray(weights).real, 0)).astype(p.real.dtype)
            p = self.sw * p
        self.P, self.p, self.x0, self.tol, self.space = projector, p, x0, tol, space
        self.damping, self.smoothing, self.relative = damping, smoothing, relative
        self.grad = space.gradient if space is not None else gradient
        self.div = space.divergence if space is not None else divergence

    def fwd(self, v):
        """sqrt(w) P v.

        Parameters
        ----------
        v : array
            A volume of the projector's input shape.

        Returns
        -------
        array
            The weighted projections.
        """
        return self.P.fwd(v) if self.sw is None else self.sw * self.P.fwd(v)

    def total(self, a) -> float:
        """||a||^2 over this rank's part of a distributed array, summed over ranks.

        Parameters
        ----------
        a : array
            This rank's part.

        Returns
        -------
        float
            The squared norm of the whole.
        """
        return self.comm.sum_scalar(float((self.xp.abs(a) ** 2).sum()))

    def normal_residual(self, r, r_mu, r_lam):
        """The normal equations' residual s = P^H sqrt(w) r + sqrt(mu) r_mu - sqrt(lam) div r_lam.

        Parameters
        ----------
        r : array
            The (weighted) data residual.
        r_mu, r_lam : array or None
            The Tikhonov and gradient residuals (None: no such term).

        Returns
        -------
        array
            s, in the volume's shape.
        """
        s = self.P.adj(r if self.sw is None else self.sw * r)
        if r_mu is not None:
            s = s + self.smu * r_mu
        if r_lam is not None:
            s = s - self.slam * self.div(r_lam)  # grad^H = -div
        return s

    def start(self) -> CGLSState:
        """x = x0 (or zeros), its residuals and d = s, the absolute weights (see :meth:`IterativeSolver.start`).

        Returns
        -------
        CGLSState
            The state before the first iteration.
        """
        mu, lam = float(self.damping), float(self.smoothing)
        if self.relative and (mu > 0 or lam > 0):
            nrm = _norm_estimate(self.P, self.comm, like=self.p, space=self.space)
            mu *= nrm
            lam *= nrm / 12.0
        self._weights(mu, lam)
        xp, P = self.xp, self.P
        x = xp.zeros(P.shape_in, dtype=P.dtype) if self.x0 is None else self.x0.astype(P.dtype)
        r = self.p - self.fwd(x)
        r_mu = -self.smu * x if mu > 0 else None
        r_lam = -self.slam * self.grad(x) if lam > 0 else None
        s = self.normal_residual(r, r_mu, r_lam)
        gamma = self.comm.volume_dot(s, s)
        return CGLSState(x=x, r=r, r_mu=r_mu, r_lam=r_lam, d=s.copy(), gamma=gamma, gamma0=gamma, mu=mu, lam=lam)

    def _weights(self, mu: float, lam: float) -> None:
        self.smu, self.slam = float(np.sqrt(mu)), float(np.sqrt(lam))  # Python floats: arrays keep their dtype

    def ready(self, resumed: bool) -> None:
        """sqrt(mu) and sqrt(lam) from the state's weights.

        Parameters
        ----------
        resumed : bool
            Unused (see :meth:`IterativeSolver.ready`).
        """
        self._weights(self.state.mu, self.state.lam)

    def converged(self) -> bool:
        """||normal residual|| <= tol x its start, or zero (see :meth:`IterativeSolver.converged`)."""
        st = self.state
        return st.gamma <= (self.tol ** 2) * st.gamma0 or st.gamma == 0

    def step(self, k: int) -> dict | None:
        """One CGLS iteration; None (stop) when the curvature along d is not positive.

        Parameters
        ----------
        k : int
            The 0-based iteration (see :meth:`IterativeSolver.step`).

        Returns
        -------
        dict or None
            ``objective`` and ``residual`` (||s|| / ||s_0||).
        """
        st, comm = self.state, self.comm
        d = st.d
        q = self.fwd(d)
        delta = self.total(q)
        q_mu = self.smu * d if st.mu > 0 else None
        q_lam = self.slam * self.grad(d) if st.lam > 0 else None
        if q_mu is not None:
            delta += comm.volume_dot(q_mu, q_mu)
        if q_lam is not None:
            delta += self.total(q_lam)
        if not delta > 0:
            return None
        alpha = st.gamma / delta
        st.x += alpha * d
        st.r -= alpha * q
        if q_mu is not None:
            st.r_mu -= alpha * q_mu
        if q_lam is not None:
            st.r_lam -= alpha * q_lam
        s = self.normal_residual(st.r, st.r_mu, st.r_lam)
        gamma_new = comm.volume_dot(s, s)
        d *= gamma_new / st.gamma
        d += s
        st.gamma = gamma_new
        obj = self.total(st.r)
        if st.r_mu is not None:
            obj += self.total(st.r_mu)
        if st.r_lam is not None:
            obj += self.total(st.r_lam)
        return dict(objective=0.5 * obj, residual=float(np.sqrt(st.gamma / st.gamma0)) if st.gamma0 > 0 else 0.0)

    def iterate(self):
        """The current volume ``x`` (:meth:`IterativeSolver.iterate`)."""
        return self.state.x

    def result(self, history: History):
        """The volume and ``history``.

        Parameters
        ----------
        history : History
            The CG rows.

        Returns
        -------
        tuple
            (x, history).
        """
        return self.state.x, history


def tomo_cg(projector, projections, comm: Comm | None = None, x0=None, iterations: int = 50, tol: float = 1e-4,
            damping: float = 0.0, smoothing: float = 0.0, relative: bool = True, callback=None, space=None,
            checkpoints: Checkpointer = NO_CHECKPOINTS, weights=None):
    """CGLS for min 1/2||P x - p||^2 + mu/2||x||^2 + lam/2||grad x||^2 (:class:`CGLS`).

    Parameters
    ----------
    projector : LinearOperator
        P; on a slab (distributed, module docstring) ``space.P``.
    projections : array
        p (the projector's output shape).
    comm : Comm, optional
        Sums over ranks (serial when None).
    x0 : array, optional
        The start (zeros).
    iterations : int
        The most CG iterations.
    tol : float
        Stop when ||normal residual|| <= tol x its start.
    damping, smoothing : float
        mu and lam; with ``relative`` (default) relative to ||P^T P|| and ||P^T P|| / 12 (the Laplacian's
        norm is at most 12), so they are scale-free.
    relative : bool
        Whether ``damping`` and ``smoothing`` are relative.
    callback : callable, optional
        ``callback(row, x)`` after every iteration.
    space : SlabSpace, optional
        The rank's slab space (the Laplacian term's halos, the serial power-iteration start vector).
    checkpoints : Checkpointer
        Hands the loop state (:class:`CGLSState`) out and back on resume (bitwise).
    weights : array, optional
        Real >= 0, the projections' shape: the data term becomes 1/2 ||sqrt(w) (P x - p)||^2 (CGLS on
        sqrt(w) P with data sqrt(w) p); w = 0 drops a ray (the 2-step baseline passes the probe's lit-pixel
        mask, so pixels without data are not fitted).

    Returns
    -------
    tuple
        (volume, History) with ``objective`` and ``residual`` (||normal residual|| / its start) per row.

    Raises
    ------
    ValueError
        When the projections or weights do not match the projector.
    """
    solver = CGLS(projector, projections, comm, x0, tol, damping, smoothing, relative, space, weights)
    return run(solver, iterations, callback, checkpoints)


def filter_response(n_pad: int, kind: str = "ramp", dtype=np.float64):
    """Transfer function (length n_pad, DC at 0) of the Kak-Slaney Ram-Lak kernel times the window.

    Parameters
    ----------
    n_pad : int
        The padded detector length.
    kind : str
        One of ``FILTERS``: "ramp" and "ram-lak" are the kernel alone; "shepp-logan" and "hann" window it.
    dtype : dtype
        The result's dtype.

    Returns
    -------
    np.ndarray
        (n_pad,) real.

    Raises
    ------
    ValueError
        For an unknown filter.
    """
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
    """Filtered back-projection (see the module docstring).

    Local in the slab layout too: every rank holds every angle of its rows, so A = ``len(projector.angles)``
    and the back-projection needs no reduction.

    Parameters
    ----------
    projector : LinearOperator
        P (a :class:`~hpc_pt.operators.Projector`, or ``space.P``).
    projections : array
        (A, rows, n_det), the projector's output shape.
    filter : str
        One of ``FILTERS`` (:func:`filter_response`).

    Returns
    -------
    array
        The (rows, n, n) volume.

    Raises
    ------
    ValueError
        When the projections do not match the projector, or for an unknown filter.
    """
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


def tomopy_recon(projector, projections, algorithm: str = "gridrec", iterations: int = 50,
                 comm: Comm | None = None, **kwargs):
    """tomopy's reconstruction of the (A, rows, n_det) projections, in our orientation.

    Every angle: the whole volume, or a rank's slab in the slab layout. With ``comm`` the orientation's
    misfit is summed over ranks, so every slab takes the same one.

    Parameters
    ----------
    projector : Projector
        Our projector (its angles, centre and width; the orientation is chosen by its re-projection).
    projections : array
        (A, rows, n_det).
    algorithm : str
        tomopy's algorithm ("gridrec", "fbp", "art", "sirt", ...).
    iterations : int
        ``num_iter`` of the iterative algorithms (not gridrec / fbp).
    comm : Comm, optional
        Sums the orientations' misfits over ranks.
    **kwargs
        More of ``tomopy.recon``'s keywords.

    Returns
    -------
    np.ndarray
        The (rows, n, n) volume (on the host).

    Raises
    ------
    ImportError
        With the fix, when tomopy is not installed.
    ValueError
        When tomopy's slice is not n pixels wide.
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


def reconstruct(projector, projections, comm: Comm | None = None, opts: TomoOptions | None = None, callback=None,
                space=None, checkpoints: Checkpointer = NO_CHECKPOINTS, weights=None):
    """Tomography by ``opts.engine`` ("cg", "fbp" or "tomopy").

    Parameters
    ----------
    projector, projections, comm, callback, space, checkpoints, weights
        See :func:`tomo_cg` (only CG iterates and weighs rays; FBP and tomopy take the projections with
        zero-weight rays set to 0).
    opts : TomoOptions, optional
        The engine and its settings.

    Returns
    -------
    tuple
        (volume, History); FBP and tomopy have an empty history.

    Raises
    ------
    ValueError
        For an unknown engine.
    """
    opts = TomoOptions() if opts is None else opts
    if opts.engine == "cg":
        return tomo_cg(projector, projections, comm, iterations=opts.iterations, tol=opts.tol,
                       damping=opts.damping, smoothing=opts.smoothing, callback=callback, space=space,
                       checkpoints=checkpoints, weights=weights)
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
