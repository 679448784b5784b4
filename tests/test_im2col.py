"""Im2col: golden case, column layout, N-d path, gradients, errors."""

import numpy as np
import pytest

from caffe.errors import LayerError

from layer_case import forward_layer, gradient_check, run_golden_case


def im2col(params: str) -> str:
    return f"type: 'Im2col' convolution_param {{ {params} }}"


def test_golden():
    run_golden_case("im2col")


def test_column_layout():
    # Caffe's TestForward/TestRect: top[c * K + k, oh, ow] = padded input at the window tap.
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5))
    top = forward_layer(im2col("kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 1 pad_w: 0 "
                               "dilation: 1"), [x])[2]
    assert top[0].shape == (2, 3 * 6, 3, 2)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    for c, i, j, oh, ow in np.ndindex(3, 3, 2, 3, 2):
        np.testing.assert_equal(top[0].data[:, c * 6 + i * 2 + j, oh, ow],
                                padded[:, c, oh * 2 + i, ow * 2 + j])


@pytest.mark.parametrize("params, shape", [
    ("kernel_size: 3 stride: 2 pad: 1 dilation: 2", (1, 2, 6, 7)),
    ("kernel_size: 2 kernel_size: 3 stride: 1 stride: 2 pad: 1", (2, 2, 4, 5)),
    ("kernel_size: 2 stride: 1 pad: 1 dilation: 2", (1, 3, 5)),             # 1-D
    ("kernel_size: 2 stride: 2 pad: 1", (1, 2, 3, 3, 4)),                   # 3-D
    ("kernel_size: 2 axis: 2", (2, 2, 2, 3, 4)),
])
def test_force_nd_matches_2d_and_torch(params, shape):
    x = np.random.default_rng(1).standard_normal(shape)
    tops, diffs = [], []
    for force in ("false", "true"):
        layer, bottom, top, _ = forward_layer(im2col(f"{params} force_nd_im2col: {force}"), [x])
        top[0].diff[...] = np.cos(np.arange(top[0].count)).reshape(top[0].shape)
        layer.Backward(top, [True], bottom)
        tops.append(top[0].data.copy())
        diffs.append(bottom[0].diff.copy())
    np.testing.assert_allclose(tops[0], tops[1])
    np.testing.assert_allclose(diffs[0], diffs[1])


@pytest.mark.parametrize("params, shape", [
    ("kernel_size: 3 stride: 2", (2, 3, 6, 5)),
    ("kernel_size: 3 stride: 2 dilation: 2 pad: 1", (1, 2, 6, 7)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1", (1, 2, 5, 4)),
    ("kernel_size: 3 stride: 2 pad: 1 force_nd_im2col: true", (1, 2, 5, 4)),
    ("kernel_size: 2 stride: 1 pad: 1", (1, 2, 2, 3, 2)),
])
def test_gradient(params, shape):
    gradient_check(im2col(params), [shape])


@pytest.mark.parametrize("params, shape, message", [
    ("kernel_size: 4", (1, 1, 3, 3), "larger than the padded input"),
    ("kernel_size: 2 axis: 3", (1, 1, 3, 3), "at least one spatial axis"),
    ("kernel_h: 2 kernel_w: 2", (1, 1, 3, 3, 3), "kernel_h & kernel_w can only be used for 2D"),
])
def test_errors(params, shape, message):
    with pytest.raises(LayerError, match=message):
        forward_layer(im2col(params), [np.zeros(shape)])
