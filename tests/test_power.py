"""Power, Exp and Log (caffe/layers/power.py)."""

from __future__ import annotations

import numpy as np
import pytest

from caffe.blob import Blob
from caffe.errors import LayerError

from in_place_case import check_in_place
from layer_case import forward_layer, gradient_check, make_layer, run_golden_case


@pytest.mark.parametrize("case", ["power", "exp", "log"])
def test_golden(case):
    run_golden_case(case)


def run(param: str, x: np.ndarray, dy: np.ndarray | None = None):
    layer, bottom, top, _ = forward_layer(param, [x])
    top[0].diff[...] = 1 if dy is None else dy
    layer.Backward(top, [True], bottom)
    return top[0].data.copy(), bottom[0].diff.copy()


POSITIVE = np.random.default_rng(5).uniform(0.5, 2.0, size=(2, 3, 5))

POWER_CASES = [
    ("power: 2.5 scale: 0.8 shift: 1.2", POSITIVE),   # general: fractional power
    ("power: 3 scale: -0.7", None),                   # shift 0
    ("power: 2 scale: 1.5 shift: -0.3", None),        # power 2: linear gradient
    ("power: 2", None),
    ("power: 1 scale: -2 shift: 0.5", None),          # power 1: constant gradient
    ("power: 0 scale: 3 shift: 1", None),             # power 0: constant output 1
    ("power: 1.7 scale: 0 shift: 2", None),           # scale 0: constant shift^power
    ("power: -1.5 shift: 3", None),                   # negative power, base kept positive
]


@pytest.mark.parametrize("params, values", POWER_CASES, ids=[c[0] for c in POWER_CASES])
def test_power_gradient(params, values):
    gradient_check(f"type: 'Power' power_param {{ {params} }}", [(2, 3, 5)],
                   bottom_values=None if values is None else [values])


@pytest.mark.parametrize("params", [c[0] for c in POWER_CASES])
def test_power_forward_and_backward_formula(params):
    p = dict(power=1.0, scale=1.0, shift=0.0)
    for key, value in zip(params.split()[::2], params.split()[1::2]):
        p[key.rstrip(":")] = float(np.float32(value))
    x = POSITIVE if p["power"] % 1 else np.linspace(-2, 2, 30).reshape(2, 3, 5)
    base = p["shift"] + p["scale"] * x
    y, dx = run(f"type: 'Power' power_param {{ {params} }}", x)
    np.testing.assert_allclose(y, base ** p["power"], rtol=1e-12)
    want = p["power"] * p["scale"] * base ** (p["power"] - 1) if p["power"] * p["scale"] else 0
    np.testing.assert_allclose(dx, np.broadcast_to(want, x.shape), rtol=1e-12, atol=1e-12)


def test_power_special_cases_ignore_nan_input():
    x = np.array([np.nan, -3.0, 0.0])
    y, dx = run("type: 'Power' power_param { power: 2 scale: 0 shift: 3 }", x)
    np.testing.assert_array_equal(y, [9, 9, 9])
    np.testing.assert_array_equal(dx, [0, 0, 0])
    y, dx = run("type: 'Power' power_param { power: 0 scale: 2 }", x)
    np.testing.assert_array_equal(y, [1, 1, 1])
    np.testing.assert_array_equal(dx, [0, 0, 0])


def test_power_two_at_zero_base_has_zero_gradient():
    # Caffe's power-2 branch is linear in x, so a zero base gives 0 rather than 0 / 0.
    _, dx = run("type: 'Power' power_param { power: 2 scale: 2 shift: -1 }", np.array([0.5]))
    np.testing.assert_array_equal(dx, [0.0])


EXP_CASES = ["", "base: 2 scale: 0.5 shift: 0.3", "base: -1 scale: -1.5 shift: 1",
             "base: 0.5 shift: -2", "base: 1 scale: 3"]


@pytest.mark.parametrize("params", EXP_CASES)
def test_exp_gradient_and_formula(params):
    param = f"type: 'Exp' exp_param {{ {params} }}"
    gradient_check(param, [(3, 5)])
    p = dict(base=-1.0, scale=1.0, shift=0.0)
    for key, value in zip(params.split()[::2], params.split()[1::2]):
        p[key.rstrip(":")] = float(np.float32(value))
    base = np.e if p["base"] == -1 else p["base"]
    x = np.linspace(-1, 1, 15).reshape(3, 5)
    y, dx = run(param, x)
    np.testing.assert_allclose(y, base ** (p["shift"] + p["scale"] * x), rtol=1e-12)
    np.testing.assert_allclose(dx, y * np.log(base) * p["scale"], rtol=1e-12, atol=1e-15)


LOG_CASES = ["", "base: 10 scale: 1.5 shift: 0.1", "base: 2 scale: -1 shift: 3",
             "base: 0.5", "scale: 0.5 shift: 1"]


@pytest.mark.parametrize("params", LOG_CASES)
def test_log_gradient_and_formula(params):
    param = f"type: 'Log' log_param {{ {params} }}"
    p = dict(base=-1.0, scale=1.0, shift=0.0)
    for key, value in zip(params.split()[::2], params.split()[1::2]):
        p[key.rstrip(":")] = float(np.float32(value))
    x = np.random.default_rng(2).uniform(0.5, 1.5, size=(3, 5))
    gradient_check(param, [(3, 5)], bottom_values=[x])
    y, dx = run(param, x)
    log_base = 1.0 if p["base"] == -1 else np.log(p["base"])
    np.testing.assert_allclose(y, np.log(p["shift"] + p["scale"] * x) / log_base, rtol=1e-12)
    np.testing.assert_allclose(dx, p["scale"] / (log_base * (p["shift"] + p["scale"] * x)),
                               rtol=1e-12)


@pytest.mark.parametrize("param", [
    "type: 'Power' power_param { power: 2.5 scale: 0.8 shift: 3 }",
    "type: 'Power' power_param { power: 3 scale: -0.7 }",
    "type: 'Power' power_param { power: 2 scale: 1.5 shift: -0.3 }",
    "type: 'Exp' exp_param { base: 2 scale: 0.5 shift: 0.3 }",
    "type: 'Log' log_param { base: 10 scale: 1.5 shift: 4 }",
])
def test_in_place_matches_separate_blobs(param):
    check_in_place(param, (2, 3, 5))


@pytest.mark.parametrize("param, message", [
    ("type: 'Exp' exp_param { base: -2 }", "base must be strictly positive"),
    ("type: 'Exp' exp_param { base: 0 }", "base must be strictly positive"),
    ("type: 'Log' log_param { base: -0.5 }", "base must be strictly positive"),
    ("type: 'Log' log_param { base: 1 }", r"log\(base\) = 0"),
    ("type: 'Exp' exp_param { base: inf }", r"log\(base\) = log\(inf\) is not finite"),
])
def test_base_errors(param, message):
    layer = make_layer(param)
    with pytest.raises(LayerError, match=message):
        layer.SetUp([Blob((2, 3))], [Blob()])
