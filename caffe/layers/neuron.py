"""Elementwise neurons with at most a scalar parameter or two: Sigmoid, TanH, AbsVal, BNLL, ELU,
Swish, Clip, Threshold.

Each takes one bottom and gives one top of the same shape. All but AbsVal may run in place
(top is bottom), as in Caffe; where a backward needs the bottom values that an in-place forward
overwrites, the forward first keeps a copy (``KeepBottomNeuronLayer``), so in-place results
equal the out-of-place ones.
"""

from __future__ import annotations

import torch

from caffe.layer import NeuronLayer, register
from caffe.layers._helpers import Workspace


class KeepBottomNeuronLayer(NeuronLayer):
    """A neuron whose backward reads the bottom values.

    In place, the forward overwrites them, so ``forward_input`` copies them into the workspace
    first (Caffe's PReLU keeps ``bottom_memory_`` for the same reason) and ``backward_input``
    returns that copy.
    """

    def __init__(self, param, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(param, dtype)
        self.workspace = Workspace()

    def forward_input(self, bottom, top) -> torch.Tensor:
        """The bottom values the forward reads; in place, a copy that backward can still use."""
        x = bottom[0].device_data()
        if top[0] is not bottom[0]:
            return x
        saved = self.workspace.like("bottom_memory", x)
        saved.copy_(x)
        return saved

    def backward_input(self, bottom, top) -> torch.Tensor:
        """The bottom values as the forward saw them (the saved copy when in place)."""
        x = bottom[0].device_data()
        if top[0] is not bottom[0]:
            return x
        return self.workspace.like("bottom_memory", x)


@register("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """Sigmoid (reads no parameters; ``sigmoid_param.engine`` is ignored).

    y = 1 / (1 + exp(-x)); dE/dx = dE/dy * y * (1 - y). The backward needs only the top, so
    in place needs no copy.
    """

    def forward(self, bottom, top):
        torch.sigmoid(bottom[0].device_data(), out=top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].device_data()
            torch.mul(top[0].device_diff(), y * (1 - y), out=bottom[0].mutable_device_diff())


@register("TanH")
class TanHLayer(NeuronLayer):
    """TanH (reads no parameters; ``tanh_param.engine`` is ignored).

    y = tanh(x); dE/dx = dE/dy * (1 - y^2). Needs only the top in backward.
    """

    def forward(self, bottom, top):
        torch.tanh(bottom[0].device_data(), out=top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].device_data()
            torch.mul(top[0].device_diff(), 1 - y * y, out=bottom[0].mutable_device_diff())


@register("AbsVal")
class AbsValLayer(NeuronLayer):
    """AbsVal: y = |x|; dE/dx = sign(x) * dE/dy (0 at x = 0).

    Caffe refuses in-place use (the sign of x would be lost), and so does this layer.
    """

    def setup(self, bottom, top):
        self.check(top[0] is not bottom[0],
                   "does not allow in-place computation (top and bottom are the same blob)")

    def forward(self, bottom, top):
        torch.abs(bottom[0].device_data(), out=top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].mutable_device_diff()
            torch.sign(bottom[0].device_data(), out=dx)
            dx.mul_(top[0].device_diff())


BNLL_THRESHOLD = 50.0


@register("BNLL")
class BNLLLayer(KeepBottomNeuronLayer):
    """BNLL (binomial normal log likelihood), reads no parameters.

    y = log(1 + exp(x)), computed without overflow as Caffe does: x + log(1 + exp(-x)) for
    x > 0, log(1 + exp(x)) otherwise (torch's softplus with threshold 50 is that formula).
    dE/dx = dE/dy * e / (e + 1) with e = exp(min(x, 50)): Caffe's threshold, which keeps e finite.
    """

    def forward(self, bottom, top):
        x = self.forward_input(bottom, top)
        top[0].mutable_device_data().copy_(
            torch.nn.functional.softplus(x, beta=1.0, threshold=BNLL_THRESHOLD))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self.backward_input(bottom, top)
            # e / (e + 1) is the sigmoid; clamping first keeps Caffe's threshold.
            torch.mul(top[0].device_diff(), torch.sigmoid(x.clamp_max(BNLL_THRESHOLD)),
                      out=bottom[0].mutable_device_diff())


@register("ELU")
class ELULayer(KeepBottomNeuronLayer):
    """ELU, reads ``elu_param.alpha`` (default 1).

    y = max(x, 0) + alpha * (exp(min(x, 0)) - 1);
    dE/dx = dE/dy where x > 0, dE/dy * (y + alpha) elsewhere. In place, a copy of the bottom is
    kept only for a negative alpha.
    """

    def setup(self, bottom, top):
        self.alpha = float(self.layer_param.elu_param.alpha)

    def forward_input(self, bottom, top):
        # With alpha >= 0, y > 0 exactly where x > 0, so in place the top tells backward all it
        # needs (as in Caffe) and no copy is kept.
        if self.alpha >= 0:
            return bottom[0].device_data()
        return super().forward_input(bottom, top)

    def backward_input(self, bottom, top):
        if self.alpha >= 0:
            return bottom[0].device_data()
        return super().backward_input(bottom, top)

    def forward(self, bottom, top):
        x = self.forward_input(bottom, top)
        y = top[0].mutable_device_data()
        torch.where(x > 0, x, torch.expm1(x.clamp_max(0)) * self.alpha, out=y)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self.backward_input(bottom, top)
            y = top[0].device_data()
            dy = top[0].device_diff()
            torch.where(x > 0, dy, dy * (y + self.alpha), out=bottom[0].mutable_device_diff())


@register("Swish")
class SwishLayer(NeuronLayer):
    """Swish, reads ``swish_param.beta`` (default 1).

    y = x * s with s = sigmoid(beta * x), kept for backward;
    dE/dx = dE/dy * (beta * y + s * (1 - beta * y)). Needs only the top and s, so in place is
    exact without a copy.
    """

    def __init__(self, param, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(param, dtype)
        self.workspace = Workspace()

    def setup(self, bottom, top):
        self.beta = float(self.layer_param.swish_param.beta)

    def forward(self, bottom, top):
        x = bottom[0].device_data()
        s = self.workspace.like("sigmoid_beta_x", x)
        torch.sigmoid(x * self.beta, out=s)
        torch.mul(x, s, out=top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].device_data()
            s = self.workspace.like("sigmoid_beta_x", y)
            beta_y = y * self.beta
            torch.mul(top[0].device_diff(), beta_y + s * (1 - beta_y),
                      out=bottom[0].mutable_device_diff())


@register("Clip")
class ClipLayer(KeepBottomNeuronLayer):
    """Clip, reads ``clip_param.min`` and ``clip_param.max`` (both required, min <= max).

    y = max(min, min(x, max)); dE/dx = dE/dy where min <= x <= max, 0 elsewhere.
    """

    def setup(self, bottom, top):
        param = self.layer_param.clip_param
        self.check(self.layer_param.HasField("clip_param") and param.HasField("min")
                   and param.HasField("max"), "clip_param { min max } must be given")
        self.min, self.max = float(param.min), float(param.max)
        self.check(self.min <= self.max,
                   f"clip_param min ({self.min}) must not exceed max ({self.max})")

    def forward(self, bottom, top):
        x = self.forward_input(bottom, top)
        torch.clamp(x, self.min, self.max, out=top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self.backward_input(bottom, top)
            inside = (x >= self.min) & (x <= self.max)
            torch.mul(top[0].device_diff(), inside, out=bottom[0].mutable_device_diff())


@register("Threshold")
class ThresholdLayer(NeuronLayer):
    """Threshold, reads ``threshold_param.threshold`` (default 0).

    y = 1 if x > threshold else 0. Not differentiable: it has no backward, as in Caffe.
    """

    def setup(self, bottom, top):
        self.threshold = float(self.layer_param.threshold_param.threshold)

    def forward(self, bottom, top):
        torch.gt(bottom[0].device_data(), self.threshold, out=top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        self.check(not any(propagate_down), "has no backward pass (the step function has no "
                   "useful gradient); do not ask for gradients through it")
