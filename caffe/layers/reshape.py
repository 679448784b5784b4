"""Reshape: give the bottom's values a new shape, without copying."""

from __future__ import annotations

from caffe.layer import Layer, register


@register("Reshape")
class ReshapeLayer(Layer):
    """Reshape, reads ``reshape_param``: ``shape`` (dims; 0 copies the bottom's dim at that
    position, -1 is inferred from the count, at most once), ``axis`` (default 0) and
    ``num_axes`` (default -1: all), which choose the range of bottom axes the new dims replace.

    E.g. bottom (2, 3, 4) with shape { dim: 0 dim: -1 dim: 2 } gives (2, 6, 2). The top shares
    the bottom's data and diff, so forward and backward move nothing. Not in place, as in Caffe.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.check(top[0] is not bottom[0], "does not allow in-place computation "
                   "(top and bottom are the same blob)")
        dims = [int(d) for d in self.layer_param.reshape_param.shape.dim]
        self.new_dims = dims
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        self.check(len(inferred) <= 1, f"new shape {dims} contains multiple -1 dims; at most a "
                   "single (1) value of -1 may be specified")
        self.inferred_axis = inferred[0] if inferred else -1
        self.check(all(d >= -1 for d in dims),
                   f"new shape {dims} has a dim below -1 (dims must be >= 0, or -1 to infer)")
        self.constant_count = 1
        for d in dims:
            if d > 0:
                self.constant_count *= d

    def reshape(self, bottom, top):
        param = self.layer_param.reshape_param
        shape = list(bottom[0].shape)
        n = len(shape)
        axis = int(param.axis)
        start = axis if axis >= 0 else n + axis + 1
        self.check(0 <= start <= n, f"axis {axis} out of range for {n}-D input blob with "
                   f"shape {shape}")
        num_axes = int(param.num_axes)
        self.check(num_axes >= -1, f"num_axes must be >= 0, or -1 for all; got {num_axes}")
        end = n if num_axes == -1 else start + num_axes
        self.check(end <= n, f"end_axis = axis + num_axes = {start} + {num_axes} is out of "
                   f"range for {n}-D input blob with shape {shape}")
        top_shape = shape[:start] + list(self.new_dims) + shape[end:]
        for i in self.copy_axes:
            self.check(start + i < n, f"new shape {self.new_dims} contains a 0 at position {i}, "
                       f"but there was no corresponding bottom axis to copy (bottom shape "
                       f"{shape}, axis {axis})")
            top_shape[start + i] = shape[start + i]
        count = bottom[0].count
        if self.inferred_axis >= 0:
            explicit = self.constant_count
            for d in shape[:start] + shape[end:]:
                explicit *= d
            for i in self.copy_axes:
                explicit *= top_shape[start + i]
            self.check(explicit != 0 and count % explicit == 0,
                       f"bottom count ({count}, shape {shape}) must be divisible by the product "
                       f"of the specified dimensions ({explicit}) of new shape {self.new_dims}")
            top_shape[start + self.inferred_axis] = count // explicit
        top_count = 1
        for d in top_shape:
            top_count *= d
        self.check(top_count == count, f"output count must match input count: new shape "
                   f"{top_shape} has {top_count} elements, bottom shape {shape} has {count}")
        top[0].reshape(top_shape)
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass
