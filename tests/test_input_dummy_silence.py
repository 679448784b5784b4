"""Input, DummyData and Silence (caffe/layers/input.py, dummy_data.py, silence.py)."""

import numpy as np
import pytest
import torch

import caffe
from caffe.blob import Blob
from caffe.errors import LayerError

from layer_case import build_layer, make_layer


def setup(param: str, n_tops: int, phase: str = "TRAIN"):
    layer, _, top = build_layer(param, [], n_tops, phase)
    return layer, top


# --- Input -------------------------------------------------------------------------------------
def test_input_one_shape_for_all_tops():
    _, top = setup("type: 'Input' input_param { shape { dim: 2 dim: 3 } }", 2)
    assert [t.shape for t in top] == [(2, 3), (2, 3)]


def test_input_shape_per_top_and_forward_keeps_values():
    layer, top = setup("type: 'Input' input_param { shape { dim: 4 } shape { dim: 1 dim: 2 } }",
                       2)
    assert [t.shape for t in top] == [(4,), (1, 2)]
    top[0].data[...] = [1, 2, 3, 4]
    layer.Forward([], top)
    np.testing.assert_array_equal(top[0].data, [1, 2, 3, 4])


def test_input_without_shape_leaves_tops_alone():
    _, top = setup("type: 'Input'", 1)
    assert top[0].count == 0


@pytest.mark.parametrize("param, n_tops, message", [
    ("input_param { shape { dim: 1 } shape { dim: 2 } }", 3,
     "Must specify 'shape' once, once per top blob, or not at all: 3 tops vs. 2 shapes"),
    ("input_param { shape { dim: 2 dim: -3 } }", 1, r"negative dimension: \[2, -3\]"),
])
def test_input_errors(param, n_tops, message):
    with pytest.raises(LayerError, match=message):
        setup(f"type: 'Input' {param}", n_tops)


def test_input_takes_no_bottom():
    layer = make_layer("type: 'Input' input_param { shape { dim: 1 } }")
    with pytest.raises(LayerError, match="takes 0 bottom blob"):
        layer.SetUp([Blob((1,))], [Blob()])


# --- DummyData ---------------------------------------------------------------------------------
def test_dummy_data_default_is_zeros():
    _, top = setup("type: 'DummyData' dummy_data_param { shape { dim: 2 dim: 3 } }", 1)
    assert top[0].shape == (2, 3)
    np.testing.assert_array_equal(top[0].data, 0)


def test_dummy_data_legacy_dims_and_per_top_fillers():
    param = ("type: 'DummyData' dummy_data_param { num: 2 channels: 3 channels: 1 height: 4 "
             "width: 5 data_filler { type: 'constant' value: 7 } "
             "data_filler { type: 'uniform' min: 1 max: 2 } }")
    caffe.set_random_seed(3)
    layer, top = setup(param, 2)
    assert [t.shape for t in top] == [(2, 3, 4, 5), (2, 1, 4, 5)]
    np.testing.assert_array_equal(top[0].data, 7)
    top[0].data[...] = -1  # a constant top is filled once, at setup
    layer.Forward([], top)
    first = top[1].data.copy()
    assert np.all((first >= 1) & (first <= 2))
    layer.Forward([], top)
    np.testing.assert_array_equal(top[0].data, -1)
    assert not np.array_equal(top[1].data, first)  # a random top is refilled every forward


def test_dummy_data_one_filler_for_all_tops():
    param = ("type: 'DummyData' dummy_data_param { shape { dim: 3 } "
             "data_filler { type: 'gaussian' std: 2 } }")
    layer, top = setup(param, 2)
    layer.Forward([], top)
    assert not np.array_equal(top[0].data, top[1].data)
    assert np.all(top[0].data != 0)


@pytest.mark.parametrize("param, n_tops, message", [
    ("shape { dim: 1 } num: 1 channels: 1 height: 1 width: 1", 1,
     "Both shape and legacy fields were specified"),
    ("num: 1 num: 2 channels: 1 height: 1 width: 1", 3,
     r"Must specify 'num' once, or once per top blob \(3\); specified 2"),
    ("shape { dim: 1 } shape { dim: 2 }", 3,
     r"Must specify 'shape' once, or once per top blob \(3\); specified 2"),
    ("", 1, r"Must specify 'shape' once, or once per top blob \(1\); specified 0"),
    ("shape { dim: 2 } data_filler { } data_filler { }", 3,
     "Number of data fillers must be 0, 1 or equal to the number of tops: 3 tops"),
])
def test_dummy_data_errors(param, n_tops, message):
    with pytest.raises(LayerError, match=message):
        setup(f"type: 'DummyData' dummy_data_param {{ {param} }}", n_tops)


# --- Silence -----------------------------------------------------------------------------------
def test_silence_zeroes_requested_diffs():
    layer = make_layer("type: 'Silence'")
    bottom = [Blob((2, 3), dtype=torch.float64), Blob((4,), dtype=torch.float64)]
    for b in bottom:
        b.diff[...] = 5
    layer.SetUp(bottom, [])
    layer.Forward(bottom, [])
    layer.Backward([], [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)
    np.testing.assert_array_equal(bottom[1].diff, 5)


def test_silence_takes_no_top():
    layer = make_layer("type: 'Silence'")
    with pytest.raises(LayerError, match="produces 0 top blob"):
        layer.SetUp([Blob((1,))], [Blob()])
