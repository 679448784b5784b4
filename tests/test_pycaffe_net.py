"""pycaffe's Net surface to the letter: forward/backward with start/end layer names, the
low-level names pycaffe's C++ module exposed (_blob_loss_weights, _bottom_ids, ...), loss layers
without ``top:`` (Caffe's auto top blobs) and the per-layer callbacks of BVLC's python/train.py.

Results are compared with runs of the same layers on the same inputs (bit-identical by
construction), so no tolerance is needed unless a test says otherwise.
"""

import numpy as np
import pytest

import caffe
from caffe.errors import CaffeError, NetError
from caffe.net import Net

# No Split layers: ip1's blob goes through the in-place relu1 into ip2; label is used once.
MLP = """
name: 'mlp'
force_backward: true
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: 'ip1' type: 'InnerProduct' bottom: 'data' top: 'ip1'
        inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.5 }
                              bias_filler { type: 'constant' value: 0.1 } } }
layer { name: 'relu1' type: 'ReLU' bottom: 'ip1' top: 'ip1' }
layer { name: 'fc' type: 'InnerProduct' bottom: 'ip1' top: 'scores'
        inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'scores' bottom: 'label' top: 'loss' }
"""


def write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def mlp(tmp_path):
    caffe.set_random_seed(7)
    net = Net(write(tmp_path, MLP), caffe.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.normal(size=(4, 3))
    net.blobs["label"].data[...] = [0, 1, 2, 1]
    return net


def sentinel(net, name, value=-123.0):
    """Fill a blob's data and diff with a value no layer writes, to see whether it ran."""
    net.blobs[name].data[...] = value
    net.blobs[name].diff[...] = value


# --- item 2: forward(start=, end=) and backward(start=, end=) name layers -----------------------
def test_forward_end_at_an_in_place_layer_returns_its_top(mlp):
    sentinel(mlp, "scores")
    out = mlp.forward(end="relu1")  # relu1 is a layer; its top is the blob 'ip1'
    assert list(out) == ["ip1"] == mlp.top_names["relu1"]
    assert (out["ip1"] >= 0).all() and (out["ip1"] > 0).any()
    assert (mlp.blobs["scores"].data == -123.0).all()  # layers after the end did not run


def test_forward_returns_end_layer_tops_plus_blobs_asked_for(mlp):
    out = mlp.forward(end="fc", blobs=["data"])
    assert set(out) == {"scores", "data"}  # top_names['fc'] is ['scores'], not a blob 'fc'
    full = {k: v.copy() for k, v in mlp.forward(blobs=["scores"]).items()}
    assert set(full) == {"loss", "scores"}
    np.testing.assert_array_equal(out["scores"], full["scores"])


def test_forward_from_start_layer_reuses_the_blobs_below(mlp):
    full = float(mlp.forward()["loss"])
    sentinel(mlp, "data", 0.0)  # the data layer's blob: unused when starting at fc
    assert float(mlp.forward(start="fc")["loss"]) == full
    out = mlp.forward(start="fc", end="fc")
    assert list(out) == ["scores"]


def test_backward_end_returns_the_end_layers_bottom_diffs(mlp):
    mlp.forward()
    got = mlp.backward(end="fc")  # pycaffe: bottom_names[end], i.e. fc's bottom 'ip1'
    assert list(got) == ["ip1"] == mlp.bottom_names["fc"]
    d_ip1, d_scores = got["ip1"].copy(), mlp.blobs["scores"].diff.copy()
    # fc's backward: d(ip1) = d(scores) @ W, 3 products per element; float32 rounding of
    # each product and partial sum is at most eps32 * |d(scores)| * |W| per term, 3 terms.
    w = mlp.params["fc"][0].data.astype(np.float64)
    bound = 3 * np.finfo(np.float32).eps * np.abs(d_scores).max() * np.abs(w).max() * 2
    np.testing.assert_allclose(d_ip1, d_scores.astype(np.float64) @ w, rtol=0, atol=bound)
    # the full pass goes on through the in-place relu1, which masks the same blob's diff
    mlp.forward()
    full = mlp.backward(diffs=["ip1"])
    np.testing.assert_array_equal(full["ip1"], d_ip1 * (mlp.blobs["ip1"].data > 0))
    # backward of fc alone, from a given top diff
    mlp.blobs["scores"].diff[...] = d_scores
    alone = mlp.backward(start="fc", end="fc", diffs=["scores"])
    assert set(alone) == {"ip1", "scores"}
    np.testing.assert_array_equal(alone["ip1"], d_ip1)


def test_backward_stops_at_the_end_layer(mlp):
    mlp.forward()
    sentinel(mlp, "data")
    mlp.backward(end="relu1")
    assert (mlp.blobs["data"].diff == -123.0).all()  # ip1 (below relu1) did not run backward
    assert mlp.backward(end="data") == {}  # the Input layer has no bottoms


def test_forward_and_backward_default_to_outputs_and_inputs(mlp):
    assert list(mlp.forward()) == mlp.outputs == ["loss"]
    assert set(mlp.backward()) == set(mlp.inputs) == {"data", "label"}


@pytest.mark.parametrize("call, message", [
    (lambda n: n.forward(end="nope"),
     r"forward end: no layer named 'nope' in net 'mlp'.*layers: data, ip1, relu1, fc, loss"),
    (lambda n: n.forward(start="relu9"), r"forward start: no layer named 'relu9'.*did you mean "
                                         r"'relu1'"),
    (lambda n: n.forward(end="scores"), r"'scores' is a blob, a top of layer\(s\) \['fc'\]"),
    (lambda n: n.forward(blobs=["nope"]), r"blobs=: no blob named 'nope'.*blobs: data, label, "
                                          r"ip1, scores, loss"),
    (lambda n: n.forward(blobs="ip1"), r"blobs= takes a list of blob names.*blobs=\['ip1'\]"),
    (lambda n: n.forward(start="fc", end="ip1"), r"start layer 'fc' \(index 3\) comes after end "
                                                 r"layer 'ip1' \(index 1\)"),
    (lambda n: n.forward(data=np.zeros((4, 3))), r"Input blob arguments \['data'\] do not match "
                                                 r"net inputs \['data', 'label'\]"),
    (lambda n: n.forward(data=np.zeros((3, 3)), label=np.zeros(4)),
     r"Input blob 'data' is not batch sized: got shape \[3, 3\], blob shape \[4, 3\]"),
    (lambda n: n.forward(data=np.zeros((4, 2)), label=np.zeros(4)),
     r"Input blob 'data' has shape \[4, 2\] but the blob has shape \[4, 3\]; call "
     r"net.blobs\['data'\].reshape"),
])
def test_forward_checks_everything_before_running(mlp, call, message):
    sentinel(mlp, "ip1")
    sentinel(mlp, "data", 5.0)
    with pytest.raises(NetError, match=message):
        call(mlp)
    assert (mlp.blobs["ip1"].data == -123.0).all()  # no layer ran
    assert (mlp.blobs["data"].data == 5.0).all()  # no input was written


@pytest.mark.parametrize("call, message", [
    (lambda n: n.backward(start="nope"), r"backward start: no layer named 'nope'"),
    (lambda n: n.backward(end="ip"), r"backward end: no layer named 'ip'.*did you mean"),
    (lambda n: n.backward(diffs=["nope"]), r"diffs=: no blob named 'nope'"),
    (lambda n: n.backward(start="ip1", end="fc"), r"start layer 'ip1' \(index 1\) comes before "
                                                  r"end layer 'fc' \(index 3\)"),
    (lambda n: n.backward(scores=np.zeros((4, 3))), r"Top diff arguments \['scores'\] do not "
                                                    r"match net outputs \['loss'\]"),
])
def test_backward_checks_everything_before_running(mlp, call, message):
    mlp.forward()
    sentinel(mlp, "ip1")
    with pytest.raises(NetError, match=message):
        call(mlp)
    assert (mlp.blobs["ip1"].diff == -123.0).all()


def test_keyword_inputs_broadcast_as_pycaffe_assigns_them(mlp):
    """pycaffe writes kwargs with ``blob.data[...] = array``: numpy broadcasting applies."""
    column = np.arange(4, dtype=np.float32).reshape(4, 1)
    mlp.forward(data=column, label=np.zeros(4, np.float32))
    np.testing.assert_array_equal(mlp.blobs["data"].data, np.repeat(column, 3, axis=1))


def test_backward_keyword_diffs_seed_the_outputs(tmp_path):
    text = """
    force_backward: true
    layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }
    layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y'
            inner_product_param { num_output: 2 weight_filler { type: 'gaussian' } } }"""
    net = Net(write(tmp_path, text), caffe.TEST)
    net.forward(x=np.ones((2, 3), np.float32))
    dy = np.array([[1, 0], [0, 2]], np.float32)
    got = net.backward(y=dy)
    # dx = dy @ W: each element a sum of at most 2 products of exact small numbers with W
    # entries, so float32 gives the same result up to one rounding per term (2 * eps32 * |W|).
    w = net.params["ip"][0].data.astype(np.float64)
    bound = 2 * np.finfo(np.float32).eps * np.abs(w).max() * 2
    np.testing.assert_allclose(got["x"], dy @ w, rtol=0, atol=bound)
    with pytest.raises(NetError, match=r"Top diff 'y' is not batch sized"):
        net.backward(y=np.zeros((3, 2), np.float32))


def test_forward_all_and_forward_backward_all_still_batch(tmp_path):
    deploy = MLP.replace("top: 'label'", "").replace("shape { dim: 4 } ", "")
    deploy = deploy[:deploy.index("layer { name: 'loss'")]
    caffe.set_random_seed(7)
    net = Net(write(tmp_path, deploy), caffe.TEST)
    rng = np.random.default_rng(2)
    data = rng.normal(size=(6, 3)).astype(np.float32)  # 1.5 batches: the last one padded
    outs = net.forward_all(blobs=["ip1"], data=data)
    assert set(outs) == {"scores", "ip1"} and outs["scores"].shape == (6, 3)
    net.forward(data=data[4:].repeat(2, axis=0))
    np.testing.assert_array_equal(outs["scores"][4:], net.blobs["scores"].data[::2])
    fwd, bwd = net.forward_backward_all(blobs=["ip1"], diffs=["ip1"], data=data,
                                        scores=np.ones((6, 3), np.float32))
    assert fwd["scores"].shape == (6, 3) and bwd["ip1"].shape == (6, 5)
    assert bwd["data"].shape == (6, 3) and np.abs(bwd["data"]).sum() > 0


# --- item 5: the low-level names pycaffe's _caffe module exposes ------------------------------
def test_low_level_pycaffe_names(mlp):
    assert mlp._layer_names == ["data", "ip1", "relu1", "fc", "loss"]
    assert mlp._blob_names == ["data", "label", "ip1", "scores", "loss"]
    assert mlp._inputs == [0, 1] and mlp._outputs == [4]
    assert len(mlp._blobs) == 5 and mlp._blobs[3] is mlp.blobs["scores"]
    assert len(mlp.layers) == 5 and mlp.layers[3].type == "InnerProduct"
    assert mlp._blob_loss_weights == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert list(mlp.blob_loss_weights.values()) == mlp._blob_loss_weights
    assert mlp._bottom_ids(4) == [3, 1] and mlp._top_ids(4) == [4]
    assert mlp._bottom_ids(2) == mlp._top_ids(2) == [2]  # in-place relu1
    assert mlp._bottom_ids(0) == [] and mlp._top_ids(0) == [0, 1]
    for i, name in enumerate(mlp._layer_names):  # pycaffe builds bottom_names/top_names so
        assert [mlp._blob_names[b] for b in mlp._bottom_ids(i)] == mlp.bottom_names[name]
        assert [mlp._blob_names[b] for b in mlp._top_ids(i)] == mlp.top_names[name]
    ids = mlp._top_ids(4)
    ids.append(99)  # a copy, as boost's copy_const_reference returned
    assert mlp._top_ids(4) == [4]


MEMORY = """
layer { name: 'mem' type: 'MemoryData' top: 'data' top: 'label'
        memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
layer { name: 'flat' type: 'Flatten' bottom: 'data' top: 'flat' }
"""


def test_set_input_arrays_low_level_form(tmp_path):
    net = Net(write(tmp_path, MEMORY), caffe.TEST)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    labels = np.array([3, 4, 5, 6], np.float32).reshape(4, 1, 1, 1)
    net._set_input_arrays(data, labels)
    net.forward()
    np.testing.assert_array_equal(net.blobs["flat"].data, data[:2].reshape(2, 4))
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [3, 4])
    net.set_input_arrays(data, labels.reshape(4))  # pycaffe's wrapper takes 1-d labels too
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [3, 4])


def test_set_input_arrays_needs_a_memory_data_first_layer(mlp):
    with pytest.raises(RuntimeError, match=r"set_input_arrays may only be called if the first "
                                           r"layer is a MemoryDataLayer; layer 0 \('data'\) is "
                                           r"a Input layer"):
        mlp._set_input_arrays(np.zeros((4, 1, 1, 1), np.float32),
                              np.zeros((4, 1, 1, 1), np.float32))


# --- item 10: a loss layer without top: gets Caffe's automatic top -----------------------------
NO_TOP = """
layer { name: 'data' type: 'Input' top: 'x' top: 'label' top: 'target'
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } shape { dim: 4 dim: 2 } } }
layer { name: 'fc' type: 'InnerProduct' bottom: 'x' top: 'fc'
        inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'ip'
        inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'fc' bottom: 'label' }
layer { name: 'l2' type: 'EuclideanLoss' bottom: 'ip' bottom: 'target' %s }
"""


def test_loss_layer_without_top_gets_an_automatic_top(tmp_path):
    caffe.set_random_seed(3)
    net = Net(write(tmp_path, NO_TOP % ""), caffe.TRAIN)
    assert net.top_names["loss"] == ["(automatic)"] and net.top_names["l2"] == ["(automatic)"]
    assert net._blob_names[-2:] == ["(automatic)", "(automatic)"]
    assert net.outputs == []  # Caffe keeps these anonymous tops out of the outputs
    assert net._blob_loss_weights[-2:] == [1.0, 1.0]
    assert net.layer_need_backward[net._layer_names.index("fc")]

    caffe.set_random_seed(3)
    named = Net(write(tmp_path, NO_TOP % "top: 'l2'", "named.prototxt"), caffe.TRAIN)
    rng = np.random.default_rng(4)
    for n in (net, named):
        n.blobs["x"].data[...] = rng.normal(size=(4, 3)) if n is net else net.blobs["x"].data
        n.blobs["label"].data[...] = [0, 2, 1, 0]
        n.blobs["target"].data[...] = 0.5
        n.clear_param_diffs()
    loss = net.forward_backward()
    assert loss == named.forward_backward() and loss > 0
    # the automatic tops hold the losses; the net's loss is their weighted sum
    top = net._blobs[net._top_ids(net._layer_names.index("loss"))[0]]
    assert float(top.data) == float(named.blobs["(automatic)"].data)
    for layer in ("fc", "ip"):
        np.testing.assert_array_equal(net.params[layer][0].diff, named.params[layer][0].diff)
        assert np.abs(net.params[layer][0].diff).sum() > 0


def test_layers_without_auto_tops_still_need_their_top(tmp_path):
    text = """
    layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 } } }
    layer { name: 'r' type: 'ReLU' bottom: 'x' }"""
    with pytest.raises(CaffeError, match=r"ReLU layer 'r': produces 1 top blob\(s\)"):
        Net(write(tmp_path, text), caffe.TEST)


# --- item 11: Net.before_forward / after_forward / before_backward / after_backward ------------
def test_callbacks_run_around_every_layer_with_its_index(mlp):
    events = []
    mlp.before_forward(lambda i: events.append(("bf", i)))
    mlp.after_forward(lambda i: events.append(("af", i)))
    mlp.before_backward(lambda i: events.append(("bb", i)))
    mlp.after_backward(lambda i: events.append(("ab", i)))
    mlp.forward_backward()
    n = len(mlp.layers)
    expected = [(e, i) for i in range(n) for e in ("bf", "af")]
    # Caffe calls the backward callbacks for every layer, the Input layer (no backward) too
    expected += [(e, i) for i in reversed(range(n)) for e in ("bb", "ab")]
    assert events == expected
    assert all(type(i) is int for _, i in events)
    events.clear()
    mlp.forward(start="relu1", end="fc")
    assert events == [("bf", 2), ("af", 2), ("bf", 3), ("af", 3)]


def test_after_forward_sees_the_layer_output_and_callbacks_stack(mlp):
    seen, order = {}, []
    mlp.after_forward(lambda i: seen.setdefault(i, mlp._blobs[mlp._top_ids(i)[0]].data.copy()))
    mlp.before_forward(lambda i: order.append("first"))
    mlp.before_forward(lambda i: order.append("second"))
    mlp.forward(end="ip1")
    assert order == ["first", "second"] * 2
    np.testing.assert_array_equal(seen[0], mlp.blobs["data"].data)
    assert (seen[1] < 0).any()  # ip1's top before the in-place relu1 ran


def test_solver_step_runs_the_net_callbacks(tmp_path):
    """BVLC's python/train.py times layers with solver.net.before_forward(...) and friends."""
    net_path = write(tmp_path, MLP.replace("force_backward: true", ""))
    solver_path = write(tmp_path, f"net: '{net_path}' base_lr: 0.01 lr_policy: 'fixed' "
                                  f"max_iter: 10 display: 0", "solver.prototxt")
    solver = caffe.SGDSolver(solver_path)
    counts = {"f": 0, "b": 0}
    solver.net.before_forward(lambda i: counts.__setitem__("f", counts["f"] + 1))
    solver.net.after_backward(lambda i: counts.__setitem__("b", counts["b"] + 1))
    solver.step(2)
    assert counts == {"f": 2 * len(solver.net.layers), "b": 2 * len(solver.net.layers)}
