"""InfogainLoss: multinomial logistic loss weighted by an infogain matrix H."""

from __future__ import annotations

from caffe.blob import Blob
from caffe.layer import LossLayer, register
from caffe.layers._helpers import label_layout
from caffe.layers.loss import (
    LOG_THRESHOLD,
    check_label_range,
    get_normalizer,
    ignore_label_of,
    integer_labels,
    normalization_mode,
)
from caffe.proto import caffe_pb2


@register("InfogainLoss")
class InfogainLossLayer(LossLayer):
    """Caffe type ``InfogainLoss``; reads ``infogain_loss_param`` (``source``: a binaryproto
    holding H, used when there is no third bottom; ``axis``, default 1) and ``loss_param``
    (``ignore_label``, ``normalization``/``normalize``, VALID by default).

    Bottoms: probabilities p of shape (outer..., C, inner...) with C on ``axis`` (the output of a
    Softmax layer, as in the C++ Caffe that produced the reference data: this layer does not
    apply a softmax itself), labels (outer * inner values in [0, C)), and optionally H (C x C
    values, e.g. shape (1, 1, C, C)). Top: the scalar
    loss = -sum_{valid (n, k)} sum_j H[label, j] * log(max(p[n, j, k], 1e-20)) / normalizer.
    dE/dp[n, j, k] = -loss_weight / normalizer * H[label, j] / max(p[n, j, k], 1e-20).
    """

    exact_num_bottom = -1
    min_bottom = 2
    max_bottom = 3

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def setup(self, bottom, top):
        loss_param = self.layer_param.loss_param
        self.ignore_label = ignore_label_of(loss_param)
        self.normalization = normalization_mode(loss_param)
        self.infogain = None
        if len(bottom) < 3:
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
            self.infogain = Blob(dtype=self.dtype)
            self.infogain.from_proto(proto)

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

    def _weights(self, bottom):
        """H[label] laid out like the predictions, zeroed where the label is ignored."""
        labels = integer_labels(bottom[1].device_data()).view(self.outer_num, self.inner_num)
        valid = None if self.ignore_label is None else labels != self.ignore_label
        check_label_range(self, labels, valid, self.num_labels)
        safe = labels if valid is None else labels.masked_fill(~valid, 0)
        matrix = self._matrix(bottom).device_data().view(self.num_labels, self.num_labels)
        weights = matrix[safe].permute(0, 2, 1)  # (outer, C, inner)
        count = None
        if valid is not None:
            weights = weights * valid.unsqueeze(1)
            count = valid.sum()
        normalizer = get_normalizer(self.normalization, self.outer_num, self.inner_num, count)
        return weights, normalizer

    def _prob(self, bottom):
        shape3 = (self.outer_num, self.num_labels, self.inner_num)
        return bottom[0].device_data().view(shape3).clamp_min(LOG_THRESHOLD)

    def forward(self, bottom, top):
        weights, normalizer = self._weights(bottom)
        loss = -(weights * self._prob(bottom).log()).sum()
        top[0].mutable_device_data().copy_(loss / normalizer)

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[1], "Layer cannot backpropagate to label inputs.")
        self.check(len(propagate_down) < 3 or not propagate_down[2],
                   "Layer cannot backpropagate to infogain inputs.")
        if not propagate_down[0]:
            return
        weights, normalizer = self._weights(bottom)
        diff = bottom[0].mutable_device_diff().view(weights.shape)
        diff.copy_(weights)
        diff.div_(self._prob(bottom))
        diff.mul_(-top[0].device_diff() / normalizer)
