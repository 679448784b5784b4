"""Separable 2-d resizing shared by Interp (DeepLab) and BilinearInterpolate (brocolli).

Both forks' bilinear kernels weight two neighbouring rows, then two neighbouring columns, so a
resize of the planes X (..., H, W) is Y = A_h X A_w^T with one sparse-in-effect matrix per axis;
its adjoint (the bottom diff) is A_h^T dY A_w. The matrices are built from each fork's own
coordinate arithmetic, cached per geometry, and applied with two matrix products.
"""

from __future__ import annotations

import numpy as np
import torch


def weight_matrix(out_size: int, in_size: int, low: np.ndarray, high: np.ndarray,
                  w_low: torch.Tensor, w_high: torch.Tensor) -> torch.Tensor:
    """A (out_size, in_size) matrix with w_low at (i, low[i]) and w_high added at (i, high[i])."""
    a = torch.zeros(out_size, in_size, dtype=w_low.dtype)
    rows = torch.arange(out_size)
    a.index_put_((rows, torch.from_numpy(low)), w_low, accumulate=True)
    a.index_put_((rows, torch.from_numpy(high)), w_high, accumulate=True)
    return a


def resize_planes(x: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor,
                  out: torch.Tensor) -> torch.Tensor:
    """out (..., H', W') = a_h @ x @ a_w^T: rows first mix columns, then rows mix."""
    torch.matmul(a_h, torch.matmul(x, a_w.t()), out=out)
    return out


def resize_planes_backward(dy: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor,
                           out: torch.Tensor) -> torch.Tensor:
    """The adjoint of ``resize_planes``: out (..., H, W) = a_h^T @ dy @ a_w."""
    torch.matmul(a_h.t(), torch.matmul(dy, a_w), out=out)
    return out


class MatrixCache:
    """The (A_h, A_w) pair of one layer, rebuilt only when its geometry, dtype or device change."""

    def __init__(self, build) -> None:
        self._build = build
        self._key = None
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, geometry: tuple, dtype: torch.dtype, device: torch.device):
        key = (geometry, dtype, device)
        if key != self._key:
            a_h, a_w = self._build(*geometry, dtype)
            self._value = (a_h.to(device), a_w.to(device))
            self._key = key
        return self._value
