"""Concat: join several bottoms along one axis."""

from __future__ import annotations

from caffe.layer import Layer, register
from caffe.layers._helpers import axis_or_legacy


@register("Concat")
class ConcatLayer(Layer):
    """Concat, reads ``concat_param.axis`` (default 1; may be negative) or the legacy
    ``concat_param.concat_dim`` (not both).

    Bottoms agree in every dimension but the concat axis; the top's size along it is their sum:
    (n_1, c_1, ...), (n_1, c_2, ...) -> (n_1, c_1 + c_2, ...) for axis 1. Backward hands each
    bottom its slice of the top diff. With one bottom the top shares its data and diff.
    """

    min_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.concat_param
        self.check(not (param.HasField("axis") and param.HasField("concat_dim")),
                   "Either axis or concat_dim should be specified; not both.")

    def reshape(self, bottom, top):
        param = self.layer_param.concat_param
        self.axis = axis_or_legacy(self, bottom[0], param, "axis", "concat_dim")
        top_shape = list(bottom[0].shape)
        for i, blob in enumerate(bottom[1:], start=1):
            self.check(blob.num_axes == bottom[0].num_axes,
                       f"All inputs must have the same #axes: bottom[0] has shape "
                       f"{list(bottom[0].shape)}, bottom[{i}] has shape {list(blob.shape)}")
            for j, (a, b) in enumerate(zip(bottom[0].shape, blob.shape)):
                self.check(j == self.axis or a == b,
                           f"All inputs must have the same shape, except at concat_axis "
                           f"{self.axis}: bottom[0] has shape {list(bottom[0].shape)}, "
                           f"bottom[{i}] has shape {list(blob.shape)}")
            top_shape[self.axis] += blob.shape[self.axis]
        top[0].reshape(top_shape)
        if len(bottom) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(bottom) == 1:
            return
        y = top[0].mutable_device_data()
        offset = 0
        for blob in bottom:
            size = blob.shape[self.axis]
            y.narrow(self.axis, offset, size).copy_(blob.device_data())
            offset += size

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        dy = top[0].device_diff()
        offset = 0
        for blob, down in zip(bottom, propagate_down):
            size = blob.shape[self.axis]
            if down:
                blob.mutable_device_diff().copy_(dy.narrow(self.axis, offset, size))
            offset += size
