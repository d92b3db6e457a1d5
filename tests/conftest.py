import numpy as np
import pytest

from hpc_pt.backend import gpu_available


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
