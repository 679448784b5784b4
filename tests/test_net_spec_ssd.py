"""The SSD fork's Python helpers: NetSpec.update/vals/del and caffe.model_libs.

The strongest checks rebuild published prototxts: SSD's ssd_pascal.py recipe (through
examples/detection/ssd_pascal_style.py) against the train/test/deploy/solver files SSD wrote for
VGG_VOC0712_SSD_300x300, and the MobileNet builders against MobileNet-SSD's deploy and train
files (tests/models/README.md says where each file comes from)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe import model_libs as ml
from caffe.errors import NetError
from caffe.net_spec import NetSpec
from caffe.net_spec import layers as L
from caffe.net_spec import params as P
from caffe.proto import caffe_pb2

MODELS = Path(__file__).resolve().parent / "models"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "detection"


def load(name: str, message=caffe_pb2.NetParameter):
    proto = message()
    text_format.Merge((MODELS / f"{name}.prototxt").read_text(), proto)
    return proto


def recipe():
    """examples/detection/ssd_pascal_style.py as a module (registered: it holds a dataclass)."""
    if "ssd_pascal_style" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ssd_pascal_style",
                                                      EXAMPLE / "ssd_pascal_style.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["ssd_pascal_style"] = module
        spec.loader.exec_module(module)
    return sys.modules["ssd_pascal_style"]


def first_difference(ours: caffe_pb2.NetParameter, ref: caffe_pb2.NetParameter) -> str:
    """A readable account of the first layer where two nets differ (for assertion messages)."""
    for index, (a, b) in enumerate(zip(ours.layer, ref.layer)):
        if a != b:
            return f"layer {index}:\nours:\n{a}\nreference:\n{b}"
    return f"{len(ours.layer)} layers versus {len(ref.layer)}; headers:\n" \
           f"{ours.name} {list(ours.input)}\n{ref.name} {list(ref.input)}"


def structure(net: caffe_pb2.NetParameter) -> list[tuple]:
    return [(lp.name, lp.type, list(lp.bottom), list(lp.top)) for lp in net.layer]


def with_data(shape=(1, 3, 32, 32)) -> NetSpec:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=list(shape)))
    return n


# NetSpec: the fork's additions.

def test_update_sets_and_replaces_params_of_an_existing_top():
    n = with_data()
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, param=[dict(lr_mult=1)])
    n.update("conv", {"dilation": 2, "param": [dict(lr_mult=0), dict(lr_mult=0)]})
    conv = n.to_proto().layer[1]
    assert list(conv.convolution_param.dilation) == [2]
    assert conv.convolution_param.num_output == 4 and conv.convolution_param.kernel_size == [3]
    # A key given again replaces its value, as dict.update does in the fork.
    assert [p.lr_mult for p in conv.param] == [0, 0]


def test_update_reaches_a_multi_top_layer_and_a_topless_one():
    n = with_data()
    n.a, n.b = L.Slice(n.data, ntop=2, axis=1, slice_point=[1])
    n.update("b", {"axis": 2, "slice_point": [16]})
    n.silence = L.Silence(n.a, n.b, ntop=0)
    n.update("silence", {"loss_weight": [0, 0]})
    layers = n.to_proto().layer
    assert layers[1].slice_param.axis == 2 and list(layers[1].slice_param.slice_point) == [16]
    assert list(layers[2].loss_weight) == [0, 0]


def test_update_errors_name_the_top():
    n = with_data()
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3)
    with pytest.raises(NetError, match="no top named 'nope'.*data, conv"):
        n.update("nope", {"dilation": 2})
    with pytest.raises(NetError, match="cannot change ntop from 1 to 2"):
        n.update("conv", {"ntop": 2})


def test_vals_keys_and_delitem():
    n = with_data()
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3)
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, kernel_size=2, stride=2)
    assert n.keys() == ["data", "conv", "relu", "pool"]
    assert n.vals() == [n.data, n.conv, n.relu, n.pool]
    assert n.keys()[-1] == "pool"  # the fork's idiom for the latest top
    del n["pool"]
    assert "pool" not in n and n.keys() == ["data", "conv", "relu"]
    assert [lp.name for lp in n.to_proto().layer] == ["data", "conv", "relu"]
    with pytest.raises(KeyError):
        del n["pool"]


def test_deleted_name_still_needed_gets_an_automatic_name():
    n = with_data()
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3)
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2)
    del n["conv"]
    assert structure(n.to_proto())[1:] == [
        ("Convolution1", "Convolution", ["data"], ["Convolution1"]),
        ("pool", "Pooling", ["Convolution1"], ["pool"])]


# model_libs against SSD's generated prototxts.

SSD300_SAVE_OUTPUT = {  # what SSD's script put in its author's test.prototxt
    "output_directory": "/home/shangzw/data/VOCdevkit/results/VOC2007/SSD_300x300/Main",
    "output_name_prefix": "comp4_det_test_", "output_format": "VOC",
    "label_map_file": "data/VOC0712/labelmap_voc.prototxt",
    "name_size_file": "data/VOC0712/test_name_size.txt", "num_test_image": 4952}


@pytest.mark.parametrize("kind", ["train", "test", "deploy"])
def test_ssd_pascal_recipe_writes_ssd300_nets(kind):
    module = recipe()
    cfg = module.SSDConfig(save_output_param=SSD300_SAVE_OUTPUT)
    ours = getattr(module, f"build_{kind}_net")(cfg)
    ref = load(f"ssd300_vgg16_voc0712_{kind}")
    # Parsed messages compare field by field: names, types, bottoms, tops, every parameter
    # (the files' floats, printed by Python 2 with 12 digits, parse to the same float32).
    assert ours == ref, first_difference(ours, ref)


def test_ssd_pascal_recipe_writes_ssd300_solver():
    module = recipe()
    ours = module.build_solver(module.SSDConfig())
    ref = load("ssd300_vgg16_voc0712_solver", caffe_pb2.SolverParameter)
    # Today's ssd_pascal.py sets type "SGD"; the script that wrote the file did not.
    assert ours.type == "SGD"
    ours.ClearField("type")
    assert ours == ref
    assert ref.eval_type == "detection" and ref.ap_version == "11point"


def mobilenet_ssd(use_bn: bool) -> NetSpec:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 300, 300]))
    ml.MobileNetBody(n, "data", use_bn=use_bn)
    ml.AddMobileNetExtraLayers(n, use_bn=use_bn)
    ml.CreateMobileNetSSDHead(n, num_classes=21)
    return n


def test_mobilenet_builders_write_mobilenet_ssd_deploy():
    n = mobilenet_ssd(use_bn=False)
    n.mbox_conf_reshape = L.Reshape(n.mbox_conf, shape=dict(dim=[0, -1, 21]))
    n.mbox_conf_softmax = L.Softmax(n.mbox_conf_reshape, axis=2)
    n.mbox_conf_flatten = L.Flatten(n.mbox_conf_softmax, axis=1)
    n.detection_out = L.DetectionOutput(
        n.mbox_loc, n.mbox_conf_flatten, n.mbox_priorbox, include=dict(phase=caffe.TEST),
        detection_output_param=dict(
            num_classes=21, share_location=True, background_label_id=0,
            nms_param=dict(nms_threshold=0.45, top_k=100), code_type=P.PriorBox.CENTER_SIZE,
            keep_top_k=100, confidence_threshold=0.25))
    ours = n.to_proto()
    del ours.layer[0]
    ours.name = "MobileNet-SSD"
    ours.input.append("data")
    ours.input_shape.add().dim.extend([1, 3, 300, 300])
    ref = load("mobilenet_ssd_deploy")
    assert ours == ref, first_difference(ours, ref)


def test_mobilenet_builders_match_mobilenet_ssd_train_up_to_its_hand_edits():
    """MobileNet-SSD's train file is gen.py's output with the lr/decay multipliers of every
    layer but the class-confidence convolutions scaled by 0.1 (fine-tuning for new classes)
    and the depthwise ``engine: CAFFE`` commented out; with those two edits undone, the
    batch-norm form of the builders gives the file's layers."""
    ours = [lp for lp in mobilenet_ssd(use_bn=True).to_proto().layer if lp.type != "Input"]
    ref = load("mobilenet_ssd_train")
    built = {lp.name for lp in ours}
    ref_layers = [lp for lp in ref.layer if lp.name in built]
    assert [lp.name for lp in ref_layers] == [lp.name for lp in ours]
    for a, b in zip(ours, ref_layers):
        b = caffe_pb2.LayerParameter.FromString(b.SerializeToString())
        for param in [] if b.name.endswith("_mbox_conf") else b.param:
            # 0.1 * m for m in {0, 1, 2} is exact after rounding to float32 and back.
            param.lr_mult = np.float32(param.lr_mult / np.float32(0.1))
            param.decay_mult = np.float32(param.decay_mult / np.float32(0.1))
        if a.convolution_param.group > 1:
            b.convolution_param.engine = P.Convolution.CAFFE
        assert a == b, f"ours:\n{a}\nreference:\n{b}"
    # What the builders leave out is the data layer and the loss.
    assert sorted(lp.type for lp in ref.layer if lp.name not in built) == [
        "AnnotatedData", "MultiBoxLoss"]


# model_libs bodies: structure facts of the published architectures.

@pytest.mark.parametrize("body,convs,blocks,last", [
    (ml.ResNet101Body, 104, 33, "res4b22"), (ml.ResNet152Body, 155, 50, "res4b35")])
def test_resnet_bodies(body, convs, blocks, last):
    n = with_data()
    body(n, "data")
    net = n.to_proto()
    types = Counter(lp.type for lp in net.layer)
    # He et al.: conv1 + 3 convolutions per bottleneck + 4 projections.
    assert types["Convolution"] == convs == 1 + 3 * blocks + 4
    assert types["Eltwise"] == blocks and types["BatchNorm"] == types["Scale"] == convs
    names = {lp.name: lp for lp in net.layer}
    assert last in names and f"{last[:-1]}{int(last[-2:]) + 1}" not in names
    assert structure(net)[1:4] == [("conv1", "Convolution", ["data"], ["conv1"]),
                                   ("bn_conv1", "BatchNorm", ["conv1"], ["conv1"]),
                                   ("scale_conv1", "Scale", ["conv1"], ["conv1"])]
    assert names["res2a"].bottom == ["res2a_branch1", "res2a_branch2c"]
    assert names["res2b"].bottom == ["res2a", "res2b_branch2c"]
    assert names["res3a_branch2a"].convolution_param.stride == [2]
    assert names["pool5"].pooling_param.global_pooling


def test_resnet_dilated_conv5_and_frozen_batch_norm():
    n = with_data()
    ml.ResNet101Body(n, "data", use_pool5=False, use_dilation_conv5=True, use_global_stats=True)
    names = {lp.name: lp for lp in n.to_proto().layer}
    branch = names["res5a_branch2b"].convolution_param
    assert (list(branch.dilation), list(branch.pad)) == ([2], [2])
    assert names["res5a_branch2a"].convolution_param.stride == [1]
    bn = names["bn5a_branch2b"]
    assert bn.batch_norm_param.use_global_stats and not bn.batch_norm_param.HasField(
        "moving_average_fraction")
    assert [p.lr_mult for p in names["scale5a_branch2b"].param] == [0, 0]
    assert "pool5" not in names


def test_inception_v3_body():
    n = with_data((1, 3, 299, 299))
    ml.InceptionV3Body(n, "data", output_pred=True)
    net = n.to_proto()
    types = Counter(lp.type for lp in net.layer)
    assert types["Convolution"] == 94  # Inception-v3's 94 convolutions
    assert types["BatchNorm"] == types["Bias"] == 94 and types["Scale"] == 0
    names = {lp.name: lp for lp in net.layer}
    join = names["mixed_10/join"]
    assert join.bottom == ["mixed_10/conv", "mixed_10/tower/mixed", "mixed_10/tower_1/mixed",
                           "mixed_10/tower_2/conv"]
    conv = names["mixed_4/tower/conv_1"].convolution_param
    assert (conv.kernel_h, conv.kernel_w, conv.pad_h, conv.pad_w) == (1, 7, 0, 3)
    assert names["mixed_9/tower_2/pool"].pooling_param.pool == P.Pooling.AVE
    assert names["mixed_10/tower_2/pool"].pooling_param.pool == P.Pooling.MAX
    assert names["mixed/tower/conv_bn"].type == "BatchNorm"
    assert names["softmax"].inner_product_param.num_output == 1008


@pytest.mark.parametrize("kwargs,fc6", [
    (dict(fully_conv=True, reduced=True, dilated=True), (1024, 3, 6, 6)),
    (dict(fully_conv=True, reduced=True), (1024, 3, 3, 3)),
    (dict(fully_conv=True), (4096, 7, 3, 1)),
    (dict(fully_conv=True, reduced=True, dilated=True, dilate_pool4=True), (1024, 3, 12, 12)),
])
def test_vgg_fc6_geometry(kwargs, fc6):
    n = with_data()
    ml.VGGNetBody(n, "data", **kwargs)
    conv = {lp.name: lp for lp in n.to_proto().layer}["fc6"].convolution_param
    # 'same' padding of a dilated kernel: (k + (k - 1)(d - 1) - 1) / 2.
    assert (conv.num_output, conv.kernel_size[0], conv.pad[0], conv.dilation[0]) == fc6


def test_vgg_nopool_and_freeze_layers():
    n = with_data()
    ml.VGGNetBody(n, "data", need_fc=False, nopool=True, freeze_layers=["conv1_1", "relu1_1x"])
    names = {lp.name: lp for lp in n.to_proto().layer}
    assert not any(lp.type == "Pooling" for lp in names.values())
    assert names["conv3_4"].convolution_param.stride == [2]
    assert [p.lr_mult for p in names["conv1_1"].param] == [0, 0]
    assert [p.lr_mult for p in names["conv1_2"].param] == [1, 2]


def test_zfnet_body():
    n = with_data((1, 3, 224, 224))
    ml.ZFNetBody(n, "data", need_fc8=True)
    net = n.to_proto()
    assert [lp.name for lp in net.layer if lp.type == "Convolution"] == [
        "conv1", "conv2", "conv3", "conv4", "conv5"]
    names = {lp.name: lp for lp in net.layer}
    assert names["norm1"].lrn_param.norm_region == P.LRN.WITHIN_CHANNEL
    assert names["fc8"].bottom == ["fc7"] and names["prob"].type == "Softmax"


def test_conv_bn_layer_forms():
    n = with_data()
    ml.ConvBNLayer(n, "data", "a", use_bn=True, use_relu=True, num_output=4,
                   kernel_size=[1, 3], pad=[0, 1], stride=[1, 2], use_scale=False, eps=1e-5)
    ml.ConvBNLayer(n, "a", "b", False, False, 4, 3, 1, 1, lr_mult=3)
    net = n.to_proto()
    assert structure(net)[1:] == [("a", "Convolution", ["data"], ["a"]),
                                  ("a_bn", "BatchNorm", ["a"], ["a"]),
                                  ("a_bias", "Bias", ["a"], ["a"]),
                                  ("a_relu", "ReLU", ["a"], ["a"]),
                                  ("b", "Convolution", ["a"], ["b"])]
    a, bn, b = net.layer[1].convolution_param, net.layer[2], net.layer[5]
    assert (a.kernel_h, a.kernel_w, a.pad_h, a.pad_w, a.stride_h, a.stride_w) == (1, 3, 0, 1, 1, 2)
    assert not a.bias_term and a.weight_filler.type == "gaussian"
    assert bn.batch_norm_param.eps == np.float32(1e-5)
    assert bn.batch_norm_param.moving_average_fraction == np.float32(0.999)
    assert [(p.lr_mult, p.decay_mult) for p in b.param] == [(3, 1), (6, 0)]


def test_unpack_variable():
    assert ml.UnpackVariable(3, 2) == [3, 3]
    assert ml.UnpackVariable([3], 2) == [3, 3]
    assert ml.UnpackVariable([1, 7], 2) == [1, 7]
    with pytest.raises(ValueError):
        ml.UnpackVariable([1, 2, 3], 2)


def test_create_annotated_data_layer():
    n = NetSpec()
    n.data, n.label = ml.CreateAnnotatedDataLayer("db", batch_size=4, train=False,
                                                  label_map_file="map.prototxt")
    layer = n.to_proto().layer[0]
    assert (layer.name, layer.type, list(layer.top)) == ("data", "AnnotatedData",
                                                         ["data", "label"])
    assert layer.include[0].phase == caffe.TEST
    assert (layer.data_param.source, layer.data_param.batch_size) == ("db", 4)
    assert len(layer.annotated_data_param.batch_sampler) == 1  # one empty: the whole image
    assert not layer.HasField("transform_param")
    only = ml.CreateAnnotatedDataLayer("db", output_label=False, anno_type=0)
    assert isinstance(only, caffe.net_spec.Top)


def test_multibox_head_counts_agree_with_the_layers_it_builds():
    """Run a small head through caffe.Net: the predicted channels must match the priors each
    PriorBox layer emits (min/max sizes, aspect ratios, flips), and the concat shapes agree."""
    n = with_data((2, 3, 32, 32))
    n.f1 = L.Convolution(n.data, num_output=4, kernel_size=3, stride=2, pad=1)  # 16 x 16
    n.f2 = L.Convolution(n.f1, num_output=4, kernel_size=3, stride=2, pad=1)  # 8 x 8
    loc, conf, priors, objectness = ml.CreateMultiBoxHead(
        n, from_layers=["f1", "f2"], num_classes=3, use_batchnorm=False, use_objectness=True,
        min_sizes=[6, [12, 16]], max_sizes=[10, [20, 24]], aspect_ratios=[[2], [2, 3]],
        steps=[2, 4], normalizations=[10, -1], inter_layer_depth=[0, 4], img_height=32,
        img_width=32, prior_variance=[0.1, 0.1, 0.2, 0.2])
    n.silence = L.Silence(loc, conf, priors, objectness, ntop=0)
    net = caffe.Net(n.to_proto(), caffe.TEST)
    # Priors per location: f1 (1 min, 1 max, ratio 2 flipped) = 4; f2 two sizes x
    # (1 + 1 max + 2 ratios x 2 flips) = 12.
    num_priors = 16 * 16 * 4 + 8 * 8 * 12
    assert net.blobs["mbox_priorbox"].data.shape == (1, 2, 4 * num_priors)
    assert net.blobs["mbox_loc"].data.shape == (2, 4 * num_priors)
    assert net.blobs["mbox_conf"].data.shape == (2, 3 * num_priors)
    assert net.blobs["mbox_objectness"].data.shape == (2, 2 * num_priors)
    assert "f1_norm" in net.blobs and "f2_inter" in net.blobs
    assert net.layer_dict["f1_norm_mbox_priorbox"].type == "PriorBox"
