"""Silence: consume blobs nobody else uses, so they are not reported as net outputs."""

from __future__ import annotations

from caffe.layer import Layer, register


@register("Silence")
class SilenceLayer(Layer):
    """Silence, reads no parameters. One or more bottoms of any shape, no tops.

    Forward does nothing; backward sets the bottom diffs to zero (no loss flows through it).
    """

    min_bottom = 1
    exact_num_top = 0

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for blob, down in zip(bottom, propagate_down):
            if down:
                blob.mutable_device_diff().zero_()
