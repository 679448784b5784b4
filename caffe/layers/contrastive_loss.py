"""ContrastiveLoss: pulls similar pairs together, pushes dissimilar ones beyond a margin."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.layer import LossLayer, register


@register("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Caffe type ``ContrastiveLoss``; reads ``contrastive_loss_param`` (``margin`` m, default 1;
    ``legacy_version``, default false).

    Bottoms: a and b of shape (N, C) (or (N, C, 1, 1)), and the pair label y (N): nonzero (as an
    int) means similar. With d = a - b and D = ||d||^2 per pair, the top is
    sum(y ? D : max(m - sqrt(D), 0)^2) / 2N, or with legacy_version the dissimilar term
    max(m - D, 0). Gradients: similar pairs w * d / N; dissimilar ones, where the hinge is
    active, -w * (m - sqrt(D)) / (sqrt(D) + 1e-4) * d / N (legacy: -w * d / N), w the loss
    weight; b gets the negated gradient of a. The labels get none.
    """

    exact_num_bottom = 3

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def setup(self, bottom, top):
        param = self.layer_param.contrastive_loss_param
        self.margin = param.margin
        self.legacy_version = param.legacy_version
        self.diff = Blob(dtype=self.dtype)
        self.dist_sq = Blob(dtype=self.dtype)
        self._check_shapes(bottom)

    def _check_shapes(self, bottom):
        a, b, y = bottom
        shapes = f"(bottom shapes {list(a.shape)}, {list(b.shape)}, {list(y.shape)})"
        self.check(all(blob.num_axes <= 4 for blob in bottom),
                   f"bottoms must have at most 4 axes {shapes}")
        self.check(a.channels == b.channels,
                   f"the two feature bottoms must have the same channels {shapes}")
        self.check(a.height == 1 and a.width == 1 and b.height == 1 and b.width == 1,
                   f"the feature bottoms must be (N, C) or (N, C, 1, 1) {shapes}")
        self.check(y.channels == 1 and y.height == 1 and y.width == 1,
                   f"the pair label bottom must be (N) or (N, 1, 1, 1) {shapes}")
        self.check(a.count == b.count and y.count == a.num,
                   f"expects N pairs of equal-size features and N labels {shapes}")

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self._check_shapes(bottom)
        self.num, self.channels = bottom[0].num, bottom[0].channels
        self.diff.reshape((self.num, self.channels))
        self.dist_sq.reshape((self.num,))

    def forward(self, bottom, top):
        diff = self.diff.mutable_device_data()
        shape = diff.shape
        torch.sub(bottom[0].device_data().view(shape), bottom[1].device_data().view(shape),
                  out=diff)
        dist_sq = self.dist_sq.mutable_device_data()
        torch.sum(diff * diff, dim=1, out=dist_sq)
        similar = bottom[2].device_data().view(self.num).to(torch.int64) != 0
        if self.legacy_version:
            dissimilar = (self.margin - dist_sq).clamp_min(0)
        else:
            dissimilar = (self.margin - dist_sq.sqrt()).clamp_min(0).square()
        loss = torch.where(similar, dist_sq, dissimilar).sum()
        top[0].mutable_device_data().copy_(loss / self.num / 2)

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[2], "Layer cannot backpropagate to the pair labels.")
        if not (propagate_down[0] or propagate_down[1]):
            return
        diff = self.diff.device_data()
        dist_sq = self.dist_sq.device_data()
        similar = bottom[2].device_data().view(self.num).to(torch.int64) != 0
        if self.legacy_version:
            active = (self.margin - dist_sq) > 0
            dissimilar_coeff = torch.full_like(dist_sq, -1.0)
        else:
            dist = dist_sq.sqrt()
            mdist = self.margin - dist
            active = mdist > 0
            dissimilar_coeff = -mdist / (dist + 1e-4)
        coeff = torch.where(similar, torch.ones_like(dist_sq),
                            dissimilar_coeff * active)
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = top[0].device_diff() * (sign / self.num)
                out = bottom[i].mutable_device_diff().view(diff.shape)
                torch.mul(diff, (coeff * alpha).unsqueeze(1), out=out)
