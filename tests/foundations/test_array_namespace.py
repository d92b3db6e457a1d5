"""Static check: the array code never hands a possibly-device (CuPy) array to a NumPy function.

hpc_pt/backend.py's rule is that math code asks an array for its namespace (``xp = get_xp(x)``) and calls
``xp.<func>``. A ``np.<func>(x)`` on a CuPy array either raises (``np.asarray``, ``np.array``,
``np.ascontiguousarray``: CuPy refuses implicit device -> host copies; arithmetic between a CuPy array and a
NumPy 0-d array raises too) or silently relies on NEP-18 dispatch; a host buffer from ``np.zeros`` that
receives device data raises at the assignment. This file finds those calls without a GPU, so the GPU run
finds as little as possible.

How it works (an AST pass over every function of the array-code packages, flow-insensitive, to a fixed
point): a name is *maybe-device* when it is

* a parameter named in ``get_xp(p)``, ``is_cupy(p)`` or ``asarray_on(_, p)`` (the function expects either
  backend), or a parameter whose name is one of the project's device-array names (:data:`DEVICE_PARAMS`)
  in a function that obtains a namespace (``xp = get_xp(...)``, ``xp = self._xp``, a parameter ``xp``);
* assigned from a namespace call (``xp.zeros(...)``, ``self._xp.ones(...)``), from a call that returns an
  array on the input's backend (:data:`DEVICE_CALLS`: ``fft2c``, ``asarray_on``, an operator's ``fwd`` /
  ``adj``, the slab layer's ``project`` ...), or from an expression of maybe-device names (arithmetic,
  indexing, ``.real``, method calls on them).

``to_numpy(...)``, ``.get()``, ``.item()``, ``float()``, ``int()``, ``len()``, a NumPy call's result and the
metadata attributes (``.shape``, ``.dtype``, ``.size`` ...) are host values. Flagged: ``np.<func>(...)``
with a maybe-device argument (dtype helpers excepted), and ``h[...] = <maybe-device>`` into a host buffer
``h`` made by ``np.zeros`` / ``np.empty`` / ``np.ones`` / ``np.full``. What is flagged and host-only by
design is in :data:`ALLOWED`, each with its reason; an entry that no longer matches anything fails too, so
the list stays exact. A seeded case of each rule checks that the pass still finds what it should.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "hpc_pt"
#: the array-code packages (docs/architecture.md layers 2, 4, 5, 6); backend.py is the one place that may
#: branch on the array type itself
PACKAGES = ("operators", "priors", "solvers", "parallel", "comm.py")

#: parameter names that, by the project's naming, hold arrays of the run's backend (volumes, fields,
#: frames, far fields, multipliers, probes, gradients)
DEVICE_PARAMS = frozenset({
    "u", "v", "x", "y", "z", "w", "f", "g", "h", "d", "p", "q", "r", "a", "b", "mu", "lam", "psi", "phi",
    "field", "frames", "probe", "grad", "mag", "mag2", "data", "fields", "vol", "volume", "proj",
    "projections", "sino", "target", "out", "arr", "array", "values", "amp", "exit_wave", "farfield",
})

#: calls whose result lives on the backend of their array arguments (or of the operator's arrays)
DEVICE_CALLS = frozenset({
    "fft2c", "ifft2c", "fftc", "ifftc", "nufft2d_type1", "nufft2d_type2", "asarray_on", "scatter_add",
    "fwd", "adj", "vjp", "jvp", "project", "backproject", "laplacian", "to_slabs", "to_angles", "local",
    "exit_wave", "patches", "normal_apply", "normal_stencil", "apply_stencil", "denoise", "prox",
})

#: NumPy helpers that take dtypes or Python scalars only, never arrays
HOST_SAFE = frozenset({
    "dtype", "finfo", "iinfo", "isscalar", "result_type", "issubdtype", "can_cast", "promote_types",
    "float32", "float64", "complex64", "complex128", "int64", "int32", "intp", "bool_",
})
HOST_CALLS = frozenset({"to_numpy", "float", "int", "bool", "len", "str", "abs", "max", "min", "round",
                        "isinstance", "type", "range", "enumerate", "sum_scalar", "volume_dot", "is_cupy"})
HOST_METHODS = frozenset({"get", "item", "tolist", "sum_scalar", "volume_dot", "asnumpy", "alloc_pinned_memory"})
HOST_ATTRS = frozenset({"shape", "dtype", "size", "ndim", "nbytes", "itemsize", "strides", "flags"})
HOST_BUFFERS = frozenset({"zeros", "empty", "ones", "full", "zeros_like", "empty_like"})
#: NumPy calls that return a host ndarray (0-d included): CuPy arithmetic with one raises TypeError
HOST_ARRAYS = HOST_BUFFERS | {"asarray", "array", "ascontiguousarray", "arange", "linspace", "frombuffer",
                              "concatenate", "stack", "full_like", "ones_like", "broadcast_to"}
#: namespace calls that move host data to the device on purpose
XP_TRANSFERS = frozenset({"asarray", "array", "ascontiguousarray", "asnumpy"})
#: parameter annotations that declare a host value
HOST_ANNOTATIONS = frozenset({"int", "float", "bool", "str", "tuple", "slice", "np.ndarray", "numpy.ndarray"})

#: (file under hpc_pt/, function, NumPy call): host-only by design, checked by hand. The analysis cannot
#: see these are host values; each says why it is.
ALLOWED = {
    # the CPU branches of Ptychography (CuPy fields take the index-array gather / scatter_add, ``is_cupy``
    # there) and the compiled kernels they call, which only ever see host arrays
    ("operators/ptycho.py", "_field3", "np.asarray"): "CPU-only helper",
    ("operators/ptycho.py", "fwd", "np.shares_memory"): "CPU-only branch",
    ("operators/_windows.py", "scatter", "device array op NumPy array"): "compiled CPU kernel",
    # APT's compiled far-field step: called only on host arrays (CuPy keeps the expression path, ``is_cupy``)
    ("solvers/_fused.py", "far_field_step", "np.ascontiguousarray"): "compiled CPU kernel's wrapper",
    ("solvers/_fused.py", "_far_field_step", "np.sqrt"): "compiled CPU kernel (float32 math in numba)",
    ("solvers/_fused.py", "_far_field_step", "np.log"): "compiled CPU kernel (float32 math in numba)",
    ("solvers/_fused.py", "_farfield_reduce", "np.sqrt"): "compiled CPU kernel (float32 math in numba)",
    ("solvers/_fused.py", "_farfield_reduce", "np.log"): "compiled CPU kernel (float32 math in numba)",
    # frame selections are host index arrays (ePIE's batches are drawn on the host); _on_device moves them
    ("operators/ptycho.py", "_frames", "np.asarray"): "host frame indices",
    # the start vector is drawn on the host and moved to ``like``'s backend two lines later
    ("solvers/base.py", "power_lipschitz", "np.ascontiguousarray"): "host start vector",
    # called only by _fields_to_projections, on its host copies (to_numpy) of the recovered fields
    ("solvers/twostep.py", "_align_linear", "np.conj"): "host fields",
    ("solvers/twostep.py", "_align_linear", "np.einsum"): "host fields",
    # the communicators stage arrays through host buffers on purpose: a Python scalar's one-element buffer,
    # and the NumPy branch of the is-CuPy test (the CuPy branch copies with cupy.asnumpy)
    ("comm.py", "bcast", "np.array"): "host staging",
    ("parallel/dask/comm.py", "allreduce_sum", "np.array"): "host staging",
    # the Dask mesh's byte view of a host buffer (DaskComm stages CuPy arrays to the host before it)
    ("parallel/dask/transport.py", "byte_view", "np.ascontiguousarray"): "host staging",
    ("parallel/mpi.py", "allreduce_sum", "np.array"): "host staging",
}


def _np_chain(node) -> str | None:
    """'zeros' for np.zeros, 'fft.fft' for np.fft.fft, 'add.at' for np.add.at; else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in ("np", "numpy") and parts:
        return ".".join(reversed(parts))
    return None


def _call_name(func) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _host_copy(node) -> bool:
    """``to_numpy(x)``, ``x.get()``, ``np.asarray(...)`` and method chains on them (``.astype(...)``)."""
    if not isinstance(node, ast.Call):
        return False
    if _np_chain(node.func) in HOST_ARRAYS or _call_name(node.func) in ("to_numpy", "get"):
        return True
    return isinstance(node.func, ast.Attribute) and _host_copy(node.func.value)


class _Function:
    """Taint analysis of one function body (nested functions are analysed on their own)."""

    def __init__(self, fn, path: str, host_attrs=frozenset()):
        self.fn, self.path = fn, path
        self.host_attrs = host_attrs  # attributes of ``self`` that only ever hold host arrays
        self.params = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
        self.nodes = list(self._own_nodes(fn))
        self.xp = {"xp"} & set(self.params)
        self.device: set[str] = set()
        self.host_buffers: set[str] = set()
        self.host_arrays: set[str] = set()
        self._seed()

    @staticmethod
    def _own_nodes(fn):
        stack = list(fn.body)
        while stack:
            node = stack.pop()
            yield node
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                    stack.append(child)

    def _is_xp(self, node) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.xp or node.id in ("cp", "cupy")
        return isinstance(node, ast.Attribute) and node.attr in ("_xp", "xp")

    def _seed(self):
        for node in self.nodes:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                    and _call_name(node.value.func) == "get_xp" or (
                    isinstance(node, ast.Assign) and self._is_xp(node.value)):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        self.xp.add(t.id)
            if isinstance(node, ast.Call):
                name = _call_name(node.func)
                args = node.args[:1] if name in ("get_xp", "is_cupy") else (
                    node.args[1:2] if name == "asarray_on" else [])
                for a in args:
                    if isinstance(a, ast.Name) and a.id in self.params:
                        self.device.add(a.id)
        self.device |= {p for p in self.params if p in DEVICE_PARAMS}
        args = self.fn.args
        for a in args.posonlyargs + args.args + args.kwonlyargs:  # declared host values
            if a.annotation is not None and ast.unparse(a.annotation) in HOST_ANNOTATIONS:
                self.device.discard(a.arg)
        for stmt in self.fn.body:  # a parameter first rebound to a host copy: ``psi = to_numpy(psi)``
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
                    and stmt.targets[0].id in self.params and _host_copy(stmt.value):
                self.device.discard(stmt.targets[0].id)

    def tainted(self, node) -> bool:
        """True when ``node`` may evaluate to a device array."""
        if node is None:
            return False
        if isinstance(node, ast.Name):
            return node.id in self.device
        if isinstance(node, ast.Constant):
            return False
        if isinstance(node, ast.Attribute):
            if node.attr in HOST_ATTRS:
                return False
            return self.tainted(node.value)
        if isinstance(node, ast.Subscript):
            return self.tainted(node.value)
        if isinstance(node, ast.Call):
            func = node.func
            name = _call_name(func)
            if _np_chain(func) is not None or name in HOST_CALLS:
                return False
            if isinstance(func, ast.Attribute):
                if func.attr in HOST_METHODS:
                    return False
                if self._is_xp(func.value) or (isinstance(func.value, ast.Attribute)
                                               and self._is_xp(func.value.value)):
                    return True  # xp.zeros(...), xp.fft.fft(...)
                if self.tainted(func.value):
                    return True  # x.conj(), x.reshape(...)
            if name in DEVICE_CALLS:
                return True
            return False  # a plain function: its result is not followed
        if isinstance(node, (ast.BinOp,)):
            return self.tainted(node.left) or self.tainted(node.right)
        if isinstance(node, ast.UnaryOp):
            return self.tainted(node.operand)
        if isinstance(node, ast.IfExp):
            return self.tainted(node.body) or self.tainted(node.orelse)
        if isinstance(node, ast.Compare):
            return self.tainted(node.left) or any(self.tainted(c) for c in node.comparators)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(self.tainted(e) for e in node.elts)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            return self.tainted(node.elt)
        if isinstance(node, ast.Starred):
            return self.tainted(node.value)
        if isinstance(node, ast.NamedExpr):
            return self.tainted(node.value)
        return False

    @staticmethod
    def _names(target):
        if isinstance(target, ast.Name):
            yield target.id
        elif isinstance(target, (ast.Tuple, ast.List)):
            for e in target.elts:
                yield from _Function._names(e)
        elif isinstance(target, ast.Starred):
            yield from _Function._names(target.value)

    def propagate(self):
        changed = True
        while changed:
            changed = False
            for node in self.nodes:
                pairs = []
                if isinstance(node, ast.Assign):
                    pairs = [(t, node.value) for t in node.targets]
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
                    pairs = [(node.target, node.value)]
                elif isinstance(node, ast.For):
                    pairs = [(node.target, node.iter)]
                elif isinstance(node, ast.comprehension):
                    pairs = [(node.target, node.iter)]
                elif isinstance(node, ast.NamedExpr):
                    pairs = [(node.target, node.value)]
                for target, value in pairs:
                    if self.tainted(value):
                        for n in self._names(target):
                            if n not in self.device:
                                self.device.add(n)
                                changed = True
        for node in self.nodes:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                chain = _np_chain(node.value.func)
                for t in node.targets:
                    if chain in HOST_BUFFERS:
                        self.host_buffers.update(self._names(t))
                    if chain in HOST_ARRAYS:
                        self.host_arrays.update(self._names(t))
        self.host_arrays -= self.device
        self.host_buffers -= self.device

    def _host_array(self, node) -> bool:
        """A NumPy array made in this function or held by ``self`` (a host ndarray, 0-d included)."""
        if isinstance(node, ast.Call):
            return _np_chain(node.func) in HOST_ARRAYS
        if isinstance(node, ast.Subscript):
            return self._host_array(node.value)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return node.attr in self.host_attrs
        return isinstance(node, ast.Name) and node.id in self.host_arrays

    def findings(self):
        self.propagate()
        out = []
        for node in self.nodes:
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and self._is_xp(func.value) and func.attr not in XP_TRANSFERS \
                        and any(self._host_array(a) for a in node.args):
                    out.append((self.path, self.fn.name, f"NumPy array into xp.{func.attr}", node.lineno))
                chain = _np_chain(func)
                if chain is None or chain in HOST_SAFE:
                    continue
                args = list(node.args) + [k.value for k in node.keywords if k.arg != "dtype"]
                if any(self.tainted(a) for a in args):
                    out.append((self.path, self.fn.name, f"np.{chain}", node.lineno))
            elif isinstance(node, ast.Assign) and self.tainted(node.value):
                for t in node.targets:
                    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) \
                            and t.value.id in self.host_buffers:
                        out.append((self.path, self.fn.name, f"host buffer {t.value.id}[...] =", node.lineno))
            if isinstance(node, ast.BinOp):
                pair = (node.left, node.right)
            elif isinstance(node, ast.AugAssign):
                pair = (node.target, node.value)
            else:
                continue
            if any(self.tainted(a) and self._host_array(b) for a, b in (pair, pair[::-1])):
                out.append((self.path, self.fn.name, "device array op NumPy array", node.lineno))
        return out


def check_source(source: str, path: str = "<string>") -> list[tuple[str, str, str, int]]:
    """Findings (file, function, what, line) of one module's source."""
    tree = ast.parse(source)
    found = []
    owner = {}
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef):
            attrs = _host_attributes(cls)
            for fn in cls.body:
                owner[fn] = attrs
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.extend(_Function(node, path, owner.get(node, frozenset())).findings())
    return sorted(set(found))


def _host_attributes(cls) -> frozenset:
    """Attributes ``self.a`` that every assignment in the class's methods sets to a host copy
    (``np.asarray(...)``, ``np.zeros(...)``, ``to_numpy(...)``, method chains on them)."""
    host, other = set(), set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    (host if _host_copy(node.value) else other).add(t.attr)
    return frozenset(host - other)


def array_code_findings() -> list[tuple[str, str, str, int]]:
    found = []
    for pkg in PACKAGES:
        for file in [ROOT / pkg] if pkg.endswith(".py") else sorted((ROOT / pkg).rglob("*.py")):
            rel = file.relative_to(ROOT).as_posix()
            found.extend(check_source(file.read_text(), rel))
    return found


def test_array_code_uses_the_array_namespace():
    found = array_code_findings()
    unexpected = [f"{p}:{line} {fn}: {what}" for p, fn, what, line in found if (p, fn, what) not in ALLOWED]
    assert not unexpected, "NumPy calls on possibly-device arrays (use xp = get_xp(...)):\n" + "\n".join(unexpected)
    stale = set(ALLOWED) - {(p, fn, what) for p, fn, what, _ in found}
    assert not stale, f"allow-list entries that no longer match anything (remove them): {sorted(stale)}"


SEEDED = '''
import numpy as np
from hpc_pt.backend import get_xp, asarray_on, fft2c, to_numpy

def scale(f, s):
    xp = get_xp(f)
    ones = xp.ones(f.shape)
    return f * np.asarray(s, dtype=ones.real.dtype), np.sqrt(ones)

def host_buffer(psi, H):
    xp = get_xp(psi)
    pad = np.zeros((H, H), dtype=psi.dtype)
    pad[:2] = psi[:2]
    return pad

def through_operator(op, u):
    d = fft2c(op.fwd(u))
    return np.abs(d)

def clean(u, counts, s: float):
    xp = get_xp(u)
    u = u * s
    n = u.shape[0]
    host = to_numpy(u)
    return np.zeros(n, dtype=u.dtype), np.abs(host), np.cumsum(counts), xp.abs(u), np.sqrt(float(xp.vdot(u, u).real))
'''


@pytest.mark.parametrize("function, what", [("scale", "np.sqrt"), ("scale", "device array op NumPy array"),
                                            ("host_buffer", "host buffer pad[...] ="),
                                            ("through_operator", "np.abs")])
def test_seeded_problems_are_found(function, what):
    found = {(fn, w) for _p, fn, w, _l in check_source(SEEDED)}
    assert (function, what) in found


def test_seeded_problems_found_exactly():
    """The seeded 0-d array product is found, and host values (shapes, to_numpy, floats, host arguments) are
    not."""
    found = [(fn, w) for _p, fn, w, _l in check_source(SEEDED)]
    assert ("scale", "np.asarray") not in found  # its argument is a host scalar; the product is the problem
    assert not [f for f in found if f[0] == "clean"]
