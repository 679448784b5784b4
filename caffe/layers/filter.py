"""Filter: keep the batch items whose selector is nonzero."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register


@register("Filter")
class FilterLayer(Layer):
    """Filter, reads no parameters.

    Bottoms: K blobs to filter, each (N, ...), then the selector (N,) or (N, 1, ..., 1).
    Tops: K blobs, top_k = bottom_k[items whose selector is nonzero], so their first dim
    varies with the data (at setup, before any selector is known, it is N, as in Caffe).
    Backward copies each top diff back to its item and zero-fills the items not selected.
    No gradient reaches the selector.
    """

    min_bottom = 2
    min_top = 1

    def setup(self, bottom, top):
        self.check(len(top) == len(bottom) - 1,
                   f"needs one top per filtered bottom: {len(bottom) - 1} bottom(s) besides the "
                   f"selector, {len(top)} top(s)")
        self.first_reshape = True
        self.indices: torch.Tensor | None = None

    def allow_force_backward(self, bottom_index: int) -> bool:
        # The selector is the last bottom.
        return bottom_index != len(self.layer_param.bottom) - 1

    def reshape(self, bottom, top):
        selector = bottom[-1]
        self.check(selector.num_axes >= 1 and all(d == 1 for d in selector.shape[1:]),
                   f"Selector blob dimensions must be singletons (1), except the first; got "
                   f"shape {list(selector.shape)}")
        for i, blob in enumerate(bottom[:-1]):
            self.check(blob.num_axes >= 1 and blob.shape[0] == selector.shape[0],
                       f"Each bottom should have the same 0th dimension as the selector blob: "
                       f"bottom[{i}] has shape {list(blob.shape)}, the selector "
                       f"{list(selector.shape)}")
        # Item count decides top shapes, so the selector is read on the host here.
        self.indices = torch.nonzero(selector.device_data().reshape(-1)).reshape(-1)
        kept = int(self.indices.numel())
        if self.first_reshape:
            kept = selector.shape[0]
            self.first_reshape = False
        for blob, source in zip(top, bottom):
            blob.reshape([kept] + list(source.shape[1:]))

    def forward(self, bottom, top):
        for blob, source in zip(top, bottom):
            if blob.count:
                torch.index_select(source.device_data(), 0, self.indices,
                                   out=blob.mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[len(bottom) - 1],
                   "cannot backpropagate to the selector (the last bottom)")
        for blob, source, down in zip(top, bottom, propagate_down):
            if not down:
                continue
            dx = source.mutable_device_diff()
            dx.zero_()
            if blob.count:
                dx.index_copy_(0, self.indices, blob.device_diff())
