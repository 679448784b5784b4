"""MVN: mean-variance normalization of each (item, channel) or each item."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.layer import Layer, register
from caffe.proto.floats import float_field


@register("MVN")
class MVNLayer(Layer):
    """Caffe type ``MVN``; reads ``mvn_param`` (``normalize_variance`` default true,
    ``across_channels`` default false, ``eps`` default 1e-9).

    Bottom: up to 4 axes (N, C, H, W); the top takes the 4-D shape (num, channels, height, width)
    as in Caffe. Each group (one (n, c) plane, or one item n with across_channels) of D values
    is normalized: y = x - mean, then with normalize_variance y = (x - mean) / (std + eps),
    std = sqrt(mean((x - mean)^2)) (eps is added to the standard deviation, not the variance).
    dE/dx = (dy - mean(dy) - y * mean(dy * y)) / (std + eps), or dy - mean(dy) without the
    variance step (means over each group).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.mvn_param
        self.normalize_variance = param.normalize_variance
        self.across_channels = param.across_channels
        self.eps = float_field(param, "eps")
        self.std = Blob(dtype=self.dtype)  # std + eps per group, kept for backward
        self.temp = Blob(dtype=self.dtype)

    def reshape(self, bottom, top):
        b = bottom[0]
        self.check(b.num_axes <= 4, f"MVN takes blobs of up to 4 axes (N, C, H, W), got shape "
                                    f"{list(b.shape)}")
        shape = (b.num, b.channels, b.height, b.width)
        top[0].reshape(shape)
        self.groups = b.num if self.across_channels else b.num * b.channels
        self.dim = b.count // self.groups if self.groups else 0
        self.std.reshape((self.groups, 1))
        self.temp.reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].device_data().view(self.groups, self.dim)
        y = top[0].mutable_device_data().view(self.groups, self.dim)
        mean = x.mean(dim=1, keepdim=True)
        torch.sub(x, mean, out=y)
        if self.normalize_variance:
            temp = self.temp.mutable_device_data().view(self.groups, self.dim)
            torch.mul(y, y, out=temp)
            std = self.std.mutable_device_data()
            torch.mean(temp, dim=1, keepdim=True, out=std)
            std.sqrt_().add_(self.eps)
            y.div_(std)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].device_diff().view(self.groups, self.dim)
        dx = bottom[0].mutable_device_diff().view(self.groups, self.dim)
        mean_dy = dy.mean(dim=1, keepdim=True)
        if not self.normalize_variance:
            torch.sub(dy, mean_dy, out=dx)
            return
        y = top[0].device_data().view(self.groups, self.dim)
        temp = self.temp.mutable_device_data().view(self.groups, self.dim)
        torch.mul(dy, y, out=temp)
        mean_dy_y = temp.mean(dim=1, keepdim=True)
        torch.mul(y, mean_dy_y, out=temp)
        temp.add_(mean_dy)
        torch.sub(dy, temp, out=dx)
        dx.div_(self.std.device_data())
