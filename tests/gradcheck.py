"""Central-difference check of an analytic gradient of a real loss of a complex array (shared by the
model and solver tests)."""
from __future__ import annotations

import numpy as np


def assert_gradient(loss, u, g, rng, *, scale=None, trials=3, h=1e-6, rtol=1e-5):
    """Assert ``Re <g, e>`` equals ``(loss(u + h e) - loss(u - h e)) / 2h`` to ``rtol`` along random
    complex directions ``e`` with ``max |e| = scale`` (default ``max |u|``) (``dL = Re <g, du>``, the Wirtinger convention).

    ``h = 1e-6``: dark detector pixels give the amplitude and Poisson losses large curvature, so the
    truncation error of ``h = 1e-3`` is 1e-5 .. 2e-2 of the derivative, at 1e-6 it is ~1e-8."""
    scale = np.abs(u).max() if scale is None else scale
    for k in range(trials):
        e = rng.standard_normal(u.shape) + 1j * rng.standard_normal(u.shape)
        e *= scale / np.abs(e).max()
        fd = (loss(u + h * e) - loss(u - h * e)) / (2 * h)
        an = float(np.vdot(g, e).real)
        assert abs(fd - an) <= rtol * abs(an), (k, fd, an)
