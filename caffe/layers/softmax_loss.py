"""SoftmaxWithLoss: softmax over one axis followed by the multinomial logistic loss."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.errors import CaffeError
from caffe.layer import LossLayer, register
from caffe.layers.loss import (
    FLT_MIN,
    check_label_range,
    get_normalizer,
    ignore_label_of,
    integer_labels,
    normalization_mode,
)


def softmax_into(x: torch.Tensor, out: torch.Tensor, dim: int) -> None:
    """Numerically stable softmax of ``x`` along ``dim`` written into ``out`` (max shifted)."""
    torch.sub(x, x.amax(dim=dim, keepdim=True), out=out)
    out.exp_()
    out.div_(out.sum(dim=dim, keepdim=True))


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """Caffe type ``SoftmaxWithLoss``; reads ``softmax_param.axis`` and ``loss_param``
    (``ignore_label``, ``normalization`` or the legacy ``normalize``).

    Bottoms: scores of shape (outer..., C, inner...) with C on the softmax axis, and labels with
    outer * inner elements holding integers in [0, C). Tops: the scalar loss and, optionally,
    the probabilities (shape of the scores).

    loss = -sum_{valid} log(max(p[label], FLT_MIN)) / normalizer, p = softmax(scores).
    dE/dscores = (p - onehot(label)) * loss_weight / normalizer, zero where the label is ignored.
    """

    exact_num_top = -1
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        loss_param = self.layer_param.loss_param
        self.ignore_label = ignore_label_of(loss_param)
        self.normalization = normalization_mode(loss_param)
        self.prob = Blob(dtype=self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        try:
            self.axis = bottom[0].canonical_axis_index(self.layer_param.softmax_param.axis)
        except CaffeError as err:
            self.check(False, f"softmax_param.axis: {err}")
        self.outer_num = bottom[0].count_range(0, self.axis)
        self.num_classes = bottom[0].shape[self.axis]
        self.inner_num = bottom[0].count_range(self.axis + 1)
        self.check(self.outer_num * self.inner_num == bottom[1].count,
                   f"Number of labels must match number of predictions; e.g., if softmax axis "
                   f"== 1 and prediction shape is (N, C, H, W), label count (number of labels) "
                   f"must be N*H*W, with integer values in {{0, 1, ..., C-1}} (prediction shape "
                   f"{list(bottom[0].shape)}, axis {self.axis}, label shape "
                   f"{list(bottom[1].shape)})")
        self.prob.reshape_like(bottom[0])
        if len(top) >= 2:
            top[1].reshape_like(bottom[0])

    def _labels(self, bottom):
        labels = integer_labels(bottom[1].device_data()).view(self.outer_num, self.inner_num)
        valid = None
        if self.ignore_label is not None:
            valid = labels != self.ignore_label
        return labels, valid

    def forward(self, bottom, top):
        shape3 = (self.outer_num, self.num_classes, self.inner_num)
        prob = self.prob.mutable_device_data().view(shape3)
        softmax_into(bottom[0].device_data().view(shape3), prob, dim=1)
        labels, valid = self._labels(bottom)
        check_label_range(self, labels, valid, self.num_classes)
        safe = labels if valid is None else labels.masked_fill(~valid, 0)
        picked = prob.gather(1, safe.unsqueeze(1)).squeeze(1).clamp_min(FLT_MIN).log_()
        if valid is None:
            loss = -picked.sum()
            count = None
        else:
            loss = -(picked * valid).sum()
            count = valid.sum()
        normalizer = get_normalizer(self.normalization, self.outer_num, self.inner_num, count)
        top[0].mutable_device_data().copy_(loss / normalizer)
        if len(top) >= 2:
            top[1].mutable_device_data().copy_(self.prob.device_data())

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[1], "Layer cannot backpropagate to label inputs.")
        if not propagate_down[0]:
            return
        shape3 = (self.outer_num, self.num_classes, self.inner_num)
        diff = bottom[0].mutable_device_diff().view(shape3)
        diff.copy_(self.prob.device_data().view(shape3))
        labels, valid = self._labels(bottom)
        safe = labels if valid is None else labels.masked_fill(~valid, 0)
        minus_one = torch.full(safe.shape, -1.0, dtype=diff.dtype, device=diff.device)
        count = None
        if valid is not None:
            minus_one.mul_(valid)
            count = valid.sum()
        diff.scatter_add_(1, safe.unsqueeze(1), minus_one.unsqueeze(1))
        if valid is not None:
            diff.mul_(valid.unsqueeze(1))
        normalizer = get_normalizer(self.normalization, self.outer_num, self.inner_num, count)
        diff.mul_(top[0].device_diff() / normalizer)
