"""InnerProduct: fully connected layer (Caffe's InnerProductLayer)."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._conv_util import setup_weight_and_bias
from caffe.layers._helpers import canonical_axis


@register("InnerProduct")
class InnerProductLayer(Layer):
    """Caffe type ``InnerProduct``; reads ``inner_product_param``: ``num_output`` (N),
    ``bias_term``, ``axis``, ``transpose``, ``weight_filler``, ``bias_filler``.

    Bottom: (d_0, ..., d_{axis-1}, ...) flattened from ``axis`` on to (M, K). Top:
    (d_0, ..., d_{axis-1}, N). Weights: (N, K), or (K, N) with ``transpose``; bias: (N,).
    top = bottom W^T + b (bottom W + b when transposed). Backward: bottom diff = top diff W
    (overwritten); weight diff += top_diff^T bottom (bottom^T top_diff when transposed);
    bias diff += column sums of the top diff.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        self.num_output = p.num_output
        self.check(self.num_output > 0, f"num_output must be positive, got {self.num_output}")
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        self.axis = canonical_axis(self, bottom[0], p.axis)
        self.K = bottom[0].count_range(self.axis)
        weight_shape = [self.K, self.num_output] if self.transpose else \
            [self.num_output, self.K]
        bias_shape = [self.num_output] if self.bias_term else None
        setup_weight_and_bias(self, weight_shape, bias_shape, p,
                              f"weight (transpose: {str(self.transpose).lower()})")

    def reshape(self, bottom, top):
        axis = canonical_axis(self, bottom[0], self.layer_param.inner_product_param.axis)
        k = bottom[0].count_range(axis)
        self.check(k == self.K,
                   f"Input size incompatible with inner product parameters: bottom shape "
                   f"{list(bottom[0].shape)} flattens to {k} values per sample from axis {axis},"
                   f" the weights expect {self.K}")
        self.M = bottom[0].count_range(0, axis)
        top[0].reshape(list(bottom[0].shape[:axis]) + [self.num_output])

    def _weight_nk(self, t: torch.Tensor) -> torch.Tensor:
        """The weights as an (N, K) matrix (a transposed view when stored (K, N))."""
        return t.t() if self.transpose else t

    def forward(self, bottom, top):
        x = bottom[0].device_data().view(self.M, self.K)
        y = top[0].mutable_device_data().view(self.M, self.num_output)
        weight_kn = self._weight_nk(self.blobs[0].device_data()).t()
        if self.bias_term:
            torch.addmm(self.blobs[1].device_data().view(-1), x, weight_kn, out=y)
        else:
            torch.mm(x, weight_kn, out=y)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].device_diff().view(self.M, self.num_output)
        if self.param_propagate_down[0]:
            x = bottom[0].device_data().view(self.M, self.K)
            dw = self.blobs[0].mutable_device_diff()
            # Accumulate into the stored layout: (N, K) += dy^T x, or (K, N) += x^T dy.
            if self.transpose:
                dw.addmm_(x.t(), dy)
            else:
                dw.addmm_(dy.t(), x)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].mutable_device_diff().view(-1).add_(dy.sum(0))
        if propagate_down[0]:
            weight_nk = self._weight_nk(self.blobs[0].device_data())
            torch.mm(dy, weight_nk, out=bottom[0].mutable_device_diff().view(self.M, self.K))
