"""Crop: cut bottom 0 to the shape of bottom 1 (Caffe's CropLayer)."""

from __future__ import annotations

from caffe.layer import Layer, register


@register("Crop")
class CropLayer(Layer):
    """Caffe type ``Crop``; reads ``crop_param``: ``axis`` (first cropped axis, default 2) and
    ``offset`` (none: 0 everywhere; one value for every cropped axis; or one per axis from
    ``axis`` on).

    Bottom 0: the data; bottom 1: gives the sizes of axes ``axis`` and beyond. Top: bottom 0's
    shape with those sizes, top[i...] = bottom0[i + offset...]. Backward: bottom 0's diff is the
    top diff placed at the offsets, zero elsewhere; bottom 1 gets no gradient.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.crop_param
        input_dim = bottom[0].num_axes
        self.check(-input_dim <= p.axis < input_dim,
                   f"crop axis {p.axis} out of range for the {input_dim}-D bottom 0 shape "
                   f"{list(bottom[0].shape)}")
        self.start_axis = p.axis % input_dim
        self.offset_param = list(p.offset)
        if len(self.offset_param) > 1:
            self.check(self.start_axis + len(self.offset_param) == input_dim,
                       f"number of offset values specified must be equal to the number of "
                       f"dimensions following axis ({len(self.offset_param)} offsets, axis "
                       f"{self.start_axis}, {input_dim}-D bottom)")

    def reshape(self, bottom, top):
        data, like = bottom
        self.check(like.num_axes >= data.num_axes,
                   f"bottom 1 shape {list(like.shape)} must have at least as many axes as "
                   f"bottom 0 shape {list(data.shape)}")
        new_shape = list(data.shape)
        offsets = [0] * data.num_axes
        for i in range(self.start_axis, data.num_axes):
            if len(self.offset_param) == 1:
                offsets[i] = self.offset_param[0]
            elif self.offset_param:
                offsets[i] = self.offset_param[i - self.start_axis]
            new_shape[i] = like.shape[i]
            self.check(data.shape[i] - offsets[i] >= like.shape[i],
                       f"the crop for dimension {i} is out-of-bounds with size {like.shape[i]} "
                       f"and offset {offsets[i]} (bottom 0 has size {data.shape[i]})")
        self.window = tuple(slice(o, o + n) for o, n in zip(offsets, new_shape))
        top[0].reshape(new_shape)

    def forward(self, bottom, top):
        top[0].mutable_device_data().copy_(bottom[0].device_data()[self.window])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].mutable_device_diff()
        dx.zero_()
        dx[self.window].copy_(top[0].device_diff())
