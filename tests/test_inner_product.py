"""InnerProduct: golden cases, weight layout, gradients, errors."""

import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from layer_case import build_layer, gradient_check, make_layer, run_golden_case
from tolerance import matmul_atol

FILLERS = "weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'gaussian' std: 0.5 }"


def ip(params: str) -> str:
    return f"type: 'InnerProduct' inner_product_param {{ {params} {FILLERS} }}"


def setup_layer(proto, shape, dtype=torch.float64):
    return build_layer(proto, [np.random.default_rng(0).standard_normal(shape)], dtype=dtype)


@pytest.mark.parametrize("case", ["ip_basic", "ip_axis2", "ip_transpose"])
def test_golden(case):
    run_golden_case(case)


@pytest.mark.parametrize("params, shape, weight_shape, top_shape", [
    ("num_output: 4", (2, 3, 2, 2), (4, 12), (2, 4)),
    ("num_output: 4 transpose: true", (2, 3, 2, 2), (12, 4), (2, 4)),
    ("num_output: 4 axis: 2", (2, 3, 2, 5), (4, 10), (2, 3, 4)),
    ("num_output: 4 axis: -1", (2, 3, 5), (4, 5), (2, 3, 4)),
])
def test_shapes_and_values(params, shape, weight_shape, top_shape):
    layer, bottom, top = setup_layer(ip(params), shape)
    assert layer.blobs[0].shape == weight_shape
    assert layer.blobs[1].shape == (4,)
    layer.Forward(bottom, top)
    assert top[0].shape == top_shape
    w = layer.blobs[0].data
    w_nk = w.T if "transpose" in params else w
    k = w_nk.shape[1]
    expected = bottom[0].data.reshape(-1, k) @ w_nk.T + layer.blobs[1].data
    np.testing.assert_allclose(top[0].data.reshape(-1, 4), expected)


@pytest.mark.parametrize("params, shape", [
    ("num_output: 3", (2, 2, 2, 2)),
    ("num_output: 3 transpose: true", (3, 5)),
    ("num_output: 2 axis: 2", (2, 3, 4)),
    ("num_output: 3 bias_term: false", (2, 4)),
    ("num_output: 2 axis: 0", (2, 3)),
])
def test_gradient(params, shape):
    gradient_check(ip(params), [shape])


def test_parameter_diffs_accumulate():
    layer, bottom, top = setup_layer(ip("num_output: 3 transpose: true"), (2, 4))
    layer.Forward(bottom, top)
    top[0].diff[...] = 1.0
    for blob in layer.blobs:
        blob.diff[...] = 0.0
    layer.Backward(top, [True], bottom)
    first = [blob.diff.copy() for blob in layer.blobs]
    np.testing.assert_allclose(first[0], np.repeat(bottom[0].data.sum(0)[:, None], 3, axis=1))
    np.testing.assert_allclose(first[1], 2.0)
    layer.Backward(top, [True], bottom)
    for blob, once in zip(layer.blobs, first):
        np.testing.assert_allclose(blob.diff, 2 * once)


def test_float32():
    layer, bottom, top = setup_layer(ip("num_output: 3"), (4, 5), dtype=torch.float32)
    layer.Forward(bottom, top)
    x, w, b = bottom[0].data, layer.blobs[0].data, layer.blobs[1].data
    expected = x.astype(float) @ w.T.astype(float) + b
    # float32 sums of 5 products and the bias, against the float64 ones (tolerance.py).
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-5, atol=matmul_atol(x, w.T, b))


def test_errors():
    with pytest.raises(LayerError, match="num_output must be positive"):
        setup_layer(ip("num_output: 0"), (2, 3))
    layer, bottom, top = setup_layer(ip("num_output: 2"), (2, 3, 2))
    bottom[0].reshape((2, 5))
    with pytest.raises(LayerError, match="Input size incompatible with inner product"):
        layer.Forward(bottom, top)
    layer = make_layer(ip("num_output: 2"))
    layer.blobs = [Blob((3, 6), dtype=torch.float64), Blob((2,), dtype=torch.float64)]
    with pytest.raises(LayerError, match=r"Incorrect weight \(transpose: false\) shape: "
                                         r"expected shape \[2, 6\]"):
        layer.SetUp([Blob((2, 6), dtype=torch.float64)], [Blob(dtype=torch.float64)])
    with pytest.raises(LayerError, match="axis 3 out of range"):
        setup_layer(ip("num_output: 2 axis: 3"), (2, 3))


def test_legacy_4d_parameter_shapes_are_accepted():
    layer = make_layer(ip("num_output: 2"))
    layer.blobs = [Blob((1, 1, 2, 6), dtype=torch.float64), Blob((1, 1, 1, 2),
                                                                 dtype=torch.float64)]
    layer.blobs[0].data[...] = np.arange(12).reshape(1, 1, 2, 6)
    layer.SetUp([Blob((3, 6), dtype=torch.float64)], [Blob(dtype=torch.float64)])
    assert layer.blobs[0].shape == (2, 6) and layer.blobs[1].shape == (2,)
    np.testing.assert_array_equal(layer.blobs[0].data, np.arange(12).reshape(2, 6))
