"""Key-value databases of serialized Datums: LMDB and LevelDB (Caffe's util/db.hpp).

``open_db(path, mode, backend)`` returns a ``DB``; ``db.new_cursor()`` walks the records in key
order (``seek_to_first``, ``next``, ``key``, ``value``, ``valid``) and ``db.new_transaction()``
buffers ``put``s until ``commit``. Modes are Caffe's: READ (must exist), WRITE (open or create),
NEW (must not exist). Keys follow Caffe's convention ``%08d_<name>`` (``format_key``), so key
order is insertion order.

LMDB uses the ``lmdb`` package; LevelDB needs the optional ``plyvel`` package. A process can
hold one handle per LMDB environment or LevelDB directory, so handles are shared and reference
counted: two Data layers (a TRAIN and a TEST net) may read the same source. A handle opened
outside caffe (``lmdb.open`` in a script) is not shared: close it before building a net on that
path, or read through ``open_db``, or caffe raises a DataError saying so.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterator

from caffe.errors import DataError

READ = "read"
WRITE = "write"
NEW = "new"
_MODES = {"r": READ, "read": READ, "w": WRITE, "write": WRITE, "n": NEW, "new": NEW}

LMDB = "lmdb"
LEVELDB = "leveldb"

# Caffe starts LMDB small and doubles the map when a commit does not fit.
_LMDB_INITIAL_MAP = 1 << 26


def format_key(index: int, name: str = "") -> str:
    """Caffe's record key ``%08d_<name>`` (``format_int(index, 8) + "_" + name``)."""
    return f"{int(index):08d}_{name}"


def backend_name(backend) -> str:
    """Normalize a backend: 'lmdb'/'leveldb' (any case) or DataParameter.DB enum value."""
    if isinstance(backend, int):
        from caffe.proto import caffe_pb2

        names = {caffe_pb2.DataParameter.LMDB: LMDB, caffe_pb2.DataParameter.LEVELDB: LEVELDB}
        if backend not in names:
            raise DataError(f"Unknown database backend {backend}")
        return names[backend]
    name = str(backend).lower()
    if name not in (LMDB, LEVELDB):
        raise DataError(f"Unknown database backend {backend!r} (expected 'lmdb' or 'leveldb')")
    return name


def _mode_name(mode) -> str:
    try:
        return _MODES[str(mode).lower()]
    except KeyError:
        raise DataError(f"Unknown database mode {mode!r} (expected READ, WRITE or NEW)") from None


def open_db(path: str | os.PathLike, mode=READ, backend=LMDB) -> DB:
    """Open the database at ``path``; DataError names the path when it cannot be opened."""
    name = backend_name(backend)
    cls = LMDBDatabase if name == LMDB else LevelDBDatabase
    return cls(os.fspath(path), _mode_name(mode))


class Cursor:
    """Walks records in key order; ``valid()`` is False past the last one."""

    def seek_to_first(self) -> None:
        """Move to the record with the smallest key (Caffe's SeekToFirst)."""
        raise NotImplementedError

    def next(self) -> None:
        """Move to the next record in key order; past the last one ``valid()`` turns False."""
        raise NotImplementedError

    def key(self) -> str:
        """The current record's key as text (undecodable bytes kept by surrogateescape)."""
        return self.key_bytes().decode("utf-8", errors="surrogateescape")

    def key_bytes(self) -> bytes:
        """The current record's key as bytes."""
        raise NotImplementedError

    def value(self) -> bytes:
        """The current record's value (a serialized Datum, for Caffe's data layers)."""
        raise NotImplementedError

    def valid(self) -> bool:
        """Whether the cursor stands on a record."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the cursor's read snapshot."""

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        """(key, value) pairs from the first record to the last."""
        self.seek_to_first()
        while self.valid():
            yield self.key(), self.value()
            self.next()


class Transaction:
    """Buffered writes, applied together by ``commit``."""

    def __init__(self) -> None:
        self._pending: list[tuple[bytes, bytes]] = []

    def put(self, key: str | bytes, value: bytes) -> None:
        """Queue one record; keys given as text are encoded as UTF-8."""
        if isinstance(key, str):
            key = key.encode("utf-8", errors="surrogateescape")
        self._pending.append((key, bytes(value)))

    def commit(self) -> None:
        """Write the queued records to the database in one go and empty the queue."""
        raise NotImplementedError


class DB:
    """An open database. Use as a context manager or call ``close``."""

    backend = ""

    def __init__(self, path: str, mode: str) -> None:
        self.path = path
        self.mode = mode
        self._closed = True  # until a subclass holds its handle

    def new_cursor(self) -> Cursor:
        """A cursor over the records in key order (read mode)."""
        raise NotImplementedError

    def new_transaction(self) -> Transaction:
        """A transaction that buffers writes until ``commit`` (write or new mode)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the database handle; later use is an error."""
        raise NotImplementedError

    def __enter__(self) -> DB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn modules down
            pass

    def _check_new(self) -> None:
        if os.path.exists(self.path):
            raise DataError(f"cannot create {self.backend} database {self.path!r}: the path "
                            f"already exists (mode NEW)")


class _SharedHandles:
    """One open handle per real path, shared by reference count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[str, list] = {}

    def acquire(self, path: str, writable: bool, opener):
        key = os.path.realpath(path)
        with self._lock:
            entry = self._handles.get(key)
            if entry is not None:
                if writable and not entry[2]:
                    raise DataError(f"database {path!r} is already open read-only in this "
                                    f"process; close its readers before writing")
                entry[1] += 1
                return entry[0]
            handle = opener()
            self._handles[key] = [handle, 1, writable]
            return handle

    def release(self, path: str, closer) -> None:
        key = os.path.realpath(path)
        with self._lock:
            entry = self._handles.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del self._handles[key]
                closer(entry[0])


_LMDB_ENVS = _SharedHandles()
_LEVELDBS = _SharedHandles()


# --- LMDB -----------------------------------------------------------------------------------
def _lmdb_error(path: str, action: str, exc: Exception) -> DataError:
    return DataError(f"lmdb database {path!r}: {action} failed: {type(exc).__name__}: {exc}")


class LMDBCursor(Cursor):
    """A read snapshot walked in key order. Keys and values are checked against the size of
    data.mdb before they are copied out of the map, and lmdb errors (a corrupt page) become
    DataErrors naming the database."""

    def __init__(self, env, path: str) -> None:
        import lmdb

        self._lmdb_error = lmdb.Error
        self._path = path
        self._file_size = _data_file_size(path)
        self._txn = None
        try:
            self._txn = env.begin(write=False, buffers=True)
            self._cursor = self._txn.cursor()
            self._valid = self._cursor.first()
        except lmdb.Error as exc:
            self.close()
            raise _lmdb_error(path, "reading the first record", exc) from None

    def _move(self, step, action: str) -> None:
        try:
            self._valid = step()
        except self._lmdb_error as exc:
            raise _lmdb_error(self._path, action, exc) from None

    def seek_to_first(self) -> None:
        self._move(self._cursor.first, "seeking to the first record")

    def next(self) -> None:
        self._move(self._cursor.next, "moving to the next record")

    def _copy(self, view, what: str) -> bytes:
        # A value's size comes from the page; one larger than the file would be read past the
        # end of the map (SIGBUS), so it is refused before the copy.
        if self._file_size is not None and len(view) > self._file_size:
            raise DataError(f"lmdb database {self._path!r}: a record {what} claims "
                            f"{len(view)} bytes, more than data.mdb holds "
                            f"({self._file_size} bytes); the database is corrupt")
        return bytes(view)

    def key_bytes(self) -> bytes:
        return self._copy(self._cursor.key(), "key")

    def value(self) -> bytes:
        return self._copy(self._cursor.value(), "value")

    def valid(self) -> bool:
        return self._valid

    def close(self) -> None:
        if self._txn is not None:
            self._cursor.close()
            self._txn.abort()
            self._txn = None
            self._valid = False


class LMDBTransaction(Transaction):
    def __init__(self, env, path: str = "") -> None:
        super().__init__()
        self._env = env
        self._path = path

    def commit(self) -> None:
        import lmdb

        try:
            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        for key, value in self._pending:
                            txn.put(key, value)
                    break
                except lmdb.MapFullError:
                    # As Caffe: double the map and retry the whole batch.
                    self._env.set_mapsize(self._env.info()["map_size"] * 2)
        except lmdb.Error as exc:  # a full disk, a read-only file system, ...
            raise _lmdb_error(self._path, f"committing {len(self._pending)} records",
                              exc) from None
        self._pending.clear()


def _already_open_message(path: str, exc: Exception) -> str:
    """What to do when py-lmdb refuses a second handle on an environment this process holds
    outside caffepy (its own handles are shared, so the other one is the user's)."""
    return (f"cannot open lmdb database {path!r}: {exc} py-lmdb allows one handle per "
            f"environment in a process, and this one was opened outside caffe (e.g. by "
            f"lmdb.open() in your script). Close that handle first (env.close()) before "
            f"building the net, or read the database through caffe.data.db.open_db(path), "
            f"which shares caffe's handle with its Data layers.")


def _data_file_size(path: str) -> int | None:
    try:
        return os.path.getsize(os.path.join(path, "data.mdb"))
    except OSError:
        return None


def _lock_unwritable(lmdb, exc: Exception) -> bool:
    """Whether opening with the lock failed because lock.mdb cannot be created or written."""
    text = str(exc)
    return isinstance(exc, lmdb.ReadonlyError) or "Permission denied" in text \
        or "Read-only file system" in text


def _open_lmdb_reader(lmdb, path: str):
    """Open for reading as Caffe does: with the lock, so that a writer in another process
    never reuses pages this reader's snapshot still holds; without it (MDB_NOLOCK) only when
    the lock file cannot be written (a read-only folder or file system). The environment is
    then checked against the size of data.mdb before any page is read."""
    try:
        env = lmdb.open(path, readonly=True, lock=True)
    except lmdb.Error as exc:
        if not _lock_unwritable(lmdb, exc):
            raise
        logging.getLogger("caffe").warning(
            "Permission denied writing the lock of lmdb database %s. Trying with MDB_NOLOCK "
            "(a concurrent writer may garble what this reader reads).", path)
        env = lmdb.open(path, readonly=True, lock=False)
    try:
        _check_lmdb_size(env, path)
        _check_lmdb_tree(env, path)
    except BaseException:
        env.close()
        raise
    return env


def _check_lmdb_size(env, path: str) -> None:
    """Refuse a data.mdb shorter than its meta page says: reading the missing pages through
    the map would kill the process with SIGBUS."""
    info, stat = env.info(), env.stat()
    needed = (int(info["last_pgno"]) + 1) * int(stat["psize"])
    size = _data_file_size(path)
    if size is not None and size < needed:
        raise DataError(f"lmdb database {path!r} is truncated or corrupt: its meta page says "
                        f"{int(info['last_pgno']) + 1} pages of {int(stat['psize'])} bytes "
                        f"({needed} bytes) but data.mdb holds {size} bytes")


# LMDB 0.9's on-disk layout, for the structural check below.
_PAGE_HEADER = struct.Struct("<QHHHH")  # mp_pgno, mp_pad, mp_flags, mp_lower, mp_upper
_NODE_HEADER = struct.Struct("<HHHH")  # mn_lo, mn_hi, mn_flags, mn_ksize
_META = struct.Struct("<IIQQ")  # mm_magic, mm_version, mm_address, mm_mapsize
# md_pad, md_flags, md_depth, branch pages, leaf pages, overflow pages, entries, md_root
_DB = struct.Struct("<IHHQQQQQ")
_P_BRANCH, _P_LEAF, _P_OVERFLOW = 0x01, 0x02, 0x04
_F_BIGDATA = 0x01
_LMDB_MAGIC = 0xBEEFC0DE
_NO_ROOT = 2**64 - 1
# Databases whose B-tree has more pages than this are not walked (the walk is ~1 ms a page).
MAX_CHECKED_TREE_PAGES = 20_000


class _CorruptLMDB(Exception):
    pass


def _check_lmdb_tree(env, path: str) -> None:
    """Walk the branch and leaf pages of the snapshot a read transaction pins and check that
    every node, key, value and overflow run lies inside the file. LMDB trusts these offsets and
    sizes, so a damaged page would make it read past the end of data.mdb (SIGBUS) or into
    the map beyond it."""
    import mmap

    data_path = os.path.join(path, "data.mdb")
    txn = env.begin(write=False)
    try:
        with open(data_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return
            with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as view:
                _walk_lmdb_tree(view, size, int(env.stat()["psize"]), txn.id(), path)
    except _CorruptLMDB as exc:
        raise DataError(f"lmdb database {path!r} is corrupt: {exc}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot check lmdb database {path!r}: {exc}") from None
    finally:
        txn.abort()


def _walk_lmdb_tree(view, size: int, psize: int, txnid: int, path: str) -> None:
    meta = None
    for page in (0, 1):
        base = page * psize + _PAGE_HEADER.size
        if base + _META.size + 2 * _DB.size + 16 > size:
            raise _CorruptLMDB(f"meta page {page} is truncated")
        magic = _META.unpack_from(view, base)[0]
        last_pgno, meta_txnid = struct.unpack_from("<QQ", view, base + _META.size + 2 * _DB.size)
        if magic == _LMDB_MAGIC and meta_txnid == txnid:
            meta = (_DB.unpack_from(view, base + _META.size + _DB.size), last_pgno)
    if meta is None:
        return  # a writer committed twice since the read began: that data is a writer's own
    (_, _, depth, branch, leaf, _, _, root), last_pgno = meta
    if root == _NO_ROOT:
        return
    npages = min(last_pgno + 1, size // psize)
    if branch + leaf > MAX_CHECKED_TREE_PAGES:
        logging.getLogger("caffe").debug("lmdb database %s: %d tree pages, not checked", path,
                                         branch + leaf)
        return
    stack, seen = [(root, 1)], set()
    while stack:
        pgno, level = stack.pop()
        if not 2 <= pgno < npages:
            raise _CorruptLMDB(f"page number {pgno} outside pages 2..{npages - 1}")
        if pgno in seen or level > max(depth, 1) or len(seen) > branch + leaf:
            raise _CorruptLMDB(f"page {pgno} is reached twice or too deep (depth {level})")
        seen.add(pgno)
        start = pgno * psize
        _, _, flags, lower, upper = _PAGE_HEADER.unpack_from(view, start)
        is_leaf = bool(flags & _P_LEAF)
        if is_leaf == bool(flags & _P_BRANCH) or not \
                _PAGE_HEADER.size <= lower <= upper <= psize or (lower - _PAGE_HEADER.size) % 2:
            raise _CorruptLMDB(f"page {pgno} has a bad header (flags {flags:#x}, lower "
                               f"{lower}, upper {upper})")
        count = (lower - _PAGE_HEADER.size) // 2
        offsets = struct.unpack_from(f"<{count}H", view, start + _PAGE_HEADER.size)
        for offset in offsets:
            if not upper <= offset <= psize - _NODE_HEADER.size:
                raise _CorruptLMDB(f"page {pgno}: node offset {offset} outside [{upper}, "
                                   f"{psize - _NODE_HEADER.size}]")
            lo, hi, node_flags, ksize = _NODE_HEADER.unpack_from(view, start + offset)
            end = offset + _NODE_HEADER.size + ksize
            if not is_leaf:
                child = lo | hi << 16 | node_flags << 32
                if end > psize:
                    raise _CorruptLMDB(f"page {pgno}: a key runs past the page")
                stack.append((child, level + 1))
                continue
            dsize = lo | hi << 16
            if node_flags & ~_F_BIGDATA:
                raise _CorruptLMDB(f"page {pgno}: node flags {node_flags:#x} (sub-databases "
                                   f"and duplicates are not Caffe's)")
            if not node_flags & _F_BIGDATA:
                if end + dsize > psize:
                    raise _CorruptLMDB(f"page {pgno}: a record of {ksize} + {dsize} bytes runs "
                                       f"past the page")
                continue
            if end + 8 > psize:
                raise _CorruptLMDB(f"page {pgno}: an overflow node runs past the page")
            first = struct.unpack_from("<Q", view, start + end)[0]
            needed = -(-(_PAGE_HEADER.size + dsize) // psize)
            if not 2 <= first or first + needed > npages:
                raise _CorruptLMDB(f"page {pgno}: a {dsize}-byte value on overflow pages "
                                   f"{first}.. runs past page {npages - 1}")
            over_flags = _PAGE_HEADER.unpack_from(view, first * psize)[2]
            if not over_flags & _P_OVERFLOW:
                raise _CorruptLMDB(f"page {pgno}: overflow page {first} is not one")


class LMDBDatabase(DB):
    backend = LMDB

    def __init__(self, path: str, mode: str) -> None:
        super().__init__(path, mode)
        import lmdb

        if mode == READ:
            if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "data.mdb")):
                raise DataError(f"cannot open lmdb database {path!r}: no such database "
                                f"(expected a directory holding data.mdb)")
        elif mode == NEW:
            self._check_new()
            os.makedirs(path)
        else:
            os.makedirs(path, exist_ok=True)
        writable = mode != READ

        def opener():
            try:
                if writable:
                    return lmdb.open(path, map_size=_LMDB_INITIAL_MAP, max_readers=512)
                return _open_lmdb_reader(lmdb, path)
            except lmdb.Error as exc:
                if "already open in this process" in str(exc):
                    raise DataError(_already_open_message(path, exc)) from None
                raise DataError(f"cannot open lmdb database {path!r}: {exc}") from None

        self._env = _LMDB_ENVS.acquire(path, writable, opener)
        self._closed = False

    def new_cursor(self) -> LMDBCursor:
        return LMDBCursor(self._env, self.path)

    def new_transaction(self) -> LMDBTransaction:
        if self.mode == READ:
            raise DataError(f"lmdb database {self.path!r} was opened for READ; cannot write")
        return LMDBTransaction(self._env, self.path)

    def __len__(self) -> int:
        import lmdb

        try:
            return int(self._env.stat()["entries"])
        except lmdb.Error as exc:
            raise _lmdb_error(self.path, "reading the record count", exc) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _LMDB_ENVS.release(self.path, lambda env: env.close())


# --- LevelDB --------------------------------------------------------------------------------
def _plyvel():
    try:
        import plyvel
    except ImportError:
        raise DataError("the LevelDB backend needs the optional 'plyvel' package "
                        "(pip install plyvel)") from None
    return plyvel


class LevelDBCursor(Cursor):
    def __init__(self, db) -> None:
        self._snapshot = db.snapshot()
        self._it = self._snapshot.raw_iterator()
        self._it.seek_to_first()

    def seek_to_first(self) -> None:
        self._it.seek_to_first()

    def next(self) -> None:
        self._it.next()

    def key_bytes(self) -> bytes:
        return self._it.key()

    def value(self) -> bytes:
        return self._it.value()

    def valid(self) -> bool:
        return self._it is not None and self._it.valid()

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._snapshot.close()
            self._it = None


class LevelDBTransaction(Transaction):
    def __init__(self, db) -> None:
        super().__init__()
        self._db = db

    def commit(self) -> None:
        with self._db.write_batch() as batch:
            for key, value in self._pending:
                batch.put(key, value)
        self._pending.clear()


class LevelDBDatabase(DB):
    backend = LEVELDB

    def __init__(self, path: str, mode: str) -> None:
        super().__init__(path, mode)
        plyvel = _plyvel()
        if mode == READ and not os.path.isdir(path):
            raise DataError(f"cannot open leveldb database {path!r}: no such database")
        if mode == NEW:
            self._check_new()
        writable = mode != READ

        def opener():
            try:
                return plyvel.DB(path, create_if_missing=writable, error_if_exists=mode == NEW,
                                 block_size=65536, write_buffer_size=268435456,
                                 max_open_files=100)
            except (plyvel.Error, OSError) as exc:
                raise DataError(f"cannot open leveldb database {path!r}: {exc}") from None

        self._db = _LEVELDBS.acquire(path, writable, opener)
        self._closed = False

    def new_cursor(self) -> LevelDBCursor:
        return LevelDBCursor(self._db)

    def new_transaction(self) -> LevelDBTransaction:
        if self.mode == READ:
            raise DataError(f"leveldb database {self.path!r} was opened for READ; cannot write")
        return LevelDBTransaction(self._db)

    def __len__(self) -> int:
        return sum(1 for _ in self._db.iterator(include_value=False))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _LEVELDBS.release(self.path, lambda db: db.close())


class AtomicNewDB:
    """``with AtomicNewDB(path, backend) as db:`` writes a NEW database in a temporary directory
    beside ``path`` and renames it into place only when the block succeeds, so a failed or
    interrupted run leaves no half-written database at ``path``."""

    def __init__(self, path: str | os.PathLike, backend=LMDB) -> None:
        self.path = os.fspath(path).rstrip("/") or os.fspath(path)
        self.backend = backend_name(backend)
        self.db: DB | None = None
        self._tmp = ""

    def __enter__(self) -> DB:
        import tempfile

        if os.path.exists(self.path):
            raise DataError(f"cannot create {self.backend} database {self.path!r}: the path "
                            f"already exists")
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise DataError(f"cannot create {self.backend} database {self.path!r}: directory "
                            f"{parent!r} does not exist")
        self._tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.tmp-", dir=parent)
        os.rmdir(self._tmp)  # NEW mode creates it
        self.db = open_db(self._tmp, NEW, self.backend)
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil

        self.db.close()
        if exc_type is None:
            try:
                os.rename(self._tmp, self.path)
                return
            except OSError as err:
                shutil.rmtree(self._tmp, ignore_errors=True)
                raise DataError(f"cannot move the new database into {self.path!r}: "
                                f"{err.strerror}") from None
        shutil.rmtree(self._tmp, ignore_errors=True)
