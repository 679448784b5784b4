"""Exceptions from Python layers reach the caller as pycaffe let them through: the same object
of the same type, with caffepy's context (layer, module.class, method, prototxt line, shapes)
attached as PEP 678 notes. Caffe's own errors are RuntimeErrors, as pycaffe's were.

The layers below live in this module; the prototxts name it as their python_param module.
"""

import numpy as np
import pytest

import caffe
import caffe.errors
from caffe.errors import CaffeError, LayerError, NetError, add_note
from caffe.net import Net

from layer_case import make_layer

MODULE = __name__
RAISED = []  # what the layers raised, to check the caller gets the very same object


class UserError(Exception):
    """A user's own exception class, with a constructor Caffe could not call again."""

    def __init__(self, code, detail):
        super().__init__(f"user error {code}: {detail}")
        self.code = code


KINDS = {
    "RuntimeError": lambda: RuntimeError("runtime trouble"),
    "ValueError": lambda: ValueError("bad value"),
    "UserError": lambda: UserError(42, "custom"),
}


class RaisesIn(caffe.Layer):
    """Raises the exception ``param_str`` names ("method kind") in that method."""

    def _maybe_raise(self, method):
        where, kind = self.param_str.split()
        if where == method:
            RAISED.append(KINDS[kind]())
            raise RAISED[-1]

    def setup(self, bottom, top):
        self._maybe_raise("setup")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
        self._maybe_raise("reshape")

    def forward(self, bottom, top):
        self._maybe_raise("forward")
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self._maybe_raise("backward")


class RaisesCaffeError(caffe.Layer):
    def setup(self, bottom, top):
        raise LayerError("python_param param_str is empty")


NET = """force_backward: true
layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'user' type: 'Python' bottom: 'x' top: 'y'
        python_param { module: '%s' layer: '%s' param_str: '%s' } }
layer { name: 'loss' type: 'EuclideanLoss' bottom: 'y' bottom: 'x' top: 'loss' }
"""


def build(tmp_path, layer, param_str=""):
    path = tmp_path / "user.prototxt"
    path.write_text(NET % (MODULE, layer, param_str))
    return str(path)


def run_to(method, path):
    net = Net(path, caffe.TRAIN)  # setup and reshape run here
    net.forward()
    if method == "backward":
        net.backward()


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("method", ["setup", "reshape", "forward", "backward"])
def test_user_exception_keeps_its_type_and_identity(tmp_path, method, kind):
    path = build(tmp_path, "RaisesIn", f"{method} {kind}")
    RAISED.clear()
    with pytest.raises(Exception) as info:
        run_to(method, path)
    assert info.value is RAISED[-1]  # the user's object itself, not a wrapper
    assert type(info.value) is type(RAISED[-1])
    assert not isinstance(info.value, CaffeError)
    assert str(info.value) == str(KINDS[kind]())  # message untouched
    notes = info.value.__notes__
    assert notes[0] == f"Python layer 'user' ({MODULE}.RaisesIn) raised in {method}()"
    # setup and the first reshape run while the net is built; later reshapes in forward
    net_step = {"setup": "setup", "reshape": "setup"}.get(method, method)
    shapes = "bottom shapes [[2, 3]]"
    if method == "backward":
        shapes = "top shapes [[2, 3]], " + shapes
    assert notes[1] == (f"{path}:3: layer 'user' (type Python) failed in {net_step} with "
                        f"{shapes}")
    assert len(notes) == 2


def test_except_clauses_written_for_pycaffe_catch_the_users_exception(tmp_path):
    path = build(tmp_path, "RaisesIn", "forward UserError")
    try:
        run_to("forward", path)
    except UserError as exc:  # pycaffe scripts catch their own classes
        assert exc.code == 42
    else:
        pytest.fail("UserError did not reach the caller")
    with pytest.raises(RuntimeError, match="runtime trouble"):
        run_to("forward", build(tmp_path, "RaisesIn", "forward RuntimeError"))


def test_reshape_during_forward_notes_the_forward(tmp_path):
    net = Net(build(tmp_path, "RaisesIn", "none none"), caffe.TRAIN)
    net.layer_dict["user"].param_str = "reshape ValueError"  # Forward reshapes, then forwards
    with pytest.raises(ValueError) as info:
        net.forward()
    assert info.value.__notes__[0].endswith("raised in reshape()")
    assert "failed in forward with bottom shapes [[2, 3]]" in info.value.__notes__[1]


def test_standalone_python_layer_notes_only_what_it_knows():
    layer = make_layer(f"type: 'Python' python_param {{ module: '{MODULE}' layer: 'RaisesIn' "
                       f"param_str: 'forward ValueError' }}")
    from caffe.blob import Blob

    bottom, top = [Blob([2])], [Blob()]
    layer.SetUp(bottom, top)
    with pytest.raises(ValueError, match="bad value") as info:
        layer.Forward(bottom, top)
    assert info.value.__notes__ == [f"Python layer 'L' ({MODULE}.RaisesIn) raised in forward()"]


def test_caffe_errors_from_python_layers_keep_the_nets_context(tmp_path):
    path = build(tmp_path, "RaisesCaffeError")
    with pytest.raises(LayerError, match=rf"{path}:3: python_param param_str is empty "
                                         rf"\(bottom shapes \[\[2, 3\]\]\)"):
        Net(path, caffe.TRAIN)


@pytest.mark.parametrize("method", ["forward", "backward"])
def test_foreign_exceptions_of_builtin_layers_are_still_wrapped(tmp_path, method):
    net = Net(build(tmp_path, "RaisesIn", "none none"), caffe.TRAIN)
    net.forward()

    def bug(*args):
        return 1 / 0

    setattr(net.layer_dict["loss"], method, bug)  # a torch/numpy bug inside the EuclideanLoss layer
    with pytest.raises(NetError, match=rf"user.prototxt:5: layer 'loss' \(type EuclideanLoss\) "
                                       rf"failed in {method} with .*ZeroDivisionError") as info:
        net.forward_backward()
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_caffe_errors_are_runtime_errors(tmp_path):
    assert issubclass(CaffeError, RuntimeError)
    path = tmp_path / "bad.prototxt"
    path.write_text("layer { name: 'r' type: 'ReLU' bottom: 'nowhere' top: 'y' }")
    with pytest.raises(RuntimeError, match="Unknown bottom blob 'nowhere'"):
        Net(str(path), caffe.TEST)
    try:
        Net(str(path), caffe.TEST)
    except Exception as exc:  # pycaffe-era catch-alls still catch them
        assert isinstance(exc, NetError)


@pytest.mark.parametrize("has_add_note", [
    pytest.param(True, marks=pytest.mark.skipif(not hasattr(BaseException, "add_note"),
                                                reason="BaseException.add_note is 3.11+")),
    False,
])
def test_add_note_helper_on_every_python(monkeypatch, has_add_note):
    """3.11+ uses BaseException.add_note; 3.9/3.10 get the same ``__notes__`` list by hand."""
    monkeypatch.setattr(caffe.errors, "_HAS_ADD_NOTE", has_add_note)
    exc = KeyError("k")
    add_note(exc, "first")
    add_note(exc, "second")
    assert exc.__notes__ == ["first", "second"]
    assert type(exc) is KeyError and exc.args == ("k",)


def test_net_runs_after_a_python_layer_error(tmp_path):
    """The net is left usable: fix the layer's parameter and run again."""
    net = Net(build(tmp_path, "RaisesIn", "forward ValueError"), caffe.TRAIN)
    with pytest.raises(ValueError):
        net.forward()
    net.layer_dict["user"].param_str = "none none"
    net.blobs["x"].data[...] = np.ones((2, 3))
    assert float(net.forward()["loss"]) == 0.0  # y == x
