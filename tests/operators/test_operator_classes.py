"""Every linear operator of hpc_pt.operators, plain and composed, through the shared checks of
tests/operator_checks.py; a new operator without a test class here fails
``test_every_operator_class_has_a_test_class``."""
import numpy as np
import pytest
from operator_checks import OperatorChecks, crand

import hpc_pt.operators as ops
from hpc_pt.comm import SerialComm
from hpc_pt.operators import (AdjointOperator, FunctionOperator, Gradient, LinearOperator, Pad, ProductOperator,
                              Projector, Ptychography, ScaledOperator, SumOperator, dot_test)
from hpc_pt.parallel.slabs import SlabSpace

# one small joint geometry: A angles of an (NZ, N, N) volume, projections padded into (A, H, W) fields
A, NZ, N, H, W, ROW0 = 3, 4, 12, 10, 14, 3
ANGLES = tuple(np.linspace(0, np.pi, A, endpoint=False))


def projector(dtype, gpu=False):
    return Projector(N, NZ, ANGLES, n_det=W, center=6.6, dtype=dtype, gpu=gpu)


def pad(dtype, offset=(ROW0, 0)):
    return Pad((A, NZ, W), (H, W), offset, dtype)


def ptycho(dtype, gpu=False, fractional=True):
    rng = np.random.default_rng(7)
    probe = crand(rng, (6, 6), dtype)
    pos = rng.uniform(0, [H - 7, W - 7], (8, 2))
    if not fractional:
        pos = np.round(pos)
    if gpu:
        import cupy as cp

        probe = cp.asarray(probe)
    op = Ptychography(probe, pos, (A, H, W), angle_index=np.arange(8) % A, dtype=dtype)
    assert op.fractional == fractional
    return op


# ---------------------------------------------------------------- the physics operators
class TestProjector(OperatorChecks):
    def make_operator(self, dtype, gpu=False):
        return projector(dtype, gpu)


class TestPad(OperatorChecks):
    def make_operator(self, dtype, gpu=False):
        return Pad((2, 5, 7), (9, 11), (2, 3), dtype)


class TestGradient(OperatorChecks):
    def make_operator(self, dtype, gpu=False):
        return Gradient((4, 5, 6), dtype=dtype)


class TestPtychographyInteger(OperatorChecks):
    def make_operator(self, dtype, gpu=False):
        return ptycho(dtype, gpu, fractional=False)


class TestPtychographySubpixel(OperatorChecks):
    def make_operator(self, dtype, gpu=False):
        return ptycho(dtype, gpu, fractional=True)


# ---------------------------------------------------------------- compositions
class TestProductOperator(OperatorChecks):
    """The linear joint operator, written once: far field of the padded projections."""

    def make_operator(self, dtype, gpu=False):
        op = ptycho(dtype, gpu) @ pad(dtype) @ projector(dtype, gpu)
        assert isinstance(op, ProductOperator) and len(op.ops) == 3
        return op


class TestAdjointOperator(OperatorChecks):
    def make_operator(self, dtype, gpu=False):
        op = (pad(dtype) @ projector(dtype, gpu)).H
        assert isinstance(op, AdjointOperator)
        return op


class TestScaledOperator(OperatorChecks):
    def make_operator(self, dtype, gpu=False):
        op = (0.5 - 2j) * Gradient((4, 5, 6), dtype=dtype)
        assert isinstance(op, ScaledOperator)
        return op


class TestSumOperator(OperatorChecks):
    def make_operator(self, dtype, gpu=False):
        op = pad(dtype) - 2 * pad(dtype, (0, 0)) + pad(dtype, (H - NZ, 0))
        assert isinstance(op, SumOperator) and len(op.ops) == 3
        return op


class TestFunctionOperator(OperatorChecks):
    """A slab's project / backproject pair (not a LinearOperator) joins a product through the adapter."""

    def make_operator(self, dtype, gpu=False):
        space = SlabSpace(SerialComm(), ANGLES, [list(range(A))], (NZ, N, N), n_det=W, dtype=dtype, gpu=gpu)
        op = FunctionOperator(space.project, space.backproject, space.shape, space.angle_shape, dtype,
                              name="SlabSpace.project")
        return op


def test_every_operator_class_has_a_test_class():
    """Every LinearOperator subclass that hpc_pt.operators exports or defines has a test class above."""
    exported = {obj for obj in (getattr(ops, name) for name in ops.__all__)
                if isinstance(obj, type) and issubclass(obj, LinearOperator)}

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    defined = {c for c in subclasses(LinearOperator)
               if c.__module__.startswith("hpc_pt.operators") and not c.__name__.startswith("_")}
    tested = {type(cls().make_operator(np.dtype(np.complex128))) for cls in globals().values()
              if isinstance(cls, type) and issubclass(cls, OperatorChecks) and cls is not OperatorChecks}
    missing = sorted(c.__name__ for c in (exported | defined) - {LinearOperator} - tested)
    assert not missing, f"add a test class (an OperatorChecks subclass) for: {', '.join(missing)}"


# ---------------------------------------------------------------- composition rules
def test_product_flattens_and_checks_shapes():
    pd, pr = pad(np.complex128), projector(np.complex128)
    pt = ptycho(np.complex128)
    assert (pt @ (pd @ pr)).ops == ((pt @ pd) @ pr).ops == (pt, pd, pr)
    with pytest.raises(ValueError, match=r"\(3, 4, 14\).*\(3, 10, 14\)"):
        pr @ pd
    with pytest.raises(TypeError, match="fwd"):
        pr @ np.zeros(pr.shape_in)
    with pytest.raises(ValueError, match="at least two"):
        ProductOperator(pr)


def test_adjoint_scaled_and_sum_rules():
    pr = projector(np.complex128)
    assert pr.H.H is pr
    pd, y = pad(np.complex128), crand(np.random.default_rng(0), (A, H, W), np.complex128)
    assert np.array_equal((pd @ pr).H.fwd(y), pr.adj(pd.adj(y)))  # (P B)^H = B^H P^H
    s = np.float64(2.0) * (3j * pr)  # NumPy scalars scale too; nested scalings fold into one
    assert isinstance(s, ScaledOperator) and s.op is pr and s.scalar == 6j
    with pytest.raises(TypeError):
        pr * pr
    with pytest.raises(ValueError, match="shapes differ"):
        pr + pad(np.complex128)


def test_function_operator_checks_the_input_shape():
    G = Gradient((4, 5, 6), dtype=np.complex128)
    F = FunctionOperator(G.fwd, G.adj, G.shape_in, G.shape_out, np.complex128, name="grad")
    assert dot_test(F) <= 1e-12
    with pytest.raises(ValueError, match=r"grad.fwd: expected array of shape \(4, 5, 6\)"):
        F.fwd(np.zeros((4, 5, 7), complex))
    with pytest.raises(TypeError, match="callables"):
        FunctionOperator(G, G.adj, G.shape_in, G.shape_out)
