"""SPP: golden case, pyramid geometry, gradients, errors."""

import numpy as np
import pytest

from caffe.errors import LayerError
from caffe.layers.spp import spp_level_geometry

from layer_case import forward_layer, gradient_check, run_golden_case


def spp(params: str) -> str:
    return f"type: 'SPP' spp_param {{ {params} }}"


def test_golden():
    run_golden_case("spp")


def test_level_geometry():
    # 2^2 bins over 9 rows: kernel 3, 3 * 4 - 9 = 3 rows short, so pad (3 + 1) / 2 = 2.
    assert spp_level_geometry(2, 9, 4) == ((3, 1), (3, 1), (2, 0))
    assert spp_level_geometry(0, 6, 5) == ((6, 5), (6, 5), (0, 0))


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (1, 2, 13, 8), (1, 1, 4, 4)])
def test_output_length(shape):
    # Caffe's TestEqualOutputDims: every level yields 4^l bins per channel.
    n, c = shape[:2]
    top = forward_layer(spp("pyramid_height: 3 pool: MAX"), [np.zeros(shape)])[2]
    assert top[0].shape == (n, c * (1 + 4 + 16))


def test_levels_are_flattened_poolings():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    top = forward_layer(spp("pyramid_height: 2 pool: AVE"), [x])[2]
    level0 = x.mean(axis=(2, 3))
    level1 = x.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5)).reshape(2, -1)
    np.testing.assert_allclose(top[0].data, np.concatenate([level0, level1], axis=1))


def test_pyramid_height_one_keeps_4d_top():
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 4))
    top = forward_layer(spp("pyramid_height: 1 pool: MAX"), [x])[2]
    assert top[0].shape == (2, 3, 1, 1)
    np.testing.assert_allclose(top[0].data[:, :, 0, 0], x.max(axis=(2, 3)))


@pytest.mark.parametrize("params, shape", [
    ("pyramid_height: 3 pool: MAX", (2, 2, 7, 9)),
    ("pyramid_height: 2 pool: AVE", (1, 2, 5, 6)),
    ("pyramid_height: 1 pool: AVE", (1, 2, 3, 3)),
])
def test_gradient(params, shape):
    gradient_check(spp(params), [shape], stepsize=1e-4)


def test_reshape_recomputes_levels():
    layer, bottom, top, _ = forward_layer(spp("pyramid_height: 2 pool: MAX"),
                                          [np.zeros((1, 2, 4, 4))])
    bottom[0].reshape((1, 2, 7, 5))
    bottom[0].data[...] = np.arange(70).reshape(1, 2, 7, 5)
    layer.Forward(bottom, top)
    assert top[0].shape == (1, 2 * 5)
    np.testing.assert_allclose(top[0].data[0, :2], [34, 69])


@pytest.mark.parametrize("params, shape, message", [
    ("pyramid_height: 3 pool: MAX", (1, 1, 3, 8), "too small for pyramid_height 3"),
    ("pyramid_height: 0", (1, 1, 3, 8), "pyramid_height must be positive"),
    ("pyramid_height: 2", (1, 3, 8), "Input must have 4 axes"),
    ("pyramid_height: 2 pool: STOCHASTIC", (1, 1, 5, 4), "padding only for average and max"),
])
def test_errors(params, shape, message):
    with pytest.raises(LayerError, match=message):
        forward_layer(spp(params), [np.ones(shape)])
