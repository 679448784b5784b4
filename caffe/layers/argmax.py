"""ArgMax: the indices (and optionally values) of the top-k entries."""

from __future__ import annotations

import torch

from caffe.functional import top_k_ranked
from caffe.layer import Layer, register
from caffe.layers._helpers import canonical_axis


@register("ArgMax")
class ArgMaxLayer(Layer):
    """ArgMax, reads ``argmax_param``: ``top_k`` (default 1), ``out_max_val`` (default false)
    and ``axis`` (unset: over all axes after the first).

    Without axis, per item of the first axis over its count(1) values, the top has shape
    (N, 1, k) (indices), or (N, 2, k) with out_max_val (indices in [:, 0], values in [:, 1]),
    padded with trailing 1s to the bottom's number of axes when that exceeds 3.
    With axis, the top is the bottom's shape with k at the axis, holding indices, or the
    values instead with out_max_val. Ranks descend by value; equal values rank the larger
    index first, as Caffe's sort of (value, index) pairs does. Indices are stored as floats.
    No backward.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.argmax_param
        self.out_max_val = bool(param.out_max_val)
        self.top_k = int(param.top_k)
        self.has_axis = param.HasField("axis")
        self.check(self.top_k >= 1, f"top k must not be less than 1, got {self.top_k}")
        self._check_k(bottom)

    def _check_k(self, bottom) -> None:
        if self.has_axis:
            self.axis = canonical_axis(self, bottom[0], int(self.layer_param.argmax_param.axis))
            size = bottom[0].shape[self.axis]
            self.check(self.top_k <= size, f"top_k ({self.top_k}) must be less than or equal to "
                       f"the dimension of the axis ({size}, axis {self.axis} of bottom shape "
                       f"{list(bottom[0].shape)})")
        else:
            size = bottom[0].count_range(1)
            self.check(self.top_k <= size, f"top_k ({self.top_k}) must be less than or equal to "
                       f"the dimension of the flattened bottom blob per instance ({size}, "
                       f"bottom shape {list(bottom[0].shape)})")

    def reshape(self, bottom, top):
        self._check_k(bottom)
        if self.has_axis:
            shape = list(bottom[0].shape)
            shape[self.axis] = self.top_k
        else:
            shape = [1] * max(bottom[0].num_axes, 3)
            shape[0] = bottom[0].shape[0]
            shape[1] = 2 if self.out_max_val else 1
            shape[2] = self.top_k
        top[0].reshape(shape)

    def _top_k(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Values and indices of the k largest along the last dim, larger index first on ties."""
        return top_k_ranked(x, self.top_k)

    def forward(self, bottom, top):
        x = bottom[0].device_data()
        y = top[0].mutable_device_data()
        if self.has_axis:
            values, indices = self._top_k(x.movedim(self.axis, -1))
            out = values if self.out_max_val else indices
            y.copy_(out.movedim(-1, self.axis))
        else:
            values, indices = self._top_k(x.reshape(x.shape[0], -1))
            y = y.view(x.shape[0], -1, self.top_k)
            y[:, 0].copy_(indices)
            if self.out_max_val:
                y[:, 1].copy_(values)

    def backward(self, top, propagate_down, bottom):
        self.check(not any(propagate_down), "has no backward pass; do not ask for gradients "
                   "through it")
