"""Sigmoid, TanH, AbsVal, BNLL, ELU, Swish, Clip, Threshold (caffe/layers/neuron.py)."""

import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from in_place_case import check_in_place
from layer_case import forward_layer, forward_top, gradient_check, make_layer, run_golden_case


@pytest.mark.parametrize("case", ["sigmoid", "tanh", "absval", "bnll", "elu", "threshold"])
def test_golden(case):
    run_golden_case(case)


GRADIENT_CASES = [
    ("type: 'Sigmoid'", {}),
    ("type: 'TanH'", {}),
    ("type: 'AbsVal'", dict(kink=0.0, kink_range=1e-2)),
    ("type: 'BNLL'", {}),
    ("type: 'ELU'", dict(kink=0.0, kink_range=1e-2)),
    ("type: 'ELU' elu_param { alpha: 0.3 }", dict(kink=0.0, kink_range=1e-2)),
    ("type: 'Swish'", {}),
    ("type: 'Swish' swish_param { beta: 2.5 }", {}),
    ("type: 'Clip' clip_param { min: -0.5 max: 0.5 }", dict(kink=0.5, kink_range=1e-2)),
]


@pytest.mark.parametrize("param, kink", GRADIENT_CASES, ids=[c[0] for c in GRADIENT_CASES])
@pytest.mark.parametrize("shape", [(2, 3, 4), (3, 5)])
def test_gradient(param, kink, shape):
    gradient_check(param, [shape], **kink)


IN_PLACE = ["type: 'ReLU'", "type: 'ReLU' relu_param { negative_slope: 0.2 }", "type: 'Sigmoid'",
            "type: 'TanH'", "type: 'BNLL'", "type: 'ELU' elu_param { alpha: 0.7 }",
            "type: 'ELU' elu_param { alpha: -0.4 }", "type: 'Swish' swish_param { beta: 1.5 }",
            "type: 'Clip' clip_param { min: -0.5 max: 1 }"]


@pytest.mark.parametrize("param", IN_PLACE)
def test_in_place_matches_separate_blobs(param):
    check_in_place(param, (2, 3, 5))


def test_bnll_is_finite_for_large_inputs():
    x = np.array([-1000.0, -60.0, -1.0, 0.0, 1.0, 60.0, 1000.0])
    y = forward_top("type: 'BNLL'", x)
    np.testing.assert_allclose(y, np.logaddexp(0, x), rtol=1e-12)
    layer, bottom, top, _ = forward_layer("type: 'BNLL'", [x])
    top[0].diff[...] = 1
    layer.Backward(top, [True], bottom)
    assert np.all(np.isfinite(bottom[0].diff))
    # Above Caffe's threshold of 50 the gradient is exp(50) / (exp(50) + 1), i.e. 1.
    sigmoid = np.exp(-np.logaddexp(0, -np.minimum(x, 50)))
    np.testing.assert_allclose(bottom[0].diff, sigmoid, rtol=1e-12)


def test_swish_and_clip_formulas():
    x = np.linspace(-3, 3, 13)
    np.testing.assert_allclose(forward_top("type: 'Swish' swish_param { beta: 2 }", x),
                               x / (1 + np.exp(-2 * x)), rtol=1e-12)
    np.testing.assert_allclose(forward_top("type: 'Clip' clip_param { min: -1 max: 2 }", x),
                               np.clip(x, -1, 2))


def test_elu_negative_side():
    x = np.array([-2.0, -0.5, 0.0, 0.5])
    np.testing.assert_allclose(forward_top("type: 'ELU' elu_param { alpha: 0.7 }", x),
                               np.where(x > 0, x, np.float32(0.7) * np.expm1(x)), rtol=1e-12)


def test_threshold_is_strictly_greater():
    x = np.array([-1.0, 0.2, 0.2000001, 3.0])
    y = forward_top("type: 'Threshold' threshold_param { threshold: 0.2 }", x)
    np.testing.assert_array_equal(y, [0, 0, 1, 1])


def test_threshold_has_no_backward():
    layer = make_layer("name: 'th' type: 'Threshold'")
    bottom, top = Blob((2, 3), dtype=torch.float64), Blob(dtype=torch.float64)
    layer.SetUp([bottom], [top])
    layer.Forward([bottom], [top])
    with pytest.raises(LayerError, match="Threshold layer 'th': has no backward"):
        layer.Backward([top], [True], [bottom])
    layer.Backward([top], [False], [bottom])  # nothing asked, nothing to do


def test_absval_refuses_in_place():
    layer = make_layer("type: 'AbsVal'")
    blob = Blob((2, 3))
    with pytest.raises(LayerError, match="does not allow in-place"):
        layer.SetUp([blob], [blob])


@pytest.mark.parametrize("param, message", [
    ("type: 'Clip' clip_param { min: 1 max: -1 }", r"min \(1.0\) must not exceed max \(-1.0\)"),
    ("type: 'Clip'", "clip_param"),
])
def test_clip_errors(param, message):
    layer = make_layer(param)
    with pytest.raises(LayerError, match=message):
        layer.SetUp([Blob((2, 3))], [Blob()])


def test_neuron_blob_counts():
    layer = make_layer("type: 'Sigmoid'")
    with pytest.raises(LayerError, match="takes 1 bottom blob"):
        layer.SetUp([Blob((2,)), Blob((2,))], [Blob()])

