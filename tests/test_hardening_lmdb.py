"""LMDB hardening (#14 item 4): readers open with the lock (NOLOCK only when the lock file
cannot be written), a data.mdb shorter than its meta page is refused instead of SIGBUS, lmdb
errors on commit and read become DataErrors naming the database, and a Data layer reading
while another process rewrites the database sees only whole records."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

lmdb = pytest.importorskip("lmdb")

from caffe.data import db as dbmod  # noqa: E402
from caffe.errors import DataError  # noqa: E402

from data_case import make_data_layer, random_images, run_batches, setup_layer, write_db  # noqa: E402,I001


def _uniform_db(path, generation: int, count: int = 64, shape=(4, 16, 16)) -> None:
    """``count`` raw Datums whose pixels all equal ``generation % 256`` and whose label is
    ``generation``: a reader can tell a whole record from a garbled one."""
    images = np.full((count, *shape), generation % 256, dtype=np.uint8)
    write_db(path, images, [generation] * count)


def test_reader_opens_with_the_lock(tmp_path, monkeypatch):
    write_db(tmp_path / "db", random_images(2), [0, 1])
    calls = []
    real_open = lmdb.open

    def recording_open(path, **kwargs):
        calls.append(kwargs)
        return real_open(path, **kwargs)

    monkeypatch.setattr(lmdb, "open", recording_open)
    with dbmod.open_db(tmp_path / "db", dbmod.READ) as db:
        assert len(db) == 2
    assert calls and calls[0].get("lock", True) is True and calls[0]["readonly"]


def test_reader_falls_back_to_nolock_when_the_lock_cannot_be_written(tmp_path, monkeypatch,
                                                                     caplog):
    # As root a read-only folder is still writable, so the refusal is simulated: lmdb raises
    # ReadonlyError (EACCES) for a lock file it may not create, as C++ Caffe's fallback expects.
    write_db(tmp_path / "db", random_images(3), [0, 1, 2])
    real_open = lmdb.open

    def no_lock_file(path, **kwargs):
        if kwargs.get("lock", True):
            raise lmdb.ReadonlyError(f"{path}/lock.mdb: Permission denied")
        return real_open(path, **kwargs)

    monkeypatch.setattr(lmdb, "open", no_lock_file)
    with dbmod.open_db(tmp_path / "db", dbmod.READ) as db:
        assert [k for k, _ in db.new_cursor()] == [dbmod.format_key(i, f"img{i}.png")
                                                   for i in range(3)]
    assert "MDB_NOLOCK" in caplog.text


def test_other_open_errors_are_not_retried_without_the_lock(tmp_path, monkeypatch):
    write_db(tmp_path / "db", random_images(1), [0])
    calls = []

    def broken(path, **kwargs):
        calls.append(kwargs)
        raise lmdb.InvalidError(f"{path}: MDB_INVALID: File is not an LMDB file")

    monkeypatch.setattr(lmdb, "open", broken)
    with pytest.raises(DataError, match="cannot open lmdb database .*MDB_INVALID"):
        dbmod.open_db(tmp_path / "db", dbmod.READ)
    assert len(calls) == 1


# Damaged databases, read in one child: on the old code a short data.mdb died of SIGBUS (-7).
DAMAGED_READER = textwrap.dedent("""
    import sys
    from caffe.data import db as dbmod
    from caffe.errors import DataError
    for path in sys.argv[1:]:
        try:
            with dbmod.open_db(path, dbmod.READ) as db:
                for key, value in db.new_cursor():
                    pass
            print(path, "read everything", flush=True)
        except DataError as exc:
            print(path, "DataError:", exc, flush=True)
""")


def _damaged(tmp_path, name: str, damage) -> str:
    path = tmp_path / name
    write_db(path, random_images(40, shape=(3, 32, 32)), range(40))
    data = path / "data.mdb"
    data.write_bytes(damage(bytearray(data.read_bytes())))
    return str(path)


def _scramble_pages(raw: bytearray) -> bytes:
    # Keep the two meta pages; scramble every branch/leaf page header after them.
    rng = np.random.default_rng(0)
    for page in range(2, len(raw) // 4096):
        raw[page * 4096:page * 4096 + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    return bytes(raw)


def _long_key(tmp_path) -> str:
    """One record on one leaf page (the file's last), whose node claims a 60000-byte key:
    LMDB would copy it from past the end of data.mdb (the fuzz suite's SIGBUS)."""
    path = tmp_path / "long_key"
    with dbmod.open_db(path, dbmod.NEW) as db:
        txn = db.new_transaction()
        txn.put("k", b"v" * 10)
        txn.commit()
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    assert len(raw) == 3 * 4096
    leaf = 2 * 4096
    node = int.from_bytes(raw[leaf + 16:leaf + 18], "little")  # the first node's offset
    raw[leaf + node + 6:leaf + node + 8] = (60000).to_bytes(2, "little")  # mn_ksize
    data.write_bytes(bytes(raw))
    return str(path)


def test_damaged_data_mdb_gives_data_errors_not_signals(tmp_path):
    short = [_damaged(tmp_path, f"short{keep}", lambda raw, k=keep: bytes(
        raw[:int(len(raw) * k) // 4096 * 4096])) for keep in (0.5, 0.9)]
    long_key = _long_key(tmp_path)
    scrambled = _damaged(tmp_path, "scrambled", _scramble_pages)
    run = subprocess.run([sys.executable, "-c", DAMAGED_READER, *short, long_key, scrambled],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr[-2000:])
    lines = run.stdout.splitlines()
    assert len(lines) == 4, run.stdout
    for path, line in zip(short, lines):
        assert line.startswith(f"{path} DataError: lmdb database {path!r} is truncated or "
                               f"corrupt: its meta page says"), line
    assert lines[2] == (f"{long_key} DataError: lmdb database {long_key!r} is corrupt: page 2: "
                        f"a record of 60000 + 10 bytes runs past the page"), lines[2]
    # Scrambled page headers are refused by the same walk of the B-tree.
    assert lines[3].startswith(f"{scrambled} DataError: lmdb database {scrambled!r} is "
                               f"corrupt: page "), lines[3]


class _FullDiskEnv:
    """An environment whose write transactions fail as on a full disk."""

    def begin(self, write=False, **kwargs):
        raise lmdb.DiskError("mdb_txn_commit: No space left on device")


def test_commit_errors_become_data_errors(tmp_path):
    with dbmod.open_db(tmp_path / "db", dbmod.NEW) as db:
        txn = db.new_transaction()
        txn.put("k", b"v")
        txn._env = _FullDiskEnv()
        with pytest.raises(DataError, match=r"lmdb database .*db'.*committing 1 records.*"
                                            r"No space left"):
            txn.commit()


# Rewrites the database in place, one generation per commit, until told to stop.
WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from caffe.data import db as dbmod
    from caffe.data.datum import image_to_datum
    path, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    shape = (4, 16, 16)
    end = time.monotonic() + seconds
    generation = 1
    with dbmod.open_db(path, dbmod.WRITE) as db:
        print("writing", flush=True)
        while time.monotonic() < end:
            txn = db.new_transaction()
            image = np.full(shape, generation % 256, dtype=np.uint8)
            value = image_to_datum(image, generation).SerializeToString()
            for i in range(count):
                txn.put(dbmod.format_key(i, f"img{i}.png"), value)
            txn.commit()
            generation += 1
    print("generations", generation - 1, flush=True)
""")


def test_data_layer_reads_whole_records_while_another_process_rewrites(tmp_path):
    path = tmp_path / "db"
    count = 64
    _uniform_db(path, 0, count)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(count), "2.0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        layer = make_data_layer(f"type: 'Data' data_param {{ source: '{path}' backend: LMDB "
                                f"batch_size: 16 prefetch: 1 }}", phase="TRAIN")
        top = setup_layer(layer)
        deadline = time.monotonic() + 1.5
        batches = 0
        while time.monotonic() < deadline:
            data, labels = run_batches(layer, top, 4)
            rows = data.reshape(len(data), -1)
            # A whole record has every pixel equal to its label's generation (mod 256).
            np.testing.assert_array_equal(rows, np.broadcast_to(
                (labels.astype(np.int64) % 256)[:, None], rows.shape).astype(rows.dtype))
            batches += 4
        del layer, top
    finally:
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    generations = int(out.split()[-1])
    assert generations >= 5 and batches >= 8, (generations, batches)
