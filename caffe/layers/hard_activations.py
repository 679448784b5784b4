"""HardSwish and HardSigmoid of the inisis/caffe (brocolli) fork (MobileNet v3 and other
PyTorch-converted models).

brocolli's Backward_cpu for both is empty; here the backward is the derivative of the forward
(0 at the clipping points' outer side, as torch's autograd gives).
"""

from __future__ import annotations

import torch

from caffe.layer import register
from caffe.layers.neuron import KeepBottomNeuronLayer
from caffe.proto.floats import float_field


def hard_swish(x: torch.Tensor) -> torch.Tensor:
    """x * clip(x / 6 + 0.5, 0, 1) (= torch's hardswish)."""
    return x * (x / 6.0 + 0.5).clamp_(0.0, 1.0)


def hard_swish_backward(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dy * d/dx hard_swish: 0 for x < -3, x / 3 + 0.5 for -3 <= x <= 3, 1 above."""
    slope = torch.where(x < -3.0, 0.0, torch.where(x > 3.0, 1.0, x / 3.0 + 0.5))
    return dy * slope


def hard_sigmoid(x: torch.Tensor, alpha: float = 0.2, beta: float = 0.5) -> torch.Tensor:
    """clip(alpha * x + beta, 0, 1) (ONNX's HardSigmoid; torch's uses alpha = 1/6)."""
    return (x * alpha + beta).clamp_(0.0, 1.0)


def hard_sigmoid_backward(dy: torch.Tensor, x: torch.Tensor, alpha: float = 0.2,
                          beta: float = 0.5) -> torch.Tensor:
    """dy * alpha where 0 < alpha * x + beta < 1, else 0."""
    z = x * alpha + beta
    return torch.where((z > 0) & (z < 1), dy * alpha, 0.0)


@register("HardSwish")
class HardSwishLayer(KeepBottomNeuronLayer):
    """HardSwish (brocolli; reads no parameters): y = x * clip(x / 6 + 0.5, 0, 1).

    dE/dx = dE/dy * (0 if x < -3, x / 3 + 0.5 if -3 <= x <= 3, 1 if x > 3).
    """

    def forward(self, bottom, top):
        x = self.forward_input(bottom, top)
        top[0].mutable_device_data().copy_(hard_swish(x))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self.backward_input(bottom, top)
            bottom[0].mutable_device_diff().copy_(hard_swish_backward(top[0].device_diff(), x))


@register("HardSigmoid")
class HardSigmoidLayer(KeepBottomNeuronLayer):
    """HardSigmoid (brocolli); reads ``hardsigmoid_param { alpha (0.2) beta (0.5) }``.

    y = clip(alpha * x + beta, 0, 1); dE/dx = dE/dy * alpha inside (0, 1), 0 where clipped.
    """

    def setup(self, bottom, top):
        p = self.layer_param.hardsigmoid_param
        self.alpha = float_field(p, "alpha")
        self.beta = float(p.beta)

    def forward(self, bottom, top):
        x = self.forward_input(bottom, top)
        top[0].mutable_device_data().copy_(hard_sigmoid(x, self.alpha, self.beta))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self.backward_input(bottom, top)
            bottom[0].mutable_device_diff().copy_(
                hard_sigmoid_backward(top[0].device_diff(), x, self.alpha, self.beta))
