"""InfogainLoss: softmax over one axis, then the multinomial logistic loss weighted by an
infogain matrix H (BVLC Caffe 1.0)."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.layer import LossLayer, register
from caffe.layers._helpers import label_layout
from caffe.layers.loss import (
    LOG_THRESHOLD,
    check_label_range,
    get_normalizer,
    ignore_label_of,
    integer_labels,
)
from caffe.layers.softmax import softmax_into
from caffe.proto import caffe_pb2


@register("InfogainLoss")
class InfogainLossLayer(LossLayer):
    """Caffe type ``InfogainLoss``; reads ``infogain_loss_param`` (``axis``, default 1: the axis
    of the scores the softmax runs over; ``source``: a binaryproto holding H, used when there is
    no third bottom) and ``loss_param`` (``ignore_label``; ``normalization``, VALID by default;
    Caffe 1.0 rejects the deprecated ``normalize``).

    Bottoms: scores x of shape (outer..., C, inner...) with C on ``axis``, labels (outer * inner
    values in [0, C)), and optionally H (C x C values, e.g. shape (1, 1, C, C)). Tops: the scalar
    loss and, optionally, the probabilities p = softmax(x) (shape of the scores).

    loss = -sum_{valid (n, k)} sum_j H[label, j] * log(max(p[n, j, k], 1e-20)) / normalizer.
    dE/dx[n, j, k] = loss_weight / normalizer * (p[n, j, k] * sum_i H[label, i] - H[label, j]),
    zero where the label is ignored (Caffe's formula: it ignores the log clipping).
    """

    exact_num_bottom = -1
    min_bottom = 2
    max_bottom = 3
    exact_num_top = -1
    min_top = 1
    max_top = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def setup(self, bottom, top):
        loss_param = self.layer_param.loss_param
        self.ignore_label = ignore_label_of(loss_param)
        self.check(not loss_param.HasField("normalize"),
                   'normalize is deprecated. use "normalization"')
        self.normalization = loss_param.normalization
        self.prob = Blob(dtype=self.dtype)
        self.infogain = None
        if len(bottom) < 3:
            self.infogain = self._read_source()

    def _read_source(self) -> Blob:
        param = self.layer_param.infogain_loss_param
        self.check(param.HasField("source"), "Infogain matrix source must be specified.")
        proto = caffe_pb2.BlobProto()
        try:
            with open(param.source, "rb") as f:
                proto.ParseFromString(f.read())
        except OSError as err:
            self.check(False, f"cannot read infogain matrix source {param.source!r}: {err}")
        except Exception as err:  # protobuf's DecodeError
            self.check(False, f"infogain matrix source {param.source!r} is not a binary "
                              f"BlobProto: {err}")
        blob = Blob(dtype=self.dtype)
        blob.from_proto(proto)
        return blob

    def _matrix(self, bottom) -> Blob:
        return bottom[2] if len(bottom) >= 3 else self.infogain

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.axis, self.outer_num, self.num_labels, self.inner_num = label_layout(
            self, bottom, self.layer_param.infogain_loss_param.axis,
            "infogain_loss_param.axis", "infogain")
        matrix = self._matrix(bottom)
        self.check(matrix.count == self.num_labels * self.num_labels,
                   f"the infogain matrix must hold {self.num_labels} x {self.num_labels} values "
                   f"for {self.num_labels} labels, got shape {list(matrix.shape)}")
        self.prob.reshape_like(bottom[0])
        if len(top) >= 2:
            top[1].reshape_like(bottom[0])

    def _shape3(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(self.outer_num, self.num_labels, self.inner_num)

    def _rows(self, bottom):
        """H[label] laid out like the scores (outer, C, inner), zeroed where the label is
        ignored, and the normalizer."""
        labels = integer_labels(bottom[1].device_data()).view(self.outer_num, self.inner_num)
        valid = None if self.ignore_label is None else labels != self.ignore_label
        check_label_range(self, labels, valid, self.num_labels)
        safe = labels if valid is None else labels.masked_fill(~valid, 0)
        matrix = self._matrix(bottom).device_data().view(self.num_labels, self.num_labels)
        rows = matrix[safe].permute(0, 2, 1)
        count = None
        if valid is not None:
            rows = rows * valid.unsqueeze(1)
            count = valid.sum()
        return rows, get_normalizer(self.normalization, self.outer_num, self.inner_num, count)

    def forward(self, bottom, top):
        prob = self._shape3(self.prob.mutable_device_data())
        softmax_into(self._shape3(bottom[0].device_data()), prob, 1)
        rows, normalizer = self._rows(bottom)
        loss = -(rows * prob.clamp_min(LOG_THRESHOLD).log()).sum()
        top[0].mutable_device_data().copy_(loss / normalizer)
        if len(top) >= 2:
            top[1].mutable_device_data().copy_(self.prob.device_data())

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[1], "Layer cannot backpropagate to label inputs.")
        self.check(len(propagate_down) < 3 or not propagate_down[2],
                   "Layer cannot backpropagate to infogain inputs.")
        if not propagate_down[0]:
            return
        rows, normalizer = self._rows(bottom)
        diff = self._shape3(bottom[0].mutable_device_diff())
        # p * rowsum(H[label]) - H[label]; ignored positions have zero rows, hence zero diff.
        torch.mul(self._shape3(self.prob.device_data()), rows.sum(1, keepdim=True), out=diff)
        diff.sub_(rows)
        diff.mul_(top[0].device_diff() / normalizer)
