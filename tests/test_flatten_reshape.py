"""Flatten and Reshape (caffe/layers/flatten.py, reshape.py)."""

import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from layer_case import gradient_check, make_layer, run_golden_case


@pytest.mark.parametrize("case", ["flatten", "reshape"])
def test_golden(case):
    run_golden_case(case)


def top_shape(param: str, shape) -> tuple:
    layer = make_layer(param)
    bottom, top = Blob(shape), Blob()
    layer.SetUp([bottom], [top])
    return top.shape


@pytest.mark.parametrize("param, shape, expected", [
    ("", (2, 3, 4, 5), (2, 60)),
    ("flatten_param { axis: 1 end_axis: 2 }", (2, 3, 4, 5), (2, 12, 5)),
    ("flatten_param { axis: -2 }", (2, 3, 4, 5), (2, 3, 20)),
    ("flatten_param { axis: 0 }", (2, 3, 4), (24,)),
    ("flatten_param { axis: 2 end_axis: 1 }", (2, 3, 4), (2, 3, 1, 4)),
])
def test_flatten_shapes(param, shape, expected):
    assert top_shape(f"type: 'Flatten' {param}", shape) == expected


@pytest.mark.parametrize("dims, extra, shape, expected", [
    ("dim: 0 dim: -1 dim: 2", "", (2, 3, 4), (2, 6, 2)),
    ("dim: -1", "", (2, 3, 4), (24,)),
    ("dim: 0 dim: 0 dim: 2 dim: 2", "", (2, 3, 4), (2, 3, 2, 2)),
    ("dim: 2 dim: 2", "axis: 1 num_axes: 1", (5, 4, 3), (5, 2, 2, 3)),
    ("dim: 2 dim: -1", "axis: 1", (5, 4, 3), (5, 2, 6)),
    ("dim: 2 dim: -1", "axis: -2", (5, 4, 6), (5, 4, 2, 3)),
    ("dim: 1", "axis: 1 num_axes: 0", (5, 4), (5, 1, 4)),
    ("dim: -1", "axis: 1 num_axes: 2", (5, 4, 3, 2), (5, 12, 2)),
    ("", "axis: 0 num_axes: 1", (1, 4, 3), (4, 3)),
])
def test_reshape_shapes(dims, extra, shape, expected):
    param = f"type: 'Reshape' reshape_param {{ shape {{ {dims} }} {extra} }}"
    assert top_shape(param, shape) == expected


@pytest.mark.parametrize("param", ["type: 'Flatten' flatten_param { axis: 1 end_axis: 2 }",
                                   "type: 'Reshape' reshape_param { shape { dim: 0 dim: -1 } }"])
def test_shares_data_and_diff(param):
    layer = make_layer(param)
    bottom, top = Blob((2, 3, 5), dtype=torch.float64), Blob(dtype=torch.float64)
    bottom.data[...] = np.arange(30).reshape(2, 3, 5)
    layer.SetUp([bottom], [top])
    layer.Forward([bottom], [top])
    np.testing.assert_array_equal(top.data.reshape(-1), np.arange(30))
    bottom.data[0, 0, 0] = -1
    assert top.data.reshape(-1)[0] == -1
    top.diff[...] = 3
    layer.Backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, 3)


@pytest.mark.parametrize("param, shape", [
    ("type: 'Flatten' flatten_param { axis: 1 end_axis: -2 }", (2, 3, 4, 5)),
    ("type: 'Reshape' reshape_param { shape { dim: 3 dim: -1 dim: 1 } }", (3, 5)),
])
def test_gradient(param, shape):
    gradient_check(param, [shape])


@pytest.mark.parametrize("param, shape, message", [
    ("type: 'Flatten' flatten_param { axis: 4 }", (2, 3), "axis 4 out of range for 2-D"),
    ("type: 'Flatten' flatten_param { axis: 2 end_axis: 0 }", (2, 3, 4),
     "end_axis 0 .* comes before axis 2"),
    ("type: 'Reshape' reshape_param { shape { dim: -1 dim: -1 } }", (2, 3),
     "multiple -1 dims"),
    ("type: 'Reshape' reshape_param { shape { dim: 5 dim: -1 } }", (2, 3),
     r"bottom count \(6, shape \[2, 3\]\) must be divisible by the product of the specified "
     r"dimensions \(5\)"),
    ("type: 'Reshape' reshape_param { shape { dim: 4 dim: 2 } }", (2, 3),
     r"output count must match input count: new shape \[4, 2\] has 8 elements, bottom shape "
     r"\[2, 3\] has 6"),
    ("type: 'Reshape' reshape_param { shape { dim: 0 dim: 0 dim: 0 } }", (2, 3),
     "contains a 0 at position 2, but there was no corresponding bottom axis"),
    ("type: 'Reshape' reshape_param { shape { dim: -2 } }", (2, 3), "dim below -1"),
    ("type: 'Reshape' reshape_param { shape { dim: 6 } axis: 3 }", (2, 3),
     "axis 3 out of range for 2-D input"),
    ("type: 'Reshape' reshape_param { shape { dim: 6 } axis: 1 num_axes: 2 }", (2, 3),
     "end_axis = axis \\+ num_axes = 1 \\+ 2 is out of range"),
    ("type: 'Reshape' reshape_param { shape { dim: 6 } num_axes: -2 }", (2, 3),
     "num_axes must be >= 0, or -1"),
])
def test_errors(param, shape, message):
    with pytest.raises(LayerError, match=message):
        top_shape(param, shape)


@pytest.mark.parametrize("param", ["type: 'Flatten'",
                                   "type: 'Reshape' reshape_param { shape { dim: -1 } }"])
def test_refuse_in_place(param):
    layer = make_layer(param)
    blob = Blob((2, 3))
    with pytest.raises(LayerError, match="does not allow in-place computation"):
        layer.SetUp([blob], [blob])
