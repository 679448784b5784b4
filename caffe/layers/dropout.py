"""Dropout: zero each value with probability p during training."""

from __future__ import annotations

import torch

from caffe import common
from caffe.layer import NeuronLayer, register
from caffe.layers._helpers import Workspace
from caffe.proto import caffe_pb2


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """Dropout, reads ``dropout_param.dropout_ratio`` p (default 0.5, 0 <= p < 1) and
    ``dropout_param.scale_train`` (default true; read only where the proto has the field).

    TRAIN: y = x * m * s with m ~ Bernoulli(1 - p) drawn from ``caffe.common.generator()`` on
    every forward and kept for backward; dE/dx = dE/dy * m * s. TEST: y = x * t;
    dE/dx = dE/dy * t. With scale_train the kept values are scaled while training
    (s = 1 / (1 - p), t = 1); without it the output is scaled while testing (s = 1,
    t = 1 - p). Top and bottom may be the same blob.
    """

    def __init__(self, param, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(param, dtype)
        self.workspace = Workspace()

    def setup(self, bottom, top):
        param = self.layer_param.dropout_param
        self.ratio = float(param.dropout_ratio)
        self.check(0.0 <= self.ratio < 1.0,
                   f"dropout_ratio must lie in [0, 1), got {self.ratio}")
        # scale_train is a later BVLC field; a proto without it behaves as if it were true.
        self.scale_train = bool(getattr(param, "scale_train", True))
        self.scale = 1.0 / (1.0 - self.ratio)
        self.train_scale = self.scale if self.scale_train else 1.0
        self.test_scale = 1.0 if self.scale_train else 1.0 - self.ratio

    @property
    def training(self) -> bool:
        """Dropout drops units only in the TRAIN phase; TEST passes the bottom through."""
        return self.phase == caffe_pb2.TRAIN

    def forward(self, bottom, top):
        x = bottom[0].device_data()
        y = top[0].mutable_device_data()
        if self.training:
            # The mask holds m * s, so forward and backward are one multiply each.
            mask = self.workspace.like("mask", x)
            mask.bernoulli_(1.0 - self.ratio, generator=common.generator(mask.device))
            if self.train_scale != 1:
                mask.mul_(self.train_scale)
            torch.mul(x, mask, out=y)
        elif self.test_scale != 1:
            torch.mul(x, self.test_scale, out=y)
        elif y.data_ptr() != x.data_ptr():
            y.copy_(x)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].device_diff()
        dx = bottom[0].mutable_device_diff()
        if self.training:
            torch.mul(dy, self.workspace.like("mask", dy), out=dx)
        elif self.test_scale != 1:
            torch.mul(dy, self.test_scale, out=dx)
        elif dx.data_ptr() != dy.data_ptr():
            dx.copy_(dy)
