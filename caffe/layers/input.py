"""Input: tops that the user fills (net.blobs['data'].data[...] = ...); Caffe 1.0's way to
declare a deploy net's inputs."""

from __future__ import annotations

from caffe.layer import Layer, register


def shape_of(layer: Layer, shape_proto, what: str) -> list[int]:
    """The dims of a BlobShape, checked to be non-negative."""
    dims = [int(d) for d in shape_proto.dim]
    layer.check(all(d >= 0 for d in dims), f"{what} has a negative dimension: {dims}")
    return dims


@register("Input")
class InputLayer(Layer):
    """Input, reads ``input_param.shape``: no shape, one shape for every top, or one per top.

    No bottoms; one or more tops, shaped at setup and otherwise left alone: forward and backward
    do nothing, so whatever was written into the tops (and any reshape of them) stays.
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        self.check(len(shapes) in (0, 1, len(top)),
                   f"Must specify 'shape' once, once per top blob, or not at all: {len(top)} "
                   f"tops vs. {len(shapes)} shapes")
        for i, blob in enumerate(top):
            if shapes:
                blob.reshape(shape_of(self, shapes[0 if len(shapes) == 1 else i],
                                      f"input_param.shape for top {i}"))

    def forward(self, bottom, top):
        pass
