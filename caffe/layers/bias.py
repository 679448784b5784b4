"""Bias: add a (learned or second-bottom) bias broadcast along a run of axes of bottom[0]."""

from __future__ import annotations

import torch

from caffe import filler
from caffe.blob import Blob
from caffe.errors import CaffeError
from caffe.layer import Layer, register


def canonical_axis(layer: Layer, blob: Blob, axis: int, what: str) -> int:
    """``blob.canonical_axis_index(axis)`` with the failure reported as the layer's error."""
    try:
        return blob.canonical_axis_index(axis)
    except CaffeError as err:
        layer.check(False, f"{what}: {err}")
        raise


def operand_shape(layer: Layer, bottom0: Blob, axis: int, num_axes: int, what: str) -> list[int]:
    """The shape of a learned operand that covers bottom[0]'s axes [axis, axis + num_axes)
    (to the end when num_axes is -1), with Caffe's checks."""
    axis = canonical_axis(layer, bottom0, axis, f"{what}_param.axis")
    layer.check(num_axes >= -1, f"num_axes must be non-negative, or -1 to extend to the end of "
                                f"bottom[0] (got {num_axes})")
    if num_axes >= 0:
        layer.check(bottom0.num_axes >= axis + num_axes,
                    f"{what} blob's shape extends past bottom[0]'s shape when applied starting "
                    f"with bottom[0] axis = {axis} (num_axes {num_axes}, bottom[0] shape "
                    f"{list(bottom0.shape)})")
        return list(bottom0.shape[axis:axis + num_axes])
    return list(bottom0.shape[axis:])


def broadcast_dims(layer: Layer, bottom0: Blob, operand: Blob, axis: int,
                   what: str) -> tuple[int, int, int]:
    """(outer, dim, inner) such that bottom[0] viewed as (outer, dim, inner) lines up with the
    operand viewed as (1, dim, 1). A scalar operand (0 axes) ignores ``axis``."""
    axis = 0 if operand.num_axes == 0 else canonical_axis(layer, bottom0, axis,
                                                          f"{what}_param.axis")
    end = axis + operand.num_axes
    layer.check(bottom0.num_axes >= end and list(bottom0.shape[axis:end]) == list(operand.shape),
                f"{what} shape {list(operand.shape)} does not match bottom[0] shape "
                f"{list(bottom0.shape)} at axes {axis}..{end - 1} (axis = {axis}): the {what} "
                f"must equal bottom[0]'s dimensions starting at that axis")
    return bottom0.count_range(0, axis), operand.count, bottom0.count_range(end)


def new_blob(shape: list[int], dtype: torch.dtype) -> Blob:
    """A blob of ``shape``; reshaped explicitly so that a 0-axis shape gives a scalar."""
    blob = Blob(dtype=dtype)
    blob.reshape(shape)
    return blob


def sum_to_operand(values: torch.Tensor, dims: tuple[int, int, int]) -> torch.Tensor:
    """Sum ``values`` (laid out as bottom[0]) over the outer and inner axes: shape (dim,)."""
    return values.reshape(dims).sum(dim=(0, 2))


@register("Bias")
class BiasLayer(Layer):
    """Caffe type ``Bias``; reads ``bias_param`` (``axis`` default 1, ``num_axes`` default 1 with
    -1 meaning all remaining axes, ``filler`` default constant 0).

    Bottoms: x, and optionally the bias b (otherwise b is the learned blob, shaped like x's axes
    [axis, axis + num_axes)). Top: y = x + b broadcast over the other axes (in place allowed).
    dE/dx = dE/dy; dE/db = dE/dy summed over the broadcast axes (accumulated for the learned
    blob, written for a bottom).
    """

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.bias_param
        if len(bottom) == 1 and not self.blobs:
            shape = operand_shape(self, bottom[0], param.axis, param.num_axes, "bias")
            self.blobs = [new_blob(shape, self.dtype)]
            filler.fill(self.blobs[0], param.filler)

    def reshape(self, bottom, top):
        bias = bottom[1] if len(bottom) > 1 else self.blobs[0]
        self.dims = broadcast_dims(self, bottom[0], bias, self.layer_param.bias_param.axis,
                                   "bias")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def forward(self, bottom, top):
        bias = (bottom[1] if len(bottom) > 1 else self.blobs[0]).device_data()
        out = top[0].mutable_device_data().view(self.dims)
        torch.add(bottom[0].device_data().view(self.dims), bias.view(1, -1, 1), out=out)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].device_diff()
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].mutable_device_diff().copy_(dy)
        if len(bottom) > 1:
            if propagate_down[1]:
                bottom[1].mutable_device_diff().view(-1).copy_(sum_to_operand(dy, self.dims))
        elif self.param_propagate_down[0]:
            self.blobs[0].mutable_device_diff().view(-1).add_(sum_to_operand(dy, self.dims))
