"""SPP: spatial pyramid pooling (Caffe's SPPLayer)."""

from __future__ import annotations

import math

import torch

from caffe import common
from caffe.layer import Layer, register
from caffe.layers.pooling import AVE, MAX, STOCHASTIC, PoolPlan
from caffe.proto import caffe_pb2

_SPP_TO_POOL = {
    caffe_pb2.SPPParameter.MAX: MAX,
    caffe_pb2.SPPParameter.AVE: AVE,
    caffe_pb2.SPPParameter.STOCHASTIC: STOCHASTIC,
}


def spp_level_geometry(level: int, height: int, width: int) -> tuple[tuple[int, int], ...]:
    """Kernel, stride and pad of pyramid level ``level`` (2^level bins per side), as Caffe picks
    them: kernel = stride = ceil(size / bins), pad = (kernel * bins - size + 1) / 2."""
    bins = 2 ** level
    kernel = []
    pad = []
    for size in (height, width):
        k = math.ceil(size / bins)
        kernel.append(k)
        pad.append((k * bins - size + 1) // 2)
    return tuple(kernel), tuple(kernel), tuple(pad)


@register("SPP")
class SPPLayer(Layer):
    """Caffe type ``SPP``; reads ``spp_param``: ``pyramid_height``, ``pool`` (MAX, AVE,
    STOCHASTIC). Bottom: (N, C, H, W).

    Level l (0 <= l < pyramid_height) pools the input into about 2^l x 2^l bins with the geometry
    of ``spp_level_geometry`` (Caffe's Pooling rules, incl. its output-size formula). With
    pyramid_height 1 the top is that single pooling, (N, C, PH, PW); otherwise each level's
    result is flattened to (N, C * PH_l * PW_l) and the levels are concatenated on axis 1.
    Backward sums the levels' pooling gradients.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.spp_param
        self.pyramid_height = p.pyramid_height
        self.check(self.pyramid_height > 0,
                   f"pyramid_height must be positive, got {self.pyramid_height}")
        self.method = _SPP_TO_POOL[p.pool]
        self.plans: list[PoolPlan] = []
        self.indices: list[torch.Tensor | None] = []
        self.outputs: list[torch.Tensor] = []
        self._in_shape: tuple[int, ...] | None = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.check(len(shape) == 4,
                   f"Input must have 4 axes, corresponding to (num, channels, height, width); "
                   f"got bottom shape {list(shape)}")
        n, c, h, w = shape
        self.check(h > 0 and w > 0, f"Input dimensions cannot be zero (bottom shape "
                                    f"{list(shape)}).")
        if shape != self._in_shape or self.outputs[0].device != common.device():
            self.plans = []
            for level in range(self.pyramid_height):
                kernel, stride, pad = spp_level_geometry(level, h, w)
                self.check(pad[0] < kernel[0] and pad[1] < kernel[1],
                           f"pyramid level {level} ({2 ** level} bins per side) needs pad "
                           f"{list(pad)}, not smaller than its kernel {list(kernel)}: the input "
                           f"{h}x{w} is too small for pyramid_height {self.pyramid_height}")
                self.check(self.method != STOCHASTIC or pad == (0, 0),
                           f"pyramid level {level} needs padding {list(pad)}, and Pooling "
                           f"implements padding only for average and max pooling (pool "
                           f"STOCHASTIC)")
                self.plans.append(PoolPlan(self.method, kernel, stride, pad, (h, w)))
            dev = common.device()
            self.outputs = [torch.empty((n, c, *plan.pooled), dtype=self.dtype, device=dev)
                            for plan in self.plans]
            self.indices = [torch.empty((n, c, *plan.pooled), dtype=torch.int64, device=dev)
                            if self.method != AVE else None for plan in self.plans]
            self.grad = torch.empty(shape, dtype=self.dtype, device=dev) \
                if self.pyramid_height > 1 else None
            self._in_shape = shape
        if self.pyramid_height == 1:
            top[0].reshape(self.outputs[0].shape)
        else:
            top[0].reshape((n, sum(o[0].numel() for o in self.outputs)))

    def _top_slices(self, t: torch.Tensor):
        offset = 0
        for out in self.outputs:
            width = out[0].numel()
            yield out, t[:, offset:offset + width]
            offset += width

    def forward(self, bottom, top):
        x = bottom[0].device_data()
        train = self.phase == caffe_pb2.TRAIN
        y = top[0].mutable_device_data()
        if self.pyramid_height == 1:
            self.plans[0].forward(x, y, self.indices[0], train)
            return
        for plan, index, (out, part) in zip(self.plans, self.indices, self._top_slices(y)):
            plan.forward(x, out, index, train)
            part.copy_(out.view(out.shape[0], -1))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].device_data()
        dx = bottom[0].mutable_device_diff()
        dy = top[0].device_diff()
        train = self.phase == caffe_pb2.TRAIN
        if self.pyramid_height == 1:
            self.plans[0].backward(dy, x, dx, self.indices[0], train)
            return
        for level, (plan, index, (out, part)) in enumerate(
                zip(self.plans, self.indices, self._top_slices(dy))):
            target = dx if level == 0 else self.grad
            plan.backward(part.reshape(out.shape), x, target, index, train)
            if level:
                dx.add_(self.grad)
