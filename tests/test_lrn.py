"""LRN: golden cases, the formulas in numpy, gradients, errors."""

import numpy as np
import pytest
import torch

from caffe.errors import LayerError

from layer_case import forward_layer, gradient_check, run_golden_case


def lrn(params: str) -> str:
    return f"type: 'LRN' lrn_param {{ {params} }}"


def across_channels(x, size, alpha, beta, k):
    c = x.shape[1]
    half = (size - 1) // 2
    scale = np.full_like(x, k)
    for i in range(c):
        lo, hi = max(0, i - half), min(c, i + half + 1)
        scale[:, i] += alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
    return x * scale ** -beta


def within_channel(x, size, alpha, beta):
    h, w = x.shape[2:]
    half = (size - 1) // 2
    padded = np.pad(x ** 2, ((0, 0), (0, 0), (half, half), (half, half)))
    total = np.zeros_like(x)
    for i in range(size):
        for j in range(size):
            total += padded[:, :, i:i + h, j:j + w]
    return x * (1 + alpha * total / size ** 2) ** -beta


@pytest.mark.parametrize("case", ["lrn_across", "lrn_within"])
def test_golden(case):
    run_golden_case(case)


@pytest.mark.parametrize("size, channels", [(5, 7), (3, 2), (15, 7)])  # 15: wider than C
def test_across_channels_forward(size, channels):
    x = np.random.default_rng(0).standard_normal((2, channels, 3, 2))
    top = forward_layer(lrn(f"local_size: {size} alpha: 0.3 beta: 0.6 k: 2"), [x])[2]
    np.testing.assert_allclose(top[0].data, across_channels(x, size, 0.3, 0.6, 2.0), rtol=1e-6)


@pytest.mark.parametrize("size", [3, 5])
def test_within_channel_forward(size):
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 4))
    # k is not part of Caffe's WITHIN_CHANNEL formula.
    top = forward_layer(lrn(f"local_size: {size} alpha: 0.7 beta: 0.9 k: 5 "
                            f"norm_region: WITHIN_CHANNEL"), [x])[2]
    np.testing.assert_allclose(top[0].data, within_channel(x, size, 0.7, 0.9), rtol=1e-6)


@pytest.mark.parametrize("params, shape", [
    ("local_size: 5 alpha: 1.5 beta: 0.75", (2, 7, 3, 3)),
    ("local_size: 3 alpha: 0.5 beta: 0.5 k: 2", (1, 4, 2, 3)),
    ("local_size: 9 alpha: 2 beta: 0.75", (1, 5, 2, 2)),
    ("local_size: 3 alpha: 1.5 beta: 0.75 norm_region: WITHIN_CHANNEL", (2, 2, 5, 4)),
    ("local_size: 5 alpha: 0.8 beta: 1.2 norm_region: WITHIN_CHANNEL", (1, 1, 3, 6)),
])
def test_gradient(params, shape):
    gradient_check(lrn(params), [shape])


def test_float32_matches_float64():
    x = np.random.default_rng(2).standard_normal((2, 6, 4, 4))
    top64 = forward_layer(lrn("local_size: 5 alpha: 0.5"), [x])[2]
    top32 = forward_layer(lrn("local_size: 5 alpha: 0.5"), [x.astype(np.float32)],
                          dtype=torch.float32)[2]
    # y = x * (1 + alpha / n * sum of n squares) ** -beta: the sum has no cancellation, so float32
    # rounding (of x, the n squares and their sum, the power) is relative to y: about
    # (3 + beta * (n + 3)) * u = 6e-7 (u = eps / 2), within rtol. No absolute term is needed.
    np.testing.assert_allclose(top32[0].data, top64[0].data, rtol=1e-5)


@pytest.mark.parametrize("params, shape, message", [
    ("local_size: 4", (1, 2, 3, 3), "LRN only supports odd values for local_size"),
    ("local_size: 3", (2, 3, 3), "Input must have 4 axes"),
])
def test_errors(params, shape, message):
    with pytest.raises(LayerError, match=message):
        forward_layer(lrn(params), [np.zeros(shape)])
