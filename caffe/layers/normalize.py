"""Normalize (SSD fork): L2-normalize each image (or each pixel across channels), then scale."""

from __future__ import annotations

import torch

from caffe import filler
from caffe.blob import Blob
from caffe.layer import Layer, register
from caffe.proto import caffe_pb2
from caffe.proto.floats import float_field


def l2_norm(x: torch.Tensor, across_spatial: bool, eps: float) -> torch.Tensor:
    """sqrt(sum x^2 + eps) of ``x`` (N, C, S): over C*S per image (N, 1, 1) when
    ``across_spatial``, else over C per pixel (N, 1, S)."""
    dims = (1, 2) if across_spatial else (1,)
    return (x * x).sum(dim=dims, keepdim=True).add_(eps).sqrt_()


def normalize(x: torch.Tensor, scale: torch.Tensor, across_spatial: bool, eps: float
              ) -> torch.Tensor:
    """y = x / l2_norm(x) * scale for ``x`` (N, C, S) and ``scale`` of 1 or C values."""
    return x / l2_norm(x, across_spatial, eps) * scale.reshape(1, -1, 1)


@register("Normalize")
class NormalizeLayer(Layer):
    """Caffe type ``Normalize`` of the SSD fork (weiliu89/caffe ``ssd``); reads ``norm_param``
    (``across_spatial`` default true, ``channel_shared`` default true, ``scale_filler``
    default constant 1, ``eps`` default 1e-10).

    Bottom (N, C, ...) with at least 2 axes, viewed as (N, C, S); top of the same shape.
    norm = sqrt(sum x^2 + eps) over C*S per image (across_spatial) or over C per pixel;
    y = x / norm * s, s the one learned blob: a scalar (channel_shared) or C values.
    Backward, as the fork computes it: dE/dx = s * (g - x * sum(x g) / norm^2) / norm with
    g = dE/dy and the sum over the norm's extent (exact when s is the same for every channel);
    dE/ds += sum(y * g) / s over everything (shared) or per channel.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.norm_param
        self.check(bottom[0].num_axes >= 2, f"Number of axes of bottom blob must be >=2 "
                   f"(bottom shape {list(bottom[0].shape)}).")
        self.across_spatial = param.across_spatial
        self.channel_shared = param.channel_shared
        self.eps = float_field(param, "eps")
        channels = bottom[0].shape[1]
        expected = 1 if self.channel_shared else channels
        if not self.blobs:
            scale = Blob([] if self.channel_shared else [channels], dtype=self.dtype)
            spec = (param.scale_filler if param.HasField("scale_filler")
                    else caffe_pb2.FillerParameter(type="constant", value=1.0))
            filler.fill(scale, spec)
            self.blobs.append(scale)
        self.check(self.blobs[0].count == expected,
                   f"Scale size is inconsistent with prototxt config (scale blob shape "
                   f"{list(self.blobs[0].shape)}, channel_shared {self.channel_shared}, "
                   f"{channels} channels)")

    def reshape(self, bottom, top):
        self.check(bottom[0].num_axes >= 2, f"Number of axes of bottom blob must be >=2 "
                   f"(bottom shape {list(bottom[0].shape)}).")
        self.check(self.channel_shared or bottom[0].shape[1] == self.blobs[0].count,
                   f"bottom has {bottom[0].shape[1]} channels (shape {list(bottom[0].shape)}), "
                   f"the scale blob {self.blobs[0].count}")
        top[0].reshape_like(bottom[0])

    def _view(self, tensor: torch.Tensor, blob: Blob) -> torch.Tensor:
        return tensor.view(blob.shape[0], blob.shape[1], -1)

    def forward(self, bottom, top):
        x = self._view(bottom[0].device_data(), bottom[0])
        self.norm = l2_norm(x, self.across_spatial, self.eps)
        scale = self.blobs[0].device_data().reshape(1, -1, 1)
        y = self._view(top[0].mutable_device_data(), top[0])
        torch.div(x, self.norm, out=y)
        y.mul_(scale)

    def backward(self, top, propagate_down, bottom):
        g = self._view(top[0].device_diff(), top[0])
        scale = self.blobs[0].device_data()
        if self.param_propagate_down[0]:
            y = self._view(top[0].device_data(), top[0])
            dims = (0, 1, 2) if self.channel_shared else (0, 2)
            self.blobs[0].mutable_device_diff().add_(
                (y * g).sum(dim=dims).reshape(scale.shape) / scale)
        if propagate_down[0]:
            x = self._view(bottom[0].device_data(), bottom[0])
            norm = self.norm
            dims = (1, 2) if self.across_spatial else (1,)
            dot = (x * g).sum(dim=dims, keepdim=True)
            dx = self._view(bottom[0].mutable_device_diff(), bottom[0])
            torch.sub(g, x * (dot / norm / norm), out=dx)
            dx.div_(norm).mul_(scale.reshape(1, -1, 1))
