"""``caffe export``: writes ONNX / PyTorch source, prints what it wrote and its check against
caffepy; bad input is one caffe error line and exit status 1."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from caffe.tools import cli

from export_helpers import exporter

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 bias_term: false
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv"
        scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

CHECK = re.compile(r"Check (\S+): max abs difference (\S+), relative to max \|\S+\| (\S+) "
                   r"\(shape \[(.*)\]\)")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(NET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _checks(out: str) -> dict[str, tuple[float, float, str]]:
    return {m[1]: (float(m[2]), float(m[3]), m[4]) for m in map(CHECK.fullmatch,
                                                                out.splitlines()) if m}


# The check compares two float32 evaluations of a 3x3x3 conv (27 terms), an average pool and
# a 20-term inner product feeding a softmax: far below 1e-5 relative (tests/tolerance.py:
# (n - 1) * eps * sum|x| ~ 27 * 1.2e-7 per layer); a wrong export is off by 1e-2 or more.
CHECK_BOUND = 1e-5


@pytest.mark.parametrize("fold", [False, True])
def test_export_onnx_prints_what_it_wrote_and_the_check(workdir, capsys, fold):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    exporter("to_onnx")
    argv = ["export", "-model", "net.prototxt", "-format", "onnx", "-output", "out/m.onnx"]
    assert cli.main(argv + (["-fold"] if fold else [])) == 0
    out = capsys.readouterr().out
    assert f"Wrote {workdir / 'out' / 'm.onnx'}" in out or "Wrote out/m.onnx" in out, out
    checks = _checks(out)
    assert list(checks) == ["prob"], out
    abs_diff, rel_diff, shape = checks["prob"]
    assert shape == "2, 5" and abs_diff <= CHECK_BOUND and rel_diff <= CHECK_BOUND
    session = ort.InferenceSession(str(workdir / "out" / "m.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"]
    assert [o.name for o in session.get_outputs()] == ["prob"]


def test_export_pytorch_writes_model_py_and_weights(workdir, capsys):
    exporter("write_pytorch")
    assert cli.main(["export", "-model", "net.prototxt", "-format", "pytorch",
                     "-output", "pt"]) == 0
    out = capsys.readouterr().out
    wrote = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("Wrote ")]
    assert sorted(p.rsplit("/", 1)[-1] for p in wrote) == ["model.py", "weights.pt"], out
    assert (workdir / "pt" / "model.py").is_file() and (workdir / "pt" / "weights.pt").is_file()
    abs_diff, rel_diff, _ = _checks(out)["prob"]
    assert abs_diff <= CHECK_BOUND and rel_diff <= CHECK_BOUND


def test_export_part_of_a_net_and_nocheck(workdir, capsys):
    pytest.importorskip("onnxruntime")
    exporter("to_onnx")
    assert cli.main(["export", "-model", "net.prototxt", "-format", "onnx", "-output",
                     "part.onnx", "-outputs", "pool"]) == 0
    checks = _checks(capsys.readouterr().out)
    assert list(checks) == ["pool"] and checks["pool"][2] == "2, 4, 4, 4"
    assert cli.main(["export", "-model", "net.prototxt", "-format", "onnx", "-output",
                     "nocheck.onnx", "-nocheck"]) == 0
    out = capsys.readouterr().out
    assert "Wrote" in out and "Check" not in out


class _Shift(torch.nn.Module):
    """An exported module with 0.25 added to every output."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        out = self.inner(*args)
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        return tuple(o + 0.25 for o in out)


def test_the_check_sees_a_wrong_export(workdir, capsys, monkeypatch):
    """The printed difference is measured: an exporter whose module is off by 0.25 shows
    0.25 (through -format torchscript, which traces to_torch's module)."""
    to_torch = exporter("to_torch")
    import caffe.export

    monkeypatch.setattr(caffe.export, "to_torch",
                        lambda net, **kwargs: _Shift(to_torch(net, **kwargs)), raising=False)
    assert cli.main(["export", "-model", "net.prototxt", "-format", "torchscript",
                     "-output", "m.pt"]) == 0
    abs_diff, _, _ = _checks(capsys.readouterr().out)["prob"]
    assert abs_diff == pytest.approx(0.25, rel=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["-format", "onnx", "-output", "x.onnx"], r"Need a model definition to export"),
    (["-model", "net.prototxt", "-format", "keras", "-output", "x"],
     r"-format 'keras': expected one of pytorch, onnx, torchscript"),
    (["-model", "net.prototxt", "-format", "onnx"], r"Need an output path \(-output FILE\)"),
    (["-model", "missing.prototxt", "-format", "onnx", "-output", "x.onnx"], r"missing"),
    (["-model", "net.prototxt", "-format", "pytorch", "-output", "x", "-fold",
      "-phase", "TRAIN"], r"TRAIN"),
    (["-model", "net.prototxt", "-fromat", "onnx", "-output", "x.onnx"],
     r"unknown command line flag 'fromat' \(did you mean -format\?\)"),
])
def test_export_errors_are_one_caffe_line(workdir, capsys, argv, message):
    if "-fold" in argv:
        exporter("write_pytorch")
    assert cli.main(["export", *argv]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("caffe export: error:")]
    assert len(lines) == 1 and re.search(message, lines[0]), err[-2000:]
    assert "Traceback" not in err


def test_random_inputs_are_reproducible(workdir):
    """The check's batch is a fixed-seed standard normal, so its printed numbers repeat."""
    import caffe
    from caffe.tools.export import random_inputs

    net = caffe.Net("net.prototxt", caffe.TEST)
    a = random_inputs(net, None)
    b = random_inputs(net, None)
    assert len(a) == 1 and a[0].shape == (2, 3, 9, 9) and a[0].dtype == np.float32
    np.testing.assert_array_equal(a[0], b[0])
