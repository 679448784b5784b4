"""Slice: cut one bottom into several tops along one axis."""

from __future__ import annotations

from caffe.layer import Layer, register
from caffe.layers._helpers import axis_or_legacy


@register("Slice")
class SliceLayer(Layer):
    """Slice, reads ``slice_param.axis`` (default 1; may be negative) or the legacy
    ``slice_param.slice_dim`` (not both), and ``slice_param.slice_point``.

    With K tops, either K - 1 strictly increasing slice points inside (0, size) give the cut
    positions along the axis, or, with none, the axis is split into K equal parts:
    (n, 6, ...) with points 1, 4 -> (n, 1, ...), (n, 3, ...), (n, 2, ...). Backward copies
    each top diff back into its place. With one top the top shares the bottom's data and diff.
    """

    exact_num_bottom = 1
    min_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.slice_param
        self.check(not (param.HasField("axis") and param.HasField("slice_dim")),
                   "Either axis or slice_dim should be specified; not both.")
        self.slice_points = [int(p) for p in param.slice_point]

    def reshape(self, bottom, top):
        param = self.layer_param.slice_param
        self.axis = axis_or_legacy(self, bottom[0], param, "axis", "slice_dim")
        size = bottom[0].shape[self.axis]
        num_top = len(top)
        if self.slice_points:
            points = self.slice_points
            self.check(len(points) == num_top - 1,
                       f"{len(points)} slice_point(s) {points} need {len(points) + 1} tops, "
                       f"got {num_top}")
            self.check(num_top <= size, f"cannot cut axis {self.axis} of size {size} into "
                       f"{num_top} parts (bottom shape {list(bottom[0].shape)})")
            bounds = [0] + points + [size]
            for prev, point in zip(bounds, bounds[1:]):
                self.check(point > prev,
                           f"slice points {points} must be strictly increasing and lie inside "
                           f"(0, {size}), the size of axis {self.axis} of bottom shape "
                           f"{list(bottom[0].shape)}")
            sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        else:
            self.check(size % num_top == 0,
                       f"Number of top blobs ({num_top}) should evenly divide input slice axis "
                       f"{self.axis} of size {size} (bottom shape {list(bottom[0].shape)})")
            sizes = [size // num_top] * num_top
        self.sizes = sizes
        shape = list(bottom[0].shape)
        for blob, part in zip(top, sizes):
            shape[self.axis] = part
            blob.reshape(shape)
        if num_top == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(top) == 1:
            return
        x = bottom[0].device_data()
        offset = 0
        for blob, part in zip(top, self.sizes):
            blob.mutable_device_data().copy_(x.narrow(self.axis, offset, part))
            offset += part

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0] or len(top) == 1:
            return
        dx = bottom[0].mutable_device_diff()
        offset = 0
        for blob, part in zip(top, self.sizes):
            dx.narrow(self.axis, offset, part).copy_(blob.device_diff())
            offset += part
