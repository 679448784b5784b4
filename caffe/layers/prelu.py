"""PReLU: a leaky ReLU whose negative slopes are learned, one per channel or one in all."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.filler import fill
from caffe.layer import register
from caffe.layers.neuron import KeepBottomNeuronLayer
from caffe.proto import caffe_pb2


@register("PReLU")
class PReLULayer(KeepBottomNeuronLayer):
    """PReLU, reads ``prelu_param``: ``filler`` for the slopes (default constant 0.25) and
    ``channel_shared`` (default false).

    Bottom (N, C, ...) with at least 2 axes; top the same shape. One parameter blob a: shape
    (C,), or, with channel_shared, a 0-axis blob holding one value.
    y = max(x, 0) + a_c * min(x, 0);
    dE/dx = dE/dy where x > 0, a_c * dE/dy elsewhere;
    dE/da_c += sum over the other axes of dE/dy * min(x, 0).
    In place, the forward keeps a copy of the bottom for backward, as Caffe does.
    """

    def setup(self, bottom, top):
        self._check_axes(bottom)
        param = self.layer_param.prelu_param
        self.channel_shared = bool(param.channel_shared)
        channels = bottom[0].shape[1]
        if not self.blobs:
            slope = Blob(dtype=self.dtype)
            slope.reshape([] if self.channel_shared else [channels])
            if param.HasField("filler"):
                filler = param.filler
            else:
                filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
            fill(slope, filler)
            self.blobs = [slope]
        expected = 1 if self.channel_shared else channels
        self.check(self.blobs[0].count == expected,
                   f"negative slope size is inconsistent with prototxt config: the slope blob "
                   f"holds {self.blobs[0].count} values, expected {expected} (channel_shared "
                   f"{self.channel_shared}, bottom shape {list(bottom[0].shape)})")

    def _check_axes(self, bottom) -> None:
        self.check(bottom[0].num_axes >= 2, f"bottom must have at least 2 axes (N, C, ...), "
                   f"got shape {list(bottom[0].shape)}")

    def reshape(self, bottom, top):
        self._check_axes(bottom)
        if not self.channel_shared:
            channels = bottom[0].shape[1]
            self.check(channels == self.blobs[0].count,
                       f"bottom has {channels} channels but the layer has "
                       f"{self.blobs[0].count} slopes (bottom shape {list(bottom[0].shape)})")
        super().reshape(bottom, top)

    def _slope(self, x: torch.Tensor) -> torch.Tensor:
        """The slopes shaped to broadcast against x: (C, 1, ..., 1), or a single value."""
        a = self.blobs[0].device_data()
        if self.channel_shared:
            return a.reshape(())
        return a.reshape((-1,) + (1,) * (x.dim() - 2))

    def forward(self, bottom, top):
        x = self.forward_input(bottom, top)
        torch.where(x > 0, x, x * self._slope(x), out=top[0].mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        x = self.backward_input(bottom, top)
        dy = top[0].device_diff()
        # In place, dy is the bottom diff: use it for the slopes before overwriting it.
        if self.param_propagate_down[0]:
            contrib = dy * x.clamp_max(0)
            slope_diff = self.blobs[0].mutable_device_diff()
            if self.channel_shared:
                slope_diff.add_(contrib.sum())
            else:
                dims = [0] + list(range(2, x.dim()))
                slope_diff.add_(contrib.sum(dim=dims))
        if propagate_down[0]:
            torch.where(x > 0, dy, dy * self._slope(x), out=bottom[0].mutable_device_diff())
