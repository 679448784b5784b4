"""Scale: multiply by a (learned or second-bottom) factor broadcast along a run of axes."""

from __future__ import annotations

import torch

from caffe import filler
from caffe.blob import Blob
from caffe.layer import Layer, register
from caffe.layers.bias import broadcast_dims, new_blob, operand_shape, sum_to_operand
from caffe.proto import caffe_pb2


@register("Scale")
class ScaleLayer(Layer):
    """Caffe type ``Scale``; reads ``scale_param`` (``axis`` default 1, ``num_axes`` default 1
    with -1 meaning all remaining axes, ``filler`` default constant 1, ``bias_term`` default
    false, ``bias_filler`` default constant 0).

    Bottoms: x, and optionally the scale s (otherwise s is the learned blob ``blobs[0]``, shaped
    like x's axes [axis, axis + num_axes)). Top: y = x * s (+ b with bias_term, b the last
    blob, shaped like s) broadcast over the other axes; in place allowed (the bottom values are
    then kept aside for the gradient of s).
    dE/dx = dE/dy * s; dE/ds = sum(dE/dy * x) and dE/db = sum(dE/dy) over the broadcast axes,
    accumulated into learned blobs and written into a bottom's diff.
    """

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.scale_param
        self.bias_term = param.bias_term
        learned_scale = len(bottom) == 1
        self.temp = Blob(dtype=self.dtype)  # the bottom values, when computing in place
        self.product = Blob(dtype=self.dtype)
        expected = int(learned_scale) + int(self.bias_term)
        if self.blobs:
            self.check(len(self.blobs) == expected,
                       f"expects {expected} parameter blob(s) (scale: {learned_scale}, "
                       f"bias_term: {self.bias_term}), got {len(self.blobs)}")
            return
        if learned_scale:
            shape = operand_shape(self, bottom[0], param.axis, param.num_axes, "scale")
            self.blobs.append(new_blob(shape, self.dtype))
            if param.HasField("filler"):
                filler.fill(self.blobs[0], param.filler)
            else:
                # Unit scale: the layer starts as the identity.
                filler.fill(self.blobs[0], caffe_pb2.FillerParameter(type="constant", value=1))
        if self.bias_term:
            # The bias covers the same axes as the scale (all of bottom[1]'s with two bottoms).
            num_axes = bottom[1].num_axes if len(bottom) > 1 else param.num_axes
            shape = operand_shape(self, bottom[0], param.axis, num_axes, "bias")
            bias = new_blob(shape, self.dtype)
            filler.fill(bias, param.bias_filler)
            self.blobs.append(bias)

    def _scale(self, bottom) -> Blob:
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        axis = self.layer_param.scale_param.axis
        self.dims = broadcast_dims(self, bottom[0], self._scale(bottom), axis, "scale")
        if self.bias_term:
            self.bias_dims = broadcast_dims(self, bottom[0], self.blobs[-1], axis, "bias")
        if top[0] is bottom[0]:
            self.temp.reshape_like(bottom[0])
        else:
            top[0].reshape_like(bottom[0])
        self.product.reshape_like(bottom[0])

    def forward(self, bottom, top):
        x = bottom[0].device_data().view(self.dims)
        if top[0] is bottom[0]:
            self.temp.mutable_device_data().view(self.dims).copy_(x)
        scale = self._scale(bottom).device_data().view(1, -1, 1)
        out = top[0].mutable_device_data()
        torch.mul(x, scale, out=out.view(self.dims))
        if self.bias_term:
            out.view(self.bias_dims).add_(self.blobs[-1].device_data().view(1, -1, 1))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].device_diff()
        if self.bias_term and self.param_propagate_down[-1]:
            self.blobs[-1].mutable_device_diff().view(-1).add_(
                sum_to_operand(dy, self.bias_dims))
        two_bottoms = len(bottom) > 1
        scale = self._scale(bottom)
        if (two_bottoms and propagate_down[1]) or (not two_bottoms
                                                   and self.param_propagate_down[0]):
            x = (self.temp if top[0] is bottom[0] else bottom[0]).device_data()
            product = self.product.mutable_device_data()
            torch.mul(dy, x, out=product)
            grad = sum_to_operand(product, self.dims)
            if two_bottoms:
                scale.mutable_device_diff().view(-1).copy_(grad)
            else:
                scale.mutable_device_diff().view(-1).add_(grad)
        if propagate_down[0]:
            # In place, dx is dy: the product is elementwise, after every other read of dy.
            dx = bottom[0].mutable_device_diff().view(self.dims)
            torch.mul(dy.view(self.dims), scale.device_data().view(1, -1, 1), out=dx)
