"""Reduction: reduce all axes from one on to a single value each."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._helpers import canonical_axis
from caffe.proto import caffe_pb2

_OP = caffe_pb2.ReductionParameter


@register("Reduction")
class ReductionLayer(Layer):
    """Reduction, reads ``reduction_param``: ``operation`` (SUM default, ASUM, SUMSQ, MEAN),
    ``axis`` (default 0; may be negative) and ``coeff`` (default 1).

    Bottom (d_0, ..., d_n); top (d_0, ..., d_{axis-1}) (a scalar for axis 0): each top value
    reduces the trailing block x of d_axis * ... * d_n values:
    SUM: c * sum(x); ASUM: c * sum(|x|); SUMSQ: c * sum(x^2); MEAN: c * sum(x) / size.
    Backward: dE/dx = dE/dy * c (SUM), c * sign(x) (ASUM), 2 c x (SUMSQ), c / size (MEAN).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.op = self.layer_param.reduction_param.operation

    def reshape(self, bottom, top):
        param = self.layer_param.reduction_param
        self.axis = canonical_axis(self, bottom[0], int(param.axis))
        top[0].reshape(list(bottom[0].shape[:self.axis]))
        self.num = bottom[0].count_range(0, self.axis)
        self.dim = bottom[0].count_range(self.axis)
        self.coeff = float(param.coeff)
        if self.op == _OP.MEAN and self.dim:
            self.coeff /= self.dim

    def forward(self, bottom, top):
        x = bottom[0].device_data().reshape(self.num, self.dim)
        y = top[0].mutable_device_data().view(self.num)
        if self.op in (_OP.SUM, _OP.MEAN):
            torch.sum(x, dim=1, out=y)
        elif self.op == _OP.ASUM:
            torch.linalg.vector_norm(x, ord=1, dim=1, out=y)
        else:
            torch.linalg.vecdot(x, x, dim=1, out=y)
        if self.coeff != 1:
            y.mul_(self.coeff)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        scale = (top[0].device_diff().reshape(self.num, 1) * self.coeff)
        dx = bottom[0].mutable_device_diff().view(self.num, self.dim)
        if self.op in (_OP.SUM, _OP.MEAN):
            dx.copy_(scale.expand(self.num, self.dim))
            return
        x = bottom[0].device_data().reshape(self.num, self.dim)
        if self.op == _OP.ASUM:
            torch.sign(x, out=dx)
            dx.mul_(scale)
        else:
            torch.mul(x, scale * 2, out=dx)
