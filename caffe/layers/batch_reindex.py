"""BatchReindex: gather items of the batch by index."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._helpers import integer_indices


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """BatchReindex, reads no parameters.

    Bottoms: data (N, ...) and a 1-D index blob (M,) of values in [0, N) stored as floats
    (truncated to integers, as Caffe's cast does).
    Top: (M, ...), top[m] = data[index[m]]; indices may repeat or be left out.
    Backward: dE/ddata[n] = sum of dE/dtop[m] over the m with index[m] = n (0 if none). No
    gradient reaches the indices.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def reshape(self, bottom, top):
        self.check(bottom[1].num_axes == 1, f"the index bottom must be 1-D, got shape "
                   f"{list(bottom[1].shape)}")
        self.check(bottom[0].num_axes >= 1, "the data bottom needs at least one axis")
        top[0].reshape([bottom[1].shape[0]] + list(bottom[0].shape[1:]))

    def _indices(self, bottom) -> torch.Tensor:
        return integer_indices(self, bottom[1].device_data(), bottom[0].shape[0],
                               f"indices (batch size {bottom[0].shape[0]})", whole=False)

    def forward(self, bottom, top):
        index = self._indices(bottom)
        if top[0].count == 0:
            return
        torch.index_select(bottom[0].device_data(), 0, index, out=top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[1], "Cannot backprop to index.")
        if not propagate_down[0]:
            return
        dx = bottom[0].mutable_device_diff()
        dx.zero_()
        if top[0].count:
            dx.index_add_(0, self._indices(bottom), top[0].device_diff())
