"""LRN: local response normalization (Caffe's LRNLayer)."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers.pooling import AVE, PoolPlan
from caffe.proto import caffe_pb2

ACROSS_CHANNELS = caffe_pb2.LRNParameter.ACROSS_CHANNELS
WITHIN_CHANNEL = caffe_pb2.LRNParameter.WITHIN_CHANNEL
_aten = torch.ops.aten


@register("LRN")
class LRNLayer(Layer):
    """Caffe type ``LRN``; reads ``lrn_param``: ``local_size`` (odd), ``alpha``, ``beta``, ``k``,
    ``norm_region``. Bottom and top: (N, C, H, W).

    ACROSS_CHANNELS: scale = k + alpha / local_size * sum of x^2 over the local_size channels
    centred on c (zero beyond the ends); y = x * scale^-beta.
    dE/dx = dE/dy * scale^-beta
    - 2 alpha beta / local_size * x * (sum over the same window of dE/dy * y / scale).

    WITHIN_CHANNEL (Caffe composes it from Power, Pooling and Eltwise layers, and ``k`` is not
    used): p = AVE pooling of x^2 over local_size x local_size windows, stride 1, zero padding
    (local_size - 1) / 2, divisor local_size^2 everywhere; y = x * (1 + alpha p)^-beta.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.lrn_param
        self.size = p.local_size
        self.check(self.size % 2 == 1,
                   f"LRN only supports odd values for local_size (got {self.size})")
        self.pre_pad = (self.size - 1) // 2
        self.alpha = p.alpha
        self.beta = p.beta
        self.k = p.k
        self.norm_region = p.norm_region
        self.check(self.norm_region in (ACROSS_CHANNELS, WITHIN_CHANNEL),
                   f"Unknown normalization region {self.norm_region}")
        self.plan: PoolPlan | None = None
        self.scale: torch.Tensor | None = None   # ACROSS: k + alpha mean; WITHIN: 1 + alpha p
        self.factor: torch.Tensor | None = None  # the multiplier of x: scale^-beta
        self.window: torch.Tensor | None = None  # backward scratch

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.check(len(shape) == 4,
                   f"Input must have 4 axes, corresponding to (num, channels, height, width); "
                   f"got bottom shape {list(shape)}")
        top[0].reshape(shape)
        x = bottom[0].device_data()
        if self.scale is None or self.scale.shape != shape or self.scale.device != x.device \
                or self.scale.dtype != x.dtype:
            self.scale = torch.empty(shape, dtype=x.dtype, device=x.device)
            self.factor = torch.empty_like(self.scale)
            self.window = torch.empty_like(self.scale)
        if self.norm_region == WITHIN_CHANNEL and (self.plan is None or
                                                   self.plan.in_hw != shape[2:]):
            self.plan = PoolPlan(AVE, (self.size,) * 2, (1, 1), (self.pre_pad,) * 2, shape[2:])

    def _channel_window_sum(self, t: torch.Tensor, out: torch.Tensor) -> None:
        """``out`` = sum of ``t`` over the local_size channels centred on each channel (zero
        beyond the ends): one shifted add per offset, a few passes over the data where a
        pooling kernel along the channel axis is ~10x slower."""
        channels = t.shape[1]
        out.copy_(t)
        for d in range(1, min(self.pre_pad, channels - 1) + 1):
            out[:, d:].add_(t[:, :-d])
            out[:, :-d].add_(t[:, d:])

    def _scale_power(self, out: torch.Tensor) -> None:
        """``out`` = scale^-beta; Caffe's default beta 0.75 as rsqrt(s) * sqrt(rsqrt(s)) (two
        vectorized roots, within 2 ulp of pow and twice as fast)."""
        if self.beta == 0.75:
            torch.rsqrt(self.scale, out=out)
            out.mul_(torch.sqrt(out))
        else:
            torch.pow(self.scale, -self.beta, out=out)

    # --- forward -------------------------------------------------------------------------------
    def forward(self, bottom, top):
        x = bottom[0].device_data()
        square = torch.mul(x, x, out=self.factor)  # factor is free until the end
        if self.norm_region == ACROSS_CHANNELS:
            self._channel_window_sum(square, self.scale)  # alpha / local_size, as Caffe
            self.scale.mul_(self.alpha / self.size).add_(self.k)
        else:
            self.plan.forward(square, self.scale)
            self.scale.mul_(self.alpha).add_(1.0)
        self._scale_power(self.factor)
        torch.mul(x, self.factor, out=top[0].mutable_device_data())

    # --- backward ------------------------------------------------------------------------------
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].device_data()
        dy = top[0].device_diff()
        dx = bottom[0].mutable_device_diff()
        # y = x f(scale(x^2)) in both regions, so dE/dx = dE/dy f - 2 alpha beta x W(ratio),
        # ratio = dE/dy * y / scale and W the adjoint of the scale's window average.
        ratio = torch.mul(dy, x, out=dx)  # dx is scratch until the final write
        ratio.mul_(self.factor).div_(self.scale)
        if self.norm_region == ACROSS_CHANNELS:
            self._channel_window_sum(ratio, self.window)  # the channel window is symmetric
            coefficient = 2.0 * self.alpha * self.beta / self.size
        else:
            self.plan.backward(ratio, x, self.window)
            coefficient = 2.0 * self.alpha * self.beta
        torch.mul(dy, self.factor, out=dx)
        dx.addcmul_(x, self.window, value=-coefficient)
