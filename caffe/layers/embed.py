"""Embed: look up rows of a learned table by integer index (a one-hot InnerProduct)."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._conv_util import new_weight_and_bias
from caffe.layers._helpers import integer_indices


@register("Embed")
class EmbedLayer(Layer):
    """Embed, reads ``embed_param``: ``num_output`` N and ``input_dim`` K (both > 0),
    ``bias_term`` (default true), ``weight_filler`` and ``bias_filler``.

    Bottom: any shape, holding integer indices in [0, K) stored as floats. Top: the bottom's
    shape + (N,). Parameters: weight (K, N) (InnerProduct's, transposed) and bias (N,).
    y[..., :] = W[x, :] + b. No gradient reaches the indices; dE/dW[k] += sum of dE/dy over the
    positions holding index k, dE/db += sum of dE/dy over all positions.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.embed_param
        self.num_output = int(param.num_output)
        self.check(self.num_output > 0, "num_output must be positive (embed_param.num_output)")
        self.input_dim = int(param.input_dim)
        self.check(self.input_dim > 0, "input_dim must be positive (embed_param.input_dim)")
        self.bias_term = bool(param.bias_term)
        if not self.blobs:
            self.blobs = new_weight_and_bias([self.input_dim, self.num_output],
                                             [self.num_output] if self.bias_term else None,
                                             param, self.dtype)
        expected = [[self.input_dim, self.num_output]] + ([[self.num_output]]
                                                          if self.bias_term else [])
        self.check(len(self.blobs) == len(expected),
                   f"expected {len(expected)} parameter blob(s) (bias_term "
                   f"{self.bias_term}), got {len(self.blobs)}")
        for blob, shape in zip(self.blobs, expected):
            self.check(list(blob.shape) == shape, f"parameter blob shape {list(blob.shape)} "
                       f"does not match the expected {shape} (input_dim {self.input_dim}, "
                       f"num_output {self.num_output})")

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def reshape(self, bottom, top):
        top[0].reshape(list(bottom[0].shape) + [self.num_output])

    def forward(self, bottom, top):
        index = integer_indices(self, bottom[0].device_data().reshape(-1), self.input_dim,
                                "Embed indices")
        y = top[0].mutable_device_data().view(-1, self.num_output)
        torch.index_select(self.blobs[0].device_data(), 0, index, out=y)
        if self.bias_term:
            y.add_(self.blobs[1].device_data())

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[0], "Can't backpropagate to EmbedLayer input (indices)")
        dy = top[0].device_diff().reshape(-1, self.num_output)
        if self.param_propagate_down[0]:
            index = integer_indices(self, bottom[0].device_data().reshape(-1), self.input_dim,
                                    "Embed indices")
            self.blobs[0].mutable_device_diff().index_add_(0, index, dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].mutable_device_diff().add_(dy.sum(dim=0))
