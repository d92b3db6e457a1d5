"""Zero-padding of projections into the (larger) object field the probe scans over, and its adjoint (crop)."""
from __future__ import annotations

from ..backend import get_xp
from .base import LinearOperator, check_shape


class Pad(LinearOperator):
    """(..., h, w) -> (..., H, W): the input is placed with its top-left corner at ``offset`` = (row, col).

    Parameters
    ----------
    shape_in : tuple of int
        (..., h, w).
    field_hw : (int, int)
        (H, W), the field the input is placed in.
    offset : (int, int)
        (row, col) of the input's top-left corner in the field.
    dtype : dtype
        Complex dtype.

    Raises
    ------
    ValueError
        If the input does not fit the field at ``offset``.
    """

    def __init__(self, shape_in, field_hw, offset, dtype):
        import numpy as np

        self.shape_in = tuple(int(s) for s in shape_in)
        H, W = (int(s) for s in field_hw)
        self.shape_out = self.shape_in[:-2] + (H, W)
        self.offset = (int(offset[0]), int(offset[1]))
        h, w = self.shape_in[-2:]
        r, c = self.offset
        if r < 0 or c < 0 or r + h > H or c + w > W:
            raise ValueError(f"a {h}x{w} projection at offset {self.offset} does not fit a {H}x{W} field")
        self.dtype = np.dtype(dtype)
        self._sl = (Ellipsis, slice(r, r + h), slice(c, c + w))

    def fwd(self, x):
        """Zero field with ``x`` placed at ``offset``.

        Parameters
        ----------
        x : array (..., h, w)

        Returns
        -------
        array (..., H, W)
            Zero outside the placed ``x``; of ``x``'s dtype.
        """
        check_shape(x, self.shape_in, "Pad.fwd")
        xp = get_xp(x)
        out = xp.zeros(self.shape_out, dtype=x.dtype)
        out[self._sl] = x
        return out

    def adj(self, y):
        """The crop of ``y`` at ``offset`` (a contiguous copy).

        Parameters
        ----------
        y : array (..., H, W)
            A field, like :meth:`fwd`'s output.

        Returns
        -------
        array (..., h, w)
        """
        check_shape(y, self.shape_out, "Pad.adj")
        return get_xp(y).ascontiguousarray(y[self._sl])
