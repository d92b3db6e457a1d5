"""Adding a method takes one new file plus one registration line (issue: one solver shape): a toy solver,
written to a temporary module here, becomes a method of the pipeline, the CLI and config files, with
options, progress, checkpoints and bitwise resume for free."""
import importlib.util
import sys
import textwrap

import numpy as np
import pytest

from hpc_pt.cli import main
from hpc_pt.pipeline import ReconConfig, reconstruct
from hpc_pt.simulate import SimulationConfig, simulate_dataset
from hpc_pt.solvers.registry import (
    BUILTIN_SOLVERS,
    SolverSpec,
    all_specs,
    register_solver,
    solver_spec,
    unregister_solver,
)

TOY = '''
"""A toy method: plain gradient descent on the amplitude loss, fixed step (no line search)."""
from dataclasses import dataclass

from pydantic import Field

from hpc_pt.solvers.base import IterativeSolver, SolverOptions, SolverResult, run
from hpc_pt.solvers.gd import JointModel, loss_and_gradient
from hpc_pt.solvers.registry import SolverSpec


class ToyOptions(SolverOptions):
    iterations: int = Field(10, ge=0, description="iterations")
    step: float = Field(1e-3, gt=0, description="fixed step, absolute")


@dataclass
class ToyState:
    u: object
    loss: float


class Toy(IterativeSolver):
    State = ToyState

    def __init__(self, shard, comm, opts, u0=None):
        self.shard, self.comm, self.opts = shard, comm, opts
        self.model = JointModel(shard)
        self.xp = __import__("numpy")

    def start(self):
        u = self.xp.full(self.shard.volume_shape, 0.05, dtype=self.shard.model.dtype)
        return ToyState(u=u, loss=float("inf"))

    def step(self, k):
        loss, g = loss_and_gradient(self.model, self.shard, self.comm, self.state.u)
        self.state.u = self.state.u - self.opts.step * g
        self.state.loss = loss
        return {"objective": loss}

    def iterate(self):
        return self.state.u

    def result(self, history):
        return SolverResult(volume=self.state.u, probe=self.model.pt.probe, history=history)


def run_toy(shard, comm, opts, callback=None, u0=None, checkpoints=None):
    return run(Toy(shard, comm, opts, u0), opts.iterations, callback, checkpoints)


SPEC = SolverSpec(name="toy", options=ToyOptions, run=run_toy, models=("linear",), default_model="linear",
                  generic={"iterations": "iterations"}, summary="a toy gradient descent")
'''


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_solver.py"
    path.write_text(textwrap.dedent(TOY))  # the one new file
    spec = importlib.util.spec_from_file_location("toy_solver", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["toy_solver"] = mod
    spec.loader.exec_module(mod)
    register_solver(mod.SPEC)  # the one registration line
    yield mod
    unregister_solver("toy")
    sys.modules.pop("toy_solver", None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    ds = simulate_dataset(SimulationConfig(size=12, angles=6, probe_size=8, probe_fwhm=3.0, step=2, field_pad=3,
                                           model="linear", seed=0))
    from hpc_pt.io import write_cxi

    path = tmp_path_factory.mktemp("toy") / "lin.h5"
    write_cxi(ds, path)
    return ds, path


def test_builtins_are_registered_with_consistent_specs():
    assert list(all_specs())[:5] == ["apt", "apts", "admm", "gd", "two-step"] and len(BUILTIN_SOLVERS) == 5
    for name, spec in all_specs().items():
        assert spec.name == name and set(spec.generic.values()) <= set(spec.options.model_fields)
        spec.options()  # every option has a default
    with pytest.raises(KeyError, match="unknown method 'nope'; known: apt"):
        solver_spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_solver(solver_spec("apt"))
    with pytest.raises(ValueError, match="has no"):
        SolverSpec(name="bad", options=solver_spec("gd").options, run=print, generic={"penalty": "r9"})


def test_a_toy_solver_is_a_method_everywhere(toy, data, tmp_path, capsys):
    ds, path = data
    # the Python API: runs, the loss decreases, settings it does not take are refused
    res = reconstruct(ds, method="toy", iterations=6, options={"step": 2e-3})
    obj = res.history["objective"]
    assert len(obj) == 6 and np.all(np.diff(obj) < 0)
    with pytest.raises(Exception, match="does not use --penalty"):
        reconstruct(ds, method="toy", iterations=2, penalty=0.3)
    with pytest.raises(Exception, match="unknown option"):
        reconstruct(ds, method="toy", iterations=2, options={"cg_max_iter": 3})
    assert ReconConfig(method="toy").method == "toy"
    # checkpoints and bitwise resume through the generic loop
    out = tmp_path / "t.zarr"
    full = reconstruct(str(path), out=str(tmp_path / "full.zarr"), method="toy", iterations=6)
    reconstruct(str(path), out=str(out), method="toy", iterations=3, checkpoint_every=3)
    resumed = reconstruct(str(path), out=str(out), method="toy", iterations=6, resume=True, checkpoint_every=3)
    assert resumed.resumed_from == 3 and np.array_equal(resumed.volume, full.volume)
    # the CLI: --method accepts it, its options show in --help
    code = main(["reconstruct", str(path), "--method", "toy", "--iterations", "2", "--option", "step=1e-3",
                 "--out", str(tmp_path / "cli.zarr"), "--quiet"])
    assert code == 0 and (tmp_path / "cli.zarr").exists()
    with pytest.raises(SystemExit):
        main(["reconstruct", "--help"])
    text = capsys.readouterr().out
    assert "toy: a toy gradient descent" in " ".join(text.split()) and "step = 0.001: fixed step" in text
