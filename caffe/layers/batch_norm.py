"""BatchNorm: normalize each channel to zero mean and unit variance (no scale or shift)."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.layer import Layer, register
from caffe.proto import caffe_pb2


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Caffe type ``BatchNorm``; reads ``batch_norm_param`` (``use_global_stats``: default true
    in TEST and false in TRAIN; ``moving_average_fraction`` f, default 0.999; ``eps``, 1e-5).

    Bottom and top: (N, C, ...), in place allowed. Statistics are per channel over N and the
    spatial axes (m = count / C values each). Three parameter blobs hold running sums, never
    gradients: the mean sum (C), the variance sum (C) and the scale factor s (1).

    TRAIN (batch statistics): y = (x - mean) / sqrt(var + eps) with the biased batch variance,
    then s <- f s + 1, mean_sum <- f mean_sum + mean, var_sum <- f var_sum + m / (m - 1) var.
    dE/dx = (dy - mean(dy) - y * mean(dy * y)) / sqrt(var + eps).
    Global statistics: mean = mean_sum / s, var = var_sum / s (both 0 when s is 0), and
    dE/dx = dy / sqrt(var + eps).

    As in Caffe 1.0 the statistics are kept out of optimization: a ParamSpec with lr_mult 0 is
    added for each blob that has none, and an explicit non-zero lr_mult is refused.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.batch_norm_param
        self.moving_average_fraction = param.moving_average_fraction
        if param.HasField("use_global_stats"):
            self.use_global_stats = param.use_global_stats
        else:
            self.use_global_stats = self.phase == caffe_pb2.TEST
        self.eps = param.eps
        self._check_axes(bottom[0])
        self.channels = bottom[0].shape[1]
        if self.blobs:
            expected = (self.channels, self.channels, 1)
            self.check(len(self.blobs) == 3
                       and tuple(b.count for b in self.blobs) == expected,
                       f"expects 3 statistics blobs of {self.channels}, {self.channels} and 1 "
                       f"values, got shapes {[list(b.shape) for b in self.blobs]}")
        else:
            self.blobs = [Blob((self.channels,), dtype=self.dtype),
                          Blob((self.channels,), dtype=self.dtype),
                          Blob((1,), dtype=self.dtype)]
            for blob in self.blobs:
                blob.mutable_device_data().zero_()
        for i in range(len(self.blobs)):
            if i == len(self.layer_param.param):
                self.layer_param.param.add().lr_mult = 0.0
            else:
                self.check(self.layer_param.param[i].lr_mult == 0,
                           "Cannot configure batch normalization statistics as layer "
                           f"parameters (param {i} has lr_mult "
                           f"{self.layer_param.param[i].lr_mult}; it must be 0 or unset).")
        self.param_propagate_down = [False] * len(self.blobs)
        self.mean = Blob(dtype=self.dtype)
        self.std = Blob(dtype=self.dtype)  # sqrt(var + eps), kept for backward
        self.x_norm = Blob(dtype=self.dtype)  # cached: a later in-place layer may clobber top
        self.temp = Blob(dtype=self.dtype)

    def _check_axes(self, blob: Blob) -> None:
        self.check(blob.num_axes >= 2,
                   f"bottom must have at least 2 axes (N, C, ...), got shape {list(blob.shape)}")

    def reshape(self, bottom, top):
        self._check_axes(bottom[0])
        self.check(bottom[0].shape[1] == self.channels,
                   f"bottom has {bottom[0].shape[1]} channels (shape {list(bottom[0].shape)}) "
                   f"but the layer was set up for {self.channels}")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])
        self.mean.reshape((self.channels,))
        self.std.reshape((self.channels,))
        self.x_norm.reshape_like(bottom[0])
        self.temp.reshape_like(bottom[0])

    def _view3(self, blob_tensor: torch.Tensor) -> torch.Tensor:
        num = blob_tensor.shape[0]
        return blob_tensor.view(num, self.channels, -1)

    def forward(self, bottom, top):
        x = self._view3(bottom[0].device_data())
        mean = self.mean.mutable_device_data()
        std = self.std.mutable_device_data()
        x_norm = self._view3(self.x_norm.mutable_device_data())
        if self.use_global_stats:
            factor = self.blobs[2].device_data().view(-1)
            scale = torch.where(factor == 0, torch.zeros_like(factor), factor.reciprocal())
            torch.mul(self.blobs[0].device_data().view(-1), scale, out=mean)
            torch.mul(self.blobs[1].device_data().view(-1), scale, out=std)
            torch.sub(x, mean.view(1, -1, 1), out=x_norm)
        else:
            torch.mean(x, dim=(0, 2), out=mean)
            torch.sub(x, mean.view(1, -1, 1), out=x_norm)
            temp = self._view3(self.temp.mutable_device_data())
            torch.mul(x_norm, x_norm, out=temp)
            torch.mean(temp, dim=(0, 2), out=std)  # the batch variance, for now
            self._update_running_stats(mean, std, bottom[0].count // self.channels)
        std.add_(self.eps).sqrt_()
        x_norm.div_(std.view(1, -1, 1))
        top[0].mutable_device_data().copy_(x_norm.view(top[0].shape))

    def _update_running_stats(self, mean, variance, m: int) -> None:
        f = self.moving_average_fraction
        factor = self.blobs[2].mutable_device_data()
        factor.mul_(f).add_(1)
        mean_sum = self.blobs[0].mutable_device_data().view(-1)
        mean_sum.mul_(f).add_(mean)
        # The stored variance is unbiased: m / (m - 1) times the batch variance.
        correction = m / (m - 1) if m > 1 else 1.0
        var_sum = self.blobs[1].mutable_device_data().view(-1)
        var_sum.mul_(f).add_(variance, alpha=correction)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = self._view3(top[0].device_diff())
        std = self.std.device_data().view(1, -1, 1)
        # In place, dx and dy share memory; every read of dy below precedes the final write
        # or is elementwise with it.
        dx = self._view3(bottom[0].mutable_device_diff())
        if self.use_global_stats:
            torch.div(dy, std, out=dx)
            return
        y = self._view3(self.x_norm.device_data())
        temp = self._view3(self.temp.mutable_device_data())
        torch.mul(dy, y, out=temp)
        mean_dy_y = temp.mean(dim=(0, 2), keepdim=True)
        mean_dy = dy.mean(dim=(0, 2), keepdim=True)
        torch.mul(y, mean_dy_y, out=temp)
        temp.add_(mean_dy)
        torch.sub(dy, temp, out=dx)
        dx.div_(std)
