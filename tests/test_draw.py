"""caffe.draw and the draw_net tool: graph structure of the golden nets (no Graphviz needed),
phase filtering, labels, and rendering to PNG/SVG when Graphviz's dot is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from caffe import draw
from caffe.errors import CaffeError, NetError
from caffe.net_spec import NetSpec
from caffe.net_spec import layers as L
from caffe.proto import caffe_pb2
from caffe.protoio import read_text_proto
from caffe.tools import draw_net as draw_net_tool

NETS = Path(__file__).parent / "golden" / "nets"

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot program is not installed")


def golden(name: str) -> caffe_pb2.NetParameter:
    return read_text_proto(NETS / f"{name}.prototxt", caffe_pb2.NetParameter())


def test_lenet_nodes_edges_and_in_place_relu():
    graph = draw.net_graph(golden("lenet"))
    assert graph.name == "LeNet"
    assert [n.name for n in graph.layer_nodes()] == [
        "data_Input", "conv1_Convolution", "pool1_Pooling", "conv2_Convolution",
        "pool2_Pooling", "ip1_InnerProduct", "relu1_ReLU", "ip2_InnerProduct", "prob_Softmax"]
    assert sorted(n.label for n in graph.blob_nodes()) == sorted(
        ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"])
    assert graph.edges == [
        ("data_Input", "data_blob", ""),
        ("data_blob", "conv1_Convolution", ""), ("conv1_Convolution", "conv1_blob", "20"),
        ("conv1_blob", "pool1_Pooling", ""), ("pool1_Pooling", "pool1_blob", ""),
        ("pool1_blob", "conv2_Convolution", ""), ("conv2_Convolution", "conv2_blob", "50"),
        ("conv2_blob", "pool2_Pooling", ""), ("pool2_Pooling", "pool2_blob", ""),
        ("pool2_blob", "ip1_InnerProduct", ""), ("ip1_InnerProduct", "ip1_blob", "500"),
        # The in-place ReLU reads and writes the same blob node.
        ("ip1_blob", "relu1_ReLU", ""), ("relu1_ReLU", "ip1_blob", ""),
        ("ip1_blob", "ip2_InnerProduct", ""), ("ip2_InnerProduct", "ip2_blob", "10"),
        ("ip2_blob", "prob_Softmax", ""), ("prob_Softmax", "prob_blob", ""),
    ]
    colors = {n.name: n.attrs["fillcolor"] for n in graph.layer_nodes()}
    assert colors["relu1_ReLU"] == draw.NEURON_LAYER_STYLE["fillcolor"]
    assert colors["conv1_Convolution"] == "#FF5050" and colors["pool1_Pooling"] == "#FF9900"
    assert colors["ip1_InnerProduct"] == "#CC33FF" and colors["prob_Softmax"] == "#6495ED"
    assert all(n.attrs["shape"] == "octagon" for n in graph.blob_nodes())
    assert all(n.attrs["shape"] == "record" for n in graph.layer_nodes())


def test_layer_labels_follow_rankdir_and_lrm():
    net = golden("lenet")
    conv1, pool1 = net.layer[1], net.layer[2]
    assert draw.get_layer_label(conv1, "LR") == \
        r"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"
    assert draw.get_layer_label(pool1, "TB") == \
        "pool1 (Pooling MAX) kernel size: 2 stride: 2 pad: 0"
    assert draw.get_layer_label(conv1, "BT", display_lrm=True).endswith("lr mult: 1.0, 2.0")
    assert "lr mult" not in draw.get_layer_label(pool1, "LR", display_lrm=True)
    assert draw.get_layer_lr_mult(net.layer[5]) == (1.0, 2.0)
    graph = draw.net_graph(net, "LR", display_lrm=True)
    assert graph.nodes["ip2_InnerProduct"].label.endswith(r"lr mult: 1.0, 2.0")
    with pytest.raises(ValueError, match="Pooling layers do not have a learning rate"):
        draw.get_layer_lr_mult(pool1)
    # Record-label syntax in a name is escaped, so dot reads it as text.
    odd = caffe_pb2.LayerParameter(name="a{b}|<c>", type="ReLU")
    assert draw.get_layer_label(odd, "TB") == r"a\{b\}\|\<c\> (ReLU)"


def test_edge_labels_can_be_turned_off():
    graph = draw.net_graph(golden("lenet"), label_edges=False)
    assert all(label == "" for _, _, label in graph.edges)


def test_mini_inception_branches_and_concat():
    graph = draw.net_graph(golden("mini_inception"))
    consumers = sorted(dst for src, dst, _ in graph.edges if src == "norm1_blob")
    assert consumers == ["b1_Convolution", "b3r_Convolution", "b5_Convolution", "bp_Pooling"]
    assert [src for src, dst, _ in graph.edges if dst == "cat_Concat"] == \
        ["b1_blob", "b3_blob", "b5_blob", "bpp_blob"]
    in_place = {n.name for n in graph.layer_nodes()
                if n.attrs["fillcolor"] == draw.NEURON_LAYER_STYLE["fillcolor"]}
    assert in_place == {"relu1_ReLU", "b3r_relu_ReLU", "drop_Dropout"}
    # Split layers are the Net's business, not the drawing's.
    assert not any("split" in n.name for n in graph.nodes.values())
    # The legacy "input:" field names a blob that only appears as a bottom.
    assert "data_blob" in graph.nodes and len(graph.layer_nodes()) == 15
    assert "global" in graph.nodes["gap_Pooling"].label


def test_mini_resnet_in_place_chain_and_residual_sum():
    graph = draw.net_graph(golden("mini_resnet"))
    on_conv1 = [(s, d) for s, d, _ in graph.edges if "conv1_blob" in (s, d)]
    assert on_conv1 == [
        ("conv1_Convolution", "conv1_blob"),
        ("conv1_blob", "bn1_BatchNorm"), ("bn1_BatchNorm", "conv1_blob"),
        ("conv1_blob", "sc1_Scale"), ("sc1_Scale", "conv1_blob"),
        ("conv1_blob", "relu1_ReLU"), ("relu1_ReLU", "conv1_blob"),
        ("conv1_blob", "conv2_Convolution"),
    ]
    assert [s for s, d, _ in graph.edges if d == "sum_Eltwise"] == ["data_blob", "conv2_blob"]
    assert graph.nodes["pool_Pooling"].label.startswith(r"pool\n(Pooling AVE)\nkernel size: 8")


def test_legacy_v1_net_is_drawn_after_upgrade():
    graph = draw.net_graph(golden("legacy_v1"))
    assert [n.name for n in graph.layer_nodes()] == [
        "input_Input", "conv1_Convolution", "relu1_ReLU", "pool1_Pooling", "fc_InnerProduct",
        "prob_Softmax"]
    assert ("conv1_Convolution", "conv1_blob", "4") in graph.edges
    assert ("relu1_ReLU", "conv1_blob", "") in graph.edges


def phase_net() -> caffe_pb2.NetParameter:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 4]), include=dict(phase=caffe_pb2.TRAIN))
    n.fc = L.InnerProduct(n.data, num_output=2)
    n.drop = L.Dropout(n.fc, in_place=True, exclude=dict(phase=caffe_pb2.TEST))
    n.acc = L.Accuracy(n.fc, n.data, include=dict(phase=caffe_pb2.TEST))
    net = n.to_proto()
    test_data = net.layer.add()
    test_data.CopyFrom(net.layer[0])
    test_data.include[0].phase = caffe_pb2.TEST
    return net


def test_phase_filtering():
    net = phase_net()
    names = lambda graph: [n.name for n in graph.layer_nodes()]  # noqa: E731
    assert names(draw.net_graph(net)) == [
        "data_Input", "fc_InnerProduct", "drop_Dropout", "acc_Accuracy", "data_Input_2"]
    assert names(draw.net_graph(net, phase=caffe_pb2.TRAIN)) == [
        "data_Input", "fc_InnerProduct", "drop_Dropout"]
    assert names(draw.net_graph(net, phase=caffe_pb2.TEST)) == [
        "fc_InnerProduct", "acc_Accuracy", "data_Input"]
    assert names(draw.net_graph(net, phase="TEST")) == names(
        draw.net_graph(net, phase=caffe_pb2.TEST))
    net.layer[1].include.add(phase=caffe_pb2.TRAIN)
    net.layer[1].exclude.add(phase=caffe_pb2.TEST)
    with pytest.raises(NetError, match="layer 'fc' specifies both include and exclude"):
        draw.net_graph(net, phase=caffe_pb2.TRAIN)
    with pytest.raises(CaffeError, match="unknown phase 'VAL'"):
        draw.net_graph(net, phase="VAL")


def test_pydot_graph_matches_the_structure():
    pytest.importorskip("pydot")
    net = golden("mini_inception")
    graph = draw.net_graph(net, "TB")
    dot = draw.get_pydot_graph(net, "TB")
    assert {n.get_name() for n in dot.get_nodes()} == set(graph.nodes)
    assert [(e.get_source(), e.get_destination()) for e in dot.get_edges()] == \
        [(s, d) for s, d, _ in graph.edges]
    assert dot.get_rankdir() == "TB"
    (conv1,) = dot.get_node("conv1_Convolution")
    assert "kernel size: 3 stride: 2 pad: 1" in conv1.get("label")
    text = dot.to_string()
    assert text.startswith("digraph MiniInception {") and "conv1_Convolution -> conv1_blob" in text


def test_draw_dot_source_without_graphviz(tmp_path):
    pytest.importorskip("pydot")
    out = tmp_path / "net.dot"
    draw.draw_net_to_file(golden("lenet"), str(out), "LR")
    text = out.read_text()
    assert text.startswith("digraph LeNet {") and "relu1_ReLU -> ip1_blob" in text


@needs_dot
@pytest.mark.parametrize("ext, magic", [("png", b"\x89PNG\r\n\x1a\n"), ("svg", b"<?xml"),
                                        ("pdf", b"%PDF")])
def test_draw_net_tool_renders_images(tmp_path, ext, magic):
    pytest.importorskip("pydot")
    out = tmp_path / f"lenet.{ext}"
    argv = [str(NETS / "lenet.prototxt"), str(out), "--rankdir", "TB", "--phase", "TEST"]
    assert draw_net_tool.main(argv) == 0
    data = out.read_bytes()
    assert data.startswith(magic) and len(data) > 1000
    if ext == "svg":
        text = data.decode()
        assert "conv1" in text and "(Pooling MAX)" in text


@needs_dot
def test_draw_net_tool_lrm_and_cli(tmp_path):
    pytest.importorskip("pydot")
    from caffe.tools import cli

    out = tmp_path / "lenet.svg"
    assert cli.run("draw_net", [str(NETS / "lenet.prototxt"), str(out), "--display_lrm"]) == 0
    assert "lr mult: 1.0, 2.0" in out.read_text()


def test_draw_net_tool_errors(tmp_path):
    with pytest.raises(CaffeError, match="usage: draw_net"):
        draw_net_tool.main([str(NETS / "lenet.prototxt")])
    with pytest.raises(CaffeError, match="unknown phase 'VAL'"):
        draw_net_tool.main([str(NETS / "lenet.prototxt"), str(tmp_path / "x.png"),
                            "--phase", "VAL"])
    with pytest.raises(CaffeError, match="not found"):
        draw_net_tool.main([str(tmp_path / "missing.prototxt"), str(tmp_path / "x.png")])


def test_missing_graphviz_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("pydot")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CaffeError, match=r"needs Graphviz's 'dot' program .*apt-get install"):
        draw.draw_net_to_file(golden("lenet"), str(tmp_path / "lenet.png"))
    assert not (tmp_path / "lenet.png").exists()
