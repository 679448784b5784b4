"""Crop: golden case, offsets per axis, gradients, errors."""

import numpy as np
import pytest

from caffe.errors import LayerError

from layer_case import build_layer, gradient_check, run_golden_case


def crop(params: str = "") -> str:
    return f"type: 'Crop' crop_param {{ {params} }}"


def setup_layer(proto, data_shape, like_shape):
    data = np.arange(np.prod(data_shape, dtype=int)).reshape(data_shape)
    return build_layer(proto, [data, np.zeros(like_shape)])


def test_golden():
    run_golden_case("crop")


@pytest.mark.parametrize("params, data_shape, like_shape, window", [
    ("", (2, 3, 6, 7), (1, 1, 3, 4), np.s_[:, :, 0:3, 0:4]),            # default axis 2
    ("axis: 0 offset: 1", (3, 4, 5, 6), (2, 2, 3, 4), np.s_[1:3, 1:3, 1:4, 1:5]),
    ("axis: 1 offset: 0 offset: 1 offset: 2", (2, 3, 5, 6), (9, 2, 3, 4),
     np.s_[:, 0:2, 1:4, 2:6]),
    ("axis: -2 offset: 2 offset: 1", (2, 3, 5, 6), (1, 1, 2, 3), np.s_[:, :, 2:4, 1:4]),
    ("axis: 2 offset: 1", (2, 2, 4, 3, 5), (1, 1, 2, 2, 3), np.s_[:, :, 1:3, 1:3, 1:4]),  # 5-D
])
def test_forward_backward(params, data_shape, like_shape, window):
    layer, bottom, top = setup_layer(crop(params), data_shape, like_shape)
    layer.Forward(bottom, top)
    expected = bottom[0].data[window]
    assert top[0].shape == expected.shape
    np.testing.assert_array_equal(top[0].data, expected)
    bottom[0].diff[...] = np.nan
    bottom[1].diff[...] = 7.0
    top[0].diff[...] = 1.0 + np.arange(top[0].count).reshape(top[0].shape)
    layer.Backward(top, [True, True], bottom)
    expected_diff = np.zeros(data_shape)
    expected_diff[window] = top[0].diff
    np.testing.assert_array_equal(bottom[0].diff, expected_diff)
    np.testing.assert_array_equal(bottom[1].diff, 7.0)  # the shape bottom gets no gradient


def test_gradient():
    gradient_check(crop("axis: 1 offset: 1 offset: 0 offset: 2"), [(2, 3, 4, 5), (2, 2, 3, 2)],
                   check_bottom=0)


@pytest.mark.parametrize("params, data_shape, like_shape, message", [
    ("axis: 2 offset: 3", (1, 1, 5, 5), (1, 1, 3, 3),
     "crop for dimension 2 is out-of-bounds with size 3 and offset 3"),
    ("axis: 1 offset: 1 offset: 1", (1, 2, 5, 5), (1, 1, 3, 3),
     "number of offset values specified must be equal to the number of dimensions"),
    ("axis: 4", (1, 2, 5, 5), (1, 1, 3, 3), "crop axis 4 out of range"),
    ("axis: 2", (1, 2, 5, 5), (1, 1, 3), "must have at least as many axes"),
])
def test_errors(params, data_shape, like_shape, message):
    with pytest.raises(LayerError, match=message):
        setup_layer(crop(params), data_shape, like_shape)
