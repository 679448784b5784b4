"""BatchNorm: normalize each channel to zero mean and unit variance (no scale or shift)."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.layer import Layer, register
from caffe.proto import caffe_pb2
from caffe.proto.floats import float_field

_aten = torch.ops.aten


def per_channel_sums(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                     inv_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum(dy * (x - mean) * inv_std) and sum(dy) per channel of (N, C, L) tensors, in one
    pass over the data (the reductions of torch's fused batch-norm backward kernel)."""
    _, dot, total = _aten.native_batch_norm_backward(dy, x, None, None, None, mean, inv_std,
                                                     True, 0.0, [False, True, True])
    return dot, total


def affine_into(x: torch.Tensor, center: torch.Tensor, scale: torch.Tensor,
                shift: torch.Tensor, out: torch.Tensor, unit: torch.Tensor) -> None:
    """out = (x - center) * scale + shift per channel of (N, C, L) tensors, in one pass (torch's
    inference-mode batch-norm kernel with variance 1 and eps 0, so its 1 / sqrt(var + eps) is
    exactly 1; it computes x * scale + (shift - center * scale)). ``unit`` is a tensor of C
    ones; ``out`` must not overlap ``x``."""
    _aten.native_batch_norm.out(x, scale, shift, center, unit, False, 0.0, 0.0, out=out,
                                save_mean=_EMPTY[x.dtype, x.device],
                                save_invstd=_EMPTY[x.dtype, x.device])


class _Empty(dict):
    def __missing__(self, key):
        value = self[key] = torch.empty(0, dtype=key[0], device=key[1])
        return value


_EMPTY = _Empty()


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Caffe type ``BatchNorm``; reads ``batch_norm_param`` (``use_global_stats``: default true
    in TEST and false in TRAIN; ``moving_average_fraction`` f, default 0.999; ``eps``, 1e-5).

    Bottom and top: (N, C, ...), in place allowed. Statistics are per channel over N and the
    spatial axes (m = count / C values each). Three parameter blobs hold running sums, never
    gradients: the mean sum (C), the variance sum (C) and the scale factor s (1).

    TRAIN (batch statistics): y = (x - mean) / sqrt(var + eps) with the biased batch variance
    var = mean((x - mean)^2), then s <- f s + 1, mean_sum <- f mean_sum + mean,
    var_sum <- f var_sum + m / (m - 1) var.
    dE/dx = (dy - mean(dy) - y * mean(dy * y)) / sqrt(var + eps).
    Global statistics: mean = mean_sum / s, var = var_sum / s (both 0 when s is 0), and
    dE/dx = dy / sqrt(var + eps).

    As in Caffe 1.0 the statistics are kept out of optimization: a ParamSpec with lr_mult 0 is
    added for each blob that has none, and an explicit non-zero lr_mult is refused.

    The data are streamed as few times as torch's kernels allow while writing into the blobs:
    TRAIN forward takes the mean, centers into the top, sums the squares through the per-channel
    reductions of torch's batch-norm backward kernel, and scales; backward takes sum(dy) and
    sum(dy * y) in one pass, then one affine pass and one ``addcmul``. Backward reads y from the
    untouched bottom (y = (x - mean) / std) or, in place, from a copy kept in forward.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.batch_norm_param
        self.moving_average_fraction = float_field(param, "moving_average_fraction")
        if param.HasField("use_global_stats"):
            self.use_global_stats = param.use_global_stats
        else:
            self.use_global_stats = self.phase == caffe_pb2.TEST
        self.eps = float_field(param, "eps")
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
        # Per-channel values: mean, variance, 1 / sqrt(var + eps), and constants 0 and 1.
        self.stats = Blob((5, self.channels), dtype=self.dtype)
        self.stats.mutable_device_data()[4].fill_(1)
        # y, kept when running in place: the top is the bottom, so x is gone by backward, and a
        # later in-place layer may rewrite y too.
        self.x_norm = Blob(dtype=self.dtype)
        self.shape3: tuple[int, int, int] | None = None

    def _check_axes(self, blob: Blob) -> None:
        self.check(blob.num_axes >= 2,
                   f"bottom must have at least 2 axes (N, C, ...), got shape {list(blob.shape)}")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2 or shape[1] != self.channels:
            self._check_axes(bottom[0])
            self.check(False, f"bottom has {shape[1]} channels (shape {list(shape)}) but the "
                              f"layer was set up for {self.channels}")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])
        else:
            self.x_norm.reshape_like(bottom[0])
        self.shape3 = (shape[0], self.channels, bottom[0].count // max(1, shape[0] *
                                                                        self.channels))

    def _stats(self) -> tuple[torch.Tensor, ...]:
        mean, variance, inv_std, zero, one = self.stats.mutable_device_data()
        return mean, variance, inv_std, zero, one

    def forward(self, bottom, top):
        shape3 = self.shape3
        x = bottom[0].device_data().view(shape3)
        y = top[0].mutable_device_data().view(shape3)
        mean, variance, inv_std, zero, one = self._stats()
        if self.use_global_stats:
            factor = self.blobs[2].device_data().view(-1)
            scale = torch.where(factor == 0, torch.zeros_like(factor), factor.reciprocal())
            torch.mul(self.blobs[0].device_data().view(-1), scale, out=mean)
            torch.mul(self.blobs[1].device_data().view(-1), scale, out=variance)
            variance.add_(self.eps)
            torch.rsqrt(variance, out=inv_std)
            torch.sub(x, mean.view(1, -1, 1), out=y)
            y.mul_(inv_std.view(1, -1, 1))
            return
        m = shape3[0] * shape3[2]
        torch.mean(x, dim=(0, 2), out=mean)
        torch.sub(x, mean.view(1, -1, 1), out=y)
        # sum((x - mean)^2) per channel without materializing the squares.
        sum_sq, _ = per_channel_sums(y, y, zero, one)
        torch.div(sum_sq, m, out=variance)
        self._update_running_stats(mean, variance, m)
        torch.rsqrt(variance.add(self.eps), out=inv_std)
        y.mul_(inv_std.view(1, -1, 1))
        if top[0] is bottom[0]:
            self.x_norm.mutable_device_data().view(shape3).copy_(y)

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
        shape3 = self.shape3
        dy = top[0].device_diff().view(shape3)
        # In place, dx and dy share memory: the passes below then only update dx in place.
        dx = bottom[0].mutable_device_diff().view(shape3)
        mean, variance, inv_std, zero, one = self._stats()
        if self.use_global_stats:
            torch.mul(dy, inv_std.view(1, -1, 1), out=dx)
            return
        m = shape3[0] * shape3[2]
        # dE/dx = inv_std * (dy - sum(dy) / m) - inv_std * sum(dy * y) / m * y.
        if top[0] is bottom[0]:
            y = self.x_norm.device_data().view(shape3)
            dot, total = per_channel_sums(dy, y, zero, one)
            dx.mul_(inv_std.view(1, -1, 1)).add_(total.mul_(inv_std).div_(-m).view(1, -1, 1))
            dx.addcmul_(y, dot.mul_(inv_std).div_(-m).view(1, -1, 1))
        else:
            # y = (x - mean) * inv_std from the untouched bottom.
            x = bottom[0].device_data().view(shape3)
            dot, total = per_channel_sums(dy, x, mean, inv_std)
            affine_into(x, mean, dot.mul_(inv_std).mul_(inv_std).div_(-m),
                        total.mul_(inv_std).div_(-m), dx, one)
            dx.addcmul_(dy, inv_std.view(1, -1, 1))
