"""BN of SegNet (alexgkendall/caffe-segnet): per-channel normalisation with a learned scale and
shift, in one layer.

Reads ``bn_param { bn_mode (LEARN | INFERENCE) scale_filler shift_filler }``. Blobs: scale and
shift, each (1, C, 1, 1), filled by their fillers (an unset filler is constant 0, so SegNet's
prototxts set scale_filler { value: 1 }). Bottom (N, C, ...) -> top of the same shape:

- LEARN: with the statistics of the batch over N and the spatial axes (mean = E[x],
  var = E[x^2] - E[x]^2, both biased, as SegNet computes them), x_norm = (x - mean) /
  sqrt(var + 1e-9), y = scale * x_norm + shift. Optional tops 1 and 2 are the batch mean and
  variance (1, C, 1, 1). SegNet's layer keeps no running averages.
- INFERENCE: y = scale * x + shift. SegNet's compute_bn_statistics.py folds the dataset's mean
  and variance into scale and shift before a model is deployed with this mode.

The mode alone decides: the phase does not (a TEST-phase net in LEARN mode still normalises
with each batch's statistics, as in SegNet). Backward: LEARN dx = (g - (sum g + x_norm *
sum(g x_norm)) / M) / sqrt(var + eps), g = scale * dy, M = N * spatial size; INFERENCE
dx = scale * dy; d scale = sum(dy * x_norm) (LEARN) or sum(dy * x) (INFERENCE), d shift =
sum(dy). SegNet overwrites the parameter diffs; here they accumulate, as every other layer's.
"""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.filler import fill
from caffe.layer import Layer, register
from caffe.layers._conv_util import check_param_shape
from caffe.layers._helpers import Workspace
from caffe.proto import caffe_pb2

LEARN = caffe_pb2.BNParameter.LEARN
INFERENCE = caffe_pb2.BNParameter.INFERENCE
VAR_EPS = 1e-9


def bn_batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance E[x^2] - E[x]^2 of (N, C, L) data (SegNet's
    order: the spatial mean per image first, then the mean over images)."""
    mean = x.mean(2).mean(0)
    mean_sq = (x * x).mean(2).mean(0)
    return mean, mean_sq - mean * mean


def bn_learn_backward(dy: torch.Tensor, x_norm: torch.Tensor, std: torch.Tensor,
                      scale: torch.Tensor) -> torch.Tensor:
    """The bottom diff of LEARN mode for (N, C, L) tensors (``std``, ``scale``: (C,))."""
    g = dy * scale[:, None]
    m = g.shape[0] * g.shape[2]
    total = g.sum((0, 2))[:, None]
    dot = (g * x_norm).sum((0, 2))[:, None]
    return (g - (total + x_norm * dot) / m) / std[:, None]


@register("BN")
class SegNetBNLayer(Layer):
    """SegNet's BN layer; see the module docstring."""

    exact_num_bottom = 1
    min_top = 1
    max_top = 3

    def setup(self, bottom, top):
        p = self.layer_param.bn_param
        self.mode = p.bn_mode
        shape = bottom[0].shape
        self.check(2 <= len(shape) <= 4, f"bottom must have 2 to 4 axes (num, channels, ...); "
                                         f"bottom shape {list(shape)}")
        self.channels = shape[1]
        blob_shape = [1, self.channels, 1, 1]
        if self.blobs:
            self.check(len(self.blobs) == 2, f"Incorrect number of blobs: expected 2 (scale, "
                                             f"shift), got {len(self.blobs)}")
            for blob, what in zip(self.blobs, ("scale", "shift")):
                check_param_shape(self.check, blob, blob_shape, what)
        else:
            self.blobs = [Blob(blob_shape, dtype=self.dtype), Blob(blob_shape, dtype=self.dtype)]
            fill(self.blobs[0], p.scale_filler)
            fill(self.blobs[1], p.shift_filler)
        self.workspace = Workspace()

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.check(2 <= len(shape) <= 4 and shape[1] == self.channels,
                   f"bottom shape {list(shape)} does not match the {self.channels} channels "
                   f"the layer was set up with")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])
        for blob in top[1:]:
            blob.reshape([1, self.channels, 1, 1])

    def _planes(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], self.channels, -1)

    def forward(self, bottom, top):
        x = self._planes(bottom[0].device_data())
        scale = self.blobs[0].device_data().reshape(-1, 1)
        shift = self.blobs[1].device_data().reshape(-1, 1)
        y = self._planes(top[0].mutable_device_data())
        if self.mode == INFERENCE:
            if top[0] is bottom[0]:
                saved = self.workspace.like("bottom_memory", x)
                saved.copy_(x)
            torch.addcmul(shift, x, scale, out=y)
            return
        mean, var = bn_batch_statistics(x)
        for blob, value in zip(top[1:], (mean, var)):
            blob.mutable_device_data().view(-1).copy_(value)
        self.std = torch.sqrt(var + VAR_EPS)
        x_norm = self.workspace.like("x_norm", x)
        torch.div(x - mean[:, None], self.std[:, None], out=x_norm)
        torch.addcmul(shift, x_norm, scale, out=y)

    def backward(self, top, propagate_down, bottom):
        dy = self._planes(top[0].device_diff())
        if self.mode == INFERENCE:
            x = self._planes(bottom[0].device_data())
            if top[0] is bottom[0]:
                x = self.workspace.like("bottom_memory", x)
        else:
            x = self.workspace.like("x_norm", dy)
        if self.param_propagate_down[0]:
            self.blobs[0].mutable_device_diff().view(-1).add_((dy * x).sum((0, 2)))
        if self.param_propagate_down[1]:
            self.blobs[1].mutable_device_diff().view(-1).add_(dy.sum((0, 2)))
        if not propagate_down[0]:
            return
        scale = self.blobs[0].device_data().reshape(-1)
        dx = self._planes(bottom[0].mutable_device_diff())
        if self.mode == INFERENCE:
            torch.mul(dy, scale[:, None], out=dx)
        else:
            dx.copy_(bn_learn_backward(dy, x, self.std, scale))
