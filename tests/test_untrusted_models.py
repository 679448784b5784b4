"""Untrusted-model mode: Python layers refused before their module is imported
(``caffe.Net(..., allow_python_layers=False)``, ``CAFFE_ALLOW_PYTHON_LAYERS=0``, the tools'
``-allow_python_layers`` flag), and Python layer import / ``__init__`` / setup errors that
become caffe errors chained to the user's exception."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import caffe
from caffe.errors import LayerError, NetError
from caffe.tools import draw_net as draw_net_tool
from caffe.tools import time as time_tool
from caffe.tools import train as train_tool
from caffe.tools import upgrade_net_proto_text

_counter = itertools.count()

# A layer class the modules below define after their top-level code: y = 2x.
LAYER_CLASS = """
import caffe

class Double(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
"""


def write_module(tmp_path: Path, monkeypatch, body: str) -> str:
    """Write ``body`` as a fresh module (unique name, so no cached import) into ``tmp_path``,
    put ``tmp_path`` on sys.path, and return the module name."""
    name = f"untrusted_mod_{os.getpid()}_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def trap_module(tmp_path: Path, monkeypatch) -> tuple[str, Path]:
    """A module whose import writes a marker file (stands for arbitrary code run at load)."""
    marker = tmp_path / "imported.txt"
    name = write_module(tmp_path, monkeypatch,
                        f"open({str(marker)!r}, 'w').write('ran at import')\n" + LAYER_CLASS)
    return name, marker


def net_file(tmp_path: Path, module: str, layer: str = "Double", extra: str = "") -> Path:
    path = tmp_path / f"net_{module}.prototxt"
    path.write_text(textwrap.dedent(f"""\
        name: "untrusted"
        layer {{ name: "data" type: "Input" top: "data"
                input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
        layer {{
          name: "py"
          type: "Python"
          bottom: "data"
          top: "out"
          python_param {{ module: "{module}" layer: "{layer}" }}
          {extra}
        }}
        """))
    return path


# --- refusing Python layers ---------------------------------------------------------------------
def test_refused_with_keyword_before_import(tmp_path, monkeypatch):
    module, marker = trap_module(tmp_path, monkeypatch)
    path = net_file(tmp_path, module)
    with pytest.raises(NetError) as info:
        caffe.Net(str(path), caffe.TEST, allow_python_layers=False)
    message = str(info.value)
    assert f"{path}:5" in message  # line 5 is `name: "py"`
    assert "'py'" in message and repr(module) in message
    assert "allow_python_layers=True" in message and "CAFFE_ALLOW_PYTHON_LAYERS=1" in message
    assert not marker.exists()
    assert module not in sys.modules


def test_refused_with_environment_variable_in_subprocess(tmp_path, monkeypatch):
    module, marker = trap_module(tmp_path, monkeypatch)
    path = net_file(tmp_path, module)
    env = dict(os.environ, CAFFE_ALLOW_PYTHON_LAYERS="0",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    script = f"import caffe; caffe.Net({str(path)!r}, caffe.TEST)"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "NetError" in done.stderr and module in done.stderr
    assert not marker.exists()
    # The keyword overrides the environment: the same net loads (and imports) when asked.
    script = f"import caffe; caffe.Net({str(path)!r}, caffe.TEST, allow_python_layers=True)"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert marker.exists()


def test_environment_variable_in_process(tmp_path, monkeypatch):
    module, marker = trap_module(tmp_path, monkeypatch)
    path = net_file(tmp_path, module)
    monkeypatch.setenv("CAFFE_ALLOW_PYTHON_LAYERS", "false")
    with pytest.raises(NetError, match="is a Python layer"):
        caffe.Net(str(path), caffe.TEST)
    assert not marker.exists()
    monkeypatch.setenv("CAFFE_ALLOW_PYTHON_LAYERS", "maybe")
    with pytest.raises(caffe.errors.CaffeError, match="CAFFE_ALLOW_PYTHON_LAYERS='maybe'"):
        caffe.Net(str(path), caffe.TEST)
    assert not marker.exists()


def test_allowed_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFE_ALLOW_PYTHON_LAYERS", raising=False)
    module, marker = trap_module(tmp_path, monkeypatch)
    net = caffe.Net(str(net_file(tmp_path, module)), caffe.TEST)
    assert marker.exists()
    net.blobs["data"].data[...] = 1.5
    # 2 * 1.5 = 3 exactly in float32.
    assert (net.forward()["out"] == 3.0).all()


def test_layers_filtered_out_by_phase_are_not_refused(tmp_path, monkeypatch):
    module, marker = trap_module(tmp_path, monkeypatch)
    path = net_file(tmp_path, module, extra="include { phase: TRAIN }")
    net = caffe.Net(str(path), caffe.TEST, allow_python_layers=False)
    assert list(net.blobs) == ["data"]
    assert not marker.exists()


# --- the tools ----------------------------------------------------------------------------------
def test_time_flag_refuses_and_allows(tmp_path, monkeypatch):
    module, marker = trap_module(tmp_path, monkeypatch)
    path = str(net_file(tmp_path, module))
    with pytest.raises(NetError, match="is a Python layer"):
        time_tool.main(["-model", path, "-iterations", "1", "-allow_python_layers", "false"])
    assert not marker.exists()
    monkeypatch.setenv("CAFFE_ALLOW_PYTHON_LAYERS", "0")  # the flag's default follows it
    with pytest.raises(NetError, match="is a Python layer"):
        time_tool.main(["-model", path, "-iterations", "1"])
    assert not marker.exists()
    assert time_tool.main(["-model", path, "-iterations", "1", "-allow_python_layers"]) == 0
    assert marker.exists()


def test_train_flag_refuses_and_restores_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFE_ALLOW_PYTHON_LAYERS", raising=False)
    module, marker = trap_module(tmp_path, monkeypatch)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net_file(tmp_path, module)}"\nbase_lr: 0.01\n'
                      f'lr_policy: "fixed"\nmax_iter: 1\nsolver_mode: CPU\n'
                      f'snapshot_prefix: "{tmp_path / "snap"}"\n')
    with pytest.raises(NetError, match="is a Python layer"):
        train_tool.main(["-solver", str(solver), "-noallow_python_layers"])
    assert not marker.exists()
    assert "CAFFE_ALLOW_PYTHON_LAYERS" not in os.environ


def test_draw_net_and_upgrade_never_import_python_layers(tmp_path, monkeypatch):
    """These tools only read the prototxt: they build no layer, so no module is imported."""
    monkeypatch.delenv("CAFFE_ALLOW_PYTHON_LAYERS", raising=False)
    module, marker = trap_module(tmp_path, monkeypatch)
    path = str(net_file(tmp_path, module))
    assert draw_net_tool.main([path, str(tmp_path / "net.dot")]) == 0
    assert "Python" in (tmp_path / "net.dot").read_text()
    upgrade_net_proto_text.main([path, str(tmp_path / "upgraded.prototxt")])
    assert module in (tmp_path / "upgraded.prototxt").read_text()
    assert not marker.exists()
    assert module not in sys.modules


# --- Python layer errors become caffe errors, chained to the user's exception ------------------
@pytest.mark.parametrize("body, cause", [
    ("def broken(:\n", SyntaxError),
    ("raise ValueError('bad configuration at import')\n", ValueError),
    ("import caffe_no_such_module_here\n", ModuleNotFoundError),
])
def test_import_errors_become_layer_errors(tmp_path, monkeypatch, body, cause):
    module = write_module(tmp_path, monkeypatch, body)
    path = net_file(tmp_path, module)
    with pytest.raises(LayerError) as info:
        caffe.Net(str(path), caffe.TEST)
    message = str(info.value)
    assert f"{path}:5" in message and "'py'" in message and module in message
    assert type(info.value.__cause__) is cause
    assert info.value.__cause__.__traceback__ is not None


def test_missing_module_is_chained(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    path = net_file(tmp_path, "caffe_no_such_layer_module")
    with pytest.raises(LayerError, match="cannot import module") as info:
        caffe.Net(str(path), caffe.TEST)
    assert isinstance(info.value.__cause__, ImportError)


def test_layer_init_error_becomes_layer_error(tmp_path, monkeypatch):
    module = write_module(tmp_path, monkeypatch, LAYER_CLASS + """
class BadInit(Double):
    def __init__(self, param, *args):
        raise KeyError('needs a key')
""")
    path = net_file(tmp_path, module, layer="BadInit")
    with pytest.raises(LayerError, match=r"BadInit.__init__ raised KeyError") as info:
        caffe.Net(str(path), caffe.TEST)
    assert "'py'" in str(info.value) and f"{path}:5" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_setup_caffe_error_keeps_user_traceback(tmp_path, monkeypatch):
    module = write_module(tmp_path, monkeypatch, LAYER_CLASS + """
class BadSetup(Double):
    def setup(self, bottom, top):
        raise caffe.errors.LayerError('setup refuses this bottom')
""")
    path = net_file(tmp_path, module, layer="BadSetup")
    with pytest.raises(LayerError, match="setup refuses this bottom") as info:
        caffe.Net(str(path), caffe.TEST)
    assert f"{path}:5" in str(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, LayerError) and str(cause) == "setup refuses this bottom"
    frames = []
    tb = cause.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "setup" in frames  # the user's frame is kept
