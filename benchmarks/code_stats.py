"""Code size per layer and the longest functions of hpc_pt/, for a checkout or a git revision.

    python benchmarks/code_stats.py                 # the working tree
    python benchmarks/code_stats.py --rev 70b7291   # a commit (read with git show; nothing is checked out)

Writes JSON (``--out``, default: print only). The layer of a module comes from ``tests/foundations/test_layers.py``
(``LAYERS``), the one place the layer map is written; modules missing there count as "unknown".
Two counts: ``lines`` are physical lines of the .py files, ``code`` leaves out blank lines, comment-only
lines and docstrings (module, class and function docstrings). Functions are measured from ``def`` to their
last line (decorators excluded), nested functions separately, in both counts.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> dict:
    spec = importlib.util.spec_from_file_location("_test_layers", ROOT / "tests" / "foundations" / "test_layers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return dict(mod.LAYERS)


def _sources(rev: str | None) -> dict[str, str]:
    if rev is None:
        return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "hpc_pt").rglob("*.py"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "hpc_pt"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout for n in names if n.endswith(".py")}


def _doc_lines(tree) -> set:
    """Line numbers of the module's, classes' and functions' docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                    and isinstance(first.value.value, str):
                out.update(range(first.lineno, first.end_lineno + 1))
    return out


def _code_lines(text: str, docs: set) -> set:
    """Line numbers that hold code: not blank, not only a comment, not a docstring."""
    return {i for i, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#") and i not in docs}


def stats(rev: str | None = None, top: int = 10) -> dict:
    """Lines per layer, per module and the ``top`` longest functions of hpc_pt/ at ``rev``."""
    layers = _layers()
    per_layer: dict[str, list] = {}
    funcs = []
    total = [0, 0]
    for name, text in _sources(rev).items():
        parts = Path(name).with_suffix("").parts[1:]
        top_mod = parts[0] if parts else "__init__"
        layer = layers.get(top_mod)
        key = f"{layer}:{top_mod}" if layer is not None else f"unknown:{top_mod}"
        tree = ast.parse(text)
        code = _code_lines(text, _doc_lines(tree))
        n = [len(text.splitlines()), len(code)]
        per_layer[key] = [a + b for a, b in zip(per_layer.get(key, [0, 0]), n)]
        total = [a + b for a, b in zip(total, n)]
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = range(node.lineno, node.end_lineno + 1)
                funcs.append((sum(1 for i in span if i in code), len(span), f"{name}:{node.lineno} {node.name}"))
    by_layer: dict[str, list] = {}
    for key, n in per_layer.items():
        lay = key.split(":")[0]
        by_layer[lay] = [a + b for a, b in zip(by_layer.get(lay, [0, 0]), n)]

    def pair(n):
        return {"lines": n[0], "code": n[1]}

    funcs.sort(reverse=True)
    return {"rev": rev or "working tree", "total": pair(total),
            "per_layer": {k: pair(v) for k, v in sorted(by_layer.items())},
            "per_module": {k: pair(v) for k, v in sorted(per_layer.items())},
            "longest_functions_by_code": [{"code": c, "lines": n, "where": w} for c, n, w in funcs[:top]]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default=None, help="a git revision (default: the working tree)")
    ap.add_argument("--top", type=int, default=10, help="how many of the longest functions to list")
    ap.add_argument("--out", default=None, help="write the JSON here")
    args = ap.parse_args(argv)
    res = stats(args.rev, args.top)
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
