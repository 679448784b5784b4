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
        self._bottom_shape: tuple[int, ...] | None = None
        self._view_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if shape != self._bottom_shape:  # the geometry is worked out once per bottom shape
            axis = canonical_axis(self, bottom[0], self.layer_param.inner_product_param.axis)
            k = bottom[0].count_range(axis)
            self.check(k == self.K,
                       f"Input size incompatible with inner product parameters: bottom shape "
                       f"{list(shape)} flattens to {k} values per sample from axis {axis}, "
                       f"the weights expect {self.K}")
            self.M = bottom[0].count_range(0, axis)
            self._top_shape = list(shape[:axis]) + [self.num_output]
            # The (M, K) and (M, N) matrix shapes; None where the blob already has that shape.
            self._x_matrix = None if shape == (self.M, self.K) else (self.M, self.K)
            self._y_matrix = None if len(self._top_shape) == 2 else (self.M, self.num_output)
            self._bottom_shape = shape
        top[0].reshape(self._top_shape)

    # Views of the blobs' tensors (matrix shapes, transposes), made once per tensor: a blob
    # hands out the same view object until its storage or shape changes, so identity tells.
    def _cached(self, key: str, tensor: torch.Tensor, make) -> torch.Tensor:
        entry = self._view_cache.get(key)
        if entry is not None and entry[0] is tensor:
            return entry[1]
        view = make(tensor)
        self._view_cache[key] = (tensor, view)
        return view

    def _matrix(self, key: str, tensor: torch.Tensor, shape) -> torch.Tensor:
        if shape is None:
            return tensor
        return self._cached(key, tensor, lambda t: t.view(shape))

    def _weight_nk(self, t: torch.Tensor) -> torch.Tensor:
        """The weights as an (N, K) matrix (a transposed view when stored (K, N))."""
        return self._cached("w_nk", t, torch.Tensor.t) if self.transpose else t

    def _weight_kn(self, t: torch.Tensor) -> torch.Tensor:
        """The weights as a (K, N) matrix."""
        return t if self.transpose else self._cached("w_kn", t, torch.Tensor.t)

    def forward(self, bottom, top):
        x = self._matrix("x", bottom[0].device_data(), self._x_matrix)
        y = self._matrix("y", top[0].mutable_device_data(), self._y_matrix)
        weight_kn = self._weight_kn(self.blobs[0].device_data())
        if self.bias_term:
            bias = self.blobs[1].device_data()
            torch.addmm(bias if bias.dim() == 1 else bias.view(-1), x, weight_kn, out=y)
        else:
            torch.mm(x, weight_kn, out=y)

    def backward(self, top, propagate_down, bottom):
        dy = self._matrix("dy", top[0].device_diff(), self._y_matrix)
        if self.param_propagate_down[0]:
            x = self._matrix("x", bottom[0].device_data(), self._x_matrix)
            dw = self.blobs[0].mutable_device_diff()
            # Accumulate into the stored layout: (N, K) += dy^T x, or (K, N) += x^T dy.
            if self.transpose:
                dw.addmm_(self._cached("x_t", x, torch.Tensor.t), dy)
            else:
                dw.addmm_(self._cached("dy_t", dy, torch.Tensor.t), x)
        if self.bias_term and self.param_propagate_down[1]:
            bias_diff = self.blobs[1].mutable_device_diff()
            (bias_diff if bias_diff.dim() == 1 else bias_diff.view(-1)).add_(dy.sum(0))
        if propagate_down[0]:
            weight_nk = self._weight_nk(self.blobs[0].device_data())
            dx = self._matrix("dx", bottom[0].mutable_device_diff(), self._x_matrix)
            torch.mm(dy, weight_nk, out=dx)
