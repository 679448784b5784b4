"""Accuracy: the fraction of predictions whose true label is among the top-k scores."""

from __future__ import annotations

import torch

from caffe import common
from caffe.functional import accuracy_hits
from caffe.layer import Layer, register
from caffe.layers._helpers import label_layout
from caffe.layers.loss import check_label_range, ignore_label_of


@register("Accuracy")
class AccuracyLayer(Layer):
    """Caffe type ``Accuracy``; reads ``accuracy_param`` (``top_k`` default 1, ``axis`` default
    1, ``ignore_label``).

    Bottoms: scores (outer..., C, inner...) with C on ``axis``, labels (outer * inner values in
    [0, C)). Tops: the scalar accuracy over non-ignored labels and, optionally, the per-class
    accuracy (C). A label counts as hit when fewer than top_k classes rank ahead of it; ties
    rank the larger class index first, as C++'s sort of (score, index) pairs does.
    Has no backward: Caffe refuses to propagate a gradient through it.
    """

    exact_num_bottom = 2
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        param = self.layer_param.accuracy_param
        self.top_k = param.top_k
        self.ignore_label = ignore_label_of(param)
        self.geometry_key: tuple | None = None

    def reshape(self, bottom, top):
        key = (bottom[0].shape, bottom[1].shape, common.mode())
        if key != self.geometry_key:  # worked out once per pair of bottom shapes
            self.check(bottom[1].count > 0
                       and self.top_k <= bottom[0].count // bottom[1].count,
                       f"top_k must be less than or equal to the number of classes (top_k "
                       f"{self.top_k}, prediction shape {list(bottom[0].shape)}, label shape "
                       f"{list(bottom[1].shape)})")
            self.axis, self.outer_num, self.num_labels, self.inner_num = label_layout(
                self, bottom, self.layer_param.accuracy_param.axis, "accuracy_param.axis",
                "label")
            dev = common.device()
            self.labels = torch.empty((self.outer_num, 1, self.inner_num), dtype=torch.int64,
                                      device=dev)
            self.labels_flat = self.labels.view(-1)
            # Without ignored labels the count is the number of labels: a 0-d tensor, as
            # torch divides by a tensor faster than by a Python number (same rounding).
            self.count = torch.tensor(float(max(1, self.outer_num * self.inner_num)),
                                      dtype=self.dtype, device=dev)
            self._scores_src = self._scores = None
            self.geometry_key = key
        top[0].reshape([])
        if len(top) > 1:
            top[1].reshape([self.num_labels])

    def _read_labels(self, bottom) -> torch.Tensor:
        """The labels as int64 (truncated, as C++ casts them), range-checked."""
        labels = self.labels
        source = bottom[1].device_data()
        self.labels_flat.copy_(source if source.dim() == 1 else source.reshape(-1))
        low, high = torch.aminmax(labels)
        if int(low) < 0 or int(high) >= self.num_labels:  # maybe only ignored ones
            check_label_range(self, labels, None if self.ignore_label is None else
                              labels != self.ignore_label, self.num_labels)
        return labels

    def forward(self, bottom, top):
        scores = bottom[0].device_data()
        if scores is not self._scores_src:  # the (outer, C, inner) view, once per tensor
            self._scores_src = scores
            self._scores = scores.view(self.outer_num, self.num_labels, self.inner_num)
        scores = self._scores
        labels = self._read_labels(bottom)
        hit, valid, safe = accuracy_hits(scores, labels, top_k=self.top_k,
                                         ignore_label=self.ignore_label)
        accuracy = hit.sum().to(scores.dtype)
        # No valid label at all gives 0 rather than 0/0.
        count = self.count if valid is None else valid.sum().clamp_min(1)
        torch.div(accuracy, count, out=top[0].mutable_device_data())
        if len(top) > 1:
            flat = safe.reshape(-1)
            totals = torch.zeros(self.num_labels, dtype=scores.dtype, device=scores.device)
            weights = (torch.ones_like(flat, dtype=scores.dtype) if valid is None
                       else valid.reshape(-1).to(scores.dtype))
            totals.index_add_(0, flat, weights)
            hits = torch.zeros_like(totals).index_add_(0, flat, hit.reshape(-1).to(scores.dtype))
            per_class = top[1].mutable_device_data()
            torch.where(totals == 0, torch.zeros_like(totals), hits / totals.clamp_min(1),
                        out=per_class)

    def backward(self, top, propagate_down, bottom):
        self.check(not any(propagate_down), "Accuracy has no backward (Caffe: Not Implemented)")
