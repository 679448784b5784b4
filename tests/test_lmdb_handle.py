"""An LMDB the script holds open with its own lmdb.open(): building a Data net on it raises a
DataError that says what to do; caffe's own handles are shared between nets."""

import numpy as np
import pytest

import caffe
from caffe.data import db as dbmod
from caffe.errors import DataError

from data_case import random_images, write_db

lmdb = pytest.importorskip("lmdb")

NET = """
layer { name: 'data' type: 'Data' top: 'data' top: 'label'
        data_param { source: '%s' backend: LMDB batch_size: 2 } }
"""


def _source(tmp_path):
    path = tmp_path / "images_lmdb"
    write_db(path, random_images(3), [0, 1, 2])
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(NET % path)
    return path, str(net_file)


def test_own_lmdb_handle_gives_a_data_error_saying_what_to_do(tmp_path):
    path, net_file = _source(tmp_path)
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            assert txn.stat()["entries"] == 3
        with pytest.raises(DataError) as info:
            caffe.Net(net_file, caffe.TEST)
        message = str(info.value)
        assert str(path) in message and "already open in this process" in message
        assert "env.close()" in message and "caffe.data.db.open_db" in message
    finally:
        env.close()
    net = caffe.Net(net_file, caffe.TEST)  # once the script's handle is closed, it works
    assert net.forward()["data"].shape == (2, 3, 9, 8)


def test_two_nets_and_open_db_share_caffes_handle(tmp_path):
    path, net_file = _source(tmp_path)
    first = caffe.Net(net_file, caffe.TEST)
    second = caffe.Net(net_file, caffe.TRAIN)
    with dbmod.open_db(path) as db:  # inspecting through caffe shares the nets' handle
        assert len(db) == 3
    out1, out2 = first.forward(), second.forward()
    np.testing.assert_array_equal(out1["data"], out2["data"])
    np.testing.assert_array_equal(out1["label"], [0, 1])
