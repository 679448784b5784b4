"""fold_net: BatchNorm/Scale folded into the layer before, Dropout/Split removed, same outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from caffe.errors import NetError
from caffe.export.fold import fold_net
from caffe.proto import caffe_pb2

from export_helpers import GOLDEN_NETS, random_feed, randomize, zoo_net, zoo_param
from layer_case import FWD_TOL
from tolerance import EPS32, EPS64

# Folding is exact in real arithmetic, so in float64 the folded net differs from the original
# only by rounding: each output passes through a few layers of at most n = 300 roundings
# (the longest reduction below, conv 3x3x32), each off by u = 2^-53 relative to the summed
# absolute terms, which are within ~10x of the outputs' magnitude M here; 3 layers * 300 * 10 *
# 1.1e-16 ~ 1e-12 * M. A wrong fold (eps, scale factor, axis, group) is off by 1e-3 or more.
F64_ATOL = 1e-11


def _net(text: str, dtype=torch.float64, phase=caffe.TEST, seed=0):
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    net = caffe.Net(param, phase, dtype=dtype)
    randomize(net, seed)
    return net


def _compare64(net, folded):
    feed = {k: v.astype(np.float64) for k, v in random_feed(net).items()}
    want = net.forward(**feed)
    got = folded.forward(**feed)
    assert list(got) == list(want) == net.outputs
    for name in want:
        scale = max(1.0, float(np.abs(want[name]).max()))
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=F64_ATOL * scale,
                                   err_msg=name)


def _types(net):
    return [layer.type for layer in net.layers]


INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }\n'


def test_conv_bn_scale_in_place_fold_into_one_conv_with_a_new_bias():
    net = _net(INPUT % "dim: 2 dim: 3 dim: 7 dim: 6" + """
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 5 kernel_size: 3 pad: 1 bias_term: false } }
        layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
        layer { name: "sc" type: "Scale" bottom: "conv" top: "conv"
                scale_param { bias_term: true } }
        layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }""")
    folded = fold_net(net)
    assert _types(folded) == ["Input", "Convolution", "ReLU"]
    assert len(folded.layers[1].blobs) == 2  # gained a bias
    assert net.layers[1].layer_param.convolution_param.bias_term is False  # original untouched
    _compare64(net, folded)


def test_not_in_place_chain_keeps_the_output_name_and_bn_eps_and_scale_factor():
    net = _net(INPUT % "dim: 2 dim: 4 dim: 5 dim: 5" + """
        layer { name: "conv" type: "Convolution" bottom: "data" top: "c"
                convolution_param { num_output: 6 kernel_size: 2 stride: 2 group: 2 } }
        layer { name: "bn" type: "BatchNorm" bottom: "c" top: "b"
                batch_norm_param { eps: 0.1 } }
        layer { name: "sc" type: "Scale" bottom: "b" top: "s" }""")
    folded = fold_net(net)
    assert _types(folded) == ["Input", "Convolution"]
    assert folded.outputs == ["s"]
    _compare64(net, folded)


def test_zero_scale_factor_means_zero_statistics():
    net = _net(INPUT % "dim: 3 dim: 4" + """
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 3 } }
        layer { name: "bn" type: "BatchNorm" bottom: "ip" top: "ip" }""")
    net.layers[2].blobs[2].data[...] = 0  # Caffe: 1 / s taken as 0, so mean = var = 0
    folded = fold_net(net)
    assert _types(folded) == ["Input", "InnerProduct"]
    _compare64(net, folded)


@pytest.mark.parametrize("extra", ["transpose: true", ""])
def test_inner_product_and_deconvolution_fold(extra):
    net = _net(INPUT % "dim: 2 dim: 4 dim: 3 dim: 3" + f"""
        layer {{ name: "deconv" type: "Deconvolution" bottom: "data" top: "d"
                convolution_param {{ num_output: 6 kernel_size: 3 stride: 2 group: 2 }} }}
        layer {{ name: "bn" type: "BatchNorm" bottom: "d" top: "d" }}
        layer {{ name: "sc" type: "Scale" bottom: "d" top: "d" scale_param {{ bias_term: true }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "d" top: "ip"
                inner_product_param {{ num_output: 5 {extra} }} }}
        layer {{ name: "sc2" type: "Scale" bottom: "ip" top: "ip" }}""")
    folded = fold_net(net)
    assert _types(folded) == ["Input", "Deconvolution", "InnerProduct"]
    _compare64(net, folded)


def test_no_fold_where_it_would_change_the_net():
    """A conv top read by another layer too, a BatchNorm with batch statistics in TEST, an
    InnerProduct with axis 2, a Scale over two axes, shared parameters: all stay."""
    net = _net(INPUT % "dim: 2 dim: 3 dim: 4 dim: 4" + """
        layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
                convolution_param { num_output: 3 kernel_size: 1 } }
        layer { name: "bn1" type: "BatchNorm" bottom: "c1" top: "b1" }
        layer { name: "sum" type: "Eltwise" bottom: "c1" bottom: "b1" top: "sum" }
        layer { name: "c2" type: "Convolution" bottom: "sum" top: "c2"
                convolution_param { num_output: 3 kernel_size: 1 } }
        layer { name: "bn2" type: "BatchNorm" bottom: "c2" top: "c2"
                batch_norm_param { use_global_stats: false } }
        layer { name: "ip" type: "InnerProduct" bottom: "c2" top: "ip"
                inner_product_param { num_output: 4 axis: 2 } }
        layer { name: "sc" type: "Scale" bottom: "ip" top: "ip" scale_param { num_axes: 2 } }
        layer { name: "c3" type: "Convolution" bottom: "ip" top: "c3" param { name: "w" }
                convolution_param { num_output: 3 kernel_size: 1 bias_term: false } }
        layer { name: "sc3" type: "Scale" bottom: "c3" top: "c3" }
        layer { name: "c4" type: "Convolution" bottom: "c3" top: "c4" param { name: "w" }
                convolution_param { num_output: 3 kernel_size: 1 bias_term: false } }""")
    folded = fold_net(net)
    assert _types(folded) == _types(net)
    _compare64(net, folded)


def test_dropout_and_split_removed_and_output_names_kept():
    net = _net(INPUT % "dim: 2 dim: 3" + """
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 4 } }
        layer { name: "drop" type: "Dropout" bottom: "ip" top: "d" }
        layer { name: "split" type: "Split" bottom: "d" top: "s0" top: "s1" }
        layer { name: "relu" type: "ReLU" bottom: "s0" top: "r" }
        layer { name: "sum" type: "Eltwise" bottom: "r" bottom: "s1" top: "sum" }
        layer { name: "drop2" type: "Dropout" bottom: "sum" top: "out" }""")
    folded = fold_net(net)
    # The last Dropout writes a net output under its own name: it stays (an identity in TEST).
    assert [lp.type for lp in folded.param.layer if lp.type != "Split"] == \
        ["Input", "InnerProduct", "ReLU", "Eltwise", "Dropout"]
    assert "Dropout" not in [lp.type for lp in folded.param.layer[:-1]]
    assert folded.outputs == ["out"]
    _compare64(net, folded)
    # Removed from the NetParameter; the net inserts its own Split where ``ip`` feeds two.
    assert "split" not in folded.layer_names_index and "drop" not in folded.layer_names_index


def test_split_with_an_in_place_consumer_stays():
    """Split tops share their bottom's data (Caffe's SplitLayer): a ReLU in place on one top
    rectifies the other as well, so removing the Split would change the sum."""
    net = _net(INPUT % "dim: 2 dim: 3" + """
        layer { name: "split" type: "Split" bottom: "data" top: "s0" top: "s1" }
        layer { name: "relu" type: "ReLU" bottom: "s0" top: "s0" }
        layer { name: "sum" type: "Eltwise" bottom: "s0" bottom: "s1" top: "sum" }""")
    folded = fold_net(net)
    assert "split" in folded.layer_names_index
    _compare64(net, folded)


def test_keep_names_survive():
    text = INPUT % "dim: 2 dim: 3 dim: 4 dim: 4" + """
        layer { name: "c" type: "Convolution" bottom: "data" top: "c"
                convolution_param { num_output: 3 kernel_size: 1 } }
        layer { name: "bn" type: "BatchNorm" bottom: "c" top: "b" }
        layer { name: "relu" type: "ReLU" bottom: "b" top: "r" }"""
    net = _net(text)
    assert _types(fold_net(net)) == ["Input", "Convolution", "ReLU"]
    kept = fold_net(net, keep=["c"])
    assert _types(kept) == _types(net) and "c" in kept.blobs


def test_exporters_keep_the_blobs_they_are_asked_for():
    """to_torch / to_onnx with fold=True and an output that folding would remove (the conv's
    top, fed only to the BatchNorm): the output stays, with the unfolded value. The 1x1
    convolution's 3 products and bias are summed in another order by torch's kernel than by
    caffepy's: they differ by at most 3 eps64 times the sum of the terms' absolute values."""
    from caffe.export import to_torch

    text = INPUT % "dim: 2 dim: 3 dim: 4 dim: 4" + """
        layer { name: "c" type: "Convolution" bottom: "data" top: "c"
                convolution_param { num_output: 3 kernel_size: 1 } }
        layer { name: "bn" type: "BatchNorm" bottom: "c" top: "b" }"""
    net = _net(text)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    net.blobs["data"].data[...] = x.numpy()
    net.forward()
    (c,) = to_torch(net, outputs=["c"], fold=True)(x)
    w, b = (blob.data for blob in net.params["c"])
    terms = np.einsum("oi,nihw->nohw", np.abs(w[:, :, 0, 0]), np.abs(x.numpy()))
    atol = 3 * EPS64 * float((terms + np.abs(b)[None, :, None, None]).max())
    np.testing.assert_allclose(c.detach().numpy(), net.blobs["c"].data, rtol=0, atol=atol)


def test_train_net_is_refused():
    net = _net(INPUT % "dim: 2 dim: 3", phase=caffe.TRAIN)
    with pytest.raises(NetError, match="TRAIN"):
        fold_net(net)


def test_mini_resnet_golden_net_float32_matches_caffe_blobs():
    """Caffe's mini_resnet (in-place conv/BN/Scale, bias-free convs): folded, its output
    still matches C++ Caffe's at the golden forward tolerance, scaled as the golden net test
    does (BatchNorm with zero statistics multiplies by 1/sqrt(eps) = 316 there)."""
    name = "mini_resnet"
    net = caffe.Net(str(GOLDEN_NETS / f"{name}.prototxt"),
                    str(GOLDEN_NETS / f"{name}.caffemodel"), caffe.TEST)
    folded = fold_net(net)
    assert "BatchNorm" not in _types(folded) and "Scale" not in _types(folded)
    with np.load(GOLDEN_NETS / f"{name}.npz") as golden:
        got = folded.forward(data=golden["input/data"])["fc"]
        want = golden["blob/fc"]
    np.testing.assert_allclose(got, want, rtol=FWD_TOL["rtol"],
                               atol=FWD_TOL["atol"] * max(1.0, float(np.abs(want).max())))


def test_resnet50_style_float32_fold():
    """The zoo ResNet-50-style net in float32: 12 conv+BN+Scale chains folded. The folded
    and original nets differ by sum order and the weight products' rounding: per layer at
    most ~(n + 4) u relative to the absolute terms (n <= 144 = 3x3x16), which stay within ~4x
    of the outputs for these He-scaled weights; ~8 layers deep: 8 * 150 * 4 * 6e-8 ~ 3e-4 of
    the largest output, and the softmax output's elements are at most 1."""
    param = zoo_param("resnet50_style_deploy")
    net = caffe.Net(param, caffe.TEST)
    randomize(net)
    folded = fold_net(net)
    assert _types(folded).count("BatchNorm") == 0
    assert _types(folded).count("Convolution") == 12
    assert len(folded.layers) == len(net.layers) - 24
    feed = random_feed(net)
    want = net.forward(**feed)["prob"].copy()
    got = folded.forward(**feed)["prob"]
    np.testing.assert_allclose(got, want, rtol=0, atol=8 * 150 * 4 * EPS32)


@pytest.mark.parametrize("name", ["bvlc_reference_caffenet_deploy", "bvlc_googlenet_deploy",
                                  "nin_cifar10_deploy"])
def test_zoo_nets_fold_to_the_same_outputs(name):
    """Dropout (in place) removed from CaffeNet, GoogLeNet and NIN; GoogLeNet's inception
    inputs still feed four branches through the Splits the net inserts. Nothing is folded
    (no BatchNorm), so the outputs are bitwise those of the same kernels."""
    net = zoo_net(name)
    folded = fold_net(net)
    assert "Dropout" in _types(net) and "Dropout" not in _types(folded)
    assert len(folded.layers) == len(net.layers) - _types(net).count("Dropout")
    feed = random_feed(net)
    want = {k: v.copy() for k, v in net.forward(**feed).items()}
    got = folded.forward(**feed)
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
