"""Im2col: lay out every convolution window as a column (Caffe's Im2colLayer)."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._conv_util import (
    check_conv_output,
    col2im_nd,
    conv_geometry,
    im2col_nd,
)
from caffe.layers._helpers import canonical_axis

_aten = torch.ops.aten


@register("Im2col")
class Im2colLayer(Layer):
    """Caffe type ``Im2col``; reads the window fields of ``convolution_param`` (``kernel_size``,
    ``stride``, ``pad``, ``dilation`` or their 2-D ``_h``/``_w`` forms, ``axis``,
    ``force_nd_im2col``).

    Bottom: (..., C, *in) with C on ``axis`` and at least one spatial axis. Top:
    (..., C * prod(kernel), *out), out as Convolution's; top[c * K + k, o] is the input at
    o * stride - pad + k * dilation (zero in the padding), k running over kernel offsets in
    row-major order. Backward sums each column entry back onto the input element it came from.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.convolution_param
        self.channel_axis = canonical_axis(self, bottom[0], p.axis)
        self.num_spatial_axes = bottom[0].num_axes - self.channel_axis - 1
        self.check(self.num_spatial_axes >= 1,
                   f"Im2col needs at least one spatial axis after the channel axis "
                   f"{self.channel_axis} (bottom shape {list(bottom[0].shape)})")
        self.geom = conv_geometry(p, self.num_spatial_axes, self.check)
        # torch's 2-D kernels give the same columns as Caffe's N-d path; the flag only picks
        # the implementation, as in Caffe.
        self.use_2d = self.num_spatial_axes == 2 and not p.force_nd_im2col

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.check(len(shape) == self.channel_axis + 1 + self.num_spatial_axes,
                   f"bottom num_axes may not change (bottom shape {list(shape)})")
        self.num = bottom[0].count_range(0, self.channel_axis)
        self.channels = shape[self.channel_axis]
        self.in_spatial = list(shape[self.channel_axis + 1:])
        self.out_spatial = check_conv_output(self.check, self.in_spatial, self.geom, "im2col")
        kernel_count = 1
        for k in self.geom.kernel:
            kernel_count *= k
        top[0].reshape(list(shape[:self.channel_axis]) + [self.channels * kernel_count] +
                       self.out_spatial)

    def forward(self, bottom, top):
        x = bottom[0].device_data().view(self.num, self.channels, *self.in_spatial)
        y = top[0].mutable_device_data()
        g = self.geom
        if self.use_2d:
            _aten.im2col.out(x, g.kernel, g.dilation, g.pad, g.stride,
                             out=y.view(self.num, -1, self.out_spatial[0] * self.out_spatial[1]))
        else:
            y.view(self.num, self.channels, *g.kernel, *self.out_spatial).copy_(
                im2col_nd(x, g, self.out_spatial))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].device_diff()
        dx = bottom[0].mutable_device_diff().view(self.num, self.channels, *self.in_spatial)
        g = self.geom
        if self.use_2d:
            _aten.col2im.out(dy.view(self.num, -1, self.out_spatial[0] * self.out_spatial[1]),
                             self.in_spatial, g.kernel, g.dilation, g.pad, g.stride, out=dx)
        else:
            col2im_nd(dy.view(self.num, self.channels, *g.kernel, *self.out_spatial), g,
                      self.in_spatial, dx)
