"""caffe.upgrade: legacy V0 / V1 nets, input fields, BatchNorm params and solver types."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from google.protobuf import text_format

from caffe import upgrade
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2

GOLDEN = Path(__file__).parent / "golden" / "nets"


def parse_net(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def parse_solver(text: str) -> caffe_pb2.SolverParameter:
    return text_format.Parse(text, caffe_pb2.SolverParameter())


def golden_v2_caffemodel() -> caffe_pb2.NetParameter:
    """legacy_v1 as C++ Caffe upgraded and saved it (Net::ToProto)."""
    return caffe_pb2.NetParameter.FromString((GOLDEN / "legacy_v1.caffemodel").read_bytes())


# --- the V1 type table ------------------------------------------------------------------------

def test_v1_layer_type_table_covers_every_enum_value():
    enum_names = set(caffe_pb2.V1LayerParameter.LayerType.keys())
    assert set(upgrade.V1_LAYER_TYPE_NAMES) == enum_names
    assert upgrade.v1_layer_type_name("CONVOLUTION") == "Convolution"
    assert upgrade.v1_layer_type_name(caffe_pb2.V1LayerParameter.SOFTMAX_LOSS) == "SoftmaxWithLoss"
    assert upgrade.v1_layer_type_name(caffe_pb2.V1LayerParameter.INNER_PRODUCT) == "InnerProduct"
    assert upgrade.v1_layer_type_name("IM2COL") == "Im2col"
    assert upgrade.v1_layer_type_name("NONE") == ""
    with pytest.raises(CaffeError, match="Unknown V1LayerParameter layer type"):
        upgrade.v1_layer_type_name(99)


def test_every_v0_field_has_a_rule():
    handled = (set(upgrade._V0_FIELD_TARGETS) | set(upgrade._V0_TRANSFORM_FIELDS)
               | upgrade._V0_OTHER_FIELDS)
    assert {f.name for f in caffe_pb2.V0LayerParameter.DESCRIPTOR.fields} == handled


# --- V1 -> V2 on the golden net ---------------------------------------------------------------

def test_legacy_v1_prototxt_upgrades_to_v2(caplog):
    original = parse_net((GOLDEN / "legacy_v1.prototxt").read_text())
    snapshot = original.SerializeToString()
    assert upgrade.net_needs_upgrade(original)

    with caplog.at_level(logging.INFO, logger="caffe"):
        net = upgrade.upgrade_net_as_needed(original, "legacy_v1.prototxt")

    assert original.SerializeToString() == snapshot  # the argument is left alone
    assert not upgrade.net_needs_upgrade(net)
    assert len(net.layers) == 0
    assert list(net.input) == []
    assert list(net.input_dim) == []
    assert len(net.input_shape) == 0
    assert net.name == "LegacyV1"
    assert [layer.name for layer in net.layer] == ["input", "conv1", "relu1", "pool1", "fc", "prob"]
    assert [layer.type for layer in net.layer] == [
        "Input", "Convolution", "ReLU", "Pooling", "InnerProduct", "Softmax"]
    assert [list(layer.bottom) for layer in net.layer] == [
        [], ["data"], ["conv1"], ["conv1"], ["pool1"], ["fc"]]
    assert [list(layer.top) for layer in net.layer] == [
        ["data"], ["conv1"], ["conv1"], ["pool1"], ["fc"], ["prob"]]
    assert [list(shape.dim) for shape in net.layer[0].input_param.shape] == [[2, 3, 10, 10]]

    conv = net.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1.0, 1.0), (2.0, 0.0)]
    assert [p.HasField("name") for p in conv.param] == [False, False]
    assert conv.convolution_param.num_output == 4
    assert list(conv.convolution_param.kernel_size) == [3]
    assert conv.convolution_param.bias_filler.value == pytest.approx(0.1)
    assert all(len(layer.param) == 0 for layer in net.layer if layer.name != "conv1")
    assert net.layer[3].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert net.layer[4].inner_product_param.num_output == 6

    messages = " | ".join(record.getMessage() for record in caplog.records)
    assert "legacy_v1.prototxt: upgrading V1LayerParameter layers" in messages
    assert "legacy_v1.prototxt: turning input fields into an Input layer" in messages


def test_legacy_v1_upgrade_matches_what_caffe_saved():
    net = upgrade.upgrade_net_as_needed(parse_net((GOLDEN / "legacy_v1.prototxt").read_text()))
    saved = golden_v2_caffemodel()
    for layer in saved.layer:  # Net::ToProto adds the weights and the phase
        layer.ClearField("blobs")
        layer.ClearField("phase")
    assert net == saved


def test_v1_caffemodel_blobs_survive_the_upgrade():
    saved = golden_v2_caffemodel()
    type_enum = {name: enum for enum, name in upgrade.V1_LAYER_TYPE_NAMES.items()}
    v1 = caffe_pb2.NetParameter(name=saved.name, input=["data"], input_dim=[2, 3, 10, 10])
    for layer in saved.layer[1:]:
        v1_layer = v1.layers.add(name=layer.name, bottom=layer.bottom, top=layer.top,
                                 type=caffe_pb2.V1LayerParameter.LayerType.Value(
                                     type_enum[layer.type]))
        v1_layer.blobs.extend(layer.blobs)
    v1 = caffe_pb2.NetParameter.FromString(v1.SerializeToString())  # a V1 binary model

    net = upgrade.upgrade_net_as_needed(v1, "v1.caffemodel")

    assert [layer.name for layer in net.layer] == [layer.name for layer in saved.layer]
    assert [len(layer.blobs) for layer in net.layer] == [0, 2, 0, 0, 2, 0]
    for got, want in zip(net.layer, saved.layer):
        assert [b.SerializeToString() for b in got.blobs] == [
            b.SerializeToString() for b in want.blobs]
    assert list(net.layer[1].blobs[0].shape.dim) == [4, 3, 3, 3]
    assert list(net.layer[4].blobs[0].shape.dim) == [6, 64]
    assert net.layer[1].blobs[1].data[:] == saved.layer[1].blobs[1].data[:]


# --- V0 -> V1 -> V2 ---------------------------------------------------------------------------

V0_NET = """
name: "v0net"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1 biasterm: false
          weight_filler { type: "gaussian" std: 0.01 }
          blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "fc1" type: "innerproduct" num_output: 10
                 bias_filler { type: "constant" value: 0.5 } }
         bottom: "norm1" top: "fc1" }
layers { layer { name: "drop1" type: "dropout" dropout_ratio: 0.3 } bottom: "fc1" top: "fc1" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc1" top: "prob" }
"""

V0_NET_UPGRADED = """
name: "v0net"
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 bias_term: false pad: 2 kernel_size: 3 group: 1
                            stride: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layer { name: "fc1" type: "InnerProduct" bottom: "norm1" top: "fc1"
        inner_product_param { num_output: 10 bias_filler { type: "constant" value: 0.5 } } }
layer { name: "drop1" type: "Dropout" bottom: "fc1" top: "fc1"
        dropout_param { dropout_ratio: 0.3 } }
layer { name: "prob" type: "Softmax" bottom: "fc1" top: "prob" }
"""


def test_v0_net_upgrades_and_folds_padding(caplog):
    v0 = parse_net(V0_NET)
    assert upgrade.net_needs_upgrade(v0)
    with caplog.at_level(logging.INFO, logger="caffe"):
        net = upgrade.upgrade_net_as_needed(v0, "v0.prototxt")
    assert net == parse_net(V0_NET_UPGRADED)
    assert "v0.prototxt: upgrading V0LayerParameter layers" in caplog.text
    assert not any(record.levelno >= logging.ERROR for record in caplog.records)


def test_v0_data_layer_fields_split_between_data_and_transform_params():
    net = upgrade.upgrade_net_as_needed(parse_net("""
        layers { layer { name: "mnist" type: "data" source: "train_lmdb" batchsize: 64
                         rand_skip: 5 scale: 0.00390625 meanfile: "mean.binaryproto"
                         cropsize: 24 mirror: true }
                 top: "data" top: "label" }
        layers { layer { name: "loss" type: "softmax_loss" } bottom: "data" bottom: "label" }
    """))
    assert net == parse_net("""
        layer { name: "mnist" type: "Data" top: "data" top: "label"
                transform_param { scale: 0.00390625 mirror: true crop_size: 24
                                  mean_file: "mean.binaryproto" }
                data_param { source: "train_lmdb" batch_size: 64 rand_skip: 5 } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" }
    """)


def test_v0_parameter_on_the_wrong_layer_type_is_reported_and_skipped(caplog):
    with caplog.at_level(logging.INFO, logger="caffe"):
        net = upgrade.upgrade_net_as_needed(parse_net("""
            input: "x"
            layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "y" }
        """), "bad_v0")
    assert [layer.type for layer in net.layer] == ["ReLU"]  # input without dims is dropped
    assert not net.layer[0].HasField("convolution_param")
    assert not net.layer[0].HasField("inner_product_param")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "Unknown parameter num_output for layer type relu",
        ("bad_v0: had one or more problems upgrading V0NetParameter to NetParameter "
         "(see above); continuing anyway"),
    ]


def test_v0_padding_into_a_non_conv_layer_is_an_error():
    v0 = parse_net("""
        input: "x"
        layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "x" top: "p" }
        layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }
    """)
    with pytest.raises(CaffeError, match="Padding layer input to non-convolutional"):
        upgrade.upgrade_net_as_needed(v0)


def test_v0_unknown_type_and_unknown_bottom_are_errors():
    with pytest.raises(CaffeError, match="Unknown layer name: warp"):
        upgrade.upgrade_net_as_needed(parse_net(
            'input: "x" layers { layer { name: "w" type: "warp" } bottom: "x" top: "y" }'))
    with pytest.raises(CaffeError, match="Unknown blob input nope to layer c"):
        upgrade.upgrade_net_as_needed(parse_net(
            'layers { layer { name: "c" type: "conv" } bottom: "nope" top: "y" }'))


# --- V1 details -------------------------------------------------------------------------------

def test_v1_param_names_share_modes_loss_weight_and_rules():
    net = upgrade.upgrade_net_as_needed(parse_net("""
        layers {
          name: "ip" type: INNER_PRODUCT bottom: "x" top: "y"
          param: "w" param: "b" blob_share_mode: PERMISSIVE blobs_lr: 3
          loss_weight: 0.5
          include { phase: TRAIN }
          inner_product_param { num_output: 2 }
        }
    """))
    assert net == parse_net("""
        layer {
          name: "ip" type: "InnerProduct" bottom: "x" top: "y"
          param { name: "w" share_mode: PERMISSIVE lr_mult: 3 } param { name: "b" }
          loss_weight: 0.5
          include { phase: TRAIN }
          inner_product_param { num_output: 2 }
        }
    """)


def test_v1_data_layer_transformation_fields_move_to_transform_param():
    v1 = parse_net("""
        layers { name: "d" type: DATA top: "data"
                 data_param { source: "db" batch_size: 4 scale: 0.5 mean_file: "m" mirror: true } }
        layers { name: "i" type: IMAGE_DATA top: "img"
                 image_data_param { source: "l" crop_size: 3 } }
        layers { name: "w" type: WINDOW_DATA top: "win" window_data_param { source: "w" } }
    """)
    net = upgrade.upgrade_net_as_needed(v1)
    assert net == parse_net("""
        layer { name: "d" type: "Data" top: "data"
                transform_param { scale: 0.5 mean_file: "m" mirror: true }
                data_param { source: "db" batch_size: 4 } }
        layer { name: "i" type: "ImageData" top: "img" transform_param { crop_size: 3 }
                image_data_param { source: "l" } }
        layer { name: "w" type: "WindowData" top: "win" window_data_param { source: "w" } }
    """)


def test_net_with_both_layer_and_layers_is_refused():
    mixed = parse_net('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }')
    with pytest.raises(CaffeError, match="both 'layer' and 'layers'"):
        upgrade.upgrade_net_as_needed(mixed)


# --- inputs and BatchNorm ---------------------------------------------------------------------

def test_input_shape_fields_become_an_input_layer_in_front():
    net = upgrade.upgrade_net_as_needed(parse_net("""
        input: "a" input_shape { dim: 1 dim: 2 }
        input: "b" input_shape { dim: 5 }
        layer { name: "s" type: "Silence" bottom: "a" bottom: "b" }
    """))
    assert net == parse_net("""
        layer { name: "input" type: "Input" top: "a" top: "b"
                input_param { shape { dim: 1 dim: 2 } shape { dim: 5 } } }
        layer { name: "s" type: "Silence" bottom: "a" bottom: "b" }
    """)


def test_two_inputs_take_input_dim_four_at_a_time():
    net = upgrade.upgrade_net_as_needed(parse_net(
        'input: "a" input: "b" input_dim: [1, 2, 3, 4, 5, 6, 7, 8]'))
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    with pytest.raises(CaffeError, match="need 8 input_dim values"):
        upgrade.upgrade_net_as_needed(parse_net('input: "a" input: "b" input_dim: [1, 2, 3, 4]'))


def test_input_without_shape_is_dropped():
    net = upgrade.upgrade_net_as_needed(parse_net('input: "data" layer { name: "r" type: "ReLU" }'))
    assert net == parse_net('layer { name: "r" type: "ReLU" }')


def test_old_style_batch_norm_params_are_removed():
    net = upgrade.upgrade_net_as_needed(parse_net("""
        layer { name: "bn" type: "BatchNorm"
                param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
        layer { name: "bn2" type: "BatchNorm" param { lr_mult: 0 } }
        layer { name: "sc" type: "Scale" param { lr_mult: 0 } param { lr_mult: 0 }
                param { lr_mult: 0 } }
    """))
    assert [len(layer.param) for layer in net.layer] == [0, 1, 3]


def test_current_net_is_copied_unchanged():
    current = golden_v2_caffemodel()
    assert not upgrade.net_needs_upgrade(current)
    upgraded = upgrade.upgrade_net_as_needed(current)
    assert upgraded == current
    assert upgraded is not current


# --- solvers ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("old", "new"), [("SGD", "SGD"), ("NESTEROV", "Nesterov"),
                                          ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
                                          ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_enum_becomes_type_string(old, new):
    solver = parse_solver(f'base_lr: 0.01 solver_type: {old}')
    assert upgrade.solver_needs_upgrade(solver)
    upgraded = upgrade.upgrade_solver_as_needed(solver, "solver.prototxt")
    assert upgraded.type == new
    assert not upgraded.HasField("solver_type")
    assert upgraded.base_lr == pytest.approx(0.01)
    assert not upgrade.solver_needs_upgrade(upgraded)
    assert solver.HasField("solver_type")  # the argument is left alone


def test_solver_with_type_only_needs_no_upgrade():
    solver = parse_solver('type: "Adam"')
    assert not upgrade.solver_needs_upgrade(solver)
    assert upgrade.upgrade_solver_as_needed(solver) == solver


def test_solver_with_both_type_fields_is_refused():
    with pytest.raises(CaffeError, match="cannot be both specified"):
        upgrade.upgrade_solver_as_needed(parse_solver('solver_type: ADAM type: "SGD"'))
