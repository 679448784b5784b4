"""Concat, Slice and Split (caffe/layers/concat.py, slice.py, split.py)."""

import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from layer_case import blobs_of, gradient_check, make_layer, run_golden_case


@pytest.mark.parametrize("case", ["concat_axis0", "concat_ch", "slice_even", "slice_points"])
def test_golden(case):
    run_golden_case(case)


def blobs(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return blobs_of([rng.normal(size=shape) for shape in shapes])


# --- Concat ------------------------------------------------------------------------------------
@pytest.mark.parametrize("param, shapes", [
    ("", [(2, 3, 5), (2, 1, 5), (2, 2, 5)]),
    ("concat_param { axis: 0 }", [(1, 3, 2), (3, 3, 2)]),
    ("concat_param { axis: -1 }", [(2, 3, 1), (2, 3, 4)]),
    ("concat_param { concat_dim: 2 }", [(2, 1, 3), (2, 1, 2)]),
])
def test_concat_gradient(param, shapes):
    gradient_check(f"type: 'Concat' {param}", shapes)


def test_concat_forward_matches_numpy():
    bottom = blobs((2, 3, 5), (2, 1, 5), (2, 2, 5))
    top = Blob(dtype=torch.float64)
    layer = make_layer("type: 'Concat'")
    layer.SetUp(bottom, [top])
    layer.Forward(bottom, [top])
    np.testing.assert_array_equal(top.data, np.concatenate([b.data for b in bottom], axis=1))


def test_concat_single_bottom_shares():
    (bottom,) = blobs((2, 3))
    top = Blob(dtype=torch.float64)
    layer = make_layer("type: 'Concat'")
    layer.SetUp([bottom], [top])
    layer.Forward([bottom], [top])
    np.testing.assert_array_equal(top.data, bottom.data)
    top.diff[...] = 7
    layer.Backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, 7)


@pytest.mark.parametrize("param, shapes, message", [
    ("concat_param { axis: 1 concat_dim: 1 }", [(2, 3), (2, 3)],
     "Either axis or concat_dim should be specified; not both"),
    ("", [(2, 3, 4), (2, 3, 5)], r"except at concat_axis 1: bottom\[0\] has shape \[2, 3, 4\], "
                                 r"bottom\[1\] has shape \[2, 3, 5\]"),
    ("", [(2, 3, 4), (2, 3)], r"same #axes: bottom\[0\] has shape \[2, 3, 4\], bottom\[1\]"),
    ("concat_param { axis: 3 }", [(2, 3, 4), (2, 3, 4)], "axis 3 out of range for 3-D"),
    ("concat_param { concat_dim: 5 }", [(2, 3), (2, 3)], "concat_dim 5 out of range"),
])
def test_concat_errors(param, shapes, message):
    layer = make_layer(f"type: 'Concat' {param}")
    with pytest.raises(LayerError, match=message):
        layer.SetUp(blobs(*shapes), [Blob()])


# --- Slice -------------------------------------------------------------------------------------
@pytest.mark.parametrize("param, shape, n_tops", [
    ("slice_param { axis: 1 slice_point: 1 slice_point: 4 }", (2, 7, 3), 3),
    ("slice_param { axis: 0 }", (6, 3), 3),
    ("slice_param { axis: -1 slice_point: 2 }", (2, 3, 5), 2),
    ("slice_param { slice_dim: 2 }", (1, 2, 4), 2),
])
def test_slice_gradient(param, shape, n_tops):
    gradient_check(f"type: 'Slice' {param}", [shape], n_tops=n_tops)


def test_slice_forward_matches_numpy():
    (bottom,) = blobs((2, 7, 3))
    top = [Blob(dtype=torch.float64) for _ in range(3)]
    layer = make_layer("type: 'Slice' slice_param { slice_point: 2 slice_point: 3 }")
    layer.SetUp([bottom], top)
    layer.Forward([bottom], top)
    for got, want in zip(top, np.split(bottom.data, [2, 3], axis=1)):
        np.testing.assert_array_equal(got.data, want)


def test_slice_single_top_shares():
    (bottom,) = blobs((4, 3))
    top = Blob(dtype=torch.float64)
    layer = make_layer("type: 'Slice'")
    layer.SetUp([bottom], [top])
    layer.Forward([bottom], [top])
    np.testing.assert_array_equal(top.data, bottom.data)


@pytest.mark.parametrize("param, shape, n_tops, message", [
    ("slice_param { axis: 1 slice_dim: 1 }", (2, 4), 2,
     "Either axis or slice_dim should be specified; not both"),
    ("slice_param { axis: 1 }", (2, 5), 2,
     r"Number of top blobs \(2\) should evenly divide input slice axis 1 of size 5"),
    ("slice_param { slice_point: 2 }", (2, 6), 3, r"1 slice_point\(s\) \[2\] need 2 tops, got 3"),
    ("slice_param { slice_point: 3 slice_point: 2 }", (2, 6), 3, "strictly increasing"),
    ("slice_param { slice_point: 6 }", (2, 6), 2, r"inside \(0, 6\)"),
    ("slice_param { slice_point: 9 }", (2, 6), 2, r"inside \(0, 6\)"),
    ("slice_param { slice_point: 0 }", (2, 6), 2, "strictly increasing"),
    ("slice_param { slice_point: 1 slice_point: 2 }", (2, 2), 3, "cannot cut axis 1 of size 2"),
    ("slice_param { axis: -4 }", (2, 6), 2, "axis -4 out of range"),
])
def test_slice_errors(param, shape, n_tops, message):
    layer = make_layer(f"name: 's' type: 'Slice' {param}")
    with pytest.raises(LayerError, match=f"Slice layer 's': .*{message}"):
        layer.SetUp(blobs(shape), [Blob() for _ in range(n_tops)])


# --- Split -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_tops", [1, 2, 3])
def test_split_gradient(n_tops):
    gradient_check("type: 'Split'", [(2, 3, 5)], n_tops=n_tops)


def test_split_shares_data_and_sums_diffs():
    (bottom,) = blobs((3, 4))
    top = [Blob(dtype=torch.float64) for _ in range(3)]
    layer = make_layer("type: 'Split'")
    layer.SetUp([bottom], top)
    layer.Forward([bottom], top)
    bottom.data[0, 0] = 42.0
    for blob in top:
        assert blob.data[0, 0] == 42.0
    for i, blob in enumerate(top):
        blob.diff[...] = i + 1
    layer.Backward(top, [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, 6.0)
    np.testing.assert_array_equal(top[0].diff, 1.0)


def test_split_refuses_in_place():
    (bottom,) = blobs((3, 4))
    layer = make_layer("type: 'Split'")
    with pytest.raises(LayerError, match="does not allow in-place computation"):
        layer.SetUp([bottom], [Blob(), bottom])
