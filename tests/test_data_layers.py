"""Data, ImageData, MemoryData, HDF5Data, HDF5Output and WindowData layers."""

import gc
import os
import threading
import time

import numpy as np
import pytest
import torch

from caffe import common
from caffe.blob import Blob
from caffe.data import db as dbmod
from caffe.data import image as cvimage
from caffe.data.datum import encoded_datum, image_to_datum
from caffe.errors import DataError, LayerError

from data_case import (
    GOLDEN_DATA,
    forward_timed,
    golden_data,
    make_data_layer,
    random_images,
    run_batches,
    setup_layer,
    write_db,
)

HAS_PLYVEL = __import__("importlib").util.find_spec("plyvel") is not None


# --- Data: golden ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["crop_meanfile_scale", "meanvalue_per_channel",
                                  "meanvalue_single_crop"])
def test_golden_data_layer(case, monkeypatch):
    golden = golden_data()
    # The golden transform_param names mean.binaryproto relative to the golden data directory.
    monkeypatch.chdir(GOLDEN_DATA)
    layer = make_data_layer(
        f"type: 'Data' data_param {{ source: 'images_lmdb' backend: LMDB batch_size: 3 }} "
        f"transform_param {{ {golden[case + '/transform_param']} }}")
    top = setup_layer(layer)
    expected = golden[case + "/data"]
    assert top[0].shape == (3, *expected.shape[1:]) and top[1].shape == (3,)
    data, labels = run_batches(layer, top, 3)
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(labels, golden[case + "/label"])


def test_data_layer_without_label_top_and_float64(tmp_path):
    images = random_images(5)
    write_db(tmp_path / "db", images, range(5))
    layer = make_data_layer(f"type: 'Data' data_param {{ source: '{tmp_path / 'db'}' "
                            f"backend: LMDB batch_size: 2 }}", dtype=torch.float64)
    top = setup_layer(layer, n_tops=1)
    data, labels = run_batches(layer, top, 3)
    assert labels is None and data.dtype == np.float64
    np.testing.assert_array_equal(data, images[[0, 1, 2, 3, 4, 0]].astype(np.float64))


@pytest.mark.skipif(not HAS_PLYVEL, reason="plyvel not installed")
def test_data_layer_reads_leveldb(tmp_path):
    images = random_images(4, shape=(1, 5, 6))
    write_db(tmp_path / "db", images, [3, 1, 4, 1], backend="leveldb")
    layer = make_data_layer(f"type: 'Data' data_param {{ source: '{tmp_path / 'db'}' "
                            f"backend: LEVELDB batch_size: 3 }}")
    top = setup_layer(layer)
    data, labels = run_batches(layer, top, 2)
    np.testing.assert_array_equal(data, images[[0, 1, 2, 3, 0, 1]])
    np.testing.assert_array_equal(labels, [3, 1, 4, 1, 3, 1])


def test_data_layer_train_crops_repeat_under_seed(tmp_path):
    write_db(tmp_path / "db", random_images(6), range(6))
    text = (f"type: 'Data' data_param {{ source: '{tmp_path / 'db'}' backend: LMDB "
            f"batch_size: 4 }} transform_param {{ crop_size: 5 mirror: true }}")

    def run(seed):
        common.set_random_seed(seed)
        layer = make_data_layer(text, phase="TRAIN")
        top = setup_layer(layer)
        out = run_batches(layer, top, 3)[0]
        layer.stop_prefetch()
        return out

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_data_layer_encoded_and_shapes_per_batch(tmp_path):
    """Encoded PNG datums decode to the exact pixels; each batch takes its first datum's shape."""
    images = random_images(4, shape=(3, 7, 5))
    with dbmod.open_db(tmp_path / "db", dbmod.NEW) as db:
        txn = db.new_transaction()
        for i, img in enumerate(images):
            datum = encoded_datum(np.ascontiguousarray(img.transpose(1, 2, 0)), "png", i)
            txn.put(dbmod.format_key(i, "x"), datum.SerializeToString())
        txn.commit()
    layer = make_data_layer(f"type: 'Data' data_param {{ source: '{tmp_path / 'db'}' "
                            f"backend: LMDB batch_size: 2 }}")
    top = setup_layer(layer)
    assert top[0].shape == (2, 3, 7, 5)
    data, labels = run_batches(layer, top, 2)
    np.testing.assert_array_equal(data, images)
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])


def test_data_layer_rand_skip_and_solver_shards(tmp_path):
    images = random_images(7)
    write_db(tmp_path / "db", images, range(7))
    src = tmp_path / "db"
    common.set_random_seed(0)
    layer = make_data_layer(f"type: 'Data' data_param {{ source: '{src}' backend: LMDB "
                            f"batch_size: 7 rand_skip: 5 }}")
    top = setup_layer(layer)
    labels = run_batches(layer, top, 1)[1]
    start = int(labels[0])
    assert 0 <= start < 5
    np.testing.assert_array_equal(labels, (np.arange(7) + start) % 7)
    common.set_solver_count(2)
    common.set_solver_rank(1)
    try:
        layer = make_data_layer(f"type: 'Data' data_param {{ source: '{src}' backend: LMDB "
                                f"batch_size: 4 }}", phase="TRAIN")
        top = setup_layer(layer)
        labels = run_batches(layer, top, 2)[1]
    finally:
        common.set_solver_count(1)
        common.set_solver_rank(0)
    # Rank 1 of 2 keeps records at odd reader offsets: 1, 3, 5, (wrap) 0, 2, 4, 6, 1.
    np.testing.assert_array_equal(labels, [1, 3, 5, 0, 2, 4, 6, 1])


def test_data_layer_missing_db_fails_at_setup(tmp_path):
    layer = make_data_layer(f"type: 'Data' data_param {{ source: '{tmp_path / 'missing'}' "
                            f"backend: LMDB batch_size: 2 }}")
    with pytest.raises(DataError, match="Data layer 'data'.*missing"):
        setup_layer(layer)
    with pytest.raises(LayerError, match="batch_size must be positive"):
        setup_layer(make_data_layer("type: 'Data' data_param { source: 'x' }"))


def _corrupt_db(path, bad_index: int, n: int = 5, payload: bytes = b"\xff\xfe garbage"):
    with dbmod.open_db(path, dbmod.NEW) as db:
        txn = db.new_transaction()
        for i, img in enumerate(random_images(n)):
            value = payload if i == bad_index else image_to_datum(img, i).SerializeToString()
            txn.put(dbmod.format_key(i, f"im{i}"), value)
        txn.commit()


@pytest.mark.parametrize("payload,what", [
    (b"\xff\xfe garbage", "not a serialized Datum"),
    (encoded_datum(np.zeros((3, 3), np.uint8), "png").SerializeToString()[:-20], "decode"),
])
def test_corrupt_record_raises_in_main_thread_naming_db_and_key(tmp_path, payload, what):
    if what == "decode":  # a truncated PNG inside a valid Datum
        from caffe.proto import caffe_pb2

        payload = caffe_pb2.Datum(encoded=True, data=payload[-30:], label=1).SerializeToString()
    path = tmp_path / "bad_db"
    _corrupt_db(path, 3, payload=payload)
    layer = make_data_layer(f"type: 'Data' data_param {{ source: '{path}' backend: LMDB "
                            f"batch_size: 2 }}")
    top = setup_layer(layer)
    forward_timed(layer, top)  # records 0, 1 are fine
    with pytest.raises(DataError) as info:
        forward_timed(layer, top)
    message = str(info.value)
    assert "bad_db" in message and "00000003_im3" in message and what in message
    # The error sticks: the next forward raises it again instead of waiting forever.
    with pytest.raises(DataError, match="00000003_im3"):
        forward_timed(layer, top)


def test_prefetch_thread_stops_when_layer_is_deleted(tmp_path):
    write_db(tmp_path / "db", random_images(3), range(3))
    layer = make_data_layer(f"type: 'Data' data_param {{ source: '{tmp_path / 'db'}' "
                            f"backend: LMDB batch_size: 2 }}")
    top = setup_layer(layer)
    forward_timed(layer, top)
    thread = layer.prefetcher._thread
    assert thread.is_alive() and thread.daemon
    del layer
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_decode_threads_give_identical_batches(tmp_path):
    from caffe.data import prefetch

    images = random_images(8, shape=(3, 10, 10))
    with dbmod.open_db(tmp_path / "db", dbmod.NEW) as db:
        txn = db.new_transaction()
        for i, img in enumerate(images):
            txn.put(dbmod.format_key(i, "x"), encoded_datum(
                np.ascontiguousarray(img.transpose(1, 2, 0)), "png", i).SerializeToString())
        txn.commit()
    text = (f"type: 'Data' data_param {{ source: '{tmp_path / 'db'}' backend: LMDB "
            f"batch_size: 4 }} transform_param {{ crop_size: 7 mirror: true }}")
    outs = []
    for threads in (1, 3):
        prefetch.set_decode_threads(threads)
        try:
            common.set_random_seed(9)
            layer = make_data_layer(text, phase="TRAIN")
            top = setup_layer(layer)
            outs.append(run_batches(layer, top, 4)[0])
            layer.stop_prefetch()
        finally:
            prefetch.set_decode_threads(1)
    np.testing.assert_array_equal(outs[0], outs[1])


# --- ImageData ------------------------------------------------------------------------------
@pytest.fixture
def image_dir(tmp_path):
    images = random_images(5, shape=(3, 6, 7), seed=3)
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    names = []
    for i, img in enumerate(images):
        name = f"sub/im {i}.png"  # a space in the name: the label follows the last space
        (root / name).write_bytes(cvimage.imencode(np.ascontiguousarray(img.transpose(1, 2, 0)),
                                                   "png"))
        names.append(name)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{n} {10 + i}\n" for i, n in enumerate(names)))
    return root, listing, images


def test_image_data_in_order_with_wraparound(image_dir):
    root, listing, images = image_dir
    layer = make_data_layer(f"type: 'ImageData' image_data_param {{ source: '{listing}' "
                            f"root_folder: '{root}/' batch_size: 3 }}")
    top = setup_layer(layer)
    assert top[0].shape == (3, 3, 6, 7) and top[1].shape == (3,)
    data, labels = run_batches(layer, top, 2)
    np.testing.assert_array_equal(data, images[[0, 1, 2, 3, 4, 0]])
    np.testing.assert_array_equal(labels, [10, 11, 12, 13, 14, 10])


def test_image_data_shuffle_gray_and_resize(image_dir):
    root, listing, images = image_dir
    common.set_random_seed(4)
    layer = make_data_layer(f"type: 'ImageData' image_data_param {{ source: '{listing}' "
                            f"root_folder: '{root}/' batch_size: 5 shuffle: true is_color: false"
                            f" new_height: 4 new_width: 3 }}")
    top = setup_layer(layer)
    assert top[0].shape == (5, 1, 4, 3)
    data, labels = run_batches(layer, top, 2)
    first, second = labels[:5], labels[5:]
    assert sorted(first) == sorted(second) == list(range(10, 15))
    for i, label in enumerate(labels[:5]):
        path = str(root / f"sub/im {int(label) - 10}.png")
        gray = cvimage.resize(cvimage.imread(path, cvimage.IMREAD_GRAYSCALE), 3, 4)
        np.testing.assert_array_equal(data[i, 0], gray)


def test_image_data_missing_file_raises_in_main_thread(image_dir):
    root, listing, _ = image_dir
    listing.write_text(listing.read_text() + "sub/gone.png 1\n")
    layer = make_data_layer(f"type: 'ImageData' image_data_param {{ source: '{listing}' "
                            f"root_folder: '{root}/' batch_size: 3 }}")
    top = setup_layer(layer)
    forward_timed(layer, top)  # images 0-2
    with pytest.raises(DataError, match=r"list\.txt.*gone\.png"):
        forward_timed(layer, top)


def test_image_data_parameter_checks(tmp_path):
    with pytest.raises(LayerError, match="new_height and new_width"):
        setup_layer(make_data_layer("type: 'ImageData' image_data_param { source: 'x' "
                                    "new_height: 3 }"))
    with pytest.raises(DataError, match="cannot open image list"):
        setup_layer(make_data_layer(f"type: 'ImageData' image_data_param {{ source: "
                                    f"'{tmp_path / 'none.txt'}' }}"))


# --- MemoryData -----------------------------------------------------------------------------
def _memory_layer(**kw):
    p = dict(batch_size=2, channels=3, height=4, width=5) | kw
    return make_data_layer("type: 'MemoryData' memory_data_param { " +
                           " ".join(f"{k}: {v}" for k, v in p.items()) + " }")


def test_memory_data_walks_batches_and_wraps():
    layer = _memory_layer()
    top = setup_layer(layer)
    assert top[0].shape == (2, 3, 4, 5) and top[1].shape == (2,)
    data = np.random.default_rng(0).normal(size=(6, 3, 4, 5)).astype(np.float32)
    labels = np.arange(6, dtype=np.float32)
    layer.reset(data, labels)
    for step in range(4):
        layer.Forward([], top)
        rows = [(2 * step) % 6, (2 * step) % 6 + 1]
        np.testing.assert_array_equal(top[0].data, data[rows])
        np.testing.assert_array_equal(top[1].data.reshape(-1), labels[rows])
    assert top[1].shape == (2, 1, 1, 1)


def test_memory_data_reset_checks_with_pycaffe_messages():
    layer = _memory_layer()
    setup_layer(layer)
    good = np.zeros((4, 3, 4, 5), np.float32)
    labels = np.zeros(4, np.float32)
    cases = [
        (np.asfortranarray(np.zeros((4, 3, 4, 5), np.float32)), labels,
         "data array must be C contiguous"),
        (np.zeros((4, 3, 20), np.float32), labels, "data array must be 4-d"),
        (good.astype(np.float64), labels, "data array must be float32"),
        (np.zeros((4, 2, 4, 5), np.float32), labels, "data array has wrong number of channels"),
        (np.zeros((4, 3, 3, 5), np.float32), labels, "data array has wrong height"),
        (np.zeros((4, 3, 4, 6), np.float32), labels, "data array has wrong width"),
        (good, labels.astype(np.float64), "labels array must be float32"),
        (good, np.zeros((4, 2, 1, 1), np.float32), "labels array has wrong number of channels"),
        (good, np.zeros(3, np.float32), "data and labels must have the same first dimension"),
        (np.zeros((3, 3, 4, 5), np.float32), np.zeros(3, np.float32),
         "first dimensions of input arrays must be a multiple of batch size"),
    ]
    for data, lab, message in cases:
        with pytest.raises(RuntimeError, match=message):
            layer.reset(data, lab)
    with pytest.raises(LayerError, match="needs to be initialized by calling Reset"):
        layer.Forward([], [Blob(), Blob()])


def test_memory_data_add_datum_vector_transforms():
    layer = make_data_layer("type: 'MemoryData' memory_data_param { batch_size: 2 channels: 3 "
                            "height: 4 width: 4 } transform_param { crop_size: 4 "
                            "mean_value: 10 scale: 0.5 }")
    top = setup_layer(layer)
    images = random_images(2, shape=(3, 6, 6))
    layer.add_datum_vector([image_to_datum(img, 7 + i) for i, img in enumerate(images)])
    with pytest.raises(LayerError, match="until current data has been consumed"):
        layer.add_datum_vector([image_to_datum(images[0], 0)] * 2)
    layer.Forward([], top)
    expected = (images[:, :, 1:5, 1:5].astype(np.float32) - 10) * np.float32(0.5)
    np.testing.assert_array_equal(top[0].data, expected)
    np.testing.assert_array_equal(top[1].data.reshape(-1), [7, 8])
    with pytest.raises(LayerError, match="positive in memory_data_param"):
        setup_layer(_memory_layer(channels=0))


# --- HDF5Data / HDF5Output ----------------------------------------------------------------
def _h5_files(tmp_path, sizes):
    import h5py

    rows, files = 0, []
    for j, n in enumerate(sizes):
        path = tmp_path / f"part{j}.h5"
        with h5py.File(path, "w") as f:
            f["data"] = np.arange(rows, rows + n, dtype=np.float64)[:, None, None] * \
                np.ones((1, 2, 3))
            f["label"] = np.arange(rows, rows + n, dtype=np.int32)
        rows += n
        files.append(path.name)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(files) + "\n")
    return listing


def test_hdf5_data_in_order_across_files_and_wrap(tmp_path, monkeypatch):
    _h5_files(tmp_path, [3, 4])
    monkeypatch.chdir(tmp_path)  # relative .h5 names, as Caffe resolves them
    layer = make_data_layer("type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param { "
                            "source: 'list.txt' batch_size: 5 }")
    top = setup_layer(layer)
    assert top[0].shape == (5, 2, 3) and top[1].shape == (5,)
    got = []
    for _ in range(3):
        layer.Forward([], top)
        np.testing.assert_array_equal(top[0].data[:, 1, 2], top[1].data)
        got.extend(top[1].data.tolist())
    assert got == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0]


def test_hdf5_data_shuffle_is_a_permutation_per_epoch(tmp_path):
    listing = _h5_files(tmp_path, [4, 5, 3])
    common.set_random_seed(2)
    layer = make_data_layer(f"type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param {{ "
                            f"source: '{listing}' batch_size: 6 shuffle: true }}")
    top = setup_layer(layer)
    got = []
    for _ in range(4):
        layer.Forward([], top)
        np.testing.assert_array_equal(top[0].data[:, 0, 0], top[1].data)
        got.extend(int(v) for v in top[1].data)
    epochs = [got[:12], got[12:]]
    for epoch in epochs:
        assert sorted(epoch) == list(range(12))
    assert epochs[0] != list(range(12))
    # Rows of one file stay together within an epoch (files are shuffled, then their rows).
    groups = [set(range(0, 4)), set(range(4, 9)), set(range(9, 12))]
    blocks, pos = [], 0
    while pos < 12:
        group = next(g for g in groups if epochs[0][pos] in g)
        blocks.append(set(epochs[0][pos:pos + len(group)]))
        pos += len(group)
    assert sorted(map(sorted, blocks)) == sorted(map(sorted, groups))


def test_hdf5_data_errors(tmp_path):
    listing = _h5_files(tmp_path, [2])
    with pytest.raises(DataError, match="Failed to find HDF5 dataset 'nope'"):
        setup_layer(make_data_layer(f"type: 'HDF5Data' top: 'nope' hdf5_data_param {{ "
                                    f"source: '{listing}' batch_size: 1 }}"), n_tops=1)
    with pytest.raises(LayerError, match="does not transform data"):
        setup_layer(make_data_layer(f"type: 'HDF5Data' top: 'data' hdf5_data_param {{ "
                                    f"source: '{listing}' batch_size: 1 }} "
                                    f"transform_param {{ scale: 2 }}"), n_tops=1)
    with pytest.raises(DataError, match="Failed to open source file"):
        setup_layer(make_data_layer(f"type: 'HDF5Data' top: 'data' hdf5_data_param {{ "
                                    f"source: '{tmp_path / 'x.txt'}' batch_size: 1 }}"), 1)


def test_hdf5_output_writes_what_it_received(tmp_path):
    import h5py

    out = tmp_path / "out.h5"
    layer = make_data_layer(f"type: 'HDF5Output' hdf5_output_param {{ file_name: '{out}' }}")
    data = Blob((3, 2, 4))
    data.data[...] = np.random.default_rng(0).normal(size=(3, 2, 4))
    label = Blob((3,))
    label.data[...] = [1, 2, 3]
    layer.SetUp([data, label], [])
    assert not out.exists()  # unlike Caffe, setup writes nothing (issue 14 item 6)
    layer.Forward([data, label], [])
    with h5py.File(out, "r") as f:
        assert set(f.keys()) == {"data", "label"}
        np.testing.assert_array_equal(f["data"][()], data.data.reshape(3, 2, 4, 1))
        np.testing.assert_array_equal(f["label"][()], label.data.reshape(3, 1, 1, 1))
        assert f["data"].dtype == np.float32
    bad = Blob((2,))
    with pytest.raises(LayerError, match="same batch size"):
        layer.Forward([data, bad], [])
    # HDF5Data reads back what HDF5Output wrote.
    (tmp_path / "list.txt").write_text(f"{out}\n")
    reader = make_data_layer(f"type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param {{ "
                             f"source: '{tmp_path / 'list.txt'}' batch_size: 3 }}")
    top = setup_layer(reader)
    reader.Forward([], top)
    np.testing.assert_array_equal(top[0].data.reshape(3, 2, 4), data.data)


# --- WindowData -----------------------------------------------------------------------------
@pytest.fixture
def window_set(tmp_path):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, size=(20, 16, 3), dtype=np.uint8),
              rng.integers(0, 256, size=(12, 18, 3), dtype=np.uint8)]
    lines = []
    windows = {0: [(1, 0.9, 2, 3, 9, 12), (0, 0.1, 0, 0, 15, 19), (2, 0.4, 1, 1, 5, 5)],
               1: [(2, 0.7, 4, 2, 13, 9), (0, 0.2, 3, 3, 8, 8)]}
    for i, img in enumerate(images):
        (tmp_path / f"w{i}.png").write_bytes(cvimage.imencode(img, "png"))
        lines += [f"# {i}", f"w{i}.png", "3", str(img.shape[0]), str(img.shape[1]),
                  str(len(windows[i]))]
        lines += [" ".join(str(v) for v in w) for w in windows[i]]
    (tmp_path / "windows.txt").write_text("\n".join(lines) + "\n")
    return tmp_path, images


def _window_layer(tmp_path, extra="", transform="crop_size: 8", phase="TRAIN", batch=8):
    return make_data_layer(
        f"type: 'WindowData' window_data_param {{ source: '{tmp_path / 'windows.txt'}' "
        f"root_folder: '{tmp_path}/' batch_size: {batch} fg_threshold: 0.5 bg_threshold: 0.3 "
        f"fg_fraction: 0.25 {extra} }} transform_param {{ {transform} }}", phase=phase)


def test_window_data_samples_bg_then_fg_and_warps(window_set):
    tmp_path, images = window_set
    common.set_random_seed(0)
    layer = _window_layer(tmp_path, extra="scale: 0.5", transform="crop_size: 8 mean_value: 4")
    top = setup_layer(layer)
    assert top[0].shape == (8, 3, 8, 8) and top[1].shape == (8,)
    data, labels = run_batches(layer, top, 3)
    for b in range(3):
        batch = labels[8 * b:8 * b + 8]
        assert (batch[:6] == 0).all() and set(batch[6:]) <= {1, 2} and (batch[6:] > 0).all()
    # Background windows: (0,0)-(15,19) of image 0 and (3,3)-(8,8) of image 1 (the 0.4 one is
    # dropped: between the thresholds). Without context_pad each is resized to 8x8.
    bg0 = cvimage.resize(np.ascontiguousarray(images[0][0:20, 0:16]), 8, 8)
    bg1 = cvimage.resize(np.ascontiguousarray(images[1][3:9, 3:9]), 8, 8)
    fg1 = cvimage.resize(np.ascontiguousarray(images[0][3:13, 2:10]), 8, 8)
    candidates = {0: [bg0, bg1], 1: [fg1]}
    for item, label in zip(data, labels):
        options = [(c.transpose(2, 0, 1).astype(np.float32) - 4) * np.float32(0.5)
                   for c in candidates.get(int(label), [])]
        if int(label) == 2:
            continue  # checked below with context padding
        assert any(np.array_equal(item, o) for o in options)


def test_window_data_context_pad_leaves_zero_border(window_set):
    tmp_path, images = window_set
    common.set_random_seed(1)
    # The bg window of image 0 covers the whole image: context padding must fall outside it.
    layer = _window_layer(tmp_path, extra="context_pad: 2", transform="crop_size: 12")
    top = setup_layer(layer)
    data, labels = run_batches(layer, top, 4)
    whole = [d for d, lab in zip(data, labels) if lab == 0 and
             np.array_equal(d[:, 2:10, 2:10] != 0, np.ones((3, 8, 8), bool)) and d[:, :2].max()
             == 0]
    assert whole, "the full-image window should be warped into the centre with a zero border"
    item = whole[0]
    assert item[:, :2].max() == 0 and item[:, 10:].max() == 0
    assert item[:, :, :2].max() == 0 and item[:, :, 10:].max() == 0
    expected = cvimage.resize(np.ascontiguousarray(images[0]), 8, 8).transpose(2, 0, 1)
    np.testing.assert_array_equal(item[:, 2:10, 2:10], expected)


def test_window_data_geometry_square_mode(window_set):
    tmp_path, _ = window_set
    layer = _window_layer(tmp_path, extra="crop_mode: 'square'", transform="crop_size: 10")
    setup_layer(layer)
    loader = layer.loader
    # A 4-wide, 8-tall window (centre (6, 8)) squared to half-size 4: Caffe's inclusive
    # rounding gives x 2..10 and y 4..12, a 9x9 region, warped to the full 10x10.
    window = np.array([0, 1, 1, 4, 4, 7, 11], np.float64)
    x1, y1, x2, y2, wh, ww, ph, pw = loader.geometry(window, 20, 16, False)
    assert (x1, y1, x2, y2) == (2, 4, 10, 12) and (wh, ww, ph, pw) == (10, 10, 0, 0)
    # Near the left edge the square is clipped and padded on the left (on the right mirrored).
    window = np.array([0, 1, 1, 0, 4, 3, 11], np.float64)
    x1, _, x2, _, wh, ww, ph, pw = loader.geometry(window, 20, 16, False)
    assert x1 == 0 and pw > 0 and ww + pw <= 10
    assert loader.geometry(window, 20, 16, True)[7] == 0  # mirrored: pad goes right
    layer.stop_prefetch()


def test_window_data_mirror_repeatable_and_errors(window_set):
    tmp_path, _ = window_set

    def run(seed):
        common.set_random_seed(seed)
        layer = _window_layer(tmp_path, transform="crop_size: 8 mirror: true")
        top = setup_layer(layer)
        out = run_batches(layer, top, 2)
        layer.stop_prefetch()
        return out

    a, b = run(3), run(3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(LayerError, match="crop_size must be positive"):
        setup_layer(_window_layer(tmp_path, transform="mirror: true"))
    (tmp_path / "windows.txt").write_text("# 0\nw0.png\n3 20 16\n1\n1 0.9 0 0 5\n")
    with pytest.raises(DataError, match="unexpected end of file"):
        setup_layer(_window_layer(tmp_path))
    os.remove(tmp_path / "w1.png")


def test_window_data_missing_image_raises_in_main_thread(window_set):
    tmp_path, _ = window_set
    os.remove(tmp_path / "w0.png")
    layer = _window_layer(tmp_path)
    top = setup_layer(layer)
    with pytest.raises(DataError, match=r"windows\.txt.*w0\.png"):
        forward_timed(layer, top)


def test_no_prefetch_threads_leak():
    gc.collect()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [t for t in threading.enumerate() if t.name.startswith("prefetch[")]
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, f"prefetch threads still running: {alive}"
