"""ReLU: y = max(x, 0) + negative_slope * min(x, 0)."""

from __future__ import annotations

import torch

from caffe.layer import NeuronLayer, register


@register("ReLU")
class ReLULayer(NeuronLayer):
    """Reads ``relu_param.negative_slope`` (default 0: plain ReLU; otherwise leaky).

    dE/dx = dE/dy where x > 0, negative_slope * dE/dy elsewhere. In-place safe: the backward
    decides on the sign of the stored top, which has the sign of the bottom.
    """

    def setup(self, bottom, top):
        self.negative_slope = self.layer_param.relu_param.negative_slope

    def forward(self, bottom, top):
        x = bottom[0].device_data()
        y = top[0].mutable_device_data()
        if self.negative_slope == 0:
            torch.clamp_min(x, 0, out=y)
        else:
            torch.where(x > 0, x, x * self.negative_slope, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # In place, the bottom data is the top data; x > 0 iff y > 0 either way.
        sign_source = bottom[0].device_data()
        dy = top[0].device_diff()
        dx = bottom[0].mutable_device_diff()
        if self.negative_slope == 0:
            torch.mul(dy, sign_source > 0, out=dx)
        else:
            torch.where(sign_source > 0, dy, dy * self.negative_slope, out=dx)
