"""SoftmaxWithLoss: softmax over one axis followed by the multinomial logistic loss."""

from __future__ import annotations

import torch

from caffe import common
from caffe.blob import Blob
from caffe.layer import LossLayer, register
from caffe.layers._helpers import label_layout
from caffe.layers.loss import (
    FLT_MIN,
    VALID,
    check_label_range,
    get_normalizer,
    ignore_label_of,
    normalization_mode,
)
from caffe.layers.softmax import softmax_into


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """Caffe type ``SoftmaxWithLoss``; reads ``softmax_param.axis`` and ``loss_param``
    (``ignore_label``, ``normalization`` or the legacy ``normalize``, and SegNet's
    ``weight_by_label_freqs`` with ``class_weighting``, one weight per class).

    Bottoms: scores of shape (outer..., C, inner...) with C on the softmax axis, and labels with
    outer * inner elements holding integers in [0, C). Tops: the scalar loss and, optionally,
    the probabilities (shape of the scores).

    loss = -sum_{valid} log(max(p[label], FLT_MIN)) / normalizer, p = softmax(scores).
    dE/dscores = (p - onehot(label)) * loss_weight / normalizer, zero where the label is ignored.
    With SegNet's class weighting each pixel's term (and its gradient) is multiplied by
    w = class_weighting[label]; the normalizer still counts pixels, not weights.
    """

    exact_num_top = -1
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        loss_param = self.layer_param.loss_param
        self.ignore_label = ignore_label_of(loss_param)
        self.normalization = normalization_mode(loss_param)
        self.class_weighting = (list(loss_param.class_weighting)
                                if loss_param.weight_by_label_freqs else None)
        self.prob = Blob(dtype=self.dtype)
        # Geometry and work tensors are worked out when the bottom shapes (or the mode) change.
        self.geometry_key: tuple | None = None

    def reshape(self, bottom, top):
        key = (bottom[0].shape, bottom[1].shape, common.mode())
        if key != self.geometry_key:
            super().reshape(bottom, top)
            self._set_geometry(bottom)
            self.geometry_key = key
        elif top[0].num_axes:
            top[0].reshape([])
        self.prob.reshape_like(bottom[0])
        if len(top) >= 2:
            top[1].reshape_like(bottom[0])

    def _set_geometry(self, bottom) -> None:
        self.axis, self.outer_num, self.num_classes, self.inner_num = label_layout(
            self, bottom, self.layer_param.softmax_param.axis, "softmax_param.axis", "softmax")
        # (outer, C, inner), or (outer, C) when inner is 1: torch's softmax along the last,
        # contiguous axis is several times faster than along an inner one.
        inner = (self.inner_num,) if self.inner_num != 1 else ()
        self.shape3 = (self.outer_num, self.num_classes, *inner)
        picked = (self.outer_num, 1, *inner)
        self.all_axes = tuple(range(len(picked)))
        # None where a blob's own shape already is the work shape (no view needed).
        self.work_shape = self.shape3 if self.shape3 != bottom[0].shape else None
        dev = common.device()
        self.labels = torch.empty(picked, dtype=torch.int64, device=dev)  # as C++ casts them
        self.labels_flat = self.labels.view(-1)
        self.picked = torch.empty(picked, dtype=self.dtype, device=dev)
        self.minus_one = torch.full(picked, -1.0, dtype=self.dtype, device=dev)
        # Without ignored labels every normalizer is a constant of the shape.
        self.fixed_normalizer = float(get_normalizer(
            self.normalization, self.outer_num, self.inner_num, None))
        # The loss scale as 0-d tensors: torch multiplies by a tensor several times faster than
        # by a Python number (which it wraps per call), with the same float rounding.
        self.neg_inv_normalizer = torch.tensor(-1.0 / self.fixed_normalizer, dtype=self.dtype,
                                               device=dev)
        self.normalizer_t = torch.tensor(self.fixed_normalizer, dtype=self.dtype, device=dev)
        self.scale = torch.empty((), dtype=self.dtype, device=dev)
        self.weights = None
        if self.class_weighting is not None:
            self.check(len(self.class_weighting) == self.num_classes,
                       f"Number of class weight values ({len(self.class_weighting)}) does not "
                       f"match the number of classes ({self.num_classes}) of bottom "
                       f"'{self.layer_param.bottom[0]}' {list(bottom[0].shape)}.")
            self.weights = torch.tensor(self.class_weighting, dtype=self.dtype, device=dev)

    def _read_labels(self, bottom) -> torch.Tensor | None:
        """Copy the labels into ``self.labels`` (truncated to integers), check their range, and
        return the mask of the labels that count (None: all of them)."""
        labels = self.labels
        source = bottom[1].device_data()
        self.labels_flat.copy_(source if source.dim() == 1 else source.reshape(-1))
        valid = None if self.ignore_label is None else labels != self.ignore_label
        low, high = torch.aminmax(labels)
        if int(low) < 0 or int(high) >= self.num_classes:  # maybe only ignored ones
            check_label_range(self, labels, valid, self.num_classes)
        return valid

    def _normalizer(self, valid):
        if valid is None or self.normalization != VALID:
            return self.fixed_normalizer
        return valid.sum().clamp_min_(1)

    def _work(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.work_shape is None else tensor.view(self.work_shape)

    def forward(self, bottom, top):
        prob = self._work(self.prob.mutable_device_data())
        softmax_into(self._work(bottom[0].device_data()), prob, 1)
        valid = self.valid = self._read_labels(bottom)
        labels = self.labels
        if valid is not None:
            labels = labels.masked_fill(~valid, 0)  # any class: the term is masked out below
        picked = self.picked
        torch.gather(prob, 1, labels, out=picked)
        picked.clamp_min_(FLT_MIN).log_()
        if valid is not None:
            picked.mul_(valid)
        if self.weights is not None:
            picked.mul_(self.weights[labels])
        loss = top[0].mutable_device_data()
        torch.sum(picked, dim=self.all_axes, out=loss)
        normalizer = self._normalizer(valid)
        if isinstance(normalizer, float):
            loss.mul_(self.neg_inv_normalizer)
        else:
            loss.neg_().div_(normalizer)
        if len(top) >= 2:
            self._work(top[1].mutable_device_data()).copy_(prob)

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[1], "Layer cannot backpropagate to label inputs.")
        if not propagate_down[0]:
            return
        # The labels and mask are the ones forward read (the label bottom is not changed
        # between the two passes).
        diff = self._work(bottom[0].mutable_device_diff())
        diff.copy_(self._work(self.prob.device_data()))
        valid = self.valid
        if valid is None:
            diff.scatter_add_(1, self.labels, self.minus_one)
        else:
            diff.scatter_add_(1, self.labels.masked_fill(~valid, 0), self.minus_one)
            diff.mul_(valid)
        if self.weights is not None:
            labels = self.labels if valid is None else self.labels.masked_fill(~valid, 0)
            diff.mul_(self.weights[labels])
        normalizer = self._normalizer(valid)
        if isinstance(normalizer, float):  # loss weight / normalizer, divided in Dtype
            diff.mul_(torch.div(top[0].device_diff(), self.normalizer_t, out=self.scale))
        else:
            diff.mul_(top[0].device_diff() / normalizer)
