"""Softmax: normalized exponentials along one axis."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._helpers import canonical_axis


def softmax_into(x: torch.Tensor, out: torch.Tensor, dim: int, aliased: bool = False) -> None:
    """Softmax of ``x`` along ``dim`` written into ``out`` by torch's fused kernel, which shifts
    by the maximum as Caffe does. torch does not specify the kernel's result when ``out`` is
    ``x``, so that case (``aliased``) goes through a temporary."""
    if aliased:
        out.copy_(torch._softmax(x, dim, False))
    else:
        torch._softmax(x, dim, False, out=out)


@register("Softmax")
class SoftmaxLayer(Layer):
    """Softmax, reads ``softmax_param.axis`` (default 1; may be negative; ``engine`` is
    ignored). Bottom and top of one shape.

    y_i = exp(x_i - m) / sum_j exp(x_j - m) along the axis, with m the maximum along it so that
    no exp overflows (as Caffe); dE/dx = y * (dE/dy - sum_j dE/dy_j y_j).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.axis_param = int(self.layer_param.softmax_param.axis)
        self.bottom_shape: tuple[int, ...] | None = None  # the shape the geometry is for

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if shape != self.bottom_shape:
            self.axis = canonical_axis(self, bottom[0], self.axis_param)
            # (outer, C, inner); with inner 1, (outer, C): torch's kernel along the last,
            # contiguous axis is several times faster than along an inner one.
            outer, inner = bottom[0].count_range(0, self.axis), bottom[0].count_range(
                self.axis + 1)
            work_shape = (outer, shape[self.axis]) + ((inner,) if inner != 1 else ())
            self.work_shape = work_shape if work_shape != shape else None  # None: as is
            self.bottom_shape = shape
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _work(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.work_shape is None else tensor.view(self.work_shape)

    def forward(self, bottom, top):
        softmax_into(self._work(bottom[0].device_data()),
                     self._work(top[0].mutable_device_data()), 1, aliased=top[0] is bottom[0])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = self._work(top[0].device_data())
        dy = self._work(top[0].device_diff())
        if top[0] is bottom[0]:  # dx would overwrite dy: go through a temporary
            dy.copy_(torch._softmax_backward_data(dy, y, 1, y.dtype))
        else:
            torch._softmax_backward_data(dy, y, 1, y.dtype,
                                         grad_input=self._work(bottom[0].mutable_device_diff()))
