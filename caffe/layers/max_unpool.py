"""MaxUnPool of the inisis/caffe (brocolli) fork, and the mask scatter it shares with SegNet's
two-bottom Upsample.

Reads ``max_unpool_param { dst_h dst_w }`` (both required). Bottoms: data (N, C, H, W) and the
mask top of a MAX Pooling (same shape; per plane, the flat index h * dst_w + w of each value's
position in the unpooled plane). top = 0, then top[n, c].flat[mask[i]] = data[n, c].flat[i]
(= ``F.max_unpool2d``). brocolli's backward is empty; here data's diff gathers the top diff at
the mask positions (the adjoint when no index repeats; no gradient goes to the mask).
"""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._helpers import integer_indices


def check_mask(layer: Layer, data, mask) -> None:
    """The data and mask bottoms must be 4-D and of one shape."""
    layer.check(data.num_axes == 4, f"Input must have 4 axes, corresponding to (num, channels, "
                                    f"height, width); bottom 0 shape {list(data.shape)}")
    layer.check(mask.shape == data.shape,
                f"the mask bottom must have the data's shape: data (bottom 0) "
                f"{list(data.shape)}, mask (bottom 1) {list(mask.shape)}")


def mask_indices(layer: Layer, mask: torch.Tensor, plane_size: int) -> torch.Tensor:
    """The mask values as int64 indices per plane (N * C, H * W), checked against the plane."""
    flat = mask.reshape(mask.shape[0] * mask.shape[1], -1)
    return integer_indices(layer, flat, plane_size,
                           f"mask indices (into a top plane of {plane_size} values)", whole=False)


def max_unpool(data: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (N, C, H', W') = 0, then out[n, c].flat[index[n * C + c, i]] = data[n, c].flat[i]."""
    planes = out.view(index.shape[0], -1)
    planes.zero_()
    planes.scatter_(1, index, data.reshape(index.shape))
    return out


def max_unpool_backward(dy: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[n, c].flat[i] = dy[n, c].flat[index[n * C + c, i]] (out shaped like the data)."""
    torch.gather(dy.reshape(index.shape[0], -1), 1, index, out=out.view(index.shape))
    return out


@register("MaxUnPool")
class MaxUnPoolLayer(Layer):
    """MaxUnPool (brocolli): bottoms data + mask (N, C, H, W) -> top (N, C, dst_h, dst_w)."""

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.max_unpool_param
        self.check(p.HasField("dst_h") and p.HasField("dst_w"), "dst_h and dst_w are required.")
        self.out_hw = (int(p.dst_h), int(p.dst_w))

    def reshape(self, bottom, top):
        check_mask(self, bottom[0], bottom[1])
        n, c = bottom[0].shape[:2]
        top[0].reshape([n, c, *self.out_hw])

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def forward(self, bottom, top):
        self.index = mask_indices(self, bottom[1].device_data(), self.out_hw[0] * self.out_hw[1])
        max_unpool(bottom[0].device_data(), self.index, top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            max_unpool_backward(top[0].device_diff(), self.index, bottom[0].mutable_device_diff())
