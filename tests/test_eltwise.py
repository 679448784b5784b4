"""Eltwise (caffe/layers/eltwise.py)."""

import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from layer_case import blobs_of, gradient_check, make_layer, run_golden_case


@pytest.mark.parametrize("case", ["eltwise_max", "eltwise_prod", "eltwise_sum_coeff"])
def test_golden(case):
    run_golden_case(case)


@pytest.mark.parametrize("param, n", [
    ("", 2),
    ("eltwise_param { operation: SUM coeff: 1.5 coeff: -0.5 coeff: 2 }", 3),
    ("eltwise_param { operation: PROD }", 2),
    ("eltwise_param { operation: PROD }", 3),
    ("eltwise_param { operation: PROD stable_prod_grad: false }", 3),
    ("eltwise_param { operation: MAX }", 2),
    ("eltwise_param { operation: MAX }", 4),
])
def test_gradient(param, n):
    gradient_check(f"type: 'Eltwise' {param}", [(2, 3, 5)] * n)


def run(param, values, top_diff=None, in_place=False):
    bottom = blobs_of(values)
    top = bottom[in_place - 1] if in_place else Blob(dtype=torch.float64)
    layer = make_layer(f"type: 'Eltwise' {param}")
    layer.SetUp(bottom, [top])
    layer.Forward(bottom, [top])
    y = top.data.copy()
    top.diff[...] = 1 if top_diff is None else top_diff
    layer.Backward([top], [True] * len(bottom), bottom)
    return y, [b.diff.copy() for b in bottom]


def test_max_ties_follow_caffe():
    # Between the first two, a tie goes to the second; later ties keep the earlier winner.
    a = np.array([1.0, 2.0, 3.0, 5.0])
    b = np.array([1.0, 1.0, 3.0, 4.0])
    c = np.array([1.0, 2.0, 0.0, 5.0])
    y, (da, db, dc) = run("eltwise_param { operation: MAX }", [a, b, c])
    np.testing.assert_array_equal(y, [1, 2, 3, 5])
    np.testing.assert_array_equal(da, [0, 1, 0, 1])
    np.testing.assert_array_equal(db, [1, 0, 1, 0])
    np.testing.assert_array_equal(dc, [0, 0, 0, 0])


def test_prod_stable_gradient_at_zero():
    a, b = np.array([0.0, 2.0]), np.array([3.0, 4.0])
    _, (da, db) = run("eltwise_param { operation: PROD }", [a, b])
    np.testing.assert_array_equal(da, [3, 4])
    np.testing.assert_array_equal(db, [0, 2])


@pytest.mark.parametrize("param", ["eltwise_param { operation: SUM coeff: 2 coeff: -3 }",
                                   "eltwise_param { operation: PROD }",
                                   "eltwise_param { operation: MAX }"])
@pytest.mark.parametrize("which", [1, 2])
def test_in_place_matches_separate_blobs(param, which):
    rng = np.random.default_rng(4)
    values = [rng.normal(size=(3, 4)) for _ in range(2)]
    dy = rng.normal(size=(3, 4))
    want = run(param, values, dy)
    got = run(param, values, dy, in_place=which)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=1e-12)


@pytest.mark.parametrize("param, shapes, message", [
    ("", [(2, 3), (2, 4)],
     r"bottom\[1\] has shape \[2, 4\] but bottom\[0\] has shape \[2, 3\]"),
    ("eltwise_param { coeff: 1 }", [(2, 3), (2, 3)],
     r"one coefficient per bottom blob: 1 coeff\(s\) for 2 bottoms"),
    ("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2, 3), (2, 3)],
     "only takes coefficients for summation"),
    ("", [(2, 3)], "takes at least 2 bottom blob"),
])
def test_errors(param, shapes, message):
    layer = make_layer(f"name: 'e' type: 'Eltwise' {param}")
    with pytest.raises(LayerError, match=f"Eltwise layer 'e': .*{message}"):
        layer.SetUp([Blob(s) for s in shapes], [Blob()])
