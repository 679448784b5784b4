"""Blob: shape API, capacity-based reshape, stable views, sharing, update, proto round trips."""

import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2


def test_shape_api_and_legacy_accessors():
    b = Blob([2, 3, 4, 5])
    assert b.shape == (2, 3, 4, 5) and b.count == 120 and b.num_axes == 4
    assert (b.num, b.channels, b.height, b.width) == (2, 3, 4, 5)
    assert b.canonical_axis_index(-1) == 3 and b.shape_at(-3) == 3
    assert b.count_range(1, 3) == 12 and b.count_range(2) == 20
    with pytest.raises(CaffeError, match="axis 4 out of range"):
        b.canonical_axis_index(4)
    short = Blob([7, 2])
    assert (short.num, short.channels, short.height, short.width) == (7, 2, 1, 1)
    with pytest.raises(CaffeError, match="legacy accessor"):
        _ = Blob([1, 2, 3, 4, 5]).num


def test_pycaffe_reshape_forms():
    b = Blob()
    b.reshape(2, 3)
    assert b.shape == (2, 3)
    b.reshape([4])
    assert b.shape == (4,)
    b.reshape(caffe_pb2.BlobShape(dim=[1, 2, 2]))
    assert b.shape == (1, 2, 2)
    b.reshape([])
    assert b.count == 1 and b.data.shape == ()


def test_reshape_keeps_storage_until_growth():
    b = Blob([2, 3])
    b.data[...] = np.arange(6).reshape(2, 3)
    view = b.data
    b.reshape([3, 2])  # same count: same memory
    b.data[...] = 9
    assert (view == 9).all()
    b.reshape([2])  # smaller: same memory, capacity kept
    assert b.capacity == 6
    b.reshape([10])  # grows: new memory
    assert b.capacity == 10
    b.data[...] = 1
    assert (view == 9).all()


def test_data_diff_views_and_update():
    b = Blob([3])
    b.data[...] = [1, 2, 3]
    b.diff[...] = [0.5, 0.5, 1]
    b.update()
    np.testing.assert_allclose(b.data, [0.5, 1.5, 2.0])
    assert b.asum_data() == pytest.approx(4.0)
    assert b.sumsq_diff() == pytest.approx(1.5)
    b.scale_diff(2)
    np.testing.assert_allclose(b.diff, [1, 1, 2])
    with pytest.raises(ValueError):
        b.cpu_data()[0] = 3


def test_share_data_and_diff():
    a, b = Blob([2, 2]), Blob([4])
    b.share_data(a)
    a.data[...] = 3
    assert (b.data == 3).all() and b.shape == (4,)
    b.share_diff(a)
    b.diff[...] = 2
    assert (a.diff == 2).all()
    with pytest.raises(CaffeError, match="count"):
        Blob([3]).share_data(a)


def test_proto_round_trip_shape_and_legacy():
    b = Blob([2, 3], dtype=torch.float32)
    b.data[...] = np.arange(6).reshape(2, 3)
    b.diff[...] = -1
    proto = b.to_proto(write_diff=True)
    c = Blob()
    c.from_proto(proto)
    np.testing.assert_array_equal(c.data, b.data)
    np.testing.assert_array_equal(c.diff, b.diff)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=2, data=[1, 2, 3, 4])
    d = Blob()
    d.from_proto(legacy)
    assert d.shape == (1, 2, 1, 2)
    double = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2]), double_data=[0.25, 0.5])
    e = Blob(dtype=torch.float64)
    e.from_proto(double)
    np.testing.assert_array_equal(e.data, [0.25, 0.5])
    assert len(e.to_proto().double_data) == 2
    with pytest.raises(CaffeError, match="does not match"):
        Blob([3]).from_proto(proto, reshape=False)
