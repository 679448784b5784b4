"""Dropout (caffe/layers/dropout.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe
from caffe.blob import Blob
from caffe.errors import LayerError
from caffe.proto import caffe_pb2

from in_place_case import check_in_place
from layer_case import build_layer, gradient_check, make_layer, run_golden_case

HAS_SCALE_TRAIN = "scale_train" in caffe_pb2.DropoutParameter.DESCRIPTOR.fields_by_name


def test_golden_test_phase():
    run_golden_case("dropout_test")


def run(param: str, x: np.ndarray, phase: str = "TRAIN", seed: int | None = 11,
        dtype=torch.float64):
    layer, bottom, top = build_layer(param, [x], phase=phase, dtype=dtype)
    if seed is not None:
        caffe.set_random_seed(seed)
    layer.Forward(bottom, top)
    top[0].diff[...] = 1
    layer.Backward(top, [True], bottom)
    return top[0].data.copy(), bottom[0].diff.copy()


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_train_statistics(ratio):
    x = np.random.default_rng(0).uniform(1, 2, size=(40, 50, 10))
    y, dx = run(f"type: 'Dropout' dropout_param {{ dropout_ratio: {ratio} }}", x,
                dtype=torch.float32)
    x = x.astype(np.float32)
    dropped = y == 0
    # 20000 Bernoulli draws: the dropped fraction is within 4 sigma of the ratio.
    assert abs(dropped.mean() - ratio) < 4 * np.sqrt(ratio * (1 - ratio) / x.size)
    scale = np.float32(1) / (np.float32(1) - np.float32(ratio))
    np.testing.assert_allclose(y[~dropped], x[~dropped] * scale, rtol=1e-6)
    # The backward reuses the forward's mask and scale.
    np.testing.assert_array_equal(dx == 0, dropped)
    np.testing.assert_allclose(dx[~dropped], scale, rtol=1e-6)


def test_train_is_seeded_and_redraws_every_forward():
    param = "type: 'Dropout'"
    x = np.ones((8, 16))
    first, _ = run(param, x, seed=5)
    again, _ = run(param, x, seed=5)
    other, _ = run(param, x, seed=6)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    layer, bottom, top = build_layer(param, [x])
    caffe.set_random_seed(5)
    layer.Forward(bottom, top)
    masks = [top[0].data.copy()]
    layer.Forward(bottom, top)
    masks.append(top[0].data.copy())
    np.testing.assert_array_equal(masks[0], first)
    assert not np.array_equal(masks[0], masks[1])


def test_test_phase_is_identity():
    x = np.random.default_rng(1).normal(size=(3, 4))
    y, dx = run("type: 'Dropout' dropout_param { dropout_ratio: 0.3 }", x, phase="TEST")
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, np.ones_like(x))


@pytest.mark.skipif(not HAS_SCALE_TRAIN, reason="caffe.proto has no DropoutParameter.scale_train")
def test_scale_train_false_scales_at_test_time():
    param = "type: 'Dropout' dropout_param { dropout_ratio: 0.25 scale_train: false }"
    x = np.random.default_rng(1).uniform(1, 2, size=(30, 40))
    y, dx = run(param, x, phase="TEST")
    np.testing.assert_allclose(y, x * 0.75, rtol=1e-12)
    np.testing.assert_allclose(dx, 0.75, rtol=1e-12)
    y, dx = run(param, x, phase="TRAIN")
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept])
    np.testing.assert_array_equal(dx, kept.astype(float))


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("shape", [(2, 3, 4), (3, 5)])
def test_gradient(phase, shape):
    # The checker reseeds before every forward, so the TRAIN mask stays fixed.
    gradient_check("type: 'Dropout' dropout_param { dropout_ratio: 0.4 }", [shape], phase=phase)


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_in_place_matches_separate_blobs(phase):
    check_in_place("type: 'Dropout' dropout_param { dropout_ratio: 0.4 }", (4, 5, 3),
                   phase=phase)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_bad_ratio(ratio):
    layer = make_layer(f"name: 'drop' type: 'Dropout' dropout_param {{ dropout_ratio: {ratio} }}")
    with pytest.raises(LayerError,
                       match=r"Dropout layer 'drop': dropout_ratio must lie in \[0, 1\)"):
        layer.SetUp([Blob((2, 3))], [Blob()])
