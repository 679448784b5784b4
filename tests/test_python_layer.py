"""Python layers: import from python_param, param_str, learnable blobs, training, gradient check,
and errors surfacing with the layer's name."""

import numpy as np
import pytest
import torch

import caffe
from caffe.blob import Blob
from caffe.errors import LayerError
from caffe.testing import GradientChecker

from layer_case import make_layer

NET = """
layer { name: 'in' type: 'Input' top: 'x' top: 'target'
        input_param { shape { dim: 8 dim: 2 } shape { dim: 8 dim: 2 } } }
layer { name: 'scale' type: 'Python' bottom: 'x' top: 'y'
        python_param { module: 'pylayers' layer: 'LearnedScale' } }
layer { name: 'twice' type: 'Python' bottom: 'y' top: 'z'
        python_param { module: 'pylayers' layer: 'TimesTwo' param_str: '3' } }
layer { name: 'loss' type: 'Python' bottom: 'z' bottom: 'target' top: 'loss' loss_weight: 1
        python_param { module: 'pylayers' layer: 'EuclideanLoss' } }
"""


def net_from(tmp_path, text):
    path = tmp_path / "py.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TRAIN)


def test_python_layer_net_trains(tmp_path):
    net = net_from(tmp_path, NET)
    assert net.layers[2].factor == 3.0  # param_str reached setup
    assert isinstance(net.layers[1], caffe.Layer) and net.layers[1].type == "Python"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 2)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["target"].data[...] = 1.5 * 3 * x  # optimum: w = 1.5
    losses = []
    for _ in range(60):
        net.clear_param_diffs()
        losses.append(net.forward_backward())
        net.params["scale"][0].diff[...] *= 0.05
        net.update()
    assert losses[-1] < 1e-3 * losses[0]
    assert net.params["scale"][0].data[0] == pytest.approx(1.5, rel=1e-2)


def test_python_layer_backward_passes_gradient_checker():
    layer = make_layer("type: 'Python' python_param { module: 'pylayers' layer: 'LearnedScale' }")
    bottom = [Blob([2, 3], dtype=torch.float64)]
    bottom[0].data[...] = np.random.default_rng(1).normal(size=(2, 3))
    top = [Blob(dtype=torch.float64)]
    GradientChecker(1e-3, 1e-3).check_gradient_exhaustive(layer, bottom, top)


def test_gradient_checker_catches_a_wrong_backward():
    layer = make_layer("type: 'Python' python_param { module: 'pylayers' layer: 'TimesTwo' }")
    layer.backward = lambda top, pd, bottom: bottom[0].diff.__setitem__(Ellipsis, top[0].diff)
    bottom = [Blob([3], dtype=torch.float64)]
    bottom[0].data[...] = [1, 2, 3]
    with pytest.raises(AssertionError, match="gradient"):
        GradientChecker(1e-3, 1e-3).check_gradient(layer, bottom, [Blob(dtype=torch.float64)])


def test_exception_in_python_layer_names_the_layer(tmp_path):
    net = net_from(tmp_path, """
        layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 } } }
        layer { name: 'bad' type: 'Python' bottom: 'x' top: 'y'
                python_param { module: 'pylayers' layer: 'Raising' } }""")
    # pycaffe lets the user's exception through unchanged; caffepy adds its context as notes.
    with pytest.raises(ValueError) as info:
        net.forward()
    assert str(info.value) == "boom in user code"
    notes = getattr(info.value, "__notes__", [])
    assert notes[0] == "Python layer 'bad' (pylayers.Raising) raised in forward()"
    assert "py.prototxt:3: layer 'bad' (type Python) failed in forward" in notes[1]


@pytest.mark.parametrize("param,message", [
    ("python_param { module: 'no_such_module' layer: 'X' }", "cannot import module"),
    ("python_param { module: 'pylayers' layer: 'Missing' }", "has no class 'Missing'"),
    ("python_param { module: 'numpy' layer: 'ndarray' }", "derived from caffe.Layer"),
])
def test_python_layer_import_errors(param, message):
    with pytest.raises(LayerError, match=message):
        make_layer(f"type: 'Python' {param}")
