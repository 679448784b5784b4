"""ArgMax and Softmax (caffe/layers/argmax.py, softmax.py)."""

import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from in_place_case import check_in_place
from layer_case import forward_top, gradient_check, make_layer, run_golden_case


@pytest.mark.parametrize("case", ["argmax", "argmax_axis", "softmax", "softmax_axis2"])
def test_golden(case):
    run_golden_case(case)


# --- ArgMax ------------------------------------------------------------------------------------
def caffe_rank(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest, larger index first among equal values (Caffe's pair sort)."""
    return np.array(sorted(range(len(row)), key=lambda j: (row[j], j), reverse=True)[:k])


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("out_max_val", [False, True])
def test_argmax_over_all_axes_layout(k, out_max_val):
    x = np.random.default_rng(0).integers(0, 4, size=(3, 2, 2, 2)).astype(float)  # many ties
    flag = str(out_max_val).lower()
    y = forward_top(f"type: 'ArgMax' argmax_param {{ top_k: {k} out_max_val: {flag} }}", x)
    assert y.shape == (3, 2 if out_max_val else 1, k, 1)
    for n in range(3):
        row = x[n].reshape(-1)
        idx = caffe_rank(row, k)
        np.testing.assert_array_equal(y[n, 0, :, 0], idx)
        if out_max_val:
            np.testing.assert_array_equal(y[n, 1, :, 0], row[idx])


def test_argmax_two_axis_bottom_gets_three_axes():
    y = forward_top("type: 'ArgMax'", np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]]))
    assert y.shape == (2, 1, 1)
    np.testing.assert_array_equal(y.reshape(-1), [1, 2])


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("out_max_val", [False, True])
def test_argmax_along_axis(axis, out_max_val):
    x = np.random.default_rng(1).integers(0, 3, size=(3, 4, 5)).astype(float)
    flag = str(out_max_val).lower()
    y = forward_top(f"type: 'ArgMax' argmax_param {{ axis: {axis} top_k: 2 "
                    f"out_max_val: {flag} }}", x)
    a = axis % 3
    moved = np.moveaxis(x, a, -1)
    idx = np.apply_along_axis(caffe_rank, -1, moved, 2)
    expected = np.take_along_axis(moved, idx, -1) if out_max_val else idx
    np.testing.assert_array_equal(y, np.moveaxis(expected, -1, a))


@pytest.mark.parametrize("param, shape, message", [
    ("argmax_param { top_k: 0 }", (2, 3), "top k must not be less than 1"),
    ("argmax_param { top_k: 7 }", (2, 3, 2), r"top_k \(7\) must be less than or equal to the "
                                             r"dimension of the flattened bottom blob per "
                                             r"instance \(6"),
    ("argmax_param { top_k: 4 axis: 1 }", (2, 3), r"top_k \(4\) .* dimension of the axis \(3"),
    ("argmax_param { axis: 2 }", (2, 3), "axis 2 out of range for 2-D"),
])
def test_argmax_errors(param, shape, message):
    with pytest.raises(LayerError, match=message):
        forward_top(f"type: 'ArgMax' {param}", np.zeros(shape))


def test_argmax_has_no_backward():
    layer = make_layer("type: 'ArgMax'")
    bottom, top = Blob((2, 3)), Blob()
    layer.SetUp([bottom], [top])
    with pytest.raises(LayerError, match="has no backward"):
        layer.Backward([top], [True], [bottom])


# --- Softmax -----------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_forward(axis):
    x = np.random.default_rng(2).normal(size=(2, 3, 5)) * 3
    y = forward_top(f"type: 'Softmax' softmax_param {{ axis: {axis} }}", x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=axis, keepdims=True), rtol=1e-12)


def test_softmax_is_stable_for_huge_inputs():
    x = np.array([[1000.0, 1001.0, -1000.0], [-5000.0, -5000.0, -5000.0]])
    y = forward_top("type: 'Softmax'", x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("axis, shape", [(1, (2, 3, 4)), (0, (3, 5)), (-1, (2, 3, 5)),
                                         (2, (2, 1, 3, 2))])
def test_softmax_gradient(axis, shape):
    gradient_check(f"type: 'Softmax' softmax_param {{ axis: {axis} }}", [shape])


def test_softmax_in_place_matches_separate_blobs():
    check_in_place("type: 'Softmax'", (2, 4, 3))


def test_softmax_axis_error():
    with pytest.raises(LayerError, match="Softmax layer 'L': axis 3 out of range for 3-D"):
        forward_top("type: 'Softmax' softmax_param { axis: 3 }", np.zeros((2, 3, 4)))


@pytest.mark.parametrize("shape", [(3, 5, 1, 1), (4, 6)])
def test_softmax_trailing_unit_axes(shape):
    # Only unit axes after the softmax axis: the layer runs torch's last-axis kernel on a 2-D
    # view, which must give the same numbers and gradient.
    x = np.random.default_rng(4).uniform(-3, 3, size=shape)
    y = forward_top("type: 'Softmax'", x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    gradient_check("type: 'Softmax'", [shape])


def test_softmax_follows_bottom_reshape():
    layer = make_layer("type: 'Softmax'")
    bottom, top = [Blob((2, 3, 1), dtype=torch.float64)], [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    rng = np.random.default_rng(5)
    for shape in [(2, 3, 1), (2, 3, 4), (5, 2)]:
        x = rng.uniform(-2, 2, size=shape)
        bottom[0].reshape(shape)
        bottom[0].data[...] = x
        layer.Forward(bottom, top)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        np.testing.assert_allclose(top[0].data, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
        dy = rng.uniform(-1, 1, size=shape)
        top[0].diff[...] = dy
        layer.Backward(top, [True], bottom)
        y = top[0].data
        expected = y * (dy - (dy * y).sum(axis=1, keepdims=True))
        np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-10, atol=1e-14)
