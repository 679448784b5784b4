"""PixelShuffle of the inisis/caffe (brocolli) fork (sub-pixel convolution upscaling, as
``torch.nn.PixelShuffle``).

Reads ``pixelshuffle_param { upscale_factor }`` (r): bottom (N, C * r^2, H, W) -> top
(N, C, H * r, W * r) with top[n, c, h * r + i, w * r + j] = bottom[n, c * r^2 + i * r + j, h, w].
brocolli's backward is empty; here it is the inverse rearrangement (``F.pixel_unshuffle``).
"""

from __future__ import annotations

import torch.nn.functional as F

from caffe.layer import Layer, register


@register("PixelShuffle")
class PixelShuffleLayer(Layer):
    """PixelShuffle (brocolli) on the last three axes (channels, height, width)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.pixelshuffle_param
        self.check(p.HasField("upscale_factor"), "pixelshuffle_param.upscale_factor is required")
        self.r = int(p.upscale_factor)
        self.check(self.r > 0, f"upscale_factor must be positive, got {self.r}")
        self.check(top[0] is not bottom[0],
                   "PixelShuffle Layer does not allow in-place computation.")

    def reshape(self, bottom, top):
        shape = list(bottom[0].shape)
        self.check(len(shape) >= 3, f"bottom must have at least 3 axes (channels, height, "
                                    f"width); bottom shape {shape}")
        r2 = self.r * self.r
        self.check(shape[-3] % r2 == 0,
                   f"channels ({shape[-3]}) must be divisible by upscale_factor^2 ({r2}); "
                   f"bottom shape {shape}")
        top[0].reshape(shape[:-3] + [shape[-3] // r2, shape[-2] * self.r, shape[-1] * self.r])

    def forward(self, bottom, top):
        top[0].mutable_device_data().copy_(F.pixel_shuffle(bottom[0].device_data(), self.r))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].mutable_device_diff().copy_(
                F.pixel_unshuffle(top[0].device_diff(), self.r))
