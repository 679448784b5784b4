"""Pooling: golden cases, a loop-by-loop model of Caffe's CPU pooling, gradients, errors."""

import math

import numpy as np
import pytest
import torch

from caffe import common
from caffe.errors import LayerError

from layer_case import build_layer, gradient_check, run_golden_case
from tolerance import sum_order_atol

FLT_MAX = float(np.finfo(np.float32).max)


def caffe_pooling(x, method, kernel, stride, pad, dy):
    """Caffe 1.0's Pooling Forward_cpu/Backward_cpu, written out loop by loop."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad

    def out_size(size, k, s, p):
        o = int(math.ceil((size + 2 * p - k) / s)) + 1
        if (ph or pw) and (o - 1) * s >= size + p:
            o -= 1
        return o

    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    top = np.zeros((n, c, oh, ow))
    mask = np.full((n, c, oh, ow), -1.0)
    dx = np.zeros_like(x)
    for i, j, y, z in np.ndindex(n, c, oh, ow):
        hs, ws = y * sh - ph, z * sw - pw
        if method == "MAX":
            he, we, hs, ws = min(hs + kh, h), min(ws + kw, w), max(hs, 0), max(ws, 0)
            best, where = -FLT_MAX, -1
            for a in range(hs, he):
                for b in range(ws, we):
                    if x[i, j, a, b] > best:
                        best, where = x[i, j, a, b], a * w + b
            top[i, j, y, z], mask[i, j, y, z] = best, where
            if where >= 0:
                dx[i, j, where // w, where % w] += dy[i, j, y, z]
        else:
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            if hs < he and ws < we:  # Caffe divides an empty window's 0 by size <= 0
                top[i, j, y, z] = x[i, j, hs:he, ws:we].sum() / size
                dx[i, j, hs:he, ws:we] += dy[i, j, y, z] / size
    return top, mask, dx


def pool(params: str) -> str:
    return f"type: 'Pooling' pooling_param {{ {params} }}"


def setup_layer(proto, x, n_tops=1, phase="TRAIN", dtype=torch.float64):
    return build_layer(proto, [x], n_tops, phase, dtype)


@pytest.mark.parametrize("case", ["pool_max", "pool_max_pad", "pool_max_2tops", "pool_ave",
                                  "pool_ave_pad", "pool_global_ave", "pool_rect"])
def test_golden(case):
    run_golden_case(case)


GEOMETRIES = [
    # (H, W), kernel, stride, pad
    ((5, 7), (3, 3), (2, 2), (0, 0)),
    ((6, 6), (3, 3), (2, 2), (1, 1)),
    ((6, 5), (2, 3), (2, 1), (1, 0)),
    ((3, 3), (3, 3), (2, 2), (2, 2)),   # pad above kernel / 2: explicit padding path
    ((8, 5), (5, 4), (3, 2), (4, 3)),
    ((7, 7), (4, 4), (3, 3), (3, 0)),
    ((5, 5), (1, 1), (3, 3), (0, 0)),   # stride > kernel: Caffe's last window is empty
    ((6, 4), (2, 1), (5, 3), (0, 0)),
    ((2, 2), (3, 3), (2, 2), (0, 0)),   # kernel wider than the input
    ((1, 4), (1, 2), (1, 2), (0, 1)),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("hw, kernel, stride, pad", GEOMETRIES)
def test_matches_caffe_loops(method, hw, kernel, stride, pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, *hw))
    if method == "MAX":
        x = np.round(x * 2) / 2  # plenty of ties: the first maximum in scan order must win
    params = (f"pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]}"
              f" stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]}")
    layer, bottom, top = setup_layer(pool(params), x, n_tops=2 if method == "MAX" else 1)
    layer.Forward(bottom, top)
    dy = rng.standard_normal(top[0].shape)
    expected, mask, dx = caffe_pooling(x, method, kernel, stride, pad, dy)
    assert top[0].shape == expected.shape
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-12, atol=1e-12)
    if method == "MAX":
        np.testing.assert_array_equal(top[1].data, mask)
    bottom[0].diff[...] = np.nan  # must be overwritten
    top[0].diff[...] = dy
    layer.Backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-12, atol=1e-12)


def test_max_padded_example():
    # Caffe's TestForwardMaxPadded: kernel 3, stride 2, pad 2 over a 3x3 input.
    x = np.array([[1, 2, 4], [2, 3, 2], [4, 2, 1]], dtype=float).reshape(1, 1, 3, 3)
    layer, bottom, top = setup_layer(pool("pool: MAX kernel_size: 3 stride: 2 pad: 2"), x)
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data[0, 0], [[1, 4, 4], [4, 4, 4], [4, 4, 1]])


def test_max_ties_route_to_first_in_scan_order():
    x = np.ones((1, 1, 4, 4))
    layer, bottom, top = setup_layer(pool("pool: MAX kernel_size: 2 stride: 2"), x, n_tops=2)
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[1].data[0, 0], [[0, 2], [8, 10]])
    top[0].diff[...] = 1.0
    layer.Backward(top, [True], bottom)
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1.0
    np.testing.assert_array_equal(bottom[0].diff[0, 0], expected)


def test_padded_positions_are_not_max_candidates():
    x = -np.ones((1, 1, 2, 2))
    layer, bottom, top = setup_layer(pool("pool: MAX kernel_size: 2 stride: 1 pad: 1"), x)
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, -1.0)


@pytest.mark.parametrize("params", [
    "pool: MAX kernel_size: 3 stride: 2",
    "pool: MAX kernel_h: 3 kernel_w: 2 stride: 2 pad: 1",
    "pool: MAX kernel_size: 3 stride: 2 pad: 2",
    "pool: AVE kernel_size: 3 stride: 2 pad: 1",
    "pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 2",
    "pool: AVE global_pooling: true",
    "pool: MAX global_pooling: true",
])
def test_gradient(params):
    gradient_check(pool(params), [(2, 2, 5, 4)], stepsize=1e-4)


def test_gradient_with_top_mask():
    gradient_check(pool("pool: MAX kernel_size: 2 stride: 1"), [(1, 2, 4, 3)], n_tops=2,
                   stepsize=1e-4, check_bottom=0)


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("params", ["kernel_size: 3 stride: 2", "kernel_h: 2 kernel_w: 3 "
                                    "stride_h: 1 stride_w: 2"])
def test_stochastic_gradient(phase, params):
    # Stochastic pooling expects non-negative inputs; the checker reseeds before every forward,
    # so TRAIN samples the same positions each time.
    x = np.random.default_rng(3).uniform(0.1, 1.0, size=(2, 2, 5, 6))
    gradient_check(pool(f"pool: STOCHASTIC {params}"), [x.shape], phase=phase,
                   bottom_values=[x], stepsize=1e-4)


def test_stochastic_test_phase_value():
    x = np.random.default_rng(4).uniform(0.1, 1.0, size=(1, 2, 4, 4))
    layer, bottom, top = setup_layer(pool("pool: STOCHASTIC kernel_size: 2 stride: 2"), x,
                                     phase="TEST")
    layer.Forward(bottom, top)
    windows = x.reshape(1, 2, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 2, 2, 2, 4)
    np.testing.assert_allclose(top[0].data, (windows ** 2).sum(-1) / windows.sum(-1))


def test_stochastic_train_samples_by_value():
    # Each window holds (1, 3): the 3 should be drawn with probability 3/4.
    channels = 4000
    x = np.tile(np.array([1.0, 3.0]).reshape(1, 1, 1, 2), (1, channels, 1, 1))
    common.set_random_seed(5)
    layer, bottom, top = setup_layer(pool("pool: STOCHASTIC kernel_h: 1 kernel_w: 2"), x)
    layer.Forward(bottom, top)
    values = top[0].data.reshape(-1)
    assert set(np.unique(values)) <= {1.0, 3.0}
    assert abs((values == 3.0).mean() - 0.75) < 0.03
    top[0].diff[...] = 1.0
    layer.Backward(top, [True], bottom)
    picked_three = bottom[0].diff[0, :, 0, 1] == 1.0
    np.testing.assert_array_equal(picked_three, values == 3.0)
    np.testing.assert_array_equal(bottom[0].diff.sum(axis=-1), 1.0)


def test_global_pooling_follows_input_size():
    x = np.arange(24, dtype=float).reshape(1, 2, 3, 4)
    layer, bottom, top = setup_layer(pool("pool: AVE global_pooling: true"), x)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data.reshape(-1), x.reshape(2, -1).mean(1))
    bottom[0].reshape((1, 2, 5, 2))
    bottom[0].data[...] = 1.0
    layer.Forward(bottom, top)
    assert top[0].shape == (1, 2, 1, 1)
    np.testing.assert_allclose(top[0].data, 1.0)


def test_float32_padded_path():
    x = np.random.default_rng(6).standard_normal((1, 2, 5, 5)).astype(np.float32)
    layer, bottom, top = setup_layer(pool("pool: AVE kernel_size: 3 stride: 2 pad: 2"), x,
                                     dtype=torch.float32)
    layer.Forward(bottom, top)
    expected, _, _ = caffe_pooling(x.astype(float), "AVE", (3, 3), (2, 2), (2, 2),
                                   np.zeros(top[0].shape))
    # A float32 mean of at most 9 terms (and the division): tolerance.py's bound with
    # sum|x| / pool size from the same pooling of |x|.
    abs_mean, _, _ = caffe_pooling(np.abs(x).astype(float), "AVE", (3, 3), (2, 2), (2, 2),
                                   np.zeros(top[0].shape))
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-5,
                               atol=sum_order_atol(9 + 1, abs_mean))


@pytest.mark.parametrize("params, shape, n_tops, message", [
    ("pool: MAX global_pooling: true kernel_size: 2", (1, 1, 4, 4), 1,
     "With Global_pooling: true Filter size cannot specified"),
    ("pool: MAX global_pooling: true stride: 2", (1, 1, 4, 4), 1,
     "only pad = 0 and stride = 1"),
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", (1, 1, 4, 4), 1,
     "kernel_size OR kernel_h and kernel_w; not both"),
    ("pool: MAX kernel_h: 2", (1, 1, 4, 4), 1, "both kernel_h and kernel_w are required"),
    ("pool: MAX", (1, 1, 4, 4), 1, "both kernel_h and kernel_w are required"),
    ("pool: MAX kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1", (1, 1, 4, 4), 1,
     "pad is pad OR pad_h and pad_w"),
    ("pool: MAX kernel_size: 2 stride_h: 1", (1, 1, 4, 4), 1,
     "Stride is stride OR stride_h and stride_w"),
    ("pool: MAX kernel_size: 2 pad: 2", (1, 1, 4, 4), 1,
     r"pad \[2, 2\] must be smaller than the kernel \[2, 2\]"),
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", (1, 1, 4, 4), 1,
     "Padding implemented only for average and max pooling"),
    ("pool: MAX kernel_size: 2 stride: 0", (1, 1, 4, 4), 1, "Stride dimensions cannot be zero"),
    ("pool: AVE kernel_size: 2", (1, 1, 4, 4), 2, "at most 1 top"),
    ("pool: MAX kernel_size: 2", (1, 1, 4, 4), 3, "at most 2 top"),
    ("pool: MAX kernel_size: 2", (1, 4, 4), 1, "Input must have 4 axes"),
    ("pool: MAX kernel_size: 5 stride: 1", (1, 1, 3, 3), 1, "pooled output size"),
])
def test_errors(params, shape, n_tops, message):
    with pytest.raises(LayerError, match=message):
        setup_layer(pool(params), np.zeros(shape), n_tops=n_tops)
