"""Softmax: normalized exponentials along one axis."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._helpers import Workspace, canonical_axis


@register("Softmax")
class SoftmaxLayer(Layer):
    """Softmax, reads ``softmax_param.axis`` (default 1; may be negative; ``engine`` is
    ignored). Bottom and top of one shape.

    y_i = exp(x_i - m) / sum_j exp(x_j - m) along the axis, with m the maximum along it so that
    no exp overflows (as Caffe); dE/dx = y * (dE/dy - sum_j dE/dy_j y_j).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def __init__(self, param, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(param, dtype)
        self.workspace = Workspace()

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom[0], int(self.layer_param.softmax_param.axis))
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])
        scale_shape = list(bottom[0].shape)
        scale_shape[self.axis] = 1
        self.scale_shape = scale_shape

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        return self.workspace.get("scale", self.scale_shape, like.dtype, like.device)

    def forward(self, bottom, top):
        x = bottom[0].device_data()
        y = top[0].mutable_device_data()
        scale = self._scale(y)
        torch.amax(x, dim=self.axis, keepdim=True, out=scale)
        torch.sub(x, scale, out=y)
        y.exp_()
        torch.sum(y, dim=self.axis, keepdim=True, out=scale)
        y.div_(scale)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].device_data()
        dy = top[0].device_diff()
        scale = self._scale(y)
        torch.sum(dy * y, dim=self.axis, keepdim=True, out=scale)
        dx = bottom[0].mutable_device_diff()
        torch.sub(dy, scale, out=dx)
        dx.mul_(y)
