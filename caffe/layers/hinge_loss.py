"""HingeLoss: one-vs-all hinge loss of class scores (L1 or squared L2)."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.layer import LossLayer, register
from caffe.layers.loss import check_label_range, integer_labels
from caffe.proto import caffe_pb2

L1 = caffe_pb2.HingeLossParameter.L1
L2 = caffe_pb2.HingeLossParameter.L2


@register("HingeLoss")
class HingeLossLayer(LossLayer):
    """Caffe type ``HingeLoss``; reads ``hinge_loss_param.norm`` (L1 default, or L2).

    Bottoms: scores x (N, ...) flattened to (N, D), labels (N) in [0, D). With s = -1 at the label
    and +1 elsewhere, margins m = max(0, 1 + s * x). Top: sum(m) / N (L1) or sum(m^2) / N (L2).
    dE/dx = s * [m > 0] * loss_weight / N (L1), 2 s m * loss_weight / N (L2).
    """

    def setup(self, bottom, top):
        self.norm = self.layer_param.hinge_loss_param.norm
        self.check(self.norm in (L1, L2), f"Unknown Norm {self.norm}")
        self.margin = Blob(dtype=self.dtype)
        self.sign = Blob(dtype=self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // self.num if self.num else 0
        self.check(bottom[1].count == self.num,
                   f"expects one label per item: {self.num} items (bottom[0] shape "
                   f"{list(bottom[0].shape)}), {bottom[1].count} labels")
        self.margin.reshape((self.num, self.dim))
        self.sign.reshape((self.num, self.dim))

    def forward(self, bottom, top):
        x = bottom[0].device_data().view(self.num, self.dim)
        labels = integer_labels(bottom[1].device_data()).view(self.num)
        check_label_range(self, labels, None, self.dim)
        sign = self.sign.mutable_device_data()
        sign.fill_(1)
        sign.scatter_(1, labels.unsqueeze(1), -1.0)
        margin = self.margin.mutable_device_data()
        torch.mul(x, sign, out=margin)
        margin.add_(1).clamp_min_(0)
        flat = margin.reshape(-1)
        total = flat.sum() if self.norm == L1 else torch.dot(flat, flat)
        top[0].mutable_device_data().copy_(total / self.num)

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[1], "Layer cannot backpropagate to label inputs.")
        if not propagate_down[0]:
            return
        diff = bottom[0].mutable_device_diff().view(self.num, self.dim)
        margin = self.margin.device_data()
        if self.norm == L1:
            torch.mul(self.sign.device_data(), margin > 0, out=diff)
            diff.mul_(top[0].device_diff() / self.num)
        else:
            torch.mul(self.sign.device_data(), margin, out=diff)
            diff.mul_(top[0].device_diff() * 2 / self.num)
