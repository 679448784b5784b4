"""Net construction and run-time semantics: filtering, splits, in-place, sharing, backward needs,
the pycaffe surface, saving/loading weights, and the errors users meet."""

import os

import numpy as np
import pytest

import caffe
from caffe.errors import CaffeError, LayerError, NetError, ProtoError
from caffe.net import Net, insert_splits
from caffe.proto import caffe_pb2
from caffe.protoio import parse_text

from tolerance import matmul_atol

MLP = """
name: 'mlp'
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: 'ip1' type: 'InnerProduct' bottom: 'data' top: 'ip1'
        param { name: 'shared_w' lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.3 }
                              bias_filler { type: 'constant' value: 0.1 } } }
layer { name: 'relu1' type: 'ReLU' bottom: 'ip1' top: 'ip1' }
layer { name: 'ip2' type: 'InnerProduct' bottom: 'ip1' top: 'ip2'
        param { name: 'shared_w' } param { lr_mult: 2 }
        inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.3 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip2' bottom: 'label' top: 'loss' }
layer { name: 'acc' type: 'Accuracy' bottom: 'ip2' bottom: 'label' top: 'acc'
        include { phase: TEST } }
"""


def write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def mlp(tmp_path):
    caffe.set_random_seed(1)
    return Net(write(tmp_path, MLP), caffe.TRAIN)


def feed(net, seed=0):
    rng = np.random.default_rng(seed)
    net.blobs["data"].data[...] = rng.normal(size=(4, 3))
    net.blobs["label"].data[...] = [0, 1, 2, 1]


def test_structure_filtering_splits_and_in_place(mlp, tmp_path):
    assert mlp._layer_names == ["data", "ip1", "relu1", "ip1_relu1_0_split", "ip2", "loss"] \
        or "acc" not in mlp._layer_names
    assert "acc" not in mlp._layer_names  # TEST-only layer filtered out in TRAIN
    test_net = Net(write(tmp_path, MLP), caffe.TEST)
    assert "acc" in test_net._layer_names
    # In TEST, ip2 and label feed both loss and accuracy: Caffe's split names
    assert "ip2_ip2_0_split" in test_net._layer_names
    assert test_net.bottom_names["acc"] == ["ip2_ip2_0_split_1", "label_data_1_split_1"]
    # in-place ReLU shares the blob
    assert mlp.top_names["relu1"] == ["ip1"] and mlp.bottom_names["relu1"] == ["ip1"]
    assert mlp.inputs == ["data", "label"] and mlp.outputs == ["loss"]
    assert mlp.blob_loss_weights["loss"] == 1.0 and mlp.blob_loss_weights["ip2"] == 0.0


def test_insert_splits_with_loss_weight_on_consumed_top():
    param = parse_text("""
        layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 } } }
        layer { name: 'f' type: 'ReLU' bottom: 'x' top: 'y' loss_weight: 0.5 }
        layer { name: 'g' type: 'ReLU' bottom: 'y' top: 'z' }""", caffe_pb2.NetParameter())
    out = insert_splits(param)
    names = [lp.name for lp in out.layer]
    assert names == ["in", "f", "y_f_0_split", "g"]
    split = out.layer[2]
    assert list(split.top) == ["y_f_0_split_0", "y_f_0_split_1"]
    assert list(split.loss_weight) == [0.5, 0.0]
    assert list(out.layer[1].loss_weight) == []
    assert list(out.layer[3].bottom) == ["y_f_0_split_1"]


@pytest.mark.parametrize("rule,level,stages,included", [
    ("include { min_level: 1 }", 0, [], False),
    ("include { min_level: 1 }", 2, [], True),
    ("include { max_level: 1 }", 2, [], False),
    ("include { stage: 'deploy' }", 0, ["deploy"], True),
    ("include { stage: 'deploy' }", 0, [], False),
    ("exclude { stage: 'deploy' }", 0, ["deploy"], False),
    ("include { not_stage: 'deploy' }", 0, ["deploy"], False),
    ("include { phase: TRAIN } include { stage: 'x' }", 0, ["x"], True),
])
def test_net_state_rules(tmp_path, rule, level, stages, included):
    text = f"""
        layer {{ name: 'in' type: 'Input' top: 'x' input_param {{ shape {{ dim: 2 }} }} }}
        layer {{ name: 'r' type: 'ReLU' bottom: 'x' top: 'y' {rule} }}"""
    net = Net(write(tmp_path, text), caffe.TEST, level=level, stages=stages)
    assert ("r" in net._layer_names) == included


def test_include_and_exclude_together_is_an_error(tmp_path):
    text = """layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 } }
              include { phase: TEST } exclude { phase: TRAIN } }"""
    with pytest.raises(NetError, match="either include rules or exclude rules"):
        Net(write(tmp_path, text), caffe.TEST)


def test_shared_params_alias_and_lr_mult(mlp):
    w1, w2 = mlp.params["ip1"][0], mlp.params["ip2"][0]
    w1.data[...] = 0.25
    assert (w2.data == 0.25).all()
    assert len(mlp.learnable_params) == 3  # shared weight counted once
    assert mlp.params_lr == [1.0, 2.0, 2.0]
    assert mlp.param_owners == [-1, -1, 0, -1]


def test_shared_param_shape_mismatch(tmp_path):
    text = MLP.replace("inner_product_param { num_output: 3 weight_filler { type: 'gaussian' "
                       "std: 0.3 } }", "inner_product_param { num_output: 5 }")
    with pytest.raises(NetError, match="Cannot share param 'shared_w' owned by layer 'ip1' with "
                                       "layer 'ip2'; shape mismatch"):
        Net(write(tmp_path, text), caffe.TRAIN)


def test_backward_needs(tmp_path):
    text = """
    layer { name: 'in' type: 'Input' top: 'x' top: 'label'
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
    layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y' inner_product_param {
            num_output: 3 } }
    layer { name: 'side' type: 'InnerProduct' bottom: 'x' top: 'unused'
            inner_product_param { num_output: 2 } }
    layer { name: 'frozen' type: 'InnerProduct' bottom: 'y' top: 'z' param { lr_mult: 0 }
            param { lr_mult: 0 } inner_product_param { num_output: 3 } }
    layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'z' bottom: 'label' top: 'loss' }"""
    net = Net(write(tmp_path, text), caffe.TRAIN)
    need = dict(zip(net._layer_names, net.layer_need_backward))
    assert need["ip"] and need["frozen"] and need["loss"]
    assert not need["side"]  # does not contribute to the loss
    assert not need["in"]
    loss_id = net._layer_names.index("loss")
    assert net.bottom_need_backward[loss_id] == [True, False]
    frozen = net.layer_dict["frozen"]
    assert frozen.param_propagate_down == [False, False]
    forced = Net(write(tmp_path, "force_backward: true\n" + text), caffe.TRAIN)
    assert all(forced.layer_need_backward)
    assert forced.bottom_need_backward[loss_id] == [True, False]  # never into labels


def test_forward_backward_and_pycaffe_calls(mlp):
    feed(mlp)
    out = mlp.forward()
    assert set(out) == {"loss"} and out["loss"].shape == ()
    loss = float(out["loss"])
    probs_start = mlp.forward(start="ip2")
    assert float(probs_start["loss"]) == pytest.approx(loss)
    got = mlp.forward(end="ip2")
    assert "ip2" in got
    mlp.clear_param_diffs()
    mlp.forward()
    diffs = mlp.backward()
    assert set(diffs) == {"data", "label"}
    assert np.abs(mlp.params["ip1"][0].diff).sum() > 0
    with pytest.raises(CaffeError, match="do not match net inputs"):
        mlp.forward(data=np.zeros((4, 3), np.float32))
    with pytest.raises(CaffeError, match="not batch sized"):
        mlp.forward(data=np.zeros((3, 3), np.float32), label=np.zeros(3, np.float32))


def test_numerical_gradient_through_net(mlp):
    """The loss gradient w.r.t. one weight matches a finite difference through the whole net."""
    feed(mlp)
    mlp.clear_param_diffs()
    mlp.forward()
    mlp.backward()
    w = mlp.params["ip1"][1]  # bias of ip1
    analytic = w.diff.copy()
    eps = 1e-2
    for k in range(3):
        w.data[k] += eps
        plus = float(mlp.forward()["loss"])
        w.data[k] -= 2 * eps
        minus = float(mlp.forward()["loss"])
        w.data[k] += eps
        # A finite difference, not a sum order: the float32 losses (~1) round at ~1e-7, which
        # the division by 2 * eps = 0.02 makes ~1e-5, and the central difference's truncation
        # eps**2 / 6 * |d3 loss| is ~2e-5 for this softmax of affine maps: abs=1e-3 is 20x both.
        assert analytic[k] == pytest.approx((plus - minus) / (2 * eps), rel=2e-2, abs=1e-3)


def test_update_sgd_reduces_loss(mlp):
    feed(mlp)
    first = float(mlp.forward()["loss"])
    for _ in range(30):
        mlp.clear_param_diffs()
        mlp.forward()
        mlp.backward()
        for blob in mlp.learnable_params:
            blob.diff[...] *= 0.5
        mlp.update()
    assert float(mlp.forward()["loss"]) < first * 0.8


@pytest.mark.parametrize("ext", [".caffemodel", ".h5"])
def test_save_and_load_weights_identically(mlp, tmp_path, ext):
    path = str(tmp_path / f"w{ext}")
    (mlp.save_hdf5 if ext == ".h5" else mlp.save)(path)
    caffe.set_random_seed(99)
    other = Net(write(tmp_path, MLP), path, caffe.TRAIN)
    for name, blobs in mlp.params.items():
        for a, b in zip(blobs, other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_copy_from_shape_mismatch_names_layer_and_shapes(mlp, tmp_path):
    path = str(tmp_path / "w.caffemodel")
    mlp.save(path)
    text = MLP.replace("dim: 4 dim: 3", "dim: 4 dim: 7").replace(
        "param { name: 'shared_w' }", "param { name: 'w2' }")
    net = Net(write(tmp_path, text, "other.prototxt"), caffe.TRAIN)
    with pytest.raises(NetError, match=r"Cannot copy param 0 weights from layer 'ip1'.*Source "
                                       r"param shape is 3 3.*target param shape is 3 7"):
        net.copy_from(path)


def test_to_proto_with_and_without_diff(mlp):
    feed(mlp)
    mlp.forward()
    mlp.backward()
    proto = mlp.to_proto(write_diff=True)
    ip1 = [lp for lp in proto.layer if lp.name == "ip1"][0]
    assert len(ip1.blobs) == 2 and len(ip1.blobs[0].diff) == 9
    assert len(mlp.to_proto().layer[1].blobs[0].diff) == 0


def test_share_with(mlp, tmp_path):
    other = Net(write(tmp_path, MLP), caffe.TEST)
    other.share_with(mlp)
    mlp.params["ip2"][1].data[...] = 7
    assert (other.params["ip2"][1].data == 7).all()


def test_reshape_propagates_input_shapes(mlp):
    mlp.blobs["data"].reshape(6, 3)
    mlp.blobs["label"].reshape(6)
    mlp.reshape()
    assert mlp.blobs["ip2"].shape == (6, 3)


def test_forward_all_batches(tmp_path):
    text = """
    layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }
    layer { name: 'r' type: 'ReLU' bottom: 'x' top: 'y' }"""
    net = Net(write(tmp_path, text), caffe.TEST)
    x = np.arange(15, dtype=np.float32).reshape(5, 3) - 7
    out = net.forward_all(x=x)
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))


# --- errors users meet --------------------------------------------------------------------
def test_unknown_layer_type_lists_close_matches(tmp_path):
    text = "layer { name: 'c' type: 'Convolutoin' top: 'x' }"
    with pytest.raises(LayerError, match=r"Unknown layer type: 'Convolutoin'.*did you mean "
                                         r"'Convolution'"):
        Net(write(tmp_path, text), caffe.TEST)


def test_unknown_bottom_blob(tmp_path):
    text = """layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 } } }
              layer { name: 'r' type: 'ReLU' bottom: 'xx' top: 'y' }"""
    with pytest.raises(NetError, match=r"net\.prototxt:2: Unknown bottom blob 'xx' \(layer 'r', "
                                       r"bottom index 0\)"):
        Net(write(tmp_path, text), caffe.TEST)


def test_bad_prototxt_syntax_names_file_line_column(tmp_path):
    path = write(tmp_path, "name: 'x'\nlayer {\n  name: 'a'\n  typo_field: 3\n}\n")
    with pytest.raises(ProtoError, match=r"net\.prototxt:4:3: .*typo_field"):
        Net(path, caffe.TEST)


def test_wrong_bottom_count(tmp_path):
    text = """layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 } } }
              layer { name: 'r' type: 'ReLU' bottom: 'x' bottom: 'x' top: 'y' }"""
    with pytest.raises(LayerError, match=r"net\.prototxt:2: ReLU layer 'r': takes 1 bottom "
                                         r"blob\(s\) as input, got 2 \(bottom shapes \[\[2\], "
                                         r"\[2\]\]\)"):
        Net(write(tmp_path, text), caffe.TEST)


def test_missing_files(tmp_path):
    with pytest.raises(ProtoError, match="not found: .*nope.prototxt"):
        Net(str(tmp_path / "nope.prototxt"), caffe.TEST)
    path = write(tmp_path, MLP)
    with pytest.raises(ProtoError, match="not found: .*nope.caffemodel"):
        Net(path, str(tmp_path / "nope.caffemodel"), caffe.TEST)


def test_duplicate_top_and_phase_required(tmp_path):
    text = """layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 } } }
              layer { name: 'r' type: 'ReLU' bottom: 'x' top: 'x2' }
              layer { name: 's' type: 'ReLU' bottom: 'x' top: 'x2' }"""
    with pytest.raises(NetError, match="Top blob 'x2' produced by multiple sources"):
        Net(write(tmp_path, text), caffe.TEST)
    with pytest.raises(CaffeError, match="phase is required"):
        Net(write(tmp_path, MLP))


def test_debug_info_logs_data_and_diff_magnitudes(tmp_path, caplog):
    net = Net(write(tmp_path, "debug_info: true\n" + MLP), caffe.TRAIN)
    feed(net)
    with caplog.at_level("INFO", logger="caffe"):
        net.forward_backward()
    text = caplog.text
    assert "[Forward] Layer ip1, top blob ip1 data:" in text
    assert "[Forward] Layer ip1, param blob shared_w data:" in text
    assert "[Backward] Layer ip2, bottom blob ip1 diff:" in text
    assert "[Backward] All net params (data, diff): L1 norm" in text


def test_copy_from_v1_caffemodel(mlp, tmp_path):
    """Weights saved in the V1 `layers { type: INNER_PRODUCT blobs ... }` format load too."""
    v1 = caffe_pb2.NetParameter(name="mlp")
    for name, blobs in mlp.params.items():
        layer = v1.layers.add(name=name, type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
        for blob in blobs:
            blob.to_proto(layer.blobs.add())
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(v1.SerializeToString())
    other = Net(write(tmp_path, MLP), str(path), caffe.TRAIN)
    for name, blobs in mlp.params.items():
        for a, b in zip(blobs, other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


def test_forward_backward_all_batches(tmp_path):
    text = """
    layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }
    layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y'
            inner_product_param { num_output: 2 weight_filler { type: 'gaussian' } } }"""
    net = Net(write(tmp_path, "force_backward: true\n" + text), caffe.TEST)
    w = net.params["ip"][0].data
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    dy = rng.normal(size=(5, 2)).astype(np.float32)
    outs, diffs = net.forward_backward_all(x=x, y=dy)
    # numpy's float32 matmul sums in its own order: atol from the products' sizes (tolerance.py).
    np.testing.assert_allclose(outs["y"], x @ w.T, rtol=1e-5, atol=matmul_atol(x, w.T))
    np.testing.assert_allclose(diffs["x"], dy @ w, rtol=1e-5, atol=matmul_atol(dy, w))


def test_set_mode_gpu_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(CaffeError, match="no CUDA device is available"):
        caffe.set_mode_gpu()
