"""One set of checks for every linear operator: a test class inherits :class:`OperatorChecks` and says how to
build its operator.

    class TestPad(OperatorChecks):
        def make_operator(self, dtype, gpu=False):
            return Pad((2, 5, 7), (9, 11), (2, 3), dtype)

and gets, for complex64 and complex128: the dot test of the operator and of its ``.H``, linearity, scaling
(also through ``a * A``), the shapes and dtype of ``fwd`` / ``adj``, and CuPy against NumPy (marked ``gpu``:
skipped by tests/conftest.py when CuPy or a CUDA device is missing). Tolerances are class attributes that a
test class may override.
"""
from types import MappingProxyType

import numpy as np
import pytest

from hpc_pt.operators import AdjointOperator, dot_test

C64, C128 = np.dtype(np.complex64), np.dtype(np.complex128)
#: dot-test bound per dtype (tests/operators/test_operators.py's TOL, with headroom for products of operators)
ADJOINT_TOL = MappingProxyType({C64: 1e-5, C128: 1e-12})
#: relative error allowed between two ways of computing the same linear combination
LINEAR_TOL = MappingProxyType({C64: 1e-5, C128: 1e-12})
#: relative error allowed between the CuPy and the NumPy result (different FFT / NUFFT libraries)
GPU_TOL = MappingProxyType({C64: 1e-5, C128: 1e-10})


def crand(rng, shape, dtype):
    """Standard complex normal array of ``shape`` and ``dtype``."""
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def relerr(a, b) -> float:
    """||a - b|| / ||b|| (NumPy arrays; 0 when both are 0)."""
    scale = float(np.linalg.norm(b))
    diff = float(np.linalg.norm(a - b))
    return diff / scale if scale else diff


class OperatorChecks:
    """Mixin of operator tests; subclasses implement :meth:`make_operator`.

    Attributes
    ----------
    adjoint_tol, linear_tol, gpu_tol : mapping dtype -> float
        Bounds of the dot test, of the linearity and scaling checks, and of the CuPy / NumPy comparison.
    """

    adjoint_tol = ADJOINT_TOL
    linear_tol = LINEAR_TOL
    gpu_tol = GPU_TOL

    def make_operator(self, dtype, gpu=False):
        """The operator under test.

        Parameters
        ----------
        dtype : numpy.dtype
            complex64 or complex128.
        gpu : bool
            Build it for CuPy inputs (GPU plans, a CuPy probe); operators that take either ignore it.

        Returns
        -------
        LinearOperator
        """
        raise NotImplementedError

    @pytest.fixture(params=[C64, C128], ids=["complex64", "complex128"])
    def dtype(self, request):
        return request.param

    @pytest.fixture
    def op(self, dtype):
        return self.make_operator(dtype)

    @staticmethod
    def samples(op, seed=0):
        """Random x (``shape_in``) and y (``shape_out``) of the operator's dtype, on the host."""
        rng = np.random.default_rng(seed)
        return crand(rng, op.shape_in, op.dtype), crand(rng, op.shape_out, op.dtype)

    def test_adjoint(self, op, dtype):
        assert dot_test(op, seed=1) <= self.adjoint_tol[dtype]
        assert dot_test(op.H, seed=2) <= self.adjoint_tol[dtype]
        twice = op.H.H  # A itself; for an adjoint B = A^H, B.H is A and B.H.H a new adjoint of A
        assert twice is op or (isinstance(op, AdjointOperator) and twice.op is op.op)

    def test_linearity(self, op, dtype):
        (x1, y1), (x2, y2) = self.samples(op, 3), self.samples(op, 4)
        a, b = 0.3 - 1.1j, -2.0 + 0.5j
        assert relerr(op.fwd(a * x1 + b * x2), a * op.fwd(x1) + b * op.fwd(x2)) <= self.linear_tol[dtype]
        assert relerr(op.adj(a * y1 + b * y2), a * op.adj(y1) + b * op.adj(y2)) <= self.linear_tol[dtype]

    def test_scaling(self, op, dtype):
        x, y = self.samples(op, 5)
        a = 0.7 - 1.3j
        ax, ahy = op.fwd(x), op.adj(y)
        tol = self.linear_tol[dtype]
        assert relerr(op.fwd(a * x), a * ax) <= tol
        assert relerr(op.adj(a * y), a * ahy) <= tol
        assert relerr((a * op).fwd(x), a * ax) <= tol
        assert relerr((op * a).adj(y), np.conj(a) * ahy) <= tol
        assert relerr((-op).fwd(x), -ax) <= tol

    def test_shapes(self, op, dtype):
        assert np.dtype(op.dtype) == dtype
        x, y = self.samples(op, 6)
        ax, ahy = op.fwd(x), op.adj(y)
        assert (ax.shape, ax.dtype) == (tuple(op.shape_out), dtype)
        assert (ahy.shape, ahy.dtype) == (tuple(op.shape_in), dtype)
        assert op.normal(x).shape == tuple(op.shape_in)
        assert (op.H.shape_in, op.H.shape_out) == (tuple(op.shape_out), tuple(op.shape_in))

    @pytest.mark.gpu
    def test_gpu_matches_cpu(self, dtype):
        import cupy as cp

        cpu, gpu = self.make_operator(dtype), self.make_operator(dtype, gpu=True)
        x, y = self.samples(cpu, 7)
        assert relerr(gpu.fwd(cp.asarray(x)).get(), cpu.fwd(x)) <= self.gpu_tol[dtype]
        assert relerr(gpu.adj(cp.asarray(y)).get(), cpu.adj(y)) <= self.gpu_tol[dtype]
        assert dot_test(gpu, seed=8, xp=cp) <= self.adjoint_tol[dtype]
