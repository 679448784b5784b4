"""The small-net fast paths (issue #13, tiny nets): cached blob views, InnerProduct's cached
matrix views, SoftmaxWithLoss's and Accuracy's 0-d scalars, HDF5Data's in-memory rows, the
batch-at-once Data transform, Split's re-share, the solver loop's cached fields. Each gives
the general path's numbers, and none goes stale when values are written through numpy."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import caffe
from caffe import common
from caffe.blob import Blob
from caffe.layers import hdf5_data
from caffe.syncedmem import HEAD_AT_CPU, SYNCED

from data_case import make_data_layer, random_images, run_batches, setup_layer, write_db
from layer_case import build_layer


# --- Blob accessors ---------------------------------------------------------------------------
def test_cached_views_follow_numpy_writes_reshape_and_share():
    blob = Blob([2, 3])
    t = blob.device_data()
    blob.data[...] = np.arange(6).reshape(2, 3)
    assert blob.device_data() is t  # cached view of the same storage ...
    np.testing.assert_array_equal(t.numpy(), np.arange(6).reshape(2, 3))  # ... showing writes
    blob.reshape([3, 2])  # same capacity: same storage, new shape
    assert blob.device_data().shape == (3, 2) and blob.data.shape == (3, 2)
    blob.reshape([4, 5])  # grows: new storage, the old view is not handed out again
    assert blob.device_data().shape == (4, 5) and not blob.data.any()
    other = Blob([4, 5])
    other.data[...] = 7.0
    blob.share_data(other)
    assert (blob.device_data() == 7).all() and (blob.data == 7).all()
    view = blob.device_data()
    blob.share_data(other)  # already shared: the cached view is kept
    assert blob.device_data() is view
    other.data[0, 0] = -1.0
    assert blob.cpu_data()[0, 0] == -1.0


def test_cached_views_follow_storage_swapped_under_the_blob():
    # optimize_for_inference swaps a blob's SyncedMemory; a view is only reused for the
    # very buffer it was made from, whatever the cache's state.
    from caffe.syncedmem import SyncedMemory

    blob = Blob([2, 2])
    old = blob.device_data()
    blob._data = SyncedMemory(4)
    blob.data_mem.mutable_cpu_data()[:] = 3.0
    for accessor in (blob.device_data, blob.mutable_device_data):
        assert accessor() is not old and (accessor() == 3).all()
    assert (blob.data == 3).all()


def test_mutable_accessors_move_the_head_and_const_ones_do_not():
    blob = Blob([3])
    blob.data[...] = 1.0
    mem = blob.data_mem
    mem.head = SYNCED  # as after a device read; on the host it only marks state
    blob.device_data()
    blob.cpu_data()
    assert mem.head == SYNCED
    blob.mutable_device_data()
    assert mem.head == HEAD_AT_CPU


def test_reshape_fast_path_keeps_caffe_semantics():
    blob = Blob()  # shape [] with count 0; reshape([]) makes it a scalar
    blob.reshape([])
    assert blob.count == 1 and blob.shape == ()
    blob.reshape((2, np.int64(3)))
    view = blob.mutable_device_data()
    blob.reshape([2, 3])
    assert blob.mutable_device_data() is view
    blob.reshape([2.0, 3])  # accepted as ints, as before
    assert blob.shape == (2, 3)


# --- InnerProduct -----------------------------------------------------------------------------
@pytest.mark.parametrize("params, shape", [
    ("num_output: 3", (4, 5)),                        # 2-D bottom: no matrix views
    ("num_output: 3 transpose: true", (2, 5, 2)),     # flattened bottom, (K, N) weights
    ("num_output: 2 axis: 2", (2, 3, 4)),             # a 3-D top
])
def test_inner_product_sees_weights_written_through_numpy(params, shape):
    fillers = "weight_filler { type: 'gaussian' std: 1 } bias_filler { type: 'gaussian' }"
    x = np.random.default_rng(1).standard_normal(shape)
    layer, bottom, top = build_layer(f"type: 'InnerProduct' inner_product_param {{ {params} "
                                     f"{fillers} }}", [x])
    axis = 2 if "axis: 2" in params else 1
    rows = x.reshape(int(np.prod(shape[:axis])), -1)
    for step in range(3):
        layer.Forward(bottom, top)
        w = layer.blobs[0].data
        w_nk = w.T if "transpose" in params else w
        expected = rows @ w_nk.T + layer.blobs[1].data
        # float64, K <= 10 products per output: rounding ~1e-15 relative.
        np.testing.assert_allclose(top[0].data.reshape(rows.shape[0], -1), expected,
                                   rtol=1e-12, atol=1e-12)
        dy = np.random.default_rng(step).standard_normal(top[0].shape)
        top[0].diff[...] = dy
        layer.blobs[0].diff[...] = 0
        layer.Backward(top, [True], bottom)
        dy2 = dy.reshape(rows.shape[0], -1)
        np.testing.assert_allclose(bottom[0].diff.reshape(rows.shape), dy2 @ w_nk,
                                   rtol=1e-12, atol=1e-12)
        dw = dy2.T @ rows
        np.testing.assert_allclose(layer.blobs[0].diff, dw.T if "transpose" in params else dw,
                                   rtol=1e-12, atol=1e-12)
        # The next pass must use these, not views of stale values.
        layer.blobs[0].data[...] *= -2.0
        layer.blobs[1].data[...] += 1.0
        bottom[0].data[...] = x * (step + 2)
        rows = bottom[0].data.reshape(rows.shape)


def test_inner_product_follows_shared_weights():
    fillers = "weight_filler { type: 'gaussian' std: 1 } bias_filler { type: 'constant' }"
    x = np.ones((2, 4))
    layer, bottom, top = build_layer(f"type: 'InnerProduct' inner_product_param {{ "
                                     f"num_output: 2 {fillers} }}", [x])
    layer.Forward(bottom, top)
    owner = Blob([2, 4], dtype=torch.float64)
    owner.data[...] = 0.5
    layer.blobs[0].share_data(owner)  # new storage under the weight blob
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, np.full((2, 2), 2.0))


# --- SoftmaxWithLoss and Accuracy -------------------------------------------------------------
def test_softmax_loss_scale_reads_the_current_top_diff():
    scores = np.random.default_rng(2).standard_normal((5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    layer, bottom, top = build_layer("type: 'SoftmaxWithLoss'", [scores, labels])
    loss = layer.Forward(bottom, top)
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # float64 softmax of 3 values and a 5-term sum: ~1e-15 relative.
    assert loss == pytest.approx(-np.log(p[np.arange(5), labels]).mean(), rel=1e-12)
    onehot = np.eye(3)[labels]
    for weight in (1.0, 3.0, 0.25):
        top[0].diff[...] = weight  # a loss weight written between the passes
        layer.Backward(top, [True, False], bottom)
        np.testing.assert_allclose(bottom[0].diff, (p - onehot) * weight / 5, rtol=1e-12,
                                   atol=1e-15)


def test_softmax_loss_float32_scale_rounds_as_before():
    # The 0-d tensors hold what torch made of the Python numbers: the same float32 values.
    scores = np.random.default_rng(3).standard_normal((7, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0, 1, 2])
    layer, bottom, top = build_layer("type: 'SoftmaxWithLoss'", [scores, labels],
                                     dtype=torch.float32)
    layer.Forward(bottom, top)
    top[0].diff[...] = 0.3
    layer.Backward(top, [True, False], bottom)
    prob = torch.softmax(torch.from_numpy(scores), 1)
    picked = prob.gather(1, torch.from_numpy(labels).view(-1, 1)).clamp_min(1.1754944e-38).log()
    assert top[0].data[()] == (picked.sum() * (-1.0 / 7)).item()
    expected = prob.clone()
    expected.scatter_add_(1, torch.from_numpy(labels).view(-1, 1), torch.full((7, 1), -1.0))
    expected.mul_(torch.tensor(0.3, dtype=torch.float32) / 7)
    assert bottom[0].diff.tobytes() == expected.numpy().tobytes()


def test_accuracy_counts_and_label_checks():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5], [0.3, 0.7]])
    layer, bottom, top = build_layer("type: 'Accuracy'", [scores, [1, 1, 1, 0]])
    layer.Forward(bottom, top)
    # Ties rank the larger class first: row 2 (0.5, 0.5) is a hit for label 1.
    assert top[0].data[()] == 0.5
    bottom[1].data[...] = [1, 0, 1, 1]  # new labels through numpy
    layer.Forward(bottom, top)
    assert top[0].data[()] == 1.0
    bottom[1].data[3] = 2
    with pytest.raises(caffe.errors.LayerError, match=r"label value 2 \(at label index 3\)"):
        layer.Forward(bottom, top)
    ignore, b2, t2 = build_layer("type: 'Accuracy' accuracy_param { ignore_label: -1 }",
                                 [scores, [1, -1, -1, 1]])
    ignore.Forward(b2, t2)
    assert t2[0].data[()] == 1.0  # two counted, both hit; ignored ones may be out of range


# --- HDF5Data in memory -----------------------------------------------------------------------
def _h5(tmp_path, rows=7):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.arange(rows, dtype=np.float64)[:, None] * [1.0, -1.0]
        f["label"] = np.arange(rows, dtype=np.int32)
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5") + "\n")
    return tmp_path / "list.txt"


@pytest.mark.parametrize("shuffle", [False, True])
def test_hdf5_rows_from_memory_equal_rows_from_the_file(tmp_path, monkeypatch, shuffle):
    listing = _h5(tmp_path)
    text = (f"type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param {{ source: "
            f"'{listing}' batch_size: 3 shuffle: {str(shuffle).lower()} }}")
    runs = []
    for limit in (0, hdf5_data.MEMORY_CACHE_BYTES):  # 0: every batch from the file
        monkeypatch.setattr(hdf5_data, "MEMORY_CACHE_BYTES", limit)
        common.set_random_seed(5)
        layer = make_data_layer(text)
        top = setup_layer(layer)
        assert (layer.row_cache is not None) == bool(limit)
        got = []
        for _ in range(8):  # over three passes of 7 rows
            layer.Forward([], top)
            got.append((top[0].data.copy(), top[1].data.copy()))
            top[0].data[...] = 99.0  # a user write to the top must not reach the next batch
        runs.append(got)
    for (d0, l0), (d1, l1) in zip(*runs):
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(l0, l1)
        np.testing.assert_array_equal(d1[:, 0], l1)  # rows stay whole
    labels = np.concatenate([labels for _, labels in runs[1]])
    assert sorted(labels[:7]) == list(range(7)) and sorted(labels[7:14]) == list(range(7))


def test_hdf5_later_passes_do_not_read_the_file(tmp_path, monkeypatch):
    listing = _h5(tmp_path, rows=4)
    reads = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__",
                        lambda self, key: reads.append(key) or real(self, key))
    layer = make_data_layer(f"type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param {{ "
                            f"source: '{listing}' batch_size: 2 }}")
    top = setup_layer(layer)
    for _ in range(6):
        layer.Forward([], top)
    assert len(reads) == 4  # two batches of the first pass, two datasets each
    assert top[1].data.tolist() == [2, 3]


def test_hdf5_several_files_keep_reading_the_files(tmp_path):
    for name in ("a", "b"):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f["data"] = np.ones((2, 1))
            f["label"] = np.ones(2)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    layer = make_data_layer(f"type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param {{ "
                            f"source: '{tmp_path / 'list.txt'}' batch_size: 2 }}")
    setup_layer(layer)
    assert layer.row_cache is None  # each file is reloaded when its turn comes, as in Caffe


# --- Data: the batch transformed at once ------------------------------------------------------
@pytest.mark.parametrize("transform", [
    "scale: 0.5 mean_value: 10 mean_value: 20 mean_value: 30",
    "mirror: true scale: 0.5",  # per example (a random draw each): the general path
])
def test_data_batch_transform_equals_per_example(tmp_path, monkeypatch, transform):
    from caffe.layers.data import DatumBatchLoader

    images = random_images(5)
    write_db(tmp_path / "db", images, range(5))
    text = (f"type: 'Data' data_param {{ source: '{tmp_path / 'db'}' backend: LMDB "
            f"batch_size: 2 }} transform_param {{ {transform} }}")
    runs = []
    for batched in (True, False):
        if not batched:
            monkeypatch.setattr(DatumBatchLoader, "_transform_as_one", lambda *a: False)
        common.set_random_seed(3)
        layer = make_data_layer(text, phase="TRAIN")
        top = setup_layer(layer)
        runs.append(run_batches(layer, top, 3))
        layer.stop_prefetch()
    assert runs[0][0].tobytes() == runs[1][0].tobytes()
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    if "mirror" not in transform:
        expected = (images[[0, 1, 2, 3, 4, 0]] - np.array([10, 20, 30])[:, None, None]) * 0.5
        np.testing.assert_array_equal(runs[0][0], expected.astype(np.float32))


# --- Net and solver ---------------------------------------------------------------------------
NET = """
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        param { name: "w" } inner_product_param { num_output: 2
        weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip_b" type: "InnerProduct" bottom: "data" top: "ip_b"
        param { name: "w" } inner_product_param { num_output: 2 } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "loss_b" type: "SoftmaxWithLoss" bottom: "ip_b" bottom: "label" top: "loss_b" }
"""


def test_split_views_and_clear_param_diffs(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = caffe.Net(str(path), caffe.TRAIN)
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((4, 3))
    net.blobs["label"].data[...] = [0, 1, 1, 0]
    net.forward()
    net.backward()
    assert np.abs(net.params["ip"][0].diff).sum() > 0
    net.clear_param_diffs()  # shared weights: one diff, zeroed once
    assert not net.params["ip"][0].diff.any() and not net.params["ip"][1].diff.any()
    splits = [name for name in net.blobs if "_split_" in name]
    assert splits
    before = {name: net.blobs[name].data for name in splits}
    net.blobs["data"].data[...] *= 3.0  # a numpy write the split tops must show
    net.forward()
    for name, view in before.items():
        assert net.blobs[name].data is view  # Split's re-share kept the views
    ip = net.blobs["ip"].data
    assert any(np.array_equal(net.blobs[name].data, ip) for name in splits)
    net.blobs["data"].reshape(6, 3)  # a larger batch: new storage, shared again
    net.blobs["label"].reshape(6)
    net.reshape()
    net.forward()
    assert all(net.blobs[name].shape[0] == 6 for name in splits if "ip" in name)


def test_solver_step_loop_keeps_its_schedule(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace('type: "Input"', 'type: "DummyData"').replace(
        "input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } }",
        "dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 } "
        "data_filler { type: 'gaussian' } data_filler { type: 'constant' value: 1 } }"))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{path}"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\ndisplay: 0\n'
        f'max_iter: 10\nsnapshot: 3\nsnapshot_prefix: "{tmp_path / "s"}"\nrandom_seed: 1\n')
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    seen = []
    solver.add_callback(lambda: seen.append(solver.iter), None)
    solver.step(7)
    assert seen == list(range(7)) and solver.iter == 7
    assert sorted(p.name for p in tmp_path.glob("s_iter_*.caffemodel")) == [
        "s_iter_3.caffemodel", "s_iter_6.caffemodel"]
    solver.step(2)  # a second call continues the schedule: snapshot 9, callbacks 7 and 8
    assert seen[-2:] == [7, 8] and (tmp_path / "s_iter_9.caffemodel").exists()
