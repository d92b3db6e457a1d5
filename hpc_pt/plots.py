"""Figures written next to every reconstruction: central slices of delta and beta, convergence curves."""
from __future__ import annotations

import numpy as np


def recon_figure(volume, history: dict, path, title: str = "") -> str:
    """PNG with the three central slices (z, y, x) of delta (row 1) and beta (row 2) and the convergence
    curves (objective, R-factor, residuals) of ``history`` ({column: array}). ``volume``: the (nz, n, n)
    volume, or {"xy", "xz", "yz"} central planes (what a slab-distributed run gathers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(volume, dict):
        cuts = [("z", np.asarray(volume["xy"])), ("y", np.asarray(volume["xz"])), ("x", np.asarray(volume["yz"]))]
    else:
        vol = np.asarray(volume)
        nz, ny, nx = vol.shape
        cuts = [("z", vol[nz // 2]), ("y", vol[:, ny // 2]), ("x", vol[:, :, nx // 2])]
    fig = plt.figure(figsize=(13, 6.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 4)
    for row, (part, fn) in enumerate((("delta", np.real), ("beta", np.imag))):
        for col, (axis, sl) in enumerate(cuts):
            ax = fig.add_subplot(grid[row, col])
            im = ax.imshow(fn(sl), cmap="gray")
            ax.set_title(f"{part}, central {axis} slice", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.8)
    it = history.get("iteration", np.arange(1, 1 + max((len(v) for v in history.values()), default=0)))
    for row, keys in enumerate((("objective",), ("r_factor", "primal_residual", "dual_residual", "rel_change"))):
        ax = fig.add_subplot(grid[row, 3])
        for k in keys:
            v = np.asarray(history.get(k, []), dtype=float)
            if v.size and np.any(np.isfinite(v) & (v > 0)):
                ax.semilogy(it[: v.size], np.where(v > 0, v, np.nan), label=k)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
    return str(path)
