"""PReLU (caffe/layers/prelu.py)."""

import numpy as np
import pytest

from caffe.blob import Blob
from caffe.errors import LayerError
from caffe.layer import create_layer
from caffe.proto import caffe_pb2

from in_place_case import check_in_place
from layer_case import build_layer, gradient_check, run_golden_case


@pytest.mark.parametrize("case", ["prelu", "prelu_shared"])
def test_golden(case):
    run_golden_case(case)


GAUSS = "filler { type: 'gaussian' std: 0.5 }"


@pytest.mark.parametrize("param", [f"prelu_param {{ {GAUSS} }}",
                                   f"prelu_param {{ channel_shared: true {GAUSS} }}"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 5), (2, 3, 2, 1, 3)])
def test_gradient(param, shape):
    # Checks the slopes and the bottom together.
    gradient_check(f"type: 'PReLU' {param}", [shape], kink=0.0, kink_range=1e-2)


@pytest.mark.parametrize("param", [f"prelu_param {{ {GAUSS} }}",
                                   f"prelu_param {{ channel_shared: true {GAUSS} }}"])
def test_in_place_matches_separate_blobs(param):
    check_in_place(f"type: 'PReLU' {param}", (2, 3, 5))


def setup(param: str, shape=(2, 3, 4)):
    layer, (bottom,), (top,) = build_layer(f"name: 'pr' type: 'PReLU' {param}",
                                           [np.zeros(shape)])
    return layer, bottom, top


def test_default_filler_and_param_shapes():
    layer, _, _ = setup("")
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, [0.25, 0.25, 0.25])
    layer, _, _ = setup("prelu_param { channel_shared: true }")
    assert layer.blobs[0].shape == ()
    assert layer.blobs[0].count == 1
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)


def test_forward_formula_per_channel():
    layer, bottom, top = setup("")
    layer.blobs[0].data[...] = [0.1, -0.5, 2.0]
    x = np.random.default_rng(0).normal(size=(2, 3, 4))
    bottom.data[...] = x
    layer.Forward([bottom], [top])
    slope = np.array([0.1, -0.5, 2.0])[None, :, None]
    np.testing.assert_allclose(top.data, np.maximum(x, 0) + slope * np.minimum(x, 0))


def test_slope_diff_accumulates():
    layer, bottom, top = setup("")
    bottom.data[...] = -1.0
    layer.Forward([bottom], [top])
    top.diff[...] = 1.0
    layer.Backward([top], [True], [bottom])
    layer.Backward([top], [True], [bottom])
    # Each backward adds sum(dy * min(x, 0)) = -8 per channel.
    np.testing.assert_allclose(layer.blobs[0].diff, [-16.0, -16.0, -16.0])


def test_needs_two_axes():
    with pytest.raises(LayerError, match=r"PReLU layer 'pr': bottom must have at least 2 axes"):
        setup("", shape=(5,))


def test_preloaded_slopes_must_match_channels():
    param = caffe_pb2.LayerParameter(name="pr", type="PReLU")
    blob = param.blobs.add()
    blob.shape.dim.append(4)
    blob.data.extend([0.1] * 4)
    layer = create_layer(param)
    with pytest.raises(LayerError, match="negative slope size is inconsistent.*expected 3"):
        layer.SetUp([Blob((2, 3, 4))], [Blob()])


def test_channel_change_after_setup_is_an_error():
    layer, bottom, top = setup("")
    bottom.reshape((2, 5, 4))
    with pytest.raises(LayerError, match="bottom has 5 channels but the layer has 3 slopes"):
        layer.Forward([bottom], [top])
