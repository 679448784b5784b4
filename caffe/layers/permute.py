"""Permute (SSD fork): reorder a blob's axes."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register


def permute_order(order, num_axes: int) -> list[int]:
    """The full axis order from ``permute_param.order``: the listed axes, then the missing ones
    in increasing order (``0 2`` on 4-D gives (0, 2, 1, 3))."""
    full = list(order)
    return full + [a for a in range(num_axes) if a not in full]


def permute(x: torch.Tensor, order) -> torch.Tensor:
    """The axes of ``x`` in ``order`` (a strided view; copy it to lay it out)."""
    return x.permute(*order)


@register("Permute")
class PermuteLayer(Layer):
    """Caffe type ``Permute`` of the SSD fork (weiliu89/caffe ``ssd``); reads
    ``permute_param.order`` (repeated; may be partial, the missing axes follow in increasing
    order).

    Top: bottom with its axes reordered, top.shape[i] = bottom.shape[order[i]];
    top[idx] = bottom[idx permuted back]. Backward applies the inverse permutation to the diff.
    The identity order shares the bottom's data and diff, as in the fork.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        num_axes = bottom[0].num_axes
        order = list(self.layer_param.permute_param.order)
        for axis in order:
            self.check(axis < num_axes, f"order should be less than the input dimension "
                       f"(order {axis}, bottom shape {list(bottom[0].shape)})")
        self.check(len(set(order)) == len(order), f"there are duplicate orders ({order})")
        self.order = permute_order(order, num_axes)
        self.inverse = [self.order.index(a) for a in range(num_axes)]
        self.need_permute = self.order != list(range(num_axes))

    def reshape(self, bottom, top):
        self.check(bottom[0].num_axes == len(self.order),
                   f"bottom has {bottom[0].num_axes} axes (shape {list(bottom[0].shape)}), "
                   f"the layer was set up for {len(self.order)}")
        self.check(top[0] is not bottom[0], "does not allow in-place computation")
        top[0].reshape([bottom[0].shape[a] for a in self.order])
        if not self.need_permute:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if self.need_permute:
            top[0].mutable_device_data().copy_(permute(bottom[0].device_data(), self.order))

    def backward(self, top, propagate_down, bottom):
        if self.need_permute and propagate_down[0]:
            bottom[0].mutable_device_diff().copy_(permute(top[0].device_diff(), self.inverse))
