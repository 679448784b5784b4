"""ReLU6 of the inisis/caffe (brocolli) fork: a leaky ReLU clipped at a threshold.

MobileNet v2 and PyTorch-converted models use it; brocolli reads ``relu6_param { negative_slope
(0) threshold (6) }``.
"""

from __future__ import annotations

import torch

from caffe.layer import register
from caffe.layers.neuron import KeepBottomNeuronLayer


def relu6(x: torch.Tensor, negative_slope: float = 0.0, threshold: float = 6.0,
          out: torch.Tensor | None = None) -> torch.Tensor:
    """min(max(x, 0) + negative_slope * min(x, 0), threshold)."""
    y = torch.where(x > 0, x, x * negative_slope).clamp_max_(threshold)
    return y if out is None else out.copy_(y)


def relu6_backward(dy: torch.Tensor, x: torch.Tensor, negative_slope: float = 0.0,
                   threshold: float = 6.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """dy * ((x > 0) + negative_slope * (x <= 0)) * (x < threshold), brocolli's derivative."""
    dx = torch.where(x > 0, dy, dy * negative_slope).masked_fill_(x >= threshold, 0)
    return dx if out is None else out.copy_(dx)


@register("ReLU6")
class ReLU6Layer(KeepBottomNeuronLayer):
    """ReLU6 (brocolli); reads ``relu6_param { negative_slope threshold }``.

    y = min(max(x, 0) + negative_slope * min(x, 0), threshold); dE/dx = dE/dy * ((x > 0) +
    negative_slope * (x <= 0)) * (x < threshold). In place, the bottom values are kept for the
    backward, so the result equals the out-of-place one.
    """

    def setup(self, bottom, top):
        p = self.layer_param.relu6_param
        self.negative_slope = float(p.negative_slope)
        self.threshold = float(p.threshold)

    def forward(self, bottom, top):
        x = self.forward_input(bottom, top)
        relu6(x, self.negative_slope, self.threshold, out=top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self.backward_input(bottom, top)
            relu6_backward(top[0].device_diff(), x, self.negative_slope, self.threshold,
                           out=bottom[0].mutable_device_diff())
