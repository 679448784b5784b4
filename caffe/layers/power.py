"""The affine-then-transcendental neurons: Power, Exp and Log.

Each reads ``power`` / ``base`` and an input ``scale`` and ``shift`` and applies its function to
``shift + scale * x``. In-place use is exact: where a backward needs the bottom values, the
forward keeps a copy first.
"""

from __future__ import annotations

import math

import torch

from caffe.functional import c_pow
from caffe.layer import NeuronLayer, register
from caffe.layers.neuron import KeepBottomNeuronLayer


@register("Power")
class PowerLayer(KeepBottomNeuronLayer):
    """Power, reads ``power_param`` (power 1, scale 1, shift 0 by default).

    y = (shift + scale * x) ^ power;
    dE/dx = dE/dy * power * scale * (shift + scale * x) ^ (power - 1).
    Caffe's special cases: when power * scale = 0 the input is ignored (y = 1 for power 0,
    shift ^ power for scale 0) and the gradient is 0; for power 1 the gradient is the constant
    scale; for power 2 it is linear in x (2 * scale * (shift + scale * x)).
    """

    def setup(self, bottom, top):
        param = self.layer_param.power_param
        self.power = float(param.power)
        self.scale = float(param.scale)
        self.shift = float(param.shift)
        self.diff_scale = self.power * self.scale

    def forward(self, bottom, top):
        y = top[0].mutable_device_data()
        if self.diff_scale == 0:
            y.fill_(1.0 if self.power == 0 else c_pow(self.shift, self.power))
            return
        x = self.forward_input(bottom, top)
        torch.mul(x, self.scale, out=y)
        if self.shift != 0:
            y.add_(self.shift)
        if self.power != 1:
            y.pow_(self.power)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].mutable_device_diff()
        dy = top[0].device_diff()
        if self.diff_scale == 0:
            dx.zero_()
        elif self.power == 1:
            torch.mul(dy, self.diff_scale, out=dx)
        else:
            x = self.backward_input(bottom, top)
            if self.power == 2:
                # 2 * scale * (shift + scale * x), linear: no pow, exact at shift + scale * x = 0.
                slope = (x * self.scale + self.shift) * self.diff_scale
            else:
                slope = (x * self.scale + self.shift).pow_(self.power - 1).mul_(self.diff_scale)
            torch.mul(dy, slope, out=dx)

    def forward_input(self, bottom, top):
        # The backward reads x only when the gradient depends on it.
        if self.diff_scale == 0 or self.power == 1:
            return bottom[0].device_data()
        return super().forward_input(bottom, top)


def _log_base(layer: NeuronLayer, base: float) -> float:
    """ln(base), with base -1 meaning e exactly; checks the base as Caffe does."""
    if base == -1:
        return 1.0
    layer.check(base > 0, f"base must be strictly positive (or -1 for e), got {base}")
    log_base = math.log(base)
    layer.check(math.isfinite(log_base), f"log(base) = log({base}) is not finite")
    return log_base


@register("Exp")
class ExpLayer(NeuronLayer):
    """Exp, reads ``exp_param`` (base -1 meaning e, scale 1, shift 0 by default).

    y = base ^ (shift + scale * x) = base^shift * exp(ln(base) * scale * x);
    dE/dx = dE/dy * y * ln(base) * scale. Needs only the top in backward.
    """

    def setup(self, bottom, top):
        param = self.layer_param.exp_param
        base = float(param.base)
        log_base = _log_base(self, base)
        self.inner_scale = log_base * float(param.scale)
        shift = float(param.shift)
        if shift == 0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = math.exp(shift) if base == -1 else base ** shift

    def forward(self, bottom, top):
        y = top[0].mutable_device_data()
        torch.mul(bottom[0].device_data(), self.inner_scale, out=y)
        y.exp_()
        if self.outer_scale != 1:
            y.mul_(self.outer_scale)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].mutable_device_diff()
            torch.mul(top[0].device_data(), top[0].device_diff(), out=dx)
            if self.inner_scale != 1:
                dx.mul_(self.inner_scale)


@register("Log")
class LogLayer(KeepBottomNeuronLayer):
    """Log, reads ``log_param`` (base -1 meaning e, scale 1, shift 0 by default).

    y = log_base(shift + scale * x) = ln(shift + scale * x) / ln(base);
    dE/dx = dE/dy * scale / (ln(base) * (shift + scale * x)).
    """

    def setup(self, bottom, top):
        param = self.layer_param.log_param
        base = float(param.base)
        log_base = _log_base(self, base)
        self.check(log_base != 0, f"base {base} has log(base) = 0, so 1 / log(base) is infinite")
        self.base_scale = 1.0 / log_base
        self.input_scale = float(param.scale)
        self.input_shift = float(param.shift)
        self.backward_num_scale = self.input_scale / log_base

    def _affine(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        torch.mul(x, self.input_scale, out=out)
        if self.input_shift != 0:
            out.add_(self.input_shift)
        return out

    def forward(self, bottom, top):
        x = self.forward_input(bottom, top)
        y = self._affine(x, top[0].mutable_device_data())
        y.log_()
        if self.base_scale != 1:
            y.mul_(self.base_scale)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self.backward_input(bottom, top)
            dx = bottom[0].mutable_device_diff()
            torch.div(top[0].device_diff(), x * self.input_scale + self.input_shift, out=dx)
            if self.backward_num_scale != 1:
                dx.mul_(self.backward_num_scale)
