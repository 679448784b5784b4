"""caffe.testing.test_gradient_for_python_layer: the Python-layer tutorials' gradient test."""

import inspect
import re

import numpy as np
import pytest

import caffe
from caffe import testing


class WeightedProduct(caffe.Layer):
    """y = w * a * b (elementwise) with a learnable scalar w added in setup."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str or 1.5)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data * bottom[1].data

    def backward(self, top, propagate_down, bottom):
        w, a, b, dy = self.blobs[0].data[0], bottom[0].data, bottom[1].data, top[0].diff
        self.blobs[0].diff[0] += np.sum(dy * a * b)
        if propagate_down[0]:
            bottom[0].diff[...] = w * dy * b
        if propagate_down[1]:
            bottom[1].diff[...] = w * dy * a


class WrongCube(caffe.Layer):
    """y = x^3 with a wrong backward: 3x^2 everywhere except 2x^2 at element (1, 2)."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data ** 3

    def backward(self, top, propagate_down, bottom):
        factor = np.full(bottom[0].data.shape, 3.0)
        factor[1, 2] = 2.0
        bottom[0].diff[...] = factor * bottom[0].data ** 2 * top[0].diff


class SquaredLossToTarget(caffe.Layer):
    """loss = sum((x - t)^2) / 2 with no gradient to the target t (it raises if asked)."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[0] = np.sum((bottom[0].data - bottom[1].data) ** 2) / 2

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise RuntimeError("no gradient to the target")
        bottom[0].diff[...] = (bottom[0].data - bottom[1].data) * top[0].diff[0]


def _inputs(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"in{i}", rng.uniform(-1, 1, size=s)) for i, s in enumerate(shapes)]


def test_signature_is_the_tutorials():
    params = list(inspect.signature(testing.test_gradient_for_python_layer).parameters.values())
    assert [(p.name, p.default) for p in params] == [
        ("input_names_and_values", inspect.Parameter.empty),
        ("output_names", inspect.Parameter.empty), ("py_module", inspect.Parameter.empty),
        ("py_layer", inspect.Parameter.empty), ("param_str", None), ("propagate_down", None)]
    assert testing.test_gradient_for_python_layer.__test__ is False


def test_correct_layer_passes_with_params_and_param_str():
    testing.test_gradient_for_python_layer(_inputs((2, 3), (2, 3)), ["y"],
                                           "test_pylayer_gradient", "WeightedProduct",
                                           param_str="0.7")


def test_propagate_down_skips_inputs_without_gradient():
    testing.test_gradient_for_python_layer(_inputs((3, 4), (3, 4)), ["loss"],
                                           "test_pylayer_gradient", "SquaredLossToTarget",
                                           propagate_down=[True, False])


def test_wrong_backward_names_the_worst_element():
    values = [("x", np.linspace(0.5, 1.6, 12).reshape(3, 4))]
    with pytest.raises(AssertionError) as info:
        testing.test_gradient_for_python_layer(values, ["y"], "test_pylayer_gradient",
                                               "WrongCube")
    message = str(info.value)
    # Objective sum(y^2)/2 = sum(x^6)/2: numeric dE/dx = 3 x^5; the wrong analytic one 2 x^5.
    x = values[0][1][1, 2]
    assert "bottom 'x' index (1, 2)" in message
    analytic = float(re.search(r"analytic ([-\d.e+]+)", message).group(1))
    numeric = float(re.search(r"numeric ([-\d.e+]+)", message).group(1))
    # printed with 6 significant digits: relative 1e-5; the finite difference adds O(h^2) ~ 1e-5
    np.testing.assert_allclose(analytic, 2 * x ** 5, rtol=1e-5)
    np.testing.assert_allclose(numeric, 3 * x ** 5, rtol=1e-4)


def test_propagate_down_must_match_the_inputs():
    with pytest.raises(ValueError, match="propagate_down has 1 entries for 2 inputs"):
        testing.test_gradient_for_python_layer(_inputs((2,), (2,)), ["y"],
                                               "test_pylayer_gradient", "WeightedProduct",
                                               propagate_down=[True])
