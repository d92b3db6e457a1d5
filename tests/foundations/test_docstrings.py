"""The public API of the packages in ``DOCUMENTED`` has numpydoc docstrings (issue 12, item 6).

Public: module-level functions and classes, and the methods of public classes, whose names do not start
with an underscore, defined in the module's own source (found with :mod:`ast`, so nothing is imported:
no optional dependency such as mpi4py, dask or CuPy is needed, and the walk takes milliseconds). Every
such function or method that takes a parameter besides ``self`` / ``cls`` must have a ``Parameters``
section; so must every public class whose constructor takes one (an explicit ``__init__``, documented
in the class docstring or in ``__init__``'s, or the fields of a ``@dataclass``). Property setters and
``@overload`` stubs are skipped; pydantic models, whose fields are declared settings rather than an
``__init__`` signature, are not checked here.

A section is recognised by a line ``Parameters`` followed by a line of dashes, with a regular
expression: numpydoc is not installed in the development environment, so ``numpydoc.docscrape`` is not
used (the regex is what numpydoc itself requires of a section header).
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: packages and modules whose public API must carry numpydoc docstrings (dotted names under the checkout)
DOCUMENTED = (
    "hpc_pt.io",
    "hpc_pt.priors",
    "hpc_pt.parallel",
    "hpc_pt.backend",
    "hpc_pt.comm",
    "hpc_pt.metrics",
    "hpc_pt.simulate",
    "hpc_pt.solvers",
)

SECTION = re.compile(r"^[ \t]*Parameters[ \t]*\n[ \t]*-{3,}[ \t]*$", re.M)


def _files(dotted: str) -> list[Path]:
    base = ROOT.joinpath(*dotted.split("."))
    if base.is_dir():
        return sorted(base.rglob("*.py"))
    return [base.with_suffix(".py")]


def _has_parameters(doc: str | None) -> bool:
    return bool(doc) and SECTION.search(doc) is not None


def _decorator_names(node) -> set[str]:
    names = set()
    for d in node.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        if isinstance(d, ast.Name):
            names.add(d.id)
        elif isinstance(d, ast.Attribute):
            names.add(d.attr)
    return names


def _n_params(fn, method: bool) -> int:
    a = fn.args
    positional = a.posonlyargs + a.args
    if method and "staticmethod" not in _decorator_names(fn):
        positional = positional[1:]  # self / cls
    return len(positional) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)


def _body(nodes):
    """Statements of a module or class body, looking inside ``if`` / ``try`` blocks (not into functions)."""
    for n in nodes:
        if isinstance(n, ast.If):
            yield from _body(n.body + n.orelse)
        elif isinstance(n, ast.Try):
            yield from _body(n.body + n.orelse + n.finalbody + [s for h in n.handlers for s in h.body])
        else:
            yield n


def _dataclass_fields(cls: ast.ClassDef) -> list[str]:
    if "dataclass" not in _decorator_names(cls):
        return []
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            and not ast.unparse(n.annotation).startswith(("ClassVar", "typing.ClassVar"))]


def offenders(source: str, where: str) -> tuple[list[str], int]:
    """Public callables of ``source`` that take parameters but have no ``Parameters`` section, and the
    number of public callables checked."""
    bad, checked = [], 0

    def visit(nodes, prefix: str, method: bool):
        nonlocal checked
        for n in _body(nodes):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and not n.name.startswith("_"):
                decos = _decorator_names(n)
                if decos & {"setter", "deleter", "overload"}:
                    continue
                checked += 1
                if _n_params(n, method) and not _has_parameters(ast.get_docstring(n)):
                    bad.append(f"{where}:{n.lineno} {prefix}{n.name}")
            elif isinstance(n, ast.ClassDef) and not n.name.startswith("_"):
                checked += 1
                init = next((m for m in n.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"), None)
                takes = _n_params(init, True) if init is not None else len(_dataclass_fields(n))
                docs = [ast.get_docstring(n)] + ([ast.get_docstring(init)] if init is not None else [])
                if takes and not any(_has_parameters(d) for d in docs):
                    bad.append(f"{where}:{n.lineno} class {prefix}{n.name}")
                visit(n.body, f"{prefix}{n.name}.", True)

    visit(ast.parse(source).body, "", False)
    return bad, checked


def test_documented_packages_exist():
    missing = [name for name in DOCUMENTED if not all(p.is_file() for p in _files(name)) or not _files(name)]
    assert not missing, f"not a package or module of the checkout: {missing}"


def test_public_callables_document_their_parameters():
    bad, checked = [], 0
    for name in DOCUMENTED:
        for path in _files(name):
            found, n = offenders(path.read_text(), str(path.relative_to(ROOT)))
            bad += found
            checked += n
    assert checked > 0
    assert not bad, ("add a numpydoc 'Parameters' section (a line 'Parameters', then a line of dashes) to:\n"
                     + "\n".join(bad))


def test_the_checker_flags_what_it_should():
    src = '''
def documented(a):
    """Summary.

    Parameters
    ----------
    a : int
        A number.
    """

def undocumented(a, *, b=1):
    """Summary only."""

def no_parameters():
    """Summary only."""

def _private(a):
    pass

class Thing:
    """A class whose constructor takes x, without a Parameters section."""

    def __init__(self, x):
        self.x = x

    def method(self, y):
        """Summary only."""

    @staticmethod
    def static(z):
        pass

    @property
    def value(self):
        return 1

    @value.setter
    def value(self, v):
        pass

class _Hidden:
    def method(self, y):
        pass
'''
    bad, checked = offenders(src, "m.py")
    assert [b.split(" ", 1)[1] for b in bad] == ["undocumented", "class Thing", "Thing.method", "Thing.static"]
    assert checked == 7  # documented, undocumented, no_parameters, Thing, method, static, value
