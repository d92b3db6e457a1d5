"""No module imports a later layer (docs/architecture.md §2), lazy imports inside functions included."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "hpc_pt"

#: layer of each top-level module or package of hpc_pt (0: dependency-free foundations)
LAYERS = {
    "errors": 0, "conventions": 0, "data": 0, "progress": 0, "configfile": 0, "metrics": 0,
    "backend": 1, "comm": 1, "execution": 1,
    "operators": 2,
    "simulate": 3,
    "priors": 4,
    "solvers": 5,
    "parallel": 6,
    "io": 7, "plots": 7,
    "calibrate": 8, "pipeline": 8, "dask_run": 8, "workflows": 8, "cli_parser": 8, "cli": 8, "__main__": 8, "__init__": 8,
}

#: upward imports still allowed (none: `run_dask` moved above the pipeline, to hpc_pt.dask_run)
KNOWN: set = set()


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _top(name: str) -> str:
    return name.split(".")[0]


def _imports(path: Path, mod: str | None = None) -> set[str]:
    """hpc_pt modules ``path`` (module ``mod``, default: from its place in hpc_pt) imports, at any depth."""
    mod = mod or _module(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    if mod == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                if node.module:
                    found.add(".".join(base + [node.module]))
                else:
                    found.update(".".join(base + [a.name]) for a in node.names)
            elif node.module and (node.module == "hpc_pt" or node.module.startswith("hpc_pt.")):
                found.add(node.module[len("hpc_pt."):] if node.module != "hpc_pt" else "__init__")
        elif isinstance(node, ast.Import):
            found.update(a.name[len("hpc_pt."):] for a in node.names if a.name.startswith("hpc_pt."))
    return {f for f in found if f and f != mod}


def test_every_module_has_a_layer():
    tops = {_top(_module(p)) for p in ROOT.rglob("*.py")}
    assert tops <= set(LAYERS), f"add these modules to LAYERS (docs/architecture.md): {sorted(tops - set(LAYERS))}"


def test_no_module_imports_a_later_layer():
    bad, seen_known = [], set()
    for path in sorted(ROOT.rglob("*.py")):
        mod = _module(path)
        for target in _imports(path):
            if target == "__version__":
                continue
            lo, hi = LAYERS[_top(mod)], LAYERS.get(_top(target))
            if hi is None or hi <= lo or _top(target) == _top(mod):
                continue
            if (mod, _top(target)) in KNOWN:
                seen_known.add((mod, _top(target)))
                continue
            bad.append(f"{mod} (layer {lo}) imports {target} (layer {hi})")
    assert not bad, "\n".join(bad)
    assert seen_known == KNOWN, f"the known exception is gone: drop it from KNOWN ({KNOWN - seen_known})"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    mod = ROOT / "operators" / "ptycho.py"
    found = _imports(mod)
    assert "backend" in found  # `from ..backend import ...`
    fake = tmp_path / "probe.py"
    fake.write_text("def f():\n    from ..pipeline import reconstruct\n    return reconstruct\n")
    assert "pipeline" in _imports(fake, mod="operators.probe")
