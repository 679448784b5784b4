"""Tile and Reduction (caffe/layers/tile.py, reduction.py)."""

import numpy as np
import pytest

from caffe.errors import LayerError

from layer_case import forward_top, gradient_check, run_golden_case


@pytest.mark.parametrize("case", ["tile", "reduction_asum", "reduction_mean", "reduction_sum",
                                  "reduction_sumsq"])
def test_golden(case):
    run_golden_case(case)


# --- Tile --------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis, tiles", [(1, 3), (0, 2), (-1, 4), (2, 1)])
def test_tile_forward_and_gradient(axis, tiles):
    param = f"type: 'Tile' tile_param {{ axis: {axis} tiles: {tiles} }}"
    x = np.random.default_rng(0).normal(size=(2, 3, 5))
    y = forward_top(param, x)
    # Caffe repeats the whole block from the axis on: along that axis, that is np.tile.
    expected = np.tile(x, [tiles if i == axis % 3 else 1 for i in range(3)])
    np.testing.assert_array_equal(y, expected)
    gradient_check(param, [(2, 3, 5)])


@pytest.mark.parametrize("param, message", [
    ("tile_param { axis: 1 }", "Number of tiles must be specified"),
    ("tile_param { tiles: 0 }", "Number of tiles must be positive, got 0"),
    ("tile_param { tiles: 2 axis: 3 }", "axis 3 out of range for 3-D"),
])
def test_tile_errors(param, message):
    with pytest.raises(LayerError, match=message):
        forward_top(f"type: 'Tile' {param}", np.zeros((2, 3, 4)))


# --- Reduction ---------------------------------------------------------------------------------
OPS = {
    "SUM": lambda x: x.sum(-1),
    "ASUM": lambda x: np.abs(x).sum(-1),
    "SUMSQ": lambda x: (x * x).sum(-1),
    "MEAN": lambda x: x.mean(-1),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_reduction_forward(op, axis):
    x = np.random.default_rng(1).normal(size=(2, 3, 5))
    param = f"type: 'Reduction' reduction_param {{ operation: {op} axis: {axis} coeff: -1.5 }}"
    y = forward_top(param, x)
    a = axis % 3
    expected = -1.5 * OPS[op](x.reshape(x.shape[:a] + (-1,)))
    assert y.shape == x.shape[:a]
    np.testing.assert_allclose(y, expected, rtol=1e-12)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("axis, shape", [(0, (3, 5)), (1, (2, 3, 5)), (-1, (2, 3, 5))])
def test_reduction_gradient(op, axis, shape):
    param = f"type: 'Reduction' reduction_param {{ operation: {op} axis: {axis} coeff: 0.7 }}"
    kink = dict(kink=0.0, kink_range=1e-2) if op == "ASUM" else {}
    gradient_check(param, [shape], **kink)


def test_reduction_axis_error():
    with pytest.raises(LayerError, match="Reduction layer 'L': axis 2 out of range for 2-D"):
        forward_top("type: 'Reduction' reduction_param { axis: 2 }", np.zeros((2, 3)))
