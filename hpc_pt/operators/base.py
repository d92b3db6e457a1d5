"""Operator base class, its compositions (product, adjoint, scaling, sum) and the dot test every linear
operator must pass.

Operators compose like matrices: ``ptycho @ pad @ project`` is one :class:`ProductOperator`, ``A.H`` the
adjoint, ``2 * A`` a :class:`ScaledOperator` and ``A + B`` a :class:`SumOperator`. A composite passes only
the array to its factors' ``fwd`` / ``adj``, so keyword arguments (``Ptychography.fwd(psi, frames=...)``)
keep their defaults. ``A @ x`` for an array ``x`` is not supported: write ``A.fwd(x)``.
:class:`FunctionOperator` wraps any pair of callables (such as a slab's project / backproject) so that it
can join a composition.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..backend import get_xp


class LinearOperator:
    """A linear map with ``fwd`` (A x) and ``adj`` (A^H y).

    Subclasses set ``shape_in``, ``shape_out`` and ``dtype`` and implement ``fwd`` / ``adj``. Inputs may
    be NumPy or CuPy arrays; outputs live on the same backend.

    Attributes
    ----------
    shape_in : tuple of int
        Shape of the arrays ``fwd`` takes and ``adj`` returns.
    shape_out : tuple of int
        Shape of the arrays ``fwd`` returns and ``adj`` takes.
    dtype : numpy.dtype
        Complex dtype of the inputs and outputs.
    """

    shape_in: tuple
    shape_out: tuple
    dtype = np.dtype(np.complex64)
    #: NumPy arrays and scalars defer binary operators to the operator (``2.0 * A``, and a TypeError for
    #: ``x @ A``) instead of wrapping it in an object array
    __array_ufunc__ = None

    def fwd(self, x):  # pragma: no cover - abstract
        """A x.

        Parameters
        ----------
        x : array
            Of shape ``shape_in`` and ``dtype``, NumPy or CuPy.

        Returns
        -------
        array
            A x, of shape ``shape_out``, on the backend of ``x``.
        """
        raise NotImplementedError

    def adj(self, y):  # pragma: no cover - abstract
        """A^H y.

        Parameters
        ----------
        y : array of shape ``shape_out`` and ``dtype``, NumPy or CuPy

        Returns
        -------
        array
            A^H y (``shape_in``), on the backend of ``y``.
        """
        raise NotImplementedError

    def normal(self, x):
        """A^H A x, as ``adj(fwd(x))``.

        Parameters
        ----------
        x : array
            Of shape ``shape_in``.

        Returns
        -------
        array
            A^H A x, of the shape of ``x``.
        """
        return self.adj(self.fwd(x))

    def norm(self, n_iter: int = 30, seed: int = 0, xp=np) -> float:
        """Operator 2-norm ||A|| estimated by power iteration on A^H A.

        Parameters
        ----------
        n_iter : int
            Power iterations.
        seed : int
            Seed of the random start vector.
        xp : module
            Array namespace of the start vector (``numpy`` or ``cupy``).

        Returns
        -------
        float
            The estimate (a lower bound that converges to ||A||).
        """
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.shape_in) + 1j * rng.standard_normal(self.shape_in)
        x = xp.asarray(x.astype(self.dtype))
        lam = 0.0
        for _ in range(n_iter):
            x = x / xp.linalg.norm(x)
            y = self.normal(x)
            lam = float(xp.vdot(x, y).real)
            x = y
        return float(np.sqrt(max(lam, 0.0)))

    # -- composition -----------------------------------------------------------------------------------
    @property
    def H(self) -> LinearOperator:
        """The adjoint operator A^H, an :class:`AdjointOperator` whose ``.H`` is A again (``A.H.H is A``)."""
        return AdjointOperator(self)

    def __matmul__(self, other) -> ProductOperator:
        """``A @ B``: the product A B, applied right to left.

        Parameters
        ----------
        other : LinearOperator
            B, with ``B.shape_out == A.shape_in``.

        Returns
        -------
        ProductOperator

        Raises
        ------
        TypeError
            If ``other`` is not a LinearOperator (use ``A.fwd(x)`` to apply A to an array).
        """
        if not isinstance(other, LinearOperator):
            raise TypeError(f"{type(self).__name__} @ {type(other).__name__}: only operators compose with @; "
                            "apply an operator to an array with .fwd(x)")
        return ProductOperator(self, other)

    def __mul__(self, scalar):
        """``A * a``: A scaled by a scalar (:class:`ScaledOperator`); NotImplemented for anything else."""
        if not isinstance(scalar, numbers.Number):
            return NotImplemented
        return ScaledOperator(scalar, self)

    __rmul__ = __mul__

    def __neg__(self) -> ScaledOperator:
        """``-A``: A scaled by -1."""
        return ScaledOperator(-1.0, self)

    def __add__(self, other):
        """``A + B``: the sum (:class:`SumOperator`) of two operators of the same shapes."""
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, other)

    def __sub__(self, other):
        """``A - B``: the sum A + (-1) B."""
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, -other)

    def __repr__(self) -> str:
        shape_in, shape_out = getattr(self, "shape_in", "?"), getattr(self, "shape_out", "?")
        return f"<{type(self).__name__} {shape_in} -> {shape_out}, {np.dtype(self.dtype)}>"


class _Composite(LinearOperator):
    """Shared constructor of :class:`ProductOperator` and :class:`SumOperator`: nested instances of the same
    class are flattened into one tuple ``ops``, whose shapes :meth:`_check` validates."""

    kind = "composite"

    def __init__(self, *ops: LinearOperator):
        ops = tuple(o for op in ops for o in (op.ops if isinstance(op, type(self)) else (op,)))
        if len(ops) < 2:
            raise ValueError(f"a {self.kind} needs at least two operators, got {len(ops)}")
        for left, right in zip(ops[:-1], ops[1:]):
            self._check(left, right)
        self.ops = ops
        self.shape_in = tuple(ops[-1].shape_in)
        self.shape_out = tuple(ops[0].shape_out)
        self.dtype = np.result_type(*(op.dtype for op in ops))

    def _check(self, left: LinearOperator, right: LinearOperator):  # pragma: no cover - abstract
        raise NotImplementedError


class ProductOperator(_Composite):
    """The product A_1 A_2 ... A_k of operators: ``fwd`` applies A_k first, ``adj`` applies A_1^H first.

    Parameters
    ----------
    *ops : LinearOperator
        The factors, left to right; nested products are flattened into one tuple. The input shape of each
        factor must equal the output shape of the factor to its right.

    Attributes
    ----------
    ops : tuple of LinearOperator
        The flattened factors, left to right.

    Raises
    ------
    ValueError
        If fewer than two factors are given or two neighbouring factors' shapes do not match.
    """

    kind = "product"

    def _check(self, left, right):
        if tuple(right.shape_out) != tuple(left.shape_in):
            raise ValueError(f"cannot compose {left!r} @ {right!r}: the right operator's shape_out "
                             f"{tuple(right.shape_out)} must equal the left operator's shape_in "
                             f"{tuple(left.shape_in)}")

    def fwd(self, x):
        """A_1 (A_2 (... A_k x)): every factor's ``fwd``, the last factor's first.

        Parameters
        ----------
        x : array
            The last factor's input (``shape_in``).

        Returns
        -------
        array
            The first factor's output (``shape_out``).
        """
        for op in reversed(self.ops):
            x = op.fwd(x)
        return x

    def adj(self, y):
        """A_k^H (... A_1^H y): every factor's ``adj``, the first factor's first.

        Parameters
        ----------
        y : array in the first factor's output space (``shape_out``)

        Returns
        -------
        array
            In the last factor's input space.
        """
        for op in self.ops:
            y = op.adj(y)
        return y


class SumOperator(_Composite):
    """A_1 + A_2 + ... + A_k of operators with the same shapes (nested sums are flattened).

    Parameters
    ----------
    *ops : LinearOperator
        The terms; all must have the same ``shape_in`` and the same ``shape_out``.

    Attributes
    ----------
    ops : tuple of LinearOperator
        The flattened terms.

    Raises
    ------
    ValueError
        If fewer than two terms are given or their shapes differ.
    """

    kind = "sum"

    def _check(self, left, right):
        if (tuple(left.shape_in), tuple(left.shape_out)) != (tuple(right.shape_in), tuple(right.shape_out)):
            raise ValueError(f"cannot add {left!r} and {right!r}: the shapes differ")

    def fwd(self, x):
        """sum_i A_i x.

        Parameters
        ----------
        x : array
            Every term's input (``shape_in``).

        Returns
        -------
        array
            The sum of the terms' outputs (``shape_out``).
        """
        return sum((op.fwd(x) for op in self.ops[1:]), self.ops[0].fwd(x))

    def adj(self, y):
        """sum_i A_i^H y.

        Parameters
        ----------
        y : array of shape ``shape_out``

        Returns
        -------
        array
            The sum of the terms' adjoints.
        """
        return sum((op.adj(y) for op in self.ops[1:]), self.ops[0].adj(y))


class AdjointOperator(LinearOperator):
    """A^H as an operator of its own: ``fwd`` is ``A.adj`` and ``adj`` is ``A.fwd``.

    Parameters
    ----------
    op : LinearOperator
        A.
    """

    def __init__(self, op: LinearOperator):
        self.op = op
        self.shape_in = tuple(op.shape_out)
        self.shape_out = tuple(op.shape_in)
        self.dtype = np.dtype(op.dtype)

    @property
    def H(self) -> LinearOperator:
        """A itself."""
        return self.op

    def fwd(self, x):
        """A^H x, that is ``A.adj(x)``.

        Parameters
        ----------
        x : array
            In A's output space (A's ``shape_out``).

        Returns
        -------
        array
            In A's input space.
        """
        return self.op.adj(x)

    def adj(self, y):
        """A y, that is ``A.fwd(y)``.

        Parameters
        ----------
        y : array of A's ``shape_in``

        Returns
        -------
        array
            In A's output space: ``A.fwd(y)``.
        """
        return self.op.fwd(y)


class ScaledOperator(LinearOperator):
    """a A for a real or complex scalar a; the adjoint is conj(a) A^H.

    Parameters
    ----------
    scalar : number
        a; kept as a Python float or complex, so it does not change the dtype of A's outputs.
    op : LinearOperator
        A (a scaled operator is folded in: b (a A) is (b a) A).
    """

    def __init__(self, scalar, op: LinearOperator):
        if not isinstance(scalar, numbers.Number):
            raise TypeError(f"an operator scales by a number, got {type(scalar).__name__}")
        if isinstance(op, ScaledOperator):
            scalar, op = scalar * op.scalar, op.op
        self.scalar = float(scalar) if isinstance(scalar, numbers.Real) else complex(scalar)
        self.op = op
        self.shape_in = tuple(op.shape_in)
        self.shape_out = tuple(op.shape_out)
        self.dtype = np.dtype(op.dtype)

    def fwd(self, x):
        """a A x.

        Parameters
        ----------
        x : array
            A's input.

        Returns
        -------
        array
            a times A's output.
        """
        return self.scalar * self.op.fwd(x)

    def adj(self, y):
        """conj(a) A^H y.

        Parameters
        ----------
        y : array in A's output space

        Returns
        -------
        array
            conj(a) times A's adjoint, ``A.adj(y)``.
        """
        return self.scalar.conjugate() * self.op.adj(y)


class FunctionOperator(LinearOperator):
    """A linear operator from a pair of callables, so that any fwd / adj pair can join a composition.

    The callables are trusted to be linear and adjoint to each other (check with :func:`dot_test`); the
    operator checks only the input shape.

    Parameters
    ----------
    fwd : callable
        x (``shape_in``) -> A x (``shape_out``).
    adj : callable
        y (``shape_out``) -> A^H y (``shape_in``).
    shape_in, shape_out : tuple of int
        The shapes of x and y.
    dtype : dtype, optional
        Complex dtype of x and y (default complex64).
    name : str, optional
        Name used in shape errors (default ``"FunctionOperator"``).

    Examples
    --------
    A slab's projector (``hpc_pt.parallel.slabs.SlabSpace``) as an operator::

        P = FunctionOperator(space.project, space.backproject, space.shape, space.angle_shape, space.dtype)
    """

    def __init__(self, fwd, adj, shape_in, shape_out, dtype=np.complex64, name: str = "FunctionOperator"):
        if not (callable(fwd) and callable(adj)):
            raise TypeError("FunctionOperator needs two callables, fwd and adj")
        self._fwd, self._adj = fwd, adj
        self.shape_in = tuple(int(s) for s in shape_in)
        self.shape_out = tuple(int(s) for s in shape_out)
        self.dtype = np.dtype(dtype)
        self.name = str(name)

    def fwd(self, x):
        """The ``fwd`` callable applied to ``x`` after a shape check.

        Parameters
        ----------
        x : array
            Of shape ``shape_in`` (checked).

        Returns
        -------
        array
            What the ``fwd`` callable returns for ``x``: A x.
        """
        check_shape(x, self.shape_in, f"{self.name}.fwd")
        return self._fwd(x)

    def adj(self, y):
        """The ``adj`` callable applied to ``y`` after a shape check.

        Parameters
        ----------
        y : array of shape ``shape_out`` (checked)

        Returns
        -------
        array
            The callable's result, A^H y.
        """
        check_shape(y, self.shape_out, f"{self.name}.adj")
        return self._adj(y)


def dot_test(op: LinearOperator, seed: int = 0, xp=np, dtype=None) -> float:
    """Relative adjoint mismatch |<A x, y> - <x, A^H y>| / (||A x|| ||y||) on random complex inputs.

    Parameters
    ----------
    op : LinearOperator
        Any object with ``fwd``, ``adj``, ``shape_in``, ``shape_out`` and ``dtype``.
    seed : int
        Seed of the random x and y.
    xp : module
        Array namespace of x and y (``numpy`` or ``cupy``).
    dtype : dtype, optional
        dtype of x and y (default ``op.dtype``).

    Returns
    -------
    float
        The relative mismatch: rounding-sized (~1e-7 in complex64, ~1e-15 in complex128) for an exact
        adjoint pair.
    """
    dtype = np.dtype(dtype or op.dtype)
    rng = np.random.default_rng(seed)

    def rand(shape):
        return xp.asarray((rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype))

    x = rand(op.shape_in)
    y = rand(op.shape_out)
    ax = op.fwd(x)
    ahy = op.adj(y)
    lhs = complex(xp.vdot(y, ax))  # <A x, y> = y^H A x
    rhs = complex(xp.vdot(ahy, x))  # <x, A^H y> = (A^H y)^H x
    return abs(lhs - rhs) / (float(xp.linalg.norm(ax)) * float(xp.linalg.norm(y)))


def check_shape(x, shape, what: str):
    """Raise a ValueError naming the operator input when ``x`` has the wrong shape.

    Parameters
    ----------
    x : array
        The input.
    shape : tuple of int
        The shape it must have.
    what : str
        The operator method, for the message (``"Pad.fwd"``).

    Raises
    ------
    ValueError
        If ``x.shape != shape``.
    """
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{what}: expected array of shape {tuple(shape)}, got {tuple(x.shape)}")


def vdot_real(a, b) -> float:
    """Re <a, b> as a Python float, on either backend.

    Parameters
    ----------
    a, b : arrays of the same size, both NumPy or both CuPy

    Returns
    -------
    float
        Re sum(conj(a) b).
    """
    xp = get_xp(a)
    return float(xp.vdot(a, b).real)
