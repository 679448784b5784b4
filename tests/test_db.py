"""caffe.data.db: LMDB/LevelDB read-write, Caffe's cursor/transaction API, keys, Datum bytes."""

import os

import numpy as np
import pytest

from caffe.data import db as dbmod
from caffe.data.datum import datum_to_image, parse_datum
from caffe.errors import DataError
from caffe.proto import caffe_pb2

from data_case import GOLDEN_DATA, golden_data, random_images, write_db

NEED_PLYVEL = pytest.mark.skipif(not __import__("importlib").util.find_spec("plyvel"),
                                 reason="plyvel not installed")
BACKENDS = ["lmdb", pytest.param("leveldb", marks=NEED_PLYVEL)]


def test_format_key_is_caffes_convention():
    assert dbmod.format_key(3, "a/b.jpg") == "00000003_a/b.jpg"
    assert dbmod.format_key(12345678, "x") == "12345678_x"


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_then_read_in_key_order(tmp_path, backend):
    path = tmp_path / "db"
    with dbmod.open_db(path, dbmod.NEW, backend) as db:
        txn = db.new_transaction()
        # Put out of order: the cursor must return key order.
        for i in (2, 0, 1):
            txn.put(dbmod.format_key(i, f"n{i}"), bytes([i]) * (i + 1))
        txn.commit()
    with dbmod.open_db(path, "read", backend) as db:
        cursor = db.new_cursor()
        seen = []
        while cursor.valid():
            seen.append((cursor.key(), cursor.value()))
            cursor.next()
        assert not cursor.valid()
        assert seen == [("00000000_n0", b"\x00"), ("00000001_n1", b"\x01\x01"),
                        ("00000002_n2", b"\x02\x02\x02")]
        cursor.seek_to_first()
        assert cursor.valid() and cursor.key() == "00000000_n0"
        assert list(cursor) == seen
        cursor.close()


@pytest.mark.parametrize("backend,records",
                         [("lmdb", 80), pytest.param("leveldb", 3, marks=NEED_PLYVEL)])
def test_write_mode_appends_and_large_commits_grow_the_map(tmp_path, backend, records):
    path = tmp_path / "db"
    big = os.urandom(1 << 20)
    with dbmod.open_db(path, dbmod.NEW, backend) as db:
        txn = db.new_transaction()
        # 80 MiB > the initial 64 MiB LMDB map: the map must double and the commit retry.
        for i in range(records):
            txn.put(dbmod.format_key(i, ""), big)
        txn.commit()
    with dbmod.open_db(path, dbmod.WRITE, backend) as db:
        txn = db.new_transaction()
        txn.put("zz", b"last")
        txn.commit()
    with dbmod.open_db(path, dbmod.READ, backend) as db:
        values = dict(db.new_cursor())
    assert len(values) == records + 1 and values["zz"] == b"last"
    assert values[dbmod.format_key(records - 1)] == big


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_db_raises_data_error_naming_path(tmp_path, backend):
    path = str(tmp_path / "nope")
    with pytest.raises(DataError, match="nope"):
        dbmod.open_db(path, dbmod.READ, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_on_existing_path_fails(tmp_path, backend):
    path = tmp_path / "db"
    write_db(path, random_images(1), [0], backend)
    with pytest.raises(DataError, match="already exists"):
        dbmod.open_db(path, dbmod.NEW, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_database_opened_twice_shares_one_handle(tmp_path, backend):
    path = tmp_path / "db"
    write_db(path, random_images(2), [0, 1], backend)
    a = dbmod.open_db(path, dbmod.READ, backend)
    b = dbmod.open_db(path, dbmod.READ, backend)
    assert len(list(a.new_cursor())) == 2 and len(list(b.new_cursor())) == 2
    a.close()
    assert len(list(b.new_cursor())) == 2  # still open for the second user
    b.close()


def test_read_only_database_cannot_be_written(tmp_path):
    path = tmp_path / "db"
    write_db(path, random_images(1), [0])
    with dbmod.open_db(path, dbmod.READ) as db, pytest.raises(DataError, match="READ"):
        db.new_transaction()


def test_unknown_backend_and_mode():
    with pytest.raises(DataError, match="backend"):
        dbmod.open_db("x", dbmod.READ, "rocksdb")
    with pytest.raises(DataError, match="mode"):
        dbmod.open_db("x", "append", "lmdb")
    assert dbmod.backend_name(caffe_pb2.DataParameter.LEVELDB) == "leveldb"
    assert dbmod.backend_name(caffe_pb2.DataParameter.LMDB) == "lmdb"


def test_atomic_new_db_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "db"
    with pytest.raises(RuntimeError), dbmod.AtomicNewDB(path) as db:
        txn = db.new_transaction()
        txn.put("k", b"v")
        txn.commit()
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with dbmod.AtomicNewDB(path) as db:
        txn = db.new_transaction()
        txn.put("k", b"v")
        txn.commit()
    assert os.listdir(tmp_path) == ["db"]
    with dbmod.open_db(path) as db:
        assert dict(db.new_cursor()) == {"k": b"v"}


def test_golden_lmdb_holds_the_golden_images_and_labels():
    golden = golden_data()
    with dbmod.open_db(GOLDEN_DATA / "images_lmdb", dbmod.READ, "lmdb") as db:
        records = list(db.new_cursor())
    assert [k for k, _ in records] == [dbmod.format_key(i, f"img{i}.png") for i in range(7)]
    images = np.stack([datum_to_image(parse_datum(v)) for _, v in records])
    labels = np.array([parse_datum(v).label for _, v in records])
    np.testing.assert_array_equal(images, golden["images"])
    np.testing.assert_array_equal(labels, golden["labels"])


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _wire_fields(buf: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, payload) of a protobuf message, decoded by hand."""
    fields, pos = [], 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.append((number, wire, value))
    return fields


def test_datum_bytes_parse_with_the_committed_schema_field_by_field():
    # Caffe's Datum: channels=1 height=2 width=3 data=4 label=5 float_data=6 encoded=7.
    numbers = {f.name: f.number for f in caffe_pb2.Datum.DESCRIPTOR.fields}
    assert numbers == {"channels": 1, "height": 2, "width": 3, "data": 4, "label": 5,
                       "float_data": 6, "encoded": 7}
    with dbmod.open_db(GOLDEN_DATA / "images_lmdb") as db:
        raw = dict(db.new_cursor())
    for value in raw.values():  # bytes written by C++ Caffe
        wire = {number: payload for number, _, payload in _wire_fields(value)}
        datum = parse_datum(value)
        assert (datum.channels, datum.height, datum.width) == (wire[1], wire[2], wire[3])
        assert datum.data == wire[4] and len(datum.data) == 3 * 9 * 8
        assert datum.label == wire.get(5, 0)
        assert not datum.encoded and 7 not in wire and 6 not in wire
        # And our own serialization reproduces C++'s bytes exactly.
        assert datum.SerializeToString() == value
    # float_data is proto2 "repeated float" (not packed, as Caffe's schema): one fixed32
    # field per value; encoded is a varint.
    d = caffe_pb2.Datum(channels=1, height=1, width=2, float_data=[1.5, -2.0], encoded=True)
    wire = _wire_fields(d.SerializeToString())
    floats = [p for n, w, p in wire if n == 6]
    assert all(w == 5 for n, w, _ in wire if n == 6)
    np.testing.assert_array_equal(np.frombuffer(b"".join(floats), "<f4"), [1.5, -2.0])
    assert dict((n, p) for n, _, p in wire)[7] == 1


def test_corrupt_lmdb_file_raises_data_error_naming_path(tmp_path):
    path = tmp_path / "broken_lmdb"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"this is not an lmdb file" * 400)
    with pytest.raises(DataError, match="broken_lmdb"):
        dbmod.open_db(path, dbmod.READ, "lmdb")
