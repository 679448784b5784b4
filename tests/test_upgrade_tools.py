"""upgrade_net_proto_text, upgrade_net_proto_binary, upgrade_solver_proto_text: V1 nets and old
solvers rewritten in the current format, and the upgraded net computing what the original does."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from caffe.errors import SolverError
from caffe.proto import caffe_pb2
from caffe.tools import cli, upgrade_net_proto_binary, upgrade_net_proto_text
from caffe.tools import upgrade_solver_proto_text as upgrade_solver

NETS = Path(__file__).parent / "golden" / "nets"


def read_text(path, message):
    return text_format.Parse(Path(path).read_text(), message)


def no_temp_files(folder: Path) -> bool:
    return not any(p.name.startswith(".tmp-") for p in folder.iterdir())


def test_text_upgrade_of_legacy_v1(tmp_path):
    out = tmp_path / "v2.prototxt"
    assert upgrade_net_proto_text.main([str(NETS / "legacy_v1.prototxt"), str(out)]) == 0
    text = out.read_text()
    assert "layers {" not in text and "input:" not in text and "input_dim" not in text
    assert text.count("layer {") == 6
    net = read_text(out, caffe_pb2.NetParameter())
    assert net.name == "LegacyV1" and len(net.layers) == 0 and len(net.input) == 0
    assert [(lp.name, lp.type) for lp in net.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"),
        ("fc", "InnerProduct"), ("prob", "Softmax")]
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3, 10, 10]
    conv1 = net.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    assert conv1.convolution_param.num_output == 4
    assert conv1.convolution_param.bias_filler.value == pytest.approx(0.1)
    assert net.layer[3].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert list(net.layer[2].bottom) == list(net.layer[2].top) == ["conv1"]
    assert no_temp_files(tmp_path)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_current_format_is_copied_with_a_note(tmp_path):
    out = tmp_path / "lenet_copy.prototxt"
    # The caffe logger may not propagate (the CLI installs glog output), so listen on it.
    records = Records()
    logger = logging.getLogger("caffe")
    logger.addHandler(records)
    try:
        assert upgrade_net_proto_text.main([str(NETS / "lenet.prototxt"), str(out)]) == 0
    finally:
        logger.removeHandler(records)
    assert any("File already in latest proto format" in m for m in records.messages)
    original = read_text(NETS / "lenet.prototxt", caffe_pb2.NetParameter())
    assert read_text(out, caffe_pb2.NetParameter()) == original


def v1_caffemodel() -> caffe_pb2.NetParameter:
    """legacy_v1's V1 definition carrying the weights of Caffe's caffemodel, as an old
    binary snapshot would."""
    v1 = read_text(NETS / "legacy_v1.prototxt", caffe_pb2.NetParameter())
    trained = caffe_pb2.NetParameter()
    trained.ParseFromString((NETS / "legacy_v1.caffemodel").read_bytes())
    weights = {lp.name: lp.blobs for lp in trained.layer}
    for layer in v1.layers:
        layer.blobs.extend(weights.get(layer.name, []))
    return v1


def test_binary_upgrade(tmp_path):
    source = tmp_path / "v1.caffemodel"
    source.write_bytes(v1_caffemodel().SerializeToString())
    out = tmp_path / "v2.caffemodel"
    assert upgrade_net_proto_binary.main([str(source), str(out)]) == 0
    net = caffe_pb2.NetParameter()
    net.ParseFromString(out.read_bytes())
    assert len(net.layers) == 0
    assert [lp.type for lp in net.layer] == ["Input", "Convolution", "ReLU", "Pooling",
                                             "InnerProduct", "Softmax"]
    assert [list(b.shape.dim) or [b.num, b.channels, b.height, b.width]
            for b in net.layer[1].blobs] in ([[4, 3, 3, 3], [4]], [[4, 3, 3, 3], [1, 1, 1, 4]])
    assert no_temp_files(tmp_path)


def _caffe_or_skip():
    caffe = pytest.importorskip("caffe")
    missing = {"Input", "Convolution", "ReLU", "Pooling", "InnerProduct", "Softmax"} \
        - set(caffe.layer_type_list())
    if missing:
        pytest.skip(f"layers not yet available: {sorted(missing)}")
    return caffe


def test_upgraded_net_computes_what_the_original_does(tmp_path):
    caffe = _caffe_or_skip()
    text_out = tmp_path / "v2.prototxt"
    assert upgrade_net_proto_text.main([str(NETS / "legacy_v1.prototxt"), str(text_out)]) == 0
    v1_weights = tmp_path / "v1.caffemodel"
    v1_weights.write_bytes(v1_caffemodel().SerializeToString())
    binary_out = tmp_path / "v2.caffemodel"
    assert upgrade_net_proto_binary.main([str(v1_weights), str(binary_out)]) == 0

    with np.load(NETS / "legacy_v1.npz") as golden:
        data = golden["input/data"]
        expected = {k[len("blob/"):]: golden[k] for k in golden.files if k.startswith("blob/")}
    original = caffe.Net(str(NETS / "legacy_v1.prototxt"), str(NETS / "legacy_v1.caffemodel"),
                         caffe.TEST)
    upgraded = caffe.Net(str(text_out), str(binary_out), caffe.TEST)
    out_original = original.forward(data=data)
    out_upgraded = upgraded.forward(data=data)
    assert list(out_upgraded) == list(out_original) == ["prob"]
    np.testing.assert_array_equal(out_upgraded["prob"], out_original["prob"])
    # Against C++ Caffe's blobs: the golden forward tolerance (layer_case.FWD_TOL, derived there).
    for name, value in expected.items():
        np.testing.assert_allclose(upgraded.blobs[name].data, value, rtol=1e-4, atol=1e-5,
                                   err_msg=name)


OLD_SOLVER = """\
net: "lenet_train_test.prototxt"
test_iter: 100
test_interval: 500
base_lr: 0.01
momentum: 0.9
lr_policy: "inv"
gamma: 0.0001
power: 0.75
max_iter: 10000
solver_type: NESTEROV
"""


def test_solver_upgrade(tmp_path):
    source = tmp_path / "old_solver.prototxt"
    source.write_text(OLD_SOLVER)
    out = tmp_path / "solver.prototxt"
    assert upgrade_solver.main([str(source), str(out)]) == 0
    text = out.read_text()
    assert "solver_type" not in text and 'type: "Nesterov"' in text
    solver = read_text(out, caffe_pb2.SolverParameter())
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert (solver.base_lr, solver.max_iter, solver.lr_policy) == (pytest.approx(0.01), 10000,
                                                                     "inv")
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("old, new", [("SGD", "SGD"), ("ADAGRAD", "AdaGrad"),
                                      ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"),
                                      ("ADAM", "Adam")])
def test_solver_type_names(tmp_path, old, new):
    source = tmp_path / "old.prototxt"
    source.write_text(OLD_SOLVER.replace("NESTEROV", old))
    out = tmp_path / "new.prototxt"
    assert upgrade_solver.main([str(source), str(out)]) == 0
    assert read_text(out, caffe_pb2.SolverParameter()).type == new


def test_solver_with_both_fields_is_refused(tmp_path):
    source = tmp_path / "both.prototxt"
    source.write_text(OLD_SOLVER + 'type: "Adam"\n')
    with pytest.raises(SolverError, match="cannot be both specified"):
        upgrade_solver.main([str(source), str(tmp_path / "out.prototxt")])
    assert cli.run("upgrade_solver_proto_text", [str(source), str(tmp_path / "o.prototxt")]) == 1
    assert not (tmp_path / "o.prototxt").exists()


def test_usage_and_parse_errors(tmp_path):
    assert upgrade_net_proto_text.main([str(NETS / "legacy_v1.prototxt")]) == 1
    assert upgrade_solver.main([]) == 1
    garbage = tmp_path / "bad.prototxt"
    garbage.write_text("layers { name: 'x' type: \n")
    assert upgrade_net_proto_text.main([str(garbage), str(tmp_path / "o.prototxt")]) == 2
    assert upgrade_solver.main([str(garbage), str(tmp_path / "o.prototxt")]) == 2
    binary_garbage = tmp_path / "bad.caffemodel"
    binary_garbage.write_bytes(b"\xff\xff\xff\xff")
    assert upgrade_net_proto_binary.main([str(binary_garbage), str(tmp_path / "o.bin")]) == 2
    assert upgrade_net_proto_text.main([str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert not os.path.exists(tmp_path / "o.prototxt")


def test_tools_are_caffe_commands():
    table = cli.commands()
    for name in ("upgrade_net_proto_text", "upgrade_net_proto_binary",
                 "upgrade_solver_proto_text", "draw_net", "parse_log", "plot_training_log"):
        assert name in table
        assert table[name].__doc__.strip()
