"""Parameter: exposes one learnable blob as a top (ParameterParameter.shape)."""

from __future__ import annotations

from caffe.blob import Blob
from caffe.layer import Layer, register


@register("Parameter")
class ParameterLayer(Layer):
    """No bottoms; one top that shares data and diff with ``self.blobs[0]``."""

    exact_num_bottom = 0
    exact_num_top = 1

    def setup(self, bottom, top):
        if not self.blobs:
            self.blobs = [Blob(self.layer_param.parameter_param.shape, dtype=self.dtype)]
        top[0].reshape(self.blobs[0].shape)
        top[0].share_data(self.blobs[0])
        top[0].share_diff(self.blobs[0])

    def forward(self, bottom, top):
        pass
