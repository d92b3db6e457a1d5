import importlib.metadata as md
import os
import sys

import numpy as np
import pytest

from hpc_pt.backend import gpu_available

# the tests live in one folder per layer (tests/operators/, tests/solvers/, ...); the helpers they share
# (threadcomm, gradcheck, slab_helpers, operator_checks) stay here, at the top of tests/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: the packages whose versions decide numerical results; printed in the test run's header
REPORTED = ("numpy", "scipy", "scikit-image", "h5py", "zarr", "finufft", "pydantic", "matplotlib", "mpi4py",
            "mpich", "dask", "distributed", "torch", "cupy-cuda12x")


def stack_versions() -> str:
    """One line with Python and the versions of the numerical stack (README quotes the last run)."""
    found = []
    for name in REPORTED:
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            continue
    return f"hpc-pt stack: Python {sys.version.split()[0]}, " + ", ".join(found)


def pytest_report_header(config):
    return stack_versions()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The same line at the end, so it shows under ``pytest -q`` too (which drops the header)."""
    terminalreporter.write_line(stack_versions())


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly when CuPy is missing or sees no device."""
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="CuPy with a visible CUDA device is not available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
