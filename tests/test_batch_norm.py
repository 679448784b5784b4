import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from in_place_case import run_layer
from layer_case import gradient_check, make_layer, random_blobs, run_golden_case
from tolerance import sum_order_atol


@pytest.mark.parametrize("case", ["batchnorm_train", "batchnorm_test"])
def test_golden(case):
    run_golden_case(case)


def test_gradient_batch_statistics():
    gradient_check("type: 'BatchNorm' batch_norm_param { use_global_stats: false }",
                   [(3, 5, 2, 3)])


def test_gradient_batch_statistics_2d():
    gradient_check("type: 'BatchNorm'", [(5, 3)])


def _global_stats_layer(shape, scale_factor=2.0, seed=1):
    layer = make_layer("type: 'BatchNorm'", phase="TEST")
    bottom = random_blobs([shape], seed=seed)
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    rng = np.random.default_rng(seed)
    channels = shape[1]
    layer.blobs[0].data[...] = rng.uniform(-1, 1, channels) * scale_factor
    layer.blobs[1].data[...] = rng.uniform(0.5, 2, channels) * scale_factor
    layer.blobs[2].data[...] = scale_factor
    return layer, bottom, top


def test_gradient_global_statistics():
    # The statistics blobs get no gradient by design, so only the bottom is checked (the
    # shared checker always includes parameter blobs).
    layer, bottom, top = _global_stats_layer((2, 3, 3, 1))
    assert layer.use_global_stats
    rng = np.random.default_rng(2)
    weights = rng.normal(size=bottom[0].shape)

    def objective():
        layer.Forward(bottom, top)
        return float((top[0].data * weights).sum())

    objective()
    top[0].diff[...] = weights
    layer.Backward(top, [True], bottom)
    analytic = bottom[0].diff.copy()
    numeric = np.zeros_like(analytic)
    for i in range(bottom[0].count):
        flat = bottom[0].data.reshape(-1)
        old = flat[i]
        flat[i] = old + 1e-4
        plus = objective()
        flat[i] = old - 1e-4
        minus = objective()
        flat[i] = old
        numeric.reshape(-1)[i] = (plus - minus) / 2e-4
    # The objective is linear in x, so the central difference is exact but for rounding: each
    # float64 objective (18 products) is off by < 18 u sum|y * w|, and the difference divided
    # by 2e-4 turns that into the absolute term below (tolerance.py, u = eps / 2).
    atol = sum_order_atol(18 + 1, np.abs(top[0].data * weights).sum(), np.float64) / 2e-4
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=atol)


def test_global_statistics_forward_and_state_unchanged():
    layer, bottom, top = _global_stats_layer((2, 3, 2, 2))
    before = [b.data.copy() for b in layer.blobs]
    layer.Forward(bottom, top)
    s = before[2][0]
    mean, var = before[0] / s, before[1] / s
    x = bottom[0].data
    std = np.sqrt(var + 1e-5)[None, :, None, None]
    expected = (x - mean[None, :, None, None]) / std
    # x - mean cancels: a few float64 roundings of |x| + |mean|, over std (tolerance.py).
    abs_value = (np.abs(x) + np.abs(mean)[None, :, None, None]) / std
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-12,
                               atol=sum_order_atol(4, abs_value, np.float64))
    for b, old in zip(layer.blobs, before):
        np.testing.assert_array_equal(b.data, old)


def test_zero_scale_factor_means_zero_statistics():
    layer, bottom, top = _global_stats_layer((2, 3, 2, 2))
    layer.blobs[2].data[...] = 0
    layer.Forward(bottom, top)
    eps = float(np.float32(1e-5))  # the proto field is a float
    np.testing.assert_allclose(top[0].data, bottom[0].data / np.sqrt(eps), rtol=1e-12)


def test_running_statistics_update():
    layer = make_layer("type: 'BatchNorm' batch_norm_param { moving_average_fraction: 0.8 "
                       "eps: 0.001 }")
    bottom = random_blobs([(4, 3, 2, 1)], seed=3)
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    layer.blobs[0].data[...] = [0.1, -0.2, 0.3]
    layer.blobs[1].data[...] = [1.0, 2.0, 0.5]
    layer.blobs[2].data[...] = 1.5
    layer.Forward(bottom, top)
    x = bottom[0].data.transpose(1, 0, 2, 3).reshape(3, -1)
    m = x.shape[1]
    mean, var = x.mean(1), x.var(1)
    f, eps = float(np.float32(0.8)), float(np.float32(0.001))  # float proto fields
    np.testing.assert_allclose(layer.blobs[2].data, [f * 1.5 + 1])
    # f * old + mean may cancel: the float64 rounding of the 8-term mean and the update.
    abs_sum = f * np.array([0.1, 0.2, 0.3]) + np.abs(x).mean(1)
    np.testing.assert_allclose(layer.blobs[0].data, f * np.array([0.1, -0.2, 0.3]) + mean,
                               atol=sum_order_atol(m + 2, abs_sum, np.float64))
    np.testing.assert_allclose(layer.blobs[1].data,
                               f * np.array([1.0, 2.0, 0.5]) + m / (m - 1) * var)
    std = np.sqrt(var + eps)[:, None]
    expected = (x - mean[:, None]) / std
    # x - mean cancels: the roundings of the 8-term mean and the difference, over std.
    abs_value = (np.abs(x) + np.abs(x).mean(1, keepdims=True)) / std
    np.testing.assert_allclose(top[0].data.transpose(1, 0, 2, 3).reshape(3, -1), expected,
                               rtol=1e-10, atol=sum_order_atol(m + 2, abs_value, np.float64))


def test_parameters_are_statistics_not_learned():
    layer = make_layer("type: 'BatchNorm'")
    bottom = random_blobs([(3, 2, 2)])
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    assert layer.param_propagate_down == [False, False, False]
    assert [p.lr_mult for p in layer.layer_param.param] == [0, 0, 0]
    layer.Forward(bottom, top)
    top[0].diff[...] = 1
    layer.Backward(top, [True], bottom)
    for blob in layer.blobs:
        assert not blob.diff.any()


def test_nonzero_lr_mult_is_refused():
    layer = make_layer("type: 'BatchNorm' param { lr_mult: 0 } param { lr_mult: 1 }")
    with pytest.raises(LayerError, match="Cannot configure batch normalization statistics"):
        layer.SetUp(random_blobs([(3, 2)]), [Blob(dtype=torch.float64)])


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_in_place_matches_out_of_place(phase):
    rng = np.random.default_rng(5)
    x, dy = rng.normal(size=(3, 4, 3)), rng.normal(size=(3, 4, 3))
    proto = "type: 'BatchNorm'"
    ref = run_layer(proto, x, dy, in_place=False, phase=phase)
    got = run_layer(proto, x, dy, in_place=True, phase=phase)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-12)
    for a, b in zip(got[3], ref[3]):  # the statistics blobs after the pass
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert np.abs(ref[1]).sum() > 0


def test_in_place_survives_clobbered_top():
    # A later in-place layer may rewrite the shared data before backward: the cached x_norm
    # keeps the gradient right.
    rng = np.random.default_rng(6)
    x, dy = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 3, 2))
    ref = run_layer("type: 'BatchNorm'", x, dy, in_place=False)
    layer = make_layer("type: 'BatchNorm'")
    blob = Blob(x.shape, dtype=torch.float64)
    blob.data[...] = x
    layer.SetUp([blob], [blob])
    layer.Forward([blob], [blob])
    blob.data[...] = 123.0
    blob.diff[...] = dy
    layer.Backward([blob], [True], [blob])
    np.testing.assert_allclose(blob.diff, ref[1], rtol=1e-12)


def test_needs_two_axes():
    layer = make_layer("type: 'BatchNorm'")
    with pytest.raises(LayerError, match=r"at least 2 axes.*\[5\]"):
        layer.SetUp(random_blobs([(5,)]), [Blob(dtype=torch.float64)])


def test_channel_change_is_refused():
    layer = make_layer("type: 'BatchNorm'")
    bottom = random_blobs([(2, 3, 2)])
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    bottom[0].reshape((2, 4, 2))
    with pytest.raises(LayerError, match="4 channels"):
        layer.Forward(bottom, top)
