"""net.optimize_for_inference(): the whole TEST forward as one module (caffe.inference)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from caffe.errors import CaffeError, NetError
from caffe.proto import caffe_pb2

from export_helpers import assert_close, random_feed, randomize, zoo_net, zoo_param

# Tolerances: assert_close (tests/export_helpers.py) bounds an output computed by other kernels
# in another sum order (rtol 1e-4, atol 1e-5 x max|output|, derived there). Folding BatchNorm
# and Scale into the convolution rounds each folded weight once more (relative u = 6e-8), which
# moves a K-term dot product by at most u * sum|terms|: inside the same bound.


def _reference(net, feed, names):
    """The per-layer forward's values of ``names`` for ``feed``."""
    for name, value in feed.items():
        net.blobs[name].data[...] = value
    net.forward()
    return {n: net.blobs[n].data.copy() for n in names}


def _twin(name: str, batch: int = 2):
    """Two copies of a zoo net with the same random weights."""
    return zoo_net(name, batch=batch), zoo_net(name, batch=batch)


@pytest.mark.parametrize("name,channels_last", [
    ("resnet50_style_deploy", True),   # BatchNorm + Scale folded, Eltwise, 1x1 projections
    ("resnet50_style_deploy", False),
    ("bvlc_googlenet_deploy", True),   # LRN, ceil-mode pools, Concat of four branches, Dropout
])
def test_outputs_match_the_per_layer_forward(name, channels_last):
    net, fast = _twin(name)
    feed = random_feed(net)
    want = _reference(net, feed, net.outputs)
    fast.optimize_for_inference(channels_last=channels_last)
    got = fast.forward(**feed)
    assert set(got) == set(net.outputs)
    for out in net.outputs:
        assert_close(got[out], want[out], out)
        assert_close(fast.blobs[out].data, want[out], out)
    assert fast.inference_options.channels_last is channels_last


def test_kept_blobs_hold_their_values_and_the_others_refuse_to_be_read():
    net, fast = _twin("resnet50_style_deploy")
    feed = random_feed(net)
    inner = "res2a"  # an Eltwise sum in the middle of the net
    want = _reference(net, feed, [inner] + net.outputs)
    fast.optimize_for_inference(keep=[inner])
    got = fast.forward(blobs=[inner], **feed)
    assert_close(got[inner], want[inner], inner)
    with pytest.raises(CaffeError, match=r"blob 'conv1' is not kept .*keep=\['conv1'\]"):
        _ = fast.blobs["conv1"].data
    with pytest.raises(CaffeError, match="not kept"):
        fast.forward(blobs=["conv1"], **feed)
    # Storage of released blobs is given back and not allocated again by the forward.
    assert fast.blobs["conv1"].data_mem._cpu is None
    assert fast.blobs[inner].data_mem._cpu is not None


def test_clear_restores_the_per_layer_forward():
    net, fast = _twin("resnet50_style_deploy")
    feed = random_feed(net)
    want = _reference(net, feed, ["conv1"] + net.outputs)
    fast.optimize_for_inference()
    fast.forward(**feed)
    fast.clear_inference_optimization()
    assert fast.inference_options is None
    fast.forward(**feed)
    np.testing.assert_array_equal(fast.blobs["conv1"].data, want["conv1"])  # same kernels


def test_new_weights_rebuild_the_module(tmp_path):
    source = zoo_net("resnet50_style_deploy", batch=1, seed=3)
    source.save(str(tmp_path / "w.caffemodel"))
    net, fast = _twin("resnet50_style_deploy", batch=1)
    feed = random_feed(net)
    fast.optimize_for_inference()
    before = fast.forward(**feed)["prob"].copy()
    fast.copy_from(str(tmp_path / "w.caffemodel"))
    want = _reference(source, feed, ["prob"])["prob"]
    after = fast.forward(**feed)["prob"]
    assert np.abs(before - want).max() > 1e-3  # the weights do change the output
    assert_close(after, want, "prob after copy_from")


def test_a_new_batch_size_after_optimizing():
    net, fast = _twin("resnet50_style_deploy", batch=1)
    fast.optimize_for_inference()
    for n in (net, fast):
        n.blobs["data"].reshape(3, *n.blobs["data"].shape[1:])
        n.reshape()
    feed = random_feed(net)
    want = _reference(net, feed, ["prob"])["prob"]
    got = fast.forward(**feed)["prob"]
    assert got.shape == (3, want.shape[1])
    assert_close(got, want, "prob at batch 3")


NET_WITH_DATA_AND_LOSS = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 5 kernel_size: 3 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pool" bottom: "label" top: "loss"
  loss_weight: 0.5 }
"""


def _tiny():
    net = caffe.Net(text_format.Parse(NET_WITH_DATA_AND_LOSS, caffe_pb2.NetParameter()),
                    caffe.TEST)
    randomize(net, seed=5)
    return net


def test_leading_data_layers_run_per_layer_and_the_loss_is_returned():
    caffe.set_random_seed(11)
    net = _tiny()
    want = net.forward_prefilled()
    caffe.set_random_seed(11)
    fast = _tiny()
    fast.optimize_for_inference()
    got = fast.forward_prefilled()
    # A scalar: 4 labels' softmax losses of 5 channels; the bound of assert_close applies.
    assert abs(got - want) <= 1e-4 * abs(want) + 1e-5
    assert abs(fast.blobs["loss"].data - net.blobs["loss"].data) <= 1e-4 * abs(want) + 1e-5
    assert fast.blobs["label"].data[0] == 2  # the data layer's tops are kept


def test_what_the_optimized_net_refuses():
    net = zoo_net("resnet50_style_deploy", batch=1)
    with pytest.raises(CaffeError, match="keep= takes a list"):
        net.optimize_for_inference(keep="prob")
    with pytest.raises(NetError, match=r"keep= names blob\(s\) \['nope'\]"):
        net.optimize_for_inference(keep=["nope"])
    net.optimize_for_inference()
    with pytest.raises(NetError, match="only the whole net runs"):
        net.forward(end="conv1")
    with pytest.raises(NetError, match="no backward pass"):
        net.backward()
    train = caffe.Net(zoo_param("resnet50_style_deploy"), caffe.TRAIN)
    with pytest.raises(NetError, match="TRAIN phase"):
        train.optimize_for_inference()


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")),
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_module_gives_the_same_outputs():
    net, fast = _twin("resnet50_style_deploy", batch=1)
    feed = random_feed(net)
    want = _reference(net, feed, ["prob"])["prob"]
    fast.optimize_for_inference(compile=True)
    assert_close(fast.forward(**feed)["prob"], want, "prob, compiled")


def test_activations_are_dropped_after_their_last_reader():
    from caffe.export.torch_module import CaffeModule, build_plan

    net = zoo_net("resnet50_style_deploy", batch=1)
    module = CaffeModule(build_plan(net, fold=True))
    live, peak = {}, [0]
    import caffe.export.torch_module as tm

    real = tm._run_op

    def counting(mod, op, blobs):
        real(mod, op, blobs)
        live.update(blobs)
        peak[0] = max(peak[0], len(blobs))

    tm._run_op = counting
    try:
        module(*[torch.from_numpy(a) for a in random_feed(net).values()])
    finally:
        tm._run_op = real
    # A ResNet keeps at most a block's input, its branch and its shortcut alive at once.
    assert len(live) > 20
    assert peak[0] <= 5
