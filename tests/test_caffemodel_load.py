"""Fast .caffemodel loading (#13): packed blob values read straight from the file.

The fast path (caffe.caffemodel, used by Net.copy_from) must give exactly the arrays of the
protobuf path (read_binary_proto + copy_trained_layers_from): both copy the same float32 or
float64 bit patterns, so equality is exact, with no tolerance. Encodings the scan leaves to
protobuf (non-packed floats, split packed chunks, double_data, legacy dims, V1 with inputs)
load the same way, and broken files stay caffe errors naming the file."""

from __future__ import annotations

import glob
import os
import struct
import textwrap

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from google.protobuf.internal.encoder import _VarintBytes

import caffe
from caffe.caffemodel import read_caffemodel
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2
from caffe.protoio import read_binary_proto

NETS = os.path.join(os.path.dirname(__file__), "golden", "nets")
GOLDEN = sorted(glob.glob(os.path.join(NETS, "*.caffemodel")))

IP_NET = """
layer { name: 'in' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
        inner_product_param { num_output: 4 } }
"""

CONV_NET = """
layer { name: 'in' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 1 dim: 1 } } }
layer { name: 'ip' type: 'Convolution' bottom: 'data' top: 'ip'
        convolution_param { num_output: 4 kernel_size: 1 } }
"""


def _params(net) -> dict:
    return {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


def _protobuf_load(prototxt: str, weights: str, dtype=torch.float32) -> dict:
    net = caffe.Net(prototxt, caffe.TEST, dtype=dtype)
    net.copy_trained_layers_from(read_binary_proto(weights, caffe_pb2.NetParameter()), weights)
    return _params(net)


def _fast_load(prototxt: str, weights: str, dtype=torch.float32) -> dict:
    net = caffe.Net(prototxt, caffe.TEST, dtype=dtype)
    net.copy_from(weights)
    return _params(net)


def _assert_same(fast: dict, slow: dict) -> None:
    assert fast.keys() == slow.keys()
    for name in fast:
        assert len(fast[name]) == len(slow[name])
        for a, b in zip(fast[name], slow[name]):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("weights", GOLDEN, ids=os.path.basename)
def test_golden_caffemodels_load_as_protobuf_does(weights):
    prototxt = weights[:-len(".caffemodel")] + ".prototxt"
    with read_caffemodel(weights) as reader:
        assert reader.packed  # the fast path took it: values cut out of the parsed message
        layers = reader.param.layer or reader.param.layers
        assert all(not len(b.data) for layer in layers for b in layer.blobs)
    fast, slow = _fast_load(prototxt, weights), _protobuf_load(prototxt, weights)
    _assert_same(fast, slow)
    assert any(np.any(a != 0) for blobs in fast.values() for a in blobs)


_varint = _VarintBytes  # protobuf's own base-128 varint encoder


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _write(tmp_path, name: str, text: str, weights: bytes) -> tuple[str, str]:
    prototxt = tmp_path / f"{name}.prototxt"
    prototxt.write_text(textwrap.dedent(text))
    path = tmp_path / f"{name}.caffemodel"
    path.write_bytes(weights)
    return str(prototxt), str(path)


def _ip_weights(blob0: bytes, blob1: bytes, v1: bool = False, header: bytes = b"",
                layer_type: str = "InnerProduct") -> bytes:
    if v1:  # V1LayerParameter: name 4, type 5 (INNER_PRODUCT = 14), blobs 6
        layer = (caffe_pb2.V1LayerParameter(name="ip", type=14).SerializeToString()
                 + _delimited(6, blob0) + _delimited(6, blob1))
        return header + _delimited(2, layer)
    layer = (caffe_pb2.LayerParameter(name="ip", type=layer_type).SerializeToString()
             + _delimited(7, blob0) + _delimited(7, blob1))
    return header + _delimited(100, layer)


def _shape(*dims: int) -> bytes:
    return caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=dims)).SerializeToString()


W = np.arange(12, dtype=np.float32).reshape(4, 3) / 7 - 0.5
B = np.array([0.25, -1.5, 3.0, 1e-3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_non_packed_floats_double_data_and_legacy_dims(tmp_path, dtype):
    # weights: one float per record (wire type 5), legacy num/channels/height/width dims;
    # bias: packed double_data
    legacy = caffe_pb2.BlobProto(num=4, channels=3, height=1, width=1).SerializeToString()
    unpacked = b"".join(_key(5, 5) + struct.pack("<f", v) for v in W.reshape(-1))
    doubles = _delimited(8, B.astype("<f8").tobytes())
    prototxt, path = _write(tmp_path, "mixed", CONV_NET, _ip_weights(
        legacy + unpacked, _shape(4) + doubles, layer_type="Convolution"))
    fast, slow = _fast_load(prototxt, path, dtype), _protobuf_load(prototxt, path, dtype)
    _assert_same(fast, slow)
    np.testing.assert_array_equal(fast["ip"][0], W.reshape(4, 3, 1, 1).astype(fast["ip"][0].dtype))
    np.testing.assert_array_equal(fast["ip"][1], B.astype(fast["ip"][1].dtype))
    with read_caffemodel(path) as reader:  # only the packed double_data was cut out
        assert list(reader.packed) == [(0, 1)] and list(reader.packed[(0, 1)]) == [8]


def test_split_packed_chunks_and_v1_with_inputs(tmp_path):
    # two packed chunks of one field are concatenated by protobuf: left to it; a V1 file with
    # net inputs gets an Input layer in front when upgraded, shifting the layer indices
    flat = W.astype("<f4").reshape(-1)
    chunks = _delimited(5, flat[:5].tobytes()) + _delimited(5, flat[5:].tobytes())
    bias = _delimited(5, B.astype("<f4").tobytes())
    header = caffe_pb2.NetParameter(input=["data"], input_dim=[2, 3, 1, 1]).SerializeToString()
    prototxt, path = _write(tmp_path, "v1", IP_NET, _ip_weights(
        _shape(4, 3) + chunks, _shape(4) + bias, v1=True, header=header))
    fast, slow = _fast_load(prototxt, path), _protobuf_load(prototxt, path)
    _assert_same(fast, slow)
    np.testing.assert_array_equal(fast["ip"][0], W)
    np.testing.assert_array_equal(fast["ip"][1], B.astype(np.float32))
    with read_caffemodel(path) as reader:
        assert list(reader.packed) == [(0, 1)]


def _small_model(tmp_path) -> tuple[str, bytes]:
    prototxt, _ = _write(tmp_path, "ip", IP_NET, b"")
    net = caffe.Net(prototxt, caffe.TEST)
    net.params["ip"][0].data[...] = W
    return prototxt, net.to_proto().SerializeToString()


@pytest.mark.parametrize("cut", [1, 9, 0.5, -3, -1])
def test_truncated_caffemodel_is_a_caffe_error_naming_the_file(tmp_path, cut):
    prototxt, good = _small_model(tmp_path)
    end = int(len(good) * cut) if isinstance(cut, float) else cut % len(good)
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(good[:end])
    net = caffe.Net(prototxt, caffe.TEST)
    with pytest.raises(CaffeError, match="cut.caffemodel"):
        net.copy_from(str(path))


def test_corrupt_lengths_are_caffe_errors(tmp_path):
    prototxt, good = _small_model(tmp_path)
    net = caffe.Net(prototxt, caffe.TEST)
    data_key = _key(5, 2)
    at = good.index(data_key)  # the weights' packed data: claim 4 fewer bytes
    bad = bytearray(good)
    bad[at + len(data_key)] -= 4
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(bytes(bad))
    with pytest.raises(CaffeError, match="bad.caffemodel"):
        net.copy_from(str(path))


def test_file_shrunk_after_scan_is_a_caffe_error(tmp_path):
    prototxt, good = _small_model(tmp_path)
    path = tmp_path / "shrunk.caffemodel"
    path.write_bytes(good)
    net = caffe.Net(prototxt, caffe.TEST)
    with read_caffemodel(str(path)) as reader:
        path.write_bytes(good[:len(good) // 2])
        with pytest.raises(CaffeError, match="shrunk.caffemodel.*ended"):
            net.copy_trained_layers_from(reader.param, str(path), reader.packed)


def test_legacy_inner_product_blobs_padded_to_four_axes_load(tmp_path):
    """Old caffemodels store an InnerProduct weight as legacy 1 x 1 x M x N and its bias as
    1 x 1 x 1 x N; Caffe's ShapeEquals pads the target's (M, N) / (N,) shape to 4 axes at the
    front, so they load into today's 2-D and 1-D blobs (and a mismatch still refuses)."""
    param = caffe_pb2.NetParameter()
    text_format.Parse(IP_NET, param)
    layer = param.layer[1]
    weight = layer.blobs.add(num=1, channels=1, height=4, width=3)
    weight.data.extend(W.reshape(-1).tolist())
    bias = layer.blobs.add(num=1, channels=1, height=1, width=4)
    bias.data.extend(B.tolist())
    path = tmp_path / "legacy_ip.caffemodel"
    path.write_bytes(param.SerializeToString())
    prototxt = tmp_path / "ip.prototxt"
    prototxt.write_text(IP_NET)
    fast, slow = _fast_load(str(prototxt), str(path)), _protobuf_load(str(prototxt), str(path))
    _assert_same(fast, slow)
    np.testing.assert_array_equal(fast["ip"][0], W.reshape(4, 3))
    np.testing.assert_array_equal(fast["ip"][1], B.astype(np.float32))
    weight.height, weight.width = 3, 4  # same count, other shape: refused as in Caffe
    path.write_bytes(param.SerializeToString())
    with pytest.raises(CaffeError, match="shape mismatch"):
        _fast_load(str(prototxt), str(path))
