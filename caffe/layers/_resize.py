"""Separable 2-d resizing shared by Interp (DeepLab) and BilinearInterpolate (brocolli).

Both forks' bilinear kernels weight two neighbouring rows, then two neighbouring columns, so a
resize of the planes X (..., H, W) is Y = A_h X A_w^T with one sparse-in-effect matrix per axis;
its adjoint (the bottom diff) is A_h^T dY A_w. The matrices are built from each fork's own
coordinate arithmetic, cached per geometry, and applied with two matrix products.
``ResizeLayer`` is the layer side both share: the 4-axis bottom check, the top shape and the
forward/backward through the cached pair.
"""

from __future__ import annotations

import numpy as np
import torch

from caffe.layer import Layer


def weight_matrix(out_size: int, in_size: int, low: np.ndarray, high: np.ndarray,
                  w_low: torch.Tensor, w_high: torch.Tensor) -> torch.Tensor:
    """A (out_size, in_size) matrix with w_low at (i, low[i]) and w_high added at (i, high[i])."""
    a = torch.zeros(out_size, in_size, dtype=w_low.dtype)
    rows = torch.arange(out_size)
    a.index_put_((rows, torch.from_numpy(low)), w_low, accumulate=True)
    a.index_put_((rows, torch.from_numpy(high)), w_high, accumulate=True)
    return a


def resize_planes(x: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """(..., H', W') = a_h @ x @ a_w^T: rows first mix columns, then rows mix; written into
    ``out`` when given (the layer), else a new tensor (``caffe.functional``, the exporter)."""
    return torch.matmul(a_h, torch.matmul(x, a_w.t()), out=out)


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


class ResizeLayer(Layer):
    """One bottom (N, C, H, W) resized plane by plane into one top (N, C, H_out, W_out).

    A subclass sets ``self.matrices`` (a MatrixCache) in setup and calls ``bottom_shape`` and
    ``reshape_top`` from reshape; forward and backward apply the cached (A_h, A_w) pair.
    """

    exact_num_bottom = 1
    exact_num_top = 1
    matrices: MatrixCache

    def bottom_shape(self, bottom) -> list[int]:
        """bottom[0]'s shape, checked to have 4 axes."""
        shape = list(bottom[0].shape)
        self.check(len(shape) == 4, f"bottom must have 4 axes (num, channels, height, width); "
                                    f"bottom shape {shape}")
        return shape

    def reshape_top(self, top, shape: list[int], h_out: int, w_out: int, geometry: tuple) -> None:
        """Check the top size, remember the geometry the matrices are built for, shape top."""
        self.check(h_out > 0 and w_out > 0, f"the top size must be positive, got {h_out} x "
                                            f"{w_out} (bottom shape {shape})")
        self.geometry = geometry
        top[0].reshape([shape[0], shape[1], h_out, w_out])

    def forward(self, bottom, top):
        x = bottom[0].device_data()
        a_h, a_w = self.matrices.get(self.geometry, x.dtype, x.device)
        resize_planes(x, a_h, a_w, top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].device_diff()
            a_h, a_w = self.matrices.get(self.geometry, dy.dtype, dy.device)
            resize_planes_backward(dy, a_h, a_w, bottom[0].mutable_device_diff())
