"""Every example config file parses and its settings are accepted by the solver it names."""
import glob
import os

import pytest

from hpc_pt.pipeline import ReconConfig
from hpc_pt.simulate import SimulationConfig

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "reconstruct_*.toml"))))
def test_reconstruct_examples_parse(path):
    from hpc_pt.pipeline import DEFAULT_MODEL, _options, check_settings
    from hpc_pt.solvers.registry import solver_spec

    cfg = ReconConfig.from_file(path)
    assert os.path.basename(path) == f"reconstruct_{cfg.method}.toml"
    cls = solver_spec(cfg.method).options
    assert set(cfg.options) <= set(cls.model_fields)
    check_settings(cfg, DEFAULT_MODEL[cfg.method] or "linear")  # no setting the method would ignore
    opts = _options(cls, cfg, {})  # values of the right types
    for k, v in cfg.options.items():
        assert getattr(opts, k) == v


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "simulate_*"))))
def test_simulate_examples_parse(path):
    cfg = SimulationConfig.from_file(path)
    assert cfg.size in (64, 128)


def test_one_example_per_method():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "reconstruct_*.toml"))}
    assert names == {f"reconstruct_{m}.toml" for m in ("apt", "apts", "admm", "gd", "two-step")}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "simulate_*"))))
def test_simulate_examples_run(path, tmp_path):
    """Each shipped simulation config runs as given (only fewer angles, for time)."""
    from hpc_pt.cli import main

    assert main(["simulate", "--config", path, "--angles", "2", "--quiet", "--out", str(tmp_path / "x.h5")]) == 0
