"""SmoothL1Loss: the robust box-regression loss of Faster R-CNN and SSD.

Two forks share the type name. Faster R-CNN (rbgirshick/caffe-fast-rcnn ``faster-rcnn``,
smooth_L1_loss_layer.cu) reads ``smooth_l1_loss_param { sigma }`` and takes 2 bottoms, or 4
with inside and outside weights. SSD (weiliu89/caffe ``ssd``, smooth_L1_loss_layer.cpp) takes
exactly 2 and has no sigma; it is the Faster R-CNN form with sigma 1, so one layer serves both.
``smooth_l1`` and ``smooth_l1_grad`` are the math on tensors.
"""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.layer import LossLayer, register


def smooth_l1(d: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Elementwise 0.5 sigma^2 d^2 where |d| < 1 / sigma^2, else |d| - 0.5 / sigma^2."""
    sigma2 = sigma * sigma
    a = d.abs()
    return torch.where(a < 1.0 / sigma2, 0.5 * sigma2 * d * d, a - 0.5 / sigma2)


def smooth_l1_grad(d: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Elementwise derivative of ``smooth_l1``: sigma^2 d inside the quadratic zone, else
    sign(d)."""
    sigma2 = sigma * sigma
    return torch.where(d.abs() < 1.0 / sigma2, sigma2 * d, torch.sign(d))


def _legacy_shape(layer, blob: Blob, which: str) -> list[int]:
    """The (num, channels, height, width) that the forks' legacy accessors read; they abort
    on blobs with more than 4 axes."""
    layer.check(blob.num_axes <= 4,
                f"Cannot use legacy accessors on Blobs with > 4 axes: {which} has shape "
                f"{list(blob.shape)}")
    return list(blob.shape) + [1] * (4 - blob.num_axes)


@register("SmoothL1Loss")
class SmoothL1LossLayer(LossLayer):
    """Caffe type ``SmoothL1Loss`` (Faster R-CNN; SSD's is the 2-bottom, sigma 1 case); reads
    ``smooth_l1_loss_param``: ``sigma`` (default 1). ``loss_param`` is ignored.

    Bottoms: predictions b0 and targets b1 (N, ...), and optionally inside and outside
    weights w_in, w_out of the same shape (4 bottoms; 3 is an error); at most 4 axes each.
    Top: scalar loss = sum(w_out * f(w_in * (b0 - b1))) / N with f = ``smooth_l1``.
    dE/db0 = top_diff / N * w_in * w_out * f'(w_in * (b0 - b1)), dE/db1 = -dE/db0; both
    bottoms accept force_backward, the weights get no gradient.
    """

    exact_num_bottom = -1
    min_bottom = 2
    max_bottom = 4

    def setup(self, bottom, top):
        self.sigma = float(self.layer_param.smooth_l1_loss_param.sigma)
        self.has_weights = len(bottom) >= 3
        self.check(not self.has_weights or len(bottom) == 4,
                   f"If weights are used, must specify both inside and outside weights "
                   f"(got {len(bottom)} bottoms; SSD's 3-bottom 'weights' form cannot run "
                   f"in its fork either)")
        self.diff = Blob(dtype=self.dtype)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index < 2

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        shape = _legacy_shape(self, bottom[0], "bottom 0")
        for i in range(1, len(bottom)):
            other = _legacy_shape(self, bottom[i], f"bottom {i}")
            self.check(other == shape,
                       f"bottom {i} shape {list(bottom[i].shape)} does not match bottom 0 "
                       f"shape {list(bottom[0].shape)}")
        self.diff.reshape_like(bottom[0])

    def forward(self, bottom, top):
        d = self.diff.mutable_device_data()
        torch.sub(bottom[0].device_data(), bottom[1].device_data().view(d.shape), out=d)
        if self.has_weights:
            d.mul_(bottom[2].device_data().view(d.shape))
        errors = smooth_l1(d, self.sigma)
        if self.has_weights:
            errors = errors * bottom[3].device_data().view(d.shape)
        top[0].mutable_device_data().copy_(errors.sum() / bottom[0].num)

    def backward(self, top, propagate_down, bottom):
        if not (propagate_down[0] or propagate_down[1]):
            return
        grad = smooth_l1_grad(self.diff.device_data(), self.sigma)
        if self.has_weights:
            grad = grad * bottom[2].device_data().view(grad.shape) \
                * bottom[3].device_data().view(grad.shape)
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                out = bottom[i].mutable_device_diff()
                torch.mul(grad.view(out.shape), top[0].device_diff() * (sign / bottom[i].num),
                          out=out)
