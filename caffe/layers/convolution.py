"""Convolution: N-d convolution with learned filters (Caffe's ConvolutionLayer).

Also holds ``BaseConvolutionLayer``, the parameter handling Convolution and Deconvolution share
(Caffe's BaseConvolutionLayer).
"""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._conv_util import (
    ConvGeometry,
    check_conv_output,
    col2im_nd,
    conv_geometry,
    im2col_nd,
    setup_weight_and_bias,
)
from caffe.layers._helpers import canonical_axis

_aten = torch.ops.aten
# torch runs 1-, 2- and 3-d convolutions natively; other ranks go through im2col + matmul.
_NATIVE_SPATIAL_AXES = (1, 2, 3)


class BaseConvolutionLayer(Layer):
    """Shared setup of Convolution and Deconvolution; reads ``convolution_param``.

    Parameters: ``num_output``, ``bias_term``, ``kernel_size``/``stride``/``pad``/``dilation``
    (once, or once per spatial axis) or the 2-D ``kernel_h``/``kernel_w``/... forms, ``group``,
    ``axis`` (the channel axis; axes before it are independent samples), ``force_nd_im2col``
    (a Caffe implementation switch; results do not depend on it), ``weight_filler``,
    ``bias_filler``. Several bottoms may be given (one top each, all of the same shape); they
    share the filters and their parameter gradients add up.
    """

    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True
    transposed = False  # Deconvolution runs the convolution's data flow backwards

    # --- setup -------------------------------------------------------------------------------
    def setup(self, bottom, top):
        p = self.layer_param.convolution_param
        self.force_nd_im2col = p.force_nd_im2col
        self.channel_axis = canonical_axis(self, bottom[0], p.axis)
        self.num_spatial_axes = bottom[0].num_axes - self.channel_axis - 1
        self.geom: ConvGeometry = conv_geometry(p, self.num_spatial_axes, self.check)
        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output = p.num_output
        self.group = p.group
        self.check(self.num_output > 0, f"num_output must be positive, got {self.num_output}")
        self.check(self.group > 0, f"group must be positive, got {self.group}")
        self.check(self.channels % self.group == 0,
                   f"the number of input channels ({self.channels}) must be divisible by group "
                   f"({self.group})")
        self.check(self.num_output % self.group == 0,
                   f"Number of output should be multiples of group (num_output "
                   f"{self.num_output}, group {self.group})")
        if self.transposed:
            conv_out, conv_in = self.channels, self.num_output
        else:
            conv_out, conv_in = self.num_output, self.channels
        weight_shape = [conv_out, conv_in // self.group, *self.geom.kernel]
        self.bias_term = p.bias_term
        bias_shape = [self.num_output] if self.bias_term else None
        setup_weight_and_bias(self, weight_shape, bias_shape, p)
        # 1x1 kernels with unit stride and no padding are matrix products (Caffe skips im2col
        # there too); other ranks torch has kernels for run natively, the rest via im2col.
        self._gemm = self.geom.is_1x1
        self._native = self.num_spatial_axes in _NATIVE_SPATIAL_AXES
        # A 0-d convolution (no spatial axes) is a 1-d one over a length-1 axis.
        if self.num_spatial_axes == 0:
            self._native = True
            self._torch_geom = ConvGeometry((1,), (1,), (0,), (1,))
        else:
            self._torch_geom = self.geom
        self._bottom_shape: tuple[int, ...] | None = None

    # --- reshape -------------------------------------------------------------------------------
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if shape != self._bottom_shape:
            self.check(len(shape) == self.channel_axis + 1 + self.num_spatial_axes,
                       f"bottom num_axes may not change (set up with "
                       f"{self.channel_axis + 1 + self.num_spatial_axes} axes, got bottom shape "
                       f"{list(shape)})")
            self.check(shape[self.channel_axis] == self.channels,
                       f"Input size incompatible with convolution kernel: bottom shape "
                       f"{list(shape)} has {shape[self.channel_axis]} channels on axis "
                       f"{self.channel_axis}, the filters expect {self.channels}")
            self.num = bottom[0].count_range(0, self.channel_axis)
            self.in_spatial = list(shape[self.channel_axis + 1:])
            self.out_spatial = self.compute_output_shape(self.in_spatial)
            self.top_shape = list(shape[:self.channel_axis]) + [self.num_output] + \
                self.out_spatial
            self._bottom_shape = shape
        for i, blob in enumerate(bottom[1:], start=1):
            self.check(blob.shape == shape,
                       f"All inputs must have the same shape (bottom 0 {list(shape)}, bottom {i} "
                       f"{list(blob.shape)})")
        for blob in top:
            blob.reshape(self.top_shape)

    def compute_output_shape(self, in_spatial: list[int]) -> list[int]:
        """The top's spatial dims for bottom spatial dims ``in_spatial`` (Caffe's
        compute_output_shape)."""
        raise NotImplementedError

    # --- torch views ---------------------------------------------------------------------------
    def _bottom_view(self, t: torch.Tensor) -> torch.Tensor:
        spatial = self.in_spatial or [1]
        return t.view(self.num, self.channels, *spatial)

    def _top_view(self, t: torch.Tensor) -> torch.Tensor:
        spatial = self.out_spatial or [1]
        return t.view(self.num, self.num_output, *spatial)

    def _weight_view(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.num_spatial_axes else t.unsqueeze(-1)

    def _bias(self) -> torch.Tensor | None:
        return self.blobs[1].device_data() if self.bias_term else None

    # --- math ----------------------------------------------------------------------------------
    def forward(self, bottom, top):
        weight = self._weight_view(self.blobs[0].device_data())
        bias = self._bias()
        g = self._torch_geom
        for b, t in zip(bottom, top):
            x = self._bottom_view(b.device_data())
            y = self._top_view(t.mutable_device_data())
            if self._gemm:
                self._forward_gemm(x, weight, bias, y)
            elif self._native:
                _aten.convolution.out(x, weight, bias, g.stride, g.pad, g.dilation,
                                      self.transposed, [0] * len(g.stride), self.group, out=y)
            else:
                self._forward_im2col(x, weight, bias, y)

    def backward(self, top, propagate_down, bottom):
        weight = self._weight_view(self.blobs[0].device_data())
        want_weight = self.param_propagate_down[0]
        want_bias = self.bias_term and self.param_propagate_down[1]
        g = self._torch_geom
        for t, down, b in zip(top, propagate_down, bottom):
            if not (down or want_weight or want_bias):
                continue
            dy = self._top_view(t.device_diff())
            x = self._bottom_view(b.device_data())
            dx = self._bottom_view(b.mutable_device_diff()) if down else None
            if self._gemm:
                self._backward_gemm(dy, x, weight, want_weight, dx)
                dw = None  # accumulated in place
                db = dy.sum([0] + list(range(2, dy.dim()))) if want_bias else None
            elif self._native:
                dx_new, dw, db = _aten.convolution_backward(
                    dy, x, weight, [self.num_output] if want_bias else None, g.stride, g.pad,
                    g.dilation, self.transposed, [0] * len(g.stride), self.group,
                    [bool(down), want_weight, want_bias])
                if down:
                    dx.copy_(dx_new)
            else:
                dw, db = self._backward_im2col(dy, x, weight, want_weight, want_bias, dx)
            # Parameter gradients accumulate, as Caffe's solvers (and iter_size) expect.
            if dw is not None:
                self.blobs[0].mutable_device_diff().add_(dw.view(self.blobs[0].shape))
            if db is not None:
                self.blobs[1].mutable_device_diff().add_(db)

    # --- 1x1 path: a plain matrix product per sample, written straight into the blobs ---------
    def _gemm_operator(self, weight: torch.Tensor) -> torch.Tensor:
        """The weights as (group, top channels / group, bottom channels / group): the matrix
        mapping a bottom column to a top column (a transposed view for Deconvolution)."""
        w = weight.reshape(self.group, weight.shape[0] // self.group, -1)
        return w.transpose(1, 2) if self.transposed else w

    def _grouped(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.num, self.group, t.shape[1] // self.group, -1)

    def _forward_gemm(self, x, weight, bias, y):
        a = self._gemm_operator(weight)
        if self.group == 1 and bias is not None:
            length = y[0, 0].numel()
            torch.baddbmm(bias.view(1, -1, 1), a.expand(self.num, *a.shape[1:]),
                          x.reshape(self.num, -1, length), out=y.view(self.num, -1, length))
            return
        torch.matmul(a, self._grouped(x), out=self._grouped(y))
        if bias is not None:
            y += bias.view(-1, *([1] * (y.dim() - 2)))

    def _backward_gemm(self, dy, x, weight, want_weight, dx):
        a = self._gemm_operator(weight)
        dyg = self._grouped(dy)
        if dx is not None:
            torch.matmul(a.transpose(1, 2), dyg, out=self._grouped(dx))
        if want_weight:
            xg = self._grouped(x)
            dw = self.blobs[0].mutable_device_diff()
            dw = dw.view(self.group, dw.shape[0] // self.group, -1)
            # Convolution stores the operator itself, Deconvolution its transpose.
            for n in range(self.num):
                if self.transposed:
                    dw.baddbmm_(xg[n], dyg[n].transpose(1, 2))
                else:
                    dw.baddbmm_(dyg[n], xg[n].transpose(1, 2))

    # --- im2col path for ranks torch has no kernel for (4 or more spatial axes) ----------------
    def _columns(self, data: torch.Tensor, spatial_out: list[int]) -> torch.Tensor:
        """im2col of ``data`` grouped as (num, group, channels/group * prod(kernel), L)."""
        cols = im2col_nd(data, self.geom, spatial_out)
        length = 1
        for n in spatial_out:
            length *= n
        return cols.reshape(self.num, self.group, -1, length)

    def _forward_im2col(self, x, weight, bias, y):
        # Convolution: y = W * im2col(x); Deconvolution: y = col2im(W^T x).
        grouped_w = weight.reshape(self.group, weight.shape[0] // self.group, -1)
        if not self.transposed:
            cols = self._columns(x, self.out_spatial)
            y.view(self.num, self.group, -1, cols.shape[-1]).copy_(torch.matmul(grouped_w, cols))
        else:
            xg = x.reshape(self.num, self.group, self.channels // self.group, -1)
            cols = torch.matmul(grouped_w.transpose(1, 2), xg)
            cols = cols.view(self.num, self.num_output, *self.geom.kernel, *self.in_spatial)
            col2im_nd(cols, self.geom, self.out_spatial, y)
        if bias is not None:
            y += bias.view(-1, *([1] * self.num_spatial_axes))

    def _backward_im2col(self, dy, x, weight, want_weight, want_bias, dx):
        grouped_w = weight.reshape(self.group, weight.shape[0] // self.group, -1)
        dw = db = None
        if not self.transposed:
            dyg = dy.reshape(self.num, self.group, self.num_output // self.group, -1)
            if want_weight:
                cols = self._columns(x, self.out_spatial)
                dw = torch.einsum("ngol,ngkl->gok", dyg, cols)
            if dx is not None:
                dcols = torch.matmul(grouped_w.transpose(1, 2), dyg)
                dcols = dcols.view(self.num, self.channels, *self.geom.kernel, *self.out_spatial)
                col2im_nd(dcols, self.geom, self.in_spatial, dx)
        else:
            cols = self._columns(dy, self.in_spatial)
            xg = x.reshape(self.num, self.group, self.channels // self.group, -1)
            if want_weight:
                dw = torch.einsum("ngcl,ngkl->gck", xg, cols)
            if dx is not None:
                dx.view(self.num, self.group, -1, cols.shape[-1]).copy_(
                    torch.matmul(grouped_w, cols))
        if want_bias:
            db = dy.sum(dim=[0] + list(range(2, dy.dim())))
        return dw, db


@register("Convolution")
class ConvolutionLayer(BaseConvolutionLayer):
    """Caffe type ``Convolution``; reads ``convolution_param`` (see ``BaseConvolutionLayer``).

    Bottom: (..., C, *in) with C on ``axis``. Top: (..., num_output, *out) where per spatial axis
    out = (in + 2 pad - extent) / stride + 1 (floor), extent = dilation (kernel - 1) + 1.
    Weights: (num_output, C / group, *kernel); bias: (num_output,).
    top[o] = bias[o] + sum over the input channels of o's group of weight (x) bottom.
    Backward: bottom diff (overwritten), weight and bias diffs (accumulated).
    """

    def compute_output_shape(self, in_spatial):
        return check_conv_output(self.check, in_spatial, self.geom)
