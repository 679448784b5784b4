"""NetSpec: naming, parameter routing and proto output, as pycaffe's net_spec produces them."""

from __future__ import annotations

import re

import numpy as np
import pytest
from google.protobuf import text_format

from caffe.errors import NetError
from caffe.net_spec import NetSpec, param_name_dict, to_proto
from caffe.net_spec import layers as L
from caffe.net_spec import params as P
from caffe.proto import caffe_pb2


def lenet(batch_size: int) -> caffe_pb2.NetParameter:
    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                         dict(dim=[batch_size, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50,
                            weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anon_lenet(batch_size: int) -> caffe_pb2.NetParameter:
    data, label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                     dict(dim=[batch_size, 1, 1, 1])],
                              transform_param=dict(scale=1. / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler=dict(type="xavier"))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type="xavier"))
    loss = L.SoftmaxWithLoss(ip2, label)
    return loss.to_proto()


def silent_net() -> caffe_pb2.NetParameter:
    n = NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    return n.to_proto()


def structure(net: caffe_pb2.NetParameter) -> list[tuple]:
    return [(lp.name, lp.type, list(lp.bottom), list(lp.top)) for lp in net.layer]


def test_lenet_names_and_order():
    assert structure(lenet(50)) == [
        ("data", "DummyData", [], ["data", "label"]),
        ("conv1", "Convolution", ["data"], ["conv1"]),
        ("pool1", "Pooling", ["conv1"], ["pool1"]),
        ("conv2", "Convolution", ["pool1"], ["conv2"]),
        ("pool2", "Pooling", ["conv2"], ["pool2"]),
        ("ip1", "InnerProduct", ["pool2"], ["ip1"]),
        ("relu1", "ReLU", ["ip1"], ["ip1"]),
        ("ip2", "InnerProduct", ["ip1"], ["ip2"]),
        ("loss", "SoftmaxWithLoss", ["ip2", "label"], ["loss"]),
    ]


def test_lenet_parameters_go_to_the_type_message():
    net = lenet(50)
    dummy, conv1, pool1 = net.layer[0], net.layer[1], net.layer[2]
    assert [list(s.dim) for s in dummy.dummy_data_param.shape] == [[50, 1, 28, 28],
                                                                    [50, 1, 1, 1]]
    assert dummy.transform_param.scale == pytest.approx(1 / 255)
    assert list(conv1.convolution_param.kernel_size) == [5]
    assert conv1.convolution_param.num_output == 20
    assert conv1.convolution_param.weight_filler.type == "xavier"
    assert pool1.pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert pool1.pooling_param.kernel_size == 2 and pool1.pooling_param.stride == 2
    assert net.layer[5].inner_product_param.num_output == 500
    # Nothing leaks into LayerParameter's own fields.
    assert not conv1.HasField("pooling_param") and len(conv1.param) == 0


def test_anonymous_lenet_gets_automatic_names():
    assert structure(anon_lenet(50)) == [
        ("DummyData1", "DummyData", [], ["DummyData1", "DummyData2"]),
        ("Convolution1", "Convolution", ["DummyData1"], ["Convolution1"]),
        ("Pooling1", "Pooling", ["Convolution1"], ["Pooling1"]),
        ("Convolution2", "Convolution", ["Pooling1"], ["Convolution2"]),
        ("Pooling2", "Pooling", ["Convolution2"], ["Pooling2"]),
        ("InnerProduct1", "InnerProduct", ["Pooling2"], ["InnerProduct1"]),
        ("ReLU1", "ReLU", ["InnerProduct1"], ["InnerProduct1"]),
        ("InnerProduct2", "InnerProduct", ["InnerProduct1"], ["InnerProduct2"]),
        ("SoftmaxWithLoss1", "SoftmaxWithLoss", ["InnerProduct2", "DummyData2"],
         ["SoftmaxWithLoss1"]),
    ]


def test_zero_top_layers():
    assert structure(silent_net()) == [
        ("data", "DummyData", [], ["data", "data2"]),
        ("silence_data", "Silence", ["data"], []),
        ("silence_data2", "Silence", ["data2"], []),
    ]
    fn = L.Silence(L.Input(shape=dict(dim=[1])), ntop=0)
    assert [(lp.name, list(lp.top)) for lp in to_proto(fn).layer] == [
        ("Input1", ["Input1"]), ("Silence1", [])]


def test_type_error_for_non_top_input():
    data = L.DummyData(ntop=2)
    message = r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"
    with pytest.raises(TypeError, match=message):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)


def test_layer_fields_param_include_loss_weight_and_name():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.fc = L.InnerProduct(n.data, num_output=4, name="classifier",
                          param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                          include=dict(phase=caffe_pb2.TRAIN), loss_weight=0.5,
                          propagate_down=[False])
    fc = n.to_proto().layer[1]
    assert fc.name == "classifier" and list(fc.top) == ["fc"]
    assert [(p.lr_mult, p.decay_mult) for p in fc.param] == [(1, 1), (2, 0)]
    assert len(fc.include) == 1 and fc.include[0].phase == caffe_pb2.TRAIN
    assert list(fc.loss_weight) == [0.5]
    assert list(fc.propagate_down) == [False]


def test_repeated_values_enums_and_numpy():
    x = L.Input(shape=dict(dim=np.array([1, 3, 8, 8])))
    conv = L.Convolution(x, kernel_size=(3, 5), stride=np.int64(2), pad=[1, 2],
                         engine="CAFFE", bias_term=False)
    pool = L.Pooling(conv, pool="AVE", kernel_size=2, include=[dict(phase="TEST")])
    net = to_proto(pool)
    conv_param = net.layer[1].convolution_param
    assert list(conv_param.kernel_size) == [3, 5]
    assert list(conv_param.stride) == [2]
    assert list(conv_param.pad) == [1, 2]
    assert conv_param.engine == caffe_pb2.ConvolutionParameter.CAFFE
    assert conv_param.bias_term is False
    assert net.layer[2].pooling_param.pool == P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert net.layer[2].include[0].phase == caffe_pb2.TEST
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


def test_shared_param_types():
    x = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    up = L.Deconvolution(x, num_output=2, kernel_size=4, stride=2)
    explicit = L.Deconvolution(x, convolution_param=dict(num_output=3, kernel_size=2))
    net = to_proto(up, explicit)
    assert net.layer[1].convolution_param.num_output == 2
    assert list(net.layer[1].convolution_param.stride) == [2]
    assert net.layer[2].convolution_param.num_output == 3
    lstm = L.LSTM(x, x, num_output=7)
    assert to_proto(lstm).layer[-1].recurrent_param.num_output == 7
    names = param_name_dict()
    assert names["Convolution"] == "convolution" and names["LRN"] == "lrn"
    assert names["ReLU"] == "relu" and names["Python"] == "python"


def test_python_layer_param_str():
    x = L.Input(shape=dict(dim=[1]))
    py = L.Python(x, module="my_module", layer="MyLayer", param_str="{'a': 1}")
    lp = to_proto(py).layer[1]
    assert (lp.python_param.module, lp.python_param.layer, lp.python_param.param_str) == \
        ("my_module", "MyLayer", "{'a': 1}")


def test_errors_name_the_keyword():
    x = L.Input(shape=dict(dim=[1]))
    with pytest.raises(NetError, match="unknown keyword 'kernel_sise'"):
        to_proto(L.Convolution(x, kernel_sise=3))
    with pytest.raises(NetError, match="'MAXIMUM' is not a value of enum PoolMethod"):
        to_proto(L.Pooling(x, pool="MAXIMUM", kernel_size=2))
    with pytest.raises(NetError, match="FillerParameter has no field named 'kind'"):
        to_proto(L.Convolution(x, kernel_size=1, weight_filler=dict(kind="xavier")))
    with pytest.raises(NetError, match="expected a dict"):
        to_proto(L.Convolution(x, kernel_size=1, weight_filler="xavier"))


def test_prototxt_round_trip():
    net = lenet(4)
    net.name = "LeNet"
    text = str(net)
    assert 'name: "LeNet"' in text and "layer {" in text and "pool: MAX" in text
    parsed = text_format.Parse(text, caffe_pb2.NetParameter())
    assert parsed == net


def test_netspec_access():
    n = NetSpec()
    n["data"] = L.Input(shape=dict(dim=[1, 2]))
    n.relu = L.ReLU(n["data"])
    assert n.relu is n["relu"] and "data" in n and n.keys() == ["data", "relu"]
    with pytest.raises(AttributeError, match="no top named 'missing'"):
        n.missing  # noqa: B018
    with pytest.raises(KeyError):
        n["missing"]
    assert not hasattr(n, "missing")
    tops = L.Slice(n.data, ntop=3, axis=1)
    assert isinstance(tops, tuple) and len(tops) == 3 and [t.n for t in tops] == [0, 1, 2]


def test_to_proto_shares_layers_between_tops():
    x = L.Input(shape=dict(dim=[1, 2]))
    a = L.ReLU(x)
    b = L.Sigmoid(x)
    net = to_proto(a, b)
    assert [lp.name for lp in net.layer] == ["Input1", "ReLU1", "Sigmoid1"]
    assert [list(lp.bottom) for lp in net.layer] == [[], ["Input1"], ["Input1"]]


def _net_or_skip():
    caffe = pytest.importorskip("caffe")
    from caffe import layer_type_list

    needed = {"DummyData", "Convolution", "Pooling", "InnerProduct", "ReLU", "SoftmaxWithLoss",
              "Silence"}
    missing = needed - set(layer_type_list())
    if missing:
        pytest.skip(f"layers not yet available: {sorted(missing)}")
    return caffe


def test_lenet_builds_as_a_net():
    caffe = _net_or_skip()
    for proto in (lenet(5), anon_lenet(5)):
        net = caffe.Net(proto, caffe.TEST)
        assert len(net.layers) == 9
        out = net.forward()
        (loss,) = out.values()
        assert np.isfinite(float(loss)) and float(loss) > 0
    net = caffe.Net(lenet(5), caffe.TEST)
    assert net.blobs["conv1"].data.shape == (5, 20, 24, 24)
    assert net.blobs["ip2"].data.shape == (5, 10)


def test_silent_net_has_no_outputs():
    caffe = _net_or_skip()
    net = caffe.Net(silent_net(), caffe.TEST)
    assert len(net.forward()) == 0


def fcn_with_crop() -> caffe_pb2.NetParameter:
    from caffe.coord_map import crop

    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 20, 20]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=50,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.score = L.Convolution(n.pool1, num_output=2, kernel_size=1)
    n.upscore = L.Deconvolution(n.score, convolution_param=dict(
        num_output=2, kernel_size=4, stride=2, bias_term=False,
        weight_filler=dict(type="bilinear")))
    n.out = crop(n.upscore, n.data)
    return n.to_proto()


def shared_params_net() -> caffe_pb2.NetParameter:
    n = NetSpec()
    n.a, n.b = L.Input(shape=[dict(dim=[2, 3]), dict(dim=[2, 3])], ntop=2)
    shared = [dict(name="w", lr_mult=1), dict(name="bias", lr_mult=2)]
    n.fa = L.InnerProduct(n.a, num_output=4, param=shared, weight_filler=dict(type="xavier"))
    n.fb = L.InnerProduct(n.b, num_output=4, param=shared)
    n.diff = L.Eltwise(n.fa, n.fb, operation=P.Eltwise.SUM, coeff=[1, -1])
    return n.to_proto()


def multi_top_net() -> caffe_pb2.NetParameter:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 6]))
    n.s0, n.s1, n.s2 = L.Slice(n.data, axis=1, slice_point=[1, 3], ntop=3)
    n.cat = L.Concat(n.s2, n.s0, axis=1)
    return n.to_proto()


@pytest.mark.parametrize("build", [lambda: lenet(2), fcn_with_crop, shared_params_net,
                                   multi_top_net])
def test_printed_prototxt_parses_back_and_instantiates(build):
    import caffe

    proto = build()
    parsed = text_format.Parse(str(proto), caffe_pb2.NetParameter())
    assert parsed == proto
    net = caffe.Net(parsed, caffe.TEST)
    net.forward()
    if build is fcn_with_crop:
        assert net.blobs["out"].data.shape[2:] == (20, 20)
    if build is shared_params_net:
        x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
        out = net.forward(a=x, b=x)  # fb's own filler would give zeros: equal only if shared
        assert np.abs(net.blobs["fa"].data).sum() > 0
        np.testing.assert_array_equal(out["diff"], 0)
        net.params["fa"][0].data[...] = 1
        assert (net.params["fb"][0].data == 1).all()
    if build is multi_top_net:
        x = np.arange(12, dtype=np.float32).reshape(2, 6)
        out = net.forward(data=x)
        np.testing.assert_array_equal(out["cat"], np.concatenate([x[:, 3:], x[:, :1]], axis=1))


def test_empty_dict_leaves_a_message_field_unset_as_pycaffe():
    # pycaffe's assign_proto only touches a message through the fields a dict names, so an empty
    # dict sets nothing; an empty dict inside a list still adds a repeated item.
    n = NetSpec()
    n.data = L.AnnotatedData(annotated_data_param=dict(batch_sampler=[dict(sampler={})]),
                             data_param=dict())
    layer = n.to_proto().layer[0]
    assert not layer.HasField("data_param")
    assert len(layer.annotated_data_param.batch_sampler) == 1
    assert not layer.annotated_data_param.batch_sampler[0].HasField("sampler")
    text = str(layer)
    assert re.search(r"\bsampler\b", text) is None and re.search(r"\bdata_param\b", text) is None
