"""Fast .caffemodel reading: packed blob values go from the file straight into blob memory.

Protobuf would turn CaffeNet's 61 M weights into a parsed repeated field, which pycaffe-era
code then copies twice more. Here the file is scanned at the wire level (with protoio's reader
and record budget): each BlobProto's packed ``data`` (field 5) and ``double_data`` (field 8)
payloads are cut out and remembered by file offset, and only the small rest (names, shapes,
legacy dims, diffs, non-packed values) is parsed by protobuf. A blob's values are later read
with one ``readinto`` into its host buffer. Any encoding the scan does not expect (V0 layers,
groups, repeated packed chunks, broken lengths) makes ``read_caffemodel`` return None, and the
caller takes the plain protobuf path, which reports broken files in its own words.
"""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np
from google.protobuf.message import DecodeError

from caffe.errors import ProtoError
from caffe.proto import caffe_pb2
from caffe.protoio import _Malformed, _varint, check_record_budget

_NET_LAYERS_V1 = 2  # NetParameter.layers (V1LayerParameter)
_NET_LAYER = 100  # NetParameter.layer (LayerParameter)
_LAYER_BLOBS = 7  # LayerParameter.blobs
_V1_BLOBS = 6  # V1LayerParameter.blobs
_V1_V0_LAYER = 1  # V1LayerParameter.layer (V0LayerParameter): left to protobuf
_DATA, _DOUBLE_DATA = 5, 8  # BlobProto.data, BlobProto.double_data
_WIRE_DTYPES = {_DATA: np.dtype("<f4"), _DOUBLE_DATA: np.dtype("<f8")}


class PackedValues:
    """One packed float/double payload of a blob, by offset and length in the file."""

    __slots__ = ("reader", "offset", "nbytes", "dtype")

    def __init__(self, reader: CaffemodelReader, offset: int, nbytes: int,
                 dtype: np.dtype) -> None:
        self.reader, self.offset, self.nbytes, self.dtype = reader, offset, nbytes, dtype

    def __len__(self) -> int:
        return self.nbytes // self.dtype.itemsize

    def read_into(self, out: np.ndarray) -> None:
        """Fill the flat, contiguous ``out`` (``len(self)`` values) with these values."""
        native = self.dtype.newbyteorder("=") if sys.byteorder == "little" else None
        if out.dtype == native and out.flags.c_contiguous:
            self.reader.read_at(self.offset, memoryview(out).cast("B"))
        else:  # another blob dtype (or a big-endian host): read, then convert
            out[...] = self.array().reshape(out.shape)

    def array(self) -> np.ndarray:
        """The values as a new array (of the wire dtype)."""
        values = np.empty(len(self), self.dtype)
        self.reader.read_at(self.offset, memoryview(values).cast("B"))
        return values


class CaffemodelReader:
    """An open .caffemodel: ``param`` (a NetParameter whose blobs lack the packed values
    that were cut out) and ``packed[(layer index, blob index)]`` = {field: PackedValues};
    layer indices count ``param.layer``, or ``param.layers`` for a V1 file."""

    def __init__(self, path: str, file, param: caffe_pb2.NetParameter,
                 spans: dict) -> None:
        self.path, self._file, self.param = path, file, param
        self.packed = {key: {field: PackedValues(self, off, n, _WIRE_DTYPES[field])
                             for field, (off, n) in fields.items()}
                       for key, fields in spans.items()}

    def read_at(self, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the file's bytes from ``offset`` (a blob's packed values)."""
        self._file.seek(offset)
        done = 0
        while done < len(buffer):
            got = self._file.readinto(buffer[done:])
            if not got:
                raise ProtoError(f"{self.path}: file ended while reading blob values at byte "
                                 f"{offset + done} (was it truncated while being read?)")
            done += got

    def close(self) -> None:
        """Close the caffemodel file."""
        self._file.close()

    def __enter__(self) -> CaffemodelReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _records(data, pos: int, end: int):
    """(field, wire, record start, payload start, payload end) for each record in
    ``data[pos:end]``; raises _Malformed on an encoding the scan does not take."""
    while pos < end:
        start = pos
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(data, pos, end)
        elif wire == 1:
            stop = pos + 8
        elif wire == 5:
            stop = pos + 4
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            stop = pos + length
        else:  # groups (not in caffe.proto) and invalid wire types
            raise _Malformed
        if stop > end or field == 0:
            raise _Malformed
        yield field, wire, start, pos, stop
        pos = stop


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint_bytes(field << 3 | 2) + _varint_bytes(len(payload)) + payload


def _strip_blob(data, pos: int, end: int, spans: dict) -> bytes:
    """A BlobProto's bytes without its single packed data/double_data payloads, whose file
    spans go into ``spans``."""
    records = list(_records(data, pos, end))
    counts: dict[int, int] = {}
    for field, *_ in records:
        counts[field] = counts.get(field, 0) + 1
    parts = []
    for field, wire, start, payload, stop in records:
        if (field in _WIRE_DTYPES and wire == 2 and counts[field] == 1
                and (stop - payload) % _WIRE_DTYPES[field].itemsize == 0):
            spans[field] = (payload, stop - payload)
        else:
            parts.append(data[start:stop])
    return b"".join(parts)


def _strip_layer(data, pos: int, end: int, blobs_field: int, key, spans: dict) -> bytes:
    parts, blob_index = [], 0
    for field, wire, start, payload, stop in _records(data, pos, end):
        if field == _V1_V0_LAYER and blobs_field == _V1_BLOBS:
            raise _Malformed  # a V0 layer inside: the protobuf path and its upgrade take it
        if field == blobs_field and wire == 2:
            fields: dict = {}
            parts.append(_length_delimited(field, _strip_blob(data, payload, stop, fields)))
            if fields:
                spans[(key, blob_index)] = fields
            blob_index += 1
        else:
            parts.append(data[start:stop])
    return b"".join(parts)


def _skeleton(data) -> tuple[bytes, dict]:
    """The NetParameter bytes without packed blob values, and the values' spans."""
    parts, spans, index = [], {}, {_NET_LAYER: 0, _NET_LAYERS_V1: 0}
    blobs_field = {_NET_LAYER: _LAYER_BLOBS, _NET_LAYERS_V1: _V1_BLOBS}
    for field, wire, start, payload, stop in _records(data, 0, len(data)):
        if field in blobs_field and wire == 2:
            layer = _strip_layer(data, payload, stop, blobs_field[field], index[field], spans)
            parts.append(_length_delimited(field, layer))
            index[field] += 1
        else:
            parts.append(data[start:stop])
    if index[_NET_LAYER] and index[_NET_LAYERS_V1]:
        raise _Malformed  # both formats at once: the protobuf path refuses it in its words
    return b"".join(parts), spans


def read_caffemodel(path: str | os.PathLike) -> CaffemodelReader | None:
    """Open a binary .caffemodel for fast loading, or None where the protobuf path must take
    it (an empty, unusual or broken file). Refuses record bombs as protoio does."""
    path = os.fspath(path)
    try:
        file = open(path, "rb", buffering=0)
    except OSError:
        return None  # the protobuf path names what is wrong with the path
    try:
        size = os.fstat(file.fileno()).st_size
        if not size:
            file.close()
            return None
        try:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # not a regular file
            file.close()
            return None
        with mapped as data:
            check_record_budget(data, caffe_pb2.NetParameter(), path)
            try:
                skeleton, spans = _skeleton(data)
            except _Malformed:
                file.close()
                return None
        param = caffe_pb2.NetParameter()
        try:
            param.ParseFromString(skeleton)
        except (DecodeError, UnicodeDecodeError):
            file.close()
            return None
    except BaseException:
        file.close()
        raise
    return CaffemodelReader(path, file, param, spans)


