import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from in_place_case import run_layer
from layer_case import gradient_check, make_layer, random_blobs, run_golden_case


@pytest.mark.parametrize("case", ["mvn", "mvn_across"])
def test_golden(case):
    run_golden_case(case)


@pytest.mark.parametrize("param", [
    "type: 'MVN'",
    "type: 'MVN' mvn_param { across_channels: true }",
    "type: 'MVN' mvn_param { normalize_variance: false }",
    "type: 'MVN' mvn_param { normalize_variance: false across_channels: true }",
])
def test_gradient(param):
    gradient_check(param, [(2, 3, 3, 5)])


def test_gradient_2d_input():
    gradient_check("type: 'MVN' mvn_param { across_channels: true }", [(3, 5)])


@pytest.mark.parametrize("across", [False, True])
def test_forward_adds_eps_to_std(across):
    eps = float(np.float32(0.25))
    layer = make_layer(f"type: 'MVN' mvn_param {{ eps: 0.25 across_channels: "
                       f"{'true' if across else 'false'} }}")
    bottom = random_blobs([(2, 3, 2, 3)], seed=7)
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    x = bottom[0].data
    axes = (1, 2, 3) if across else (2, 3)
    centered = x - x.mean(axis=axes, keepdims=True)
    expected = centered / (np.sqrt((centered ** 2).mean(axis=axes, keepdims=True)) + eps)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-12)


def test_backward_is_caffes_formula_for_large_eps():
    # Caffe's MVN gradient treats eps as negligible: (dy - mean(dy) - y mean(dy y)) / (std + eps)
    # (exact only as eps -> 0), which is what a finite-difference check cannot confirm.
    layer = make_layer("type: 'MVN' mvn_param { eps: 0.5 }")
    bottom = random_blobs([(2, 2, 3, 2)], seed=3)
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    dy = np.random.default_rng(1).normal(size=top[0].shape)
    top[0].diff[...] = dy
    layer.Backward(top, [True], bottom)
    x, y = bottom[0].data, top[0].data
    std = np.sqrt(((x - x.mean(axis=(2, 3), keepdims=True)) ** 2).mean(axis=(2, 3),
                                                                       keepdims=True))
    expected = (dy - dy.mean(axis=(2, 3), keepdims=True)
                - y * (dy * y).mean(axis=(2, 3), keepdims=True)) / (std + 0.5)
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-12)


def test_mean_only():
    layer = make_layer("type: 'MVN' mvn_param { normalize_variance: false }")
    bottom = random_blobs([(2, 3, 4)], seed=8)
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    x = bottom[0].data
    # As in Caffe, the top takes the legacy 4-D shape.
    assert top[0].shape == (2, 3, 4, 1)
    np.testing.assert_allclose(top[0].data[..., 0], x - x.mean(axis=2, keepdims=True),
                               rtol=1e-12)


def test_in_place():
    rng = np.random.default_rng(9)
    x, dy = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 2, 2))
    results = [run_layer("type: 'MVN'", x, dy, in_place=in_place) for in_place in (False, True)]
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-13)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-13)


def test_more_than_four_axes():
    layer = make_layer("type: 'MVN'")
    with pytest.raises(LayerError, match=r"up to 4 axes.*\[1, 2, 3, 4, 5\]"):
        layer.SetUp(random_blobs([(1, 2, 3, 4, 5)]), [Blob(dtype=torch.float64)])
