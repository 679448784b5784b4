"""EuclideanLoss: half the mean (over the batch) squared distance of two equally sized inputs."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.layer import LossLayer, register


@register("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """Caffe type ``EuclideanLoss``; reads no parameter message.

    Bottoms: predictions and targets, both (N, ...) with equal count(1). Top: scalar
    loss = sum((a - b)^2) / N / 2. dE/da = (a - b) * loss_weight / N, dE/db = -dE/da; both
    bottoms can receive a gradient, so force_backward reaches either.
    """

    def setup(self, bottom, top):
        self.diff = Blob(dtype=self.dtype)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.check(bottom[0].count_range(1) == bottom[1].count_range(1),
                   f"Inputs must have the same dimension (bottom shapes {list(bottom[0].shape)} "
                   f"and {list(bottom[1].shape)})")
        self.diff.reshape_like(bottom[0])

    def forward(self, bottom, top):
        diff = self.diff.mutable_device_data()
        torch.sub(bottom[0].device_data(), bottom[1].device_data().view(diff.shape), out=diff)
        flat = diff.reshape(-1)
        top[0].mutable_device_data().copy_(torch.dot(flat, flat) / bottom[0].num / 2)

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = top[0].device_diff() * (sign / bottom[i].num)
                out = bottom[i].mutable_device_diff()
                torch.mul(self.diff.device_data().view(out.shape), alpha, out=out)
