"""Split: hand one bottom to several consumers (the Net inserts these itself)."""

from __future__ import annotations

from caffe.layer import Layer, register


@register("Split")
class SplitLayer(Layer):
    """Split, reads no parameters. One bottom; N >= 1 tops of the same shape that share the
    bottom's data (no copy) but own their diffs.

    Backward: dE/dx = sum over tops of dE/dy_i, since each consumer's gradient adds up.
    Not in place, as in Caffe.
    """

    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        for i, blob in enumerate(top):
            self.check(blob is not bottom[0], f"does not allow in-place computation "
                       f"(top {i} is the bottom blob)")
            blob.reshape_like(bottom[0])
            blob.share_data(bottom[0])

    def forward(self, bottom, top):
        # Caffe shares in Forward; redoing it is free and survives a bottom reallocated since.
        for blob in top:
            blob.share_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].mutable_device_diff()
        dx.copy_(top[0].device_diff())
        for blob in top[1:]:
            dx.add_(blob.device_diff())
