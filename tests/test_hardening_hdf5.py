"""Hardening of the HDF5 paths (issue 14, item 1) and two smaller checks (item 7).

Crafted or damaged .caffemodel.h5, .solverstate.h5 and HDF5Data inputs end in a caffe error that
names the file and the dataset or layer, never in a raw h5py/numpy exception; declared dataset
shapes are checked before anything is read. BlobProtos whose shape and data disagree, and
fillers Caffe CHECKs (uniform min > max, gaussian std <= 0), get caffe errors too.
"""

import os

import h5py
import numpy as np
import pytest

import caffe
from caffe import filler
from caffe.blob import Blob
from caffe.errors import CaffeError, DataError, NetError, SolverError
from caffe.io import IOValueError, array_to_blobproto, blobproto_to_array
from caffe.proto import caffe_pb2
from caffe.solver import get_solver

from solver_case import write_solver_prototxt

NET = """
name: 'tiny'
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
        inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return caffe.Net(str(path), caffe.TEST)


def _weights(tmp_path, weight_shape=(4, 3), bias_shape=(4,), skip=()):
    path = tmp_path / "w.caffemodel.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("data/ip")
        for name, shape in (("0", weight_shape), ("1", bias_shape)):
            if name not in skip:
                group.create_dataset(name, data=np.ones(shape, dtype=np.float32))
    return path


# --- Net.load_hdf5 ---------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + b"\x00" * 40,
                                     b"garbage " * 64])
def test_load_hdf5_garbage_file_names_the_file(tmp_path, net, content):
    path = tmp_path / "bad.caffemodel.h5"
    path.write_bytes(content)
    with pytest.raises(NetError, match="bad.caffemodel.h5"):
        net.load_hdf5(str(path))


def _overwrite_sweep(path, stride):
    """Yield ``path`` rewritten once per ``stride``-byte word with that word set to 0xff:
    a deterministic sweep over every header, B-tree, heap and data byte of a small file."""
    data = path.read_bytes()
    for offset in range(0, len(data), stride):
        damaged = bytearray(data)
        damaged[offset:offset + stride] = b"\xff" * stride
        path.write_bytes(bytes(damaged))
        yield offset
    path.write_bytes(data)


def test_load_hdf5_damaged_files_end_in_net_errors(tmp_path, net):
    """Truncated or damaged anywhere, a .caffemodel.h5 loads or fails with a NetError naming
    it (h5py raises OSError, KeyError, ValueError or RuntimeError on such files)."""
    path = _weights(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetError, match="w.caffemodel.h5"):
        net.load_hdf5(str(path))
    path.write_bytes(data)
    failures = 0
    for offset in _overwrite_sweep(path, stride=16):
        try:
            net.load_hdf5(str(path))
        except NetError as exc:
            assert "w.caffemodel.h5" in str(exc), (offset, exc)
            failures += 1
    assert failures > 0


def test_load_hdf5_missing_or_non_numeric_datasets(tmp_path, net):
    path = tmp_path / "m.caffemodel.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.ones(3))  # /data is a dataset, not the layers' group
    with pytest.raises(NetError, match=r"m.caffemodel.h5: no /data group"):
        net.load_hdf5(str(path))
    with h5py.File(path, "w") as f:
        f.create_dataset("data/ip/0", data=np.full((4, 3), b"ab"))  # right shape, strings
    with pytest.raises(NetError, match=r"m.caffemodel.h5: /data/ip/0 is not a numeric"):
        net.load_hdf5(str(path))


def test_load_hdf5_wrong_kinds_name_the_dataset(tmp_path, net):
    path = tmp_path / "kinds.caffemodel.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data/ip", data=np.ones(3))  # a dataset where a group belongs
    with pytest.raises(NetError, match=r"kinds.caffemodel.h5: /data/ip is not a group"):
        net.load_hdf5(str(path))
    with h5py.File(path, "w") as f:
        f.create_group("data/ip/0")  # a group where a dataset belongs
    with pytest.raises(NetError, match=r"kinds.caffemodel.h5: /data/ip/0 is not a numeric"):
        net.load_hdf5(str(path))


def test_load_hdf5_declared_huge_dataset_is_not_read(tmp_path, net):
    """A (2^31, 1000) float32 dataset declares 8 TiB; the file holds none of it. The shape
    check must come first: reading it would ask numpy for 8 TiB."""
    path = tmp_path / "huge.caffemodel.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data/ip/0", shape=(2**31, 1000), dtype=np.float32)
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(NetError, match=r"huge.caffemodel.h5; shape mismatch. Source param "
                                       r"shape is 2147483648 1000"):
        net.load_hdf5(str(path))


# --- HDF5 solver state -----------------------------------------------------------------------
@pytest.fixture
def hdf5_snapshot(tmp_path):
    """An SGD solver (momentum: one history blob per param) and its iteration-0 HDF5 state."""
    solver_text = (f"base_lr: 0.1 momentum: 0.9 lr_policy: 'fixed' snapshot_format: HDF5 "
                   f"snapshot_prefix: '{tmp_path / 'snap'}'\n")
    solver_file = write_solver_prototxt(tmp_path, solver_text, NET)
    solver = get_solver(solver_file)
    solver.snapshot()
    state = tmp_path / "snap_iter_0.solverstate.h5"
    assert state.exists()
    return solver, state


def test_solverstate_damaged_files_end_in_solver_errors(tmp_path, hdf5_snapshot):
    solver, state = hdf5_snapshot
    failures = 0
    for offset in _overwrite_sweep(state, stride=16):
        try:
            solver.restore(str(state))
        except SolverError as exc:
            assert "snap_iter_0.solverstate.h5" in str(exc), (offset, exc)
            failures += 1
    assert failures > 0


def test_solverstate_bad_datasets_name_file_and_dataset(tmp_path, hdf5_snapshot):
    solver, state = hdf5_snapshot
    with h5py.File(state, "a") as f:
        del f["iter"]
        f.create_dataset("iter", data=np.zeros(0, dtype=np.int32))  # no value to read
    with pytest.raises(SolverError, match=r"snap_iter_0.solverstate.h5 \(dataset 'iter'\)"):
        solver.restore(str(state))
    with h5py.File(state, "a") as f:
        del f["iter"]
        f.create_dataset("iter", data=np.array([0], dtype=np.int32))
        del f["learned_net"]
        f.create_dataset("learned_net", data=np.bytes_(b"\xff\xfe.caffemodel.h5"))
    with pytest.raises(SolverError, match=r"snap_iter_0.solverstate.h5 \(dataset "
                                          r"'learned_net'\)"):
        solver.restore(str(state))


def test_solverstate_history_shape_checked_before_reading(tmp_path, hdf5_snapshot):
    solver, state = hdf5_snapshot
    with h5py.File(state, "a") as f:
        del f["history/0"]
        f["history"].create_dataset("0", shape=(2**31, 1000), dtype=np.float32)
    with pytest.raises(SolverError, match=r"snap_iter_0.solverstate.h5: history blob 0 "
                                          r"\(layer 'ip', param 0\) has shape \[2147483648, "
                                          r"1000\]"):
        solver.restore(str(state))
    with h5py.File(state, "a") as f:
        del f["history/0"]
        f["history"].create_group("0")
    with pytest.raises(SolverError, match=r"snap_iter_0.solverstate.h5: history dataset '0' "
                                          r"is missing or not numeric"):
        solver.restore(str(state))


def test_hdf5_snapshot_write_failure_is_a_solver_error(tmp_path, hdf5_snapshot, monkeypatch):
    """h5py reports a full disk from its writes as RuntimeError; the snapshot must not."""
    solver, _ = hdf5_snapshot
    original = h5py.Group.create_dataset

    def full_disk(self, name, *args, **kwargs):
        if name == "history" or self.name == "/history":
            raise RuntimeError("Can't write data (file write failed: No space left on device)")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", full_disk)
    solver.iter = 5
    with pytest.raises(SolverError, match=r"snap_iter_5.solverstate.h5: RuntimeError.*No space"):
        solver.snapshot()
    assert not (tmp_path / "snap_iter_5.solverstate.h5").exists()

    def full_disk_on_weights(self, name, *args, **kwargs):
        if self.name.startswith("/data"):
            raise RuntimeError("Can't write data (file write failed: No space left on device)")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", full_disk_on_weights)
    solver.iter = 6
    with pytest.raises(SolverError, match=r"Snapshot at iteration 6 failed .*No space"):
        solver.snapshot()
    assert not (tmp_path / "snap_iter_6.caffemodel.h5").exists()


# --- HDF5Data --------------------------------------------------------------------------------
def _hdf5_data_net(tmp_path, listing):
    path = tmp_path / "data_net.prototxt"
    path.write_text(f"layer {{ name: 'h5in' type: 'HDF5Data' top: 'data' top: 'label' "
                    f"hdf5_data_param {{ source: '{listing}' batch_size: 2 }} }}\n")
    return str(path)


def _h5(path, rows=3, data=None):
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2) \
            if data is None else data
        f["label"] = np.arange(rows, dtype=np.float32)


def test_hdf5_data_non_utf8_list_names_are_file_system_names(tmp_path):
    """Caffe reads list entries as bytes: a non-UTF-8 name is a file name like any other."""
    name = os.fsdecode(b"rows\xff.h5")
    _h5(tmp_path / name)
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"rows\xff.h5\n")
    net = caffe.Net(_hdf5_data_net(tmp_path, listing), caffe.TRAIN)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1])
    listing.write_bytes(b"\xfe\xffmissing.h5\n")
    with pytest.raises(DataError, match=r"layer 'h5in': Failed opening HDF5 file: .*missing.h5"):
        caffe.Net(_hdf5_data_net(tmp_path, listing), caffe.TRAIN)


def test_hdf5_data_damaged_file_in_list(tmp_path):
    path = tmp_path / "rows.h5"
    _h5(path)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{path}\n")
    net_file = _hdf5_data_net(tmp_path, listing)
    failures = 0
    for offset in _overwrite_sweep(path, stride=16):
        try:
            caffe.Net(net_file, caffe.TRAIN)
        except DataError as exc:
            assert "layer 'h5in'" in str(exc) and "rows.h5" in str(exc), (offset, exc)
            failures += 1
    assert failures > 0


def test_hdf5_data_declared_huge_dataset_is_not_read(tmp_path):
    with h5py.File(tmp_path / "huge.h5", "w") as f:
        f.create_dataset("data", shape=(2**31, 1000), dtype=np.float32)
        f.create_dataset("label", shape=(2**31,), dtype=np.float32)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'huge.h5'}\n")
    with pytest.raises(DataError, match=r"layer 'h5in'.*'data' in .*huge.h5.* declares shape "
                                        r"\[2147483648, 1000\]"):
        caffe.Net(_hdf5_data_net(tmp_path, listing), caffe.TRAIN)


def test_hdf5_data_later_file_row_shape_checked_before_reading(tmp_path):
    _h5(tmp_path / "a.h5", rows=2)
    with h5py.File(tmp_path / "b.h5", "w") as f:  # declares 40 GiB of rows of the wrong shape
        f.create_dataset("data", shape=(2**31, 5), dtype=np.float32)
        f.create_dataset("label", shape=(2**31,), dtype=np.float32)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    net = caffe.Net(_hdf5_data_net(tmp_path, listing), caffe.TRAIN)
    net.forward()
    with pytest.raises(DataError, match=r"layer 'h5in': dataset 'data' in .*b.h5' has rows of "
                                        r"shape \[5\], the first file's have \[2\]"):
        net.forward()


# --- item 7: blobproto_to_array, fillers -----------------------------------------------------
def test_blobproto_shape_data_mismatch_is_an_io_value_error():
    blob = array_to_blobproto(np.ones((2, 3)))
    blob.shape.dim[0] = 5
    with pytest.raises(IOValueError, match=r"shape \[5, 3\] holds 15 values but its data has 6"):
        blobproto_to_array(blob)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=2, width=2, data=[1.0] * 7)
    with pytest.raises(ValueError, match=r"\[1, 2, 2, 2\] holds 8 values but its data has 7"):
        blobproto_to_array(legacy)
    with pytest.raises(CaffeError, match=r"holds 6 values but its diff has 0"):
        blobproto_to_array(array_to_blobproto(np.ones((2, 3))), return_diff=True)


@pytest.mark.parametrize("text, match", [
    ("type: 'uniform' min: 1 max: -1", r"uniform filler needs min <= max, got min 1.0 and max "
                                       r"-1.0"),
    ("type: 'gaussian' std: -0.5", r"gaussian filler needs std > 0, got std -0.5"),
    ("type: 'gaussian' std: 0", r"gaussian filler needs std > 0, got std 0.0"),
])
def test_filler_checks(text, match):
    from google.protobuf import text_format

    param = text_format.Parse(text, caffe_pb2.FillerParameter())
    with pytest.raises(CaffeError, match=match):
        filler.fill(Blob([2, 3]), param)
