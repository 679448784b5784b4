"""Flatten: merge a range of axes into one, without copying."""

from __future__ import annotations

from caffe.layer import Layer, register
from caffe.layers._helpers import canonical_axis


@register("Flatten")
class FlattenLayer(Layer):
    """Flatten, reads ``flatten_param.axis`` (default 1) and ``flatten_param.end_axis``
    (default -1, inclusive; both may be negative).

    (d_0, ..., d_n) -> (d_0, ..., d_{axis-1}, d_axis * ... * d_end, d_{end+1}, ..., d_n); e.g.
    (N, C, H, W) -> (N, C*H*W) by default. The top shares the bottom's data and diff, so
    forward and backward move nothing. Not in place, as in Caffe.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        self.check(top[0] is not bottom[0], "does not allow in-place computation "
                   "(top and bottom are the same blob)")
        param = self.layer_param.flatten_param
        start = canonical_axis(self, bottom[0], int(param.axis), "axis")
        end = canonical_axis(self, bottom[0], int(param.end_axis), "end_axis")
        shape = list(bottom[0].shape)
        # end = start - 1 is allowed, as in Caffe: it inserts an axis of size 1.
        self.check(start <= end + 1, f"end_axis {param.end_axis} (axis {end}) comes before "
                   f"axis {param.axis} (axis {start}) for bottom shape {shape}")
        flat = 1
        for d in shape[start:end + 1]:
            flat *= d
        top[0].reshape(shape[:start] + [flat] + shape[end + 1:])
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass
