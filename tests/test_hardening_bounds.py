"""Bounds before allocation (#14 item 2): blob counts <= INT_MAX as in C++ Caffe, HDF5Data
reading only the rows of each batch (and sharding them by solver rank), encoded images whose
header declares too many pixels, and protobuf record bombs refused before parsing."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import caffe
from caffe import common, protoio
from caffe.blob import Blob
from caffe.data import image as cvimage
from caffe.data.datum import datum_to_image
from caffe.errors import CaffeError, DataError, ProtoError
from caffe.proto import caffe_pb2

from data_case import make_data_layer, setup_layer

h5py = pytest.importorskip("h5py")

INT_MAX = 2**31 - 1  # C++ Caffe's bound on a blob's count


# --- Blob count ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [[2**31], [2**16, 2**15], [2**31, 2**31, 2**31], [0, 2**40]])
def test_blob_count_is_bounded_by_int_max(shape):
    blob = Blob()
    if 0 in shape:
        blob.reshape(shape)  # a zero dimension keeps the count at 0, as in Caffe
        assert blob.count == 0
        return
    with pytest.raises(CaffeError, match=r"blob size exceeds INT_MAX"):
        blob.reshape(shape)
    blob.reshape([INT_MAX])  # the largest count is allowed (and lazily allocated)
    assert blob.count == INT_MAX


def test_input_layer_beyond_int_max_names_the_blob_and_file(tmp_path):
    path = tmp_path / "huge.prototxt"
    path.write_text("layer { name: 'in' type: 'Input' top: 'data'\n"
                    "  input_param { shape { dim: 2147483648 dim: 2147483648 "
                    "dim: 2147483648 } } }\n")
    with pytest.raises(CaffeError, match=r"huge.prototxt:1: Blob 'data': blob size exceeds "
                                         r"INT_MAX \(2147483647\): shape \[2147483648, "
                                         r"2147483648, 2147483648\]"):
        caffe.Net(str(path), caffe.TEST)


def test_blobproto_values_are_counted_before_the_blob_is_filled():
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([40000, 40000])  # 1.6e9 values declared, none stored
    blob = Blob()
    with pytest.raises(CaffeError, match=r"0 values for a blob of shape 40000 40000"):
        blob.from_proto(proto)
    # The 6.4 GB of host memory was never asked for.
    assert blob._data._cpu is None


# --- HDF5Data reads the rows a batch needs --------------------------------------------------
def _rows_file(path, rows: int, chunks=None) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.arange(rows, dtype=np.float32)[:, None] * [1, 1],
                         chunks=chunks)
        f.create_dataset("label", data=np.arange(rows, dtype=np.float32))


def test_hdf5_data_reads_only_batch_rows(tmp_path, monkeypatch):
    _rows_file(tmp_path / "a.h5", 10)
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5") + "\n")
    selections = []
    real_getitem = h5py.Dataset.__getitem__

    def recording(self, key, *args, **kwargs):
        selections.append(key)
        return real_getitem(self, key, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    layer = make_data_layer(f"type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param {{ "
                            f"source: '{tmp_path / 'list.txt'}' batch_size: 4 }}")
    top = setup_layer(layer)
    labels = []
    for _ in range(3):
        layer.Forward([], top)
        labels.extend(top[1].data.tolist())
    assert labels == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    # Caffe loads the whole file (dataset[()]); the layer reads slices of at most a batch.
    assert selections and all(isinstance(k, slice) and k.stop - k.start <= 4
                              for k in selections), selections


def test_hdf5_data_shuffled_rows_read_as_sorted_points(tmp_path, monkeypatch):
    _rows_file(tmp_path / "a.h5", 12)
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5") + "\n")
    common.set_random_seed(3)
    layer = make_data_layer(f"type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param {{ "
                            f"source: '{tmp_path / 'list.txt'}' batch_size: 5 shuffle: true }}")
    top = setup_layer(layer)
    seen = []
    for _ in range(2):
        layer.Forward([], top)
        np.testing.assert_array_equal(top[0].data[:, 0], top[1].data)
        seen.extend(int(v) for v in top[1].data)
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 10 and seen != list(range(10))


def test_hdf5_data_shards_rows_by_solver_rank(tmp_path):
    for name, first, n in (("a.h5", 0, 3), ("b.h5", 3, 4)):
        with h5py.File(tmp_path / name, "w") as f:
            f["data"] = np.arange(first, first + n, dtype=np.float32)[:, None]
            f["label"] = np.arange(first, first + n, dtype=np.float32)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    common.set_solver_count(3)
    common.set_solver_rank(1)
    try:
        layer = make_data_layer(f"type: 'HDF5Data' top: 'data' top: 'label' "
                                f"hdf5_data_param {{ source: '{tmp_path / 'list.txt'}' "
                                f"batch_size: 4 }}", phase="TRAIN")
        top = setup_layer(layer)
        got = []
        for _ in range(2):
            layer.Forward([], top)
            got.extend(int(v) for v in top[1].data)
        test_layer = make_data_layer(f"type: 'HDF5Data' top: 'data' top: 'label' "
                                     f"hdf5_data_param {{ source: '{tmp_path / 'list.txt'}' "
                                     f"batch_size: 4 }}", phase="TEST")
        test_top = setup_layer(test_layer)
        test_layer.Forward([], test_top)
    finally:
        common.set_solver_count(1)
        common.set_solver_rank(0)
    # Rank 1 of 3 keeps running offsets 1, 4, 7, 10, ...: rows 1, 4, then (wrap, 7 rows per
    # pass) 0, 3, 6, 2, 5, 1.
    assert got == [1, 4, 0, 3, 6, 2, 5, 1]
    assert test_top[1].data.tolist() == [0, 1, 2, 3]  # TEST is not sharded


def test_hdf5_data_shards_are_disjoint_and_cover_one_epoch(tmp_path):
    """Over one pass through 7 rows in 2 files, ranks 0, 1, 2 of 3 read 3, 2 and 2 rows: no
    row twice, every row once."""
    for name, first, n in (("a.h5", 0, 3), ("b.h5", 3, 4)):
        with h5py.File(tmp_path / name, "w") as f:
            f["data"] = np.arange(first, first + n, dtype=np.float32)[:, None]
            f["label"] = np.arange(first, first + n, dtype=np.float32)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    shards = []
    try:
        common.set_solver_count(3)
        for rank in range(3):
            common.set_solver_rank(rank)
            layer = make_data_layer(f"type: 'HDF5Data' top: 'data' top: 'label' "
                                    f"hdf5_data_param {{ source: '{tmp_path / 'list.txt'}' "
                                    f"batch_size: 1 }}", phase="TRAIN")
            top = setup_layer(layer)
            rows = []
            for _ in range(len(range(rank, 7, 3))):
                layer.Forward([], top)
                rows.append(int(top[1].data[0]))
            shards.append(rows)
    finally:
        common.set_solver_count(1)
        common.set_solver_rank(0)
    assert sorted(sum(shards, [])) == list(range(7))


def test_hdf5_dataset_beyond_int_max_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        # Chunked and never written: 8 TiB declared, a few hundred bytes on disk.
        f.create_dataset("data", shape=(2**31, 1000), dtype=np.float32, chunks=(1, 1000))
        f.create_dataset("label", shape=(2**31,), dtype=np.float32, chunks=(1024,))
    (tmp_path / "list.txt").write_text(str(path) + "\n")
    layer = make_data_layer(f"type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param {{ "
                            f"source: '{tmp_path / 'list.txt'}' batch_size: 2 }}")
    with pytest.raises(DataError, match=r"'data' in .*huge.h5.* declares shape "
                                        r"\[2147483648, 1000\]"):
        setup_layer(layer)


# --- encoded image headers ----------------------------------------------------------------
def _png_claiming(width: int, height: int) -> bytes:
    png = cvimage.imencode(np.zeros((2, 2, 3), np.uint8), "png")
    return png[:16] + struct.pack(">II", width, height) + png[24:]


def _jpeg_claiming(width: int, height: int) -> bytes:
    jpg = bytearray(cvimage.imencode(np.zeros((8, 8, 3), np.uint8), "jpg"))
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpg)


@pytest.mark.parametrize("make,width,height", [(_png_claiming, 100000, 20000),
                                               (_jpeg_claiming, 60000, 40000)])
def test_image_header_declaring_too_many_pixels_is_refused(make, width, height):
    buffer = make(width, height)
    assert cvimage.declared_size(buffer) == (width, height)
    with pytest.raises(cvimage.ImageSizeError, match=rf"declares {width}x{height} pixels"):
        cvimage.imdecode(buffer)
    datum = caffe_pb2.Datum(encoded=True, data=buffer, channels=3, height=height, width=width)
    # Also a ValueError, which the data layers already turn into errors naming the record.
    with pytest.raises(ValueError, match="CAFFE_MAX_IMAGE_PIXELS"):
        datum_to_image(datum)


def test_image_pixel_limit_is_configurable(monkeypatch):
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    png = cvimage.imencode(img, "png")
    np.testing.assert_array_equal(cvimage.imdecode(png), img)
    monkeypatch.setenv(cvimage.MAX_PIXELS_ENV, "23")
    with pytest.raises(DataError, match=r"declares 6x4 pixels, more than the limit of 23"):
        cvimage.imdecode(png)
    monkeypatch.setenv(cvimage.MAX_PIXELS_ENV, "24")
    np.testing.assert_array_equal(cvimage.imdecode(png), img)


# --- protobuf record bombs ----------------------------------------------------------------
def test_caffemodel_of_empty_layer_records_is_refused_before_parsing(tmp_path):
    path = tmp_path / "bomb.caffemodel"
    # Field 100 (layer), length 0: 3 bytes on disk, ~800 bytes each in the parser; 20 MB of
    # them asked the parser for 3.6 GB.
    path.write_bytes(b"\xa2\x06\x00" * (2 * 10**6))
    with pytest.raises(ProtoError, match=r"bomb.caffemodel: refusing to parse NetParameter: "
                                         r"more than \d+ message records"):
        protoio.read_net_weights(path)


def test_nested_record_bomb_is_counted_too(tmp_path):
    layer = b"\x0a\x01x" + b"\x32\x00" * 300000  # name 'x', then 300k empty ParamSpecs
    path = tmp_path / "nested.caffemodel"
    path.write_bytes(b"\xa2\x06" + _varint(len(layer)) + layer)
    with pytest.raises(ProtoError, match="message records"):
        protoio.read_net_weights(path)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_real_weights_and_the_limit_override(tmp_path, monkeypatch):
    from pathlib import Path

    golden = Path(__file__).parent / "golden" / "nets" / "lenet.caffemodel"
    assert len(protoio.read_net_weights(golden).layer) > 0
    path = tmp_path / "many.caffemodel"
    param = caffe_pb2.NetParameter()
    for i in range(20):
        param.layer.add(name=f"l{i}")
    path.write_bytes(param.SerializeToString())
    monkeypatch.setenv(protoio.MAX_RECORDS_ENV, "10")
    with pytest.raises(ProtoError, match="more than 10 message records"):
        protoio.read_net_weights(path)
    monkeypatch.setenv(protoio.MAX_RECORDS_ENV, "20")
    assert len(protoio.read_net_weights(path).layer) == 20


def test_text_prototxt_of_empty_layers_is_refused(tmp_path):
    path = tmp_path / "bomb.prototxt"
    path.write_text("layer {}\n" * 200001)
    with pytest.raises(ProtoError, match="bomb.prototxt: refusing to parse NetParameter"):
        protoio.read_net_param(path)
