"""SigmoidCrossEntropyLoss: cross-entropy of sigmoid(scores) against targets in [0, 1]."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.layer import LossLayer, register
from caffe.layers.loss import (
    BATCH_SIZE,
    get_normalizer,
    ignore_label_of,
    integer_labels,
    normalization_mode,
)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Caffe type ``SigmoidCrossEntropyLoss``; reads ``loss_param`` (``ignore_label``;
    ``normalization`` or the legacy ``normalize``; BATCH_SIZE when neither is set).

    Bottoms: scores x (N, ...) and targets t of the same count. Top: the scalar loss
    -sum(x * (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))) / normalizer, the overflow-free form
    of -sum(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))), over targets whose int value is not
    ``ignore_label``. dE/dx = (sigmoid(x) - t) * loss_weight / normalizer (0 where ignored).
    """

    def setup(self, bottom, top):
        loss_param = self.layer_param.loss_param
        self.ignore_label = ignore_label_of(loss_param)
        self.normalization = normalization_mode(loss_param, default=BATCH_SIZE)
        self.sigmoid = Blob(dtype=self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.outer_num = bottom[0].shape[0]
        self.inner_num = bottom[0].count_range(1)
        self.check(bottom[0].count == bottom[1].count,
                   f"SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the same count "
                   f"(bottom shapes {list(bottom[0].shape)} and {list(bottom[1].shape)})")
        self.sigmoid.reshape_like(bottom[0])

    def _valid(self, target):
        if self.ignore_label is None:
            return None
        return integer_labels(target) != self.ignore_label

    def forward(self, bottom, top):
        x = bottom[0].device_data()
        target = bottom[1].device_data().view(x.shape)
        torch.sigmoid(x, out=self.sigmoid.mutable_device_data())
        positive = (x >= 0).to(x.dtype)
        terms = x * (target - positive) - torch.log1p(torch.exp(x - 2 * x * positive))
        valid = self._valid(target)
        count = None
        if valid is not None:
            terms = terms * valid
            count = valid.sum()
        self.normalizer = get_normalizer(self.normalization, self.outer_num, self.inner_num,
                                         count)
        top[0].mutable_device_data().copy_(-terms.sum() / self.normalizer)

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[1], "Layer cannot backpropagate to label inputs.")
        if not propagate_down[0]:
            return
        diff = bottom[0].mutable_device_diff()
        target = bottom[1].device_data().view(diff.shape)
        torch.sub(self.sigmoid.device_data(), target, out=diff)
        valid = self._valid(target)
        if valid is not None:
            diff.mul_(valid)
        diff.mul_(top[0].device_diff() / self.normalizer)
