"""Reading and writing proto files (Caffe's util/io and upgrade entry points), atomically."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

from caffe.errors import ProtoError
from caffe.proto import caffe_pb2


def _read_bytes(path: str | os.PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ProtoError(f"{what} file not found: {os.fspath(path)!r} "
                         f"(working directory {os.getcwd()!r})") from None
    except IsADirectoryError:
        raise ProtoError(f"{what} path is a directory, not a file: {os.fspath(path)!r}") from None
    except OSError as exc:
        raise ProtoError(f"cannot read {what} file {os.fspath(path)!r}: {exc}") from None


# --- record budget -----------------------------------------------------------------------------
# Each message record costs the parser ~800 bytes however small it is on disk (3 bytes for an
# empty ``layer {}`` record), so 20 MB of empty records would ask for gigabytes. Files are
# pre-scanned and refused when they hold more message records than this floor, or than one
# per RECORD_BYTES of file, whichever is larger: parsing then needs at most ~12x the file size.
MAX_RECORDS_ENV = "CAFFE_PROTO_MAX_RECORDS"
DEFAULT_MAX_RECORDS = 100_000
RECORD_BYTES = 64
_MAX_DEPTH = 100  # protobuf's own recursion limit


def record_budget(size: int) -> int:
    """How many message records a file of ``size`` bytes may hold."""
    floor = DEFAULT_MAX_RECORDS
    value = os.environ.get(MAX_RECORDS_ENV, "").strip()
    if value:
        try:
            floor = int(value)
        except ValueError:
            raise ProtoError(f"{MAX_RECORDS_ENV}={value!r}: expected an integer") from None
    return max(floor, size // RECORD_BYTES)


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise _Malformed


class _Malformed(Exception):
    """The wire format is broken: left to the parser, which says so."""


def _message_fields(descriptor) -> dict:
    """Field number -> message descriptor, for the message-typed fields of ``descriptor``."""
    cache = _FIELDS.get(descriptor.full_name)
    if cache is None:
        cache = {f.number: f.message_type for f in descriptor.fields
                 if f.type == f.TYPE_MESSAGE}
        _FIELDS[descriptor.full_name] = cache
    return cache


_FIELDS: dict = {}


def count_message_records(data: bytes, descriptor, limit: int) -> int:
    """The number of (sub)message records in the wire-format ``data`` of a ``descriptor``
    message, stopping once past ``limit``. Only message fields are entered; packed arrays and
    strings are stepped over by their length, so a weights file costs a few records per blob."""
    count = 0
    stack = [(0, len(data), descriptor, 0)]
    while stack:
        pos, end, desc, depth = stack.pop()
        fields = _message_fields(desc)
        if not fields:
            continue
        while pos < end:
            key, pos = _varint(data, pos, end)
            wire = key & 7
            if wire == 0:
                _, pos = _varint(data, pos, end)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = _varint(data, pos, end)
                sub = fields.get(key >> 3)
                if sub is not None:
                    count += 1
                    if count > limit:
                        return count
                    if depth + 1 < _MAX_DEPTH:
                        stack.append((pos, min(pos + length, end), sub, depth + 1))
                pos += length
            elif wire in (3, 4):  # groups: not in caffe.proto; protobuf skips or refuses them
                continue
            else:
                raise _Malformed
    return count


def check_record_budget(data: bytes, message: Message, path: str) -> None:
    """Refuse a binary proto holding more message records than ``record_budget`` allows,
    before protobuf allocates for them."""
    limit = record_budget(len(data))
    try:
        count = count_message_records(data, message.DESCRIPTOR, limit)
    except _Malformed:
        return  # the parser reports the broken encoding itself
    if count > limit:
        raise ProtoError(f"{path}: refusing to parse {message.DESCRIPTOR.name}: more than "
                         f"{limit} message records in {len(data)} bytes (a file of mostly "
                         f"empty records would exhaust memory in the parser); set "
                         f"{MAX_RECORDS_ENV} to raise the limit for a file you trust")


def _check_text_budget(text: str, message: Message, path: str) -> None:
    """The text-format counterpart: every message opens with a brace (or an angle bracket)."""
    limit = record_budget(len(text))
    if text.count("{") + text.count("<") > limit:
        raise ProtoError(f"{path}: refusing to parse {message.DESCRIPTOR.name}: more than "
                         f"{limit} messages in {len(text)} characters; set {MAX_RECORDS_ENV} "
                         f"to raise the limit for a file you trust")


_CONTEXT_CHARS = 80


def _context_line(line: str, column: int) -> str:
    """The offending line under a caret: at most _CONTEXT_CHARS characters around the column,
    control characters escaped, so that a file that is no prototxt (a key, a password file)
    is not copied into logs beyond that."""
    start = max(0, column - 1 - _CONTEXT_CHARS // 2)
    shown = line[start:start + _CONTEXT_CHARS]
    if not shown.isprintable():
        shown = shown.encode("unicode_escape", "backslashreplace").decode("ascii")
    caret = " " * max(column - 1 - start, 0) + "^"
    more = " ..." if start + _CONTEXT_CHARS < len(line) else ""
    return f"\n    {'...' if start else ''}{shown}{more}\n    {'   ' if start else ''}{caret}"


def parse_text(text: str, message: Message, source: str = "<string>") -> Message:
    """Parse prototxt ``text`` into ``message``; syntax errors name source, line and column."""
    _check_text_budget(text, message, source)
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        where = f"{source}:{line}:{column}" if line else source
        detail = str(exc)
        if line and detail.startswith(f"{line}:{column} : "):
            detail = detail[len(f"{line}:{column} : "):]
        # protobuf quotes the offending token: keep only a short prefix of a long one.
        detail = re.sub(r"(\S{40})\S+", r"\1...", detail)[:240]
        context = ""
        if line:
            lines = text.splitlines()
            if 0 < line <= len(lines):
                context = _context_line(lines[line - 1].rstrip(), column)
        raise ProtoError(f"{where}: cannot parse {message.DESCRIPTOR.name}: {detail}{context}") \
            from None
    return message


def read_text_proto(path: str | os.PathLike, message: Message, what: str = "prototxt") -> Message:
    """Parse a text prototxt into ``message``; errors name the file and line."""
    data = _read_bytes(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtoError(f"{os.fspath(path)}: not a text prototxt (is it a binary file?)") from None
    return parse_text(text, message, os.fspath(path))


def read_binary_proto(path: str | os.PathLike, message: Message, what: str = "binary proto") \
        -> Message:
    """Parse a binary proto file into ``message``, refusing files larger than the record budget."""
    data = _read_bytes(path, what)
    check_record_budget(data, message, os.fspath(path))
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise ProtoError(f"{os.fspath(path)}: cannot parse {message.DESCRIPTOR.name} from "
                         f"binary file ({exc}); is it a {what}?") from None
    except UnicodeDecodeError as exc:
        # protobuf's pure-Python backend checks string fields while parsing (upb does not)
        raise ProtoError(f"{os.fspath(path)}: cannot parse {message.DESCRIPTOR.name}: a string "
                         f"field is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return message


def read_proto(path: str | os.PathLike, message: Message, what: str = "proto") -> Message:
    """Binary or text, whichever the file is (as Caffe's ReadProtoFromBinaryFile fallback)."""
    data = _read_bytes(path, what)
    check_record_budget(data, message, os.fspath(path))
    try:
        message.ParseFromString(data)
        return message
    except (DecodeError, UnicodeDecodeError):  # the pure-Python backend checks strings
        message.Clear()
    return read_text_proto(path, message, what)


def read_net_param(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """A net prototxt, upgraded from V0/V1 formats as needed."""
    from caffe.upgrade import upgrade_net_as_needed

    param = read_text_proto(path, caffe_pb2.NetParameter(), "net prototxt")
    return upgrade_net_as_needed(param, os.fspath(path))


def read_net_weights(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """A binary .caffemodel, upgraded from V0/V1 formats as needed."""
    from caffe.upgrade import upgrade_net_as_needed

    param = read_binary_proto(path, caffe_pb2.NetParameter(), "caffemodel")
    return upgrade_net_as_needed(param, os.fspath(path))


def read_solver_param(path: str | os.PathLike) -> caffe_pb2.SolverParameter:
    """A solver prototxt, with the legacy solver_type enum upgraded."""
    from caffe.upgrade import upgrade_solver_as_needed

    param = read_text_proto(path, caffe_pb2.SolverParameter(), "solver prototxt")
    return upgrade_solver_as_needed(param)


def _default_mode() -> int:
    """0666 less the process umask: what a plain open() would create (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename, so a
    crash never leaves a truncated file under the final name."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_binary_proto(path: str | os.PathLike, message: Message) -> None:
    """Write ``message`` in binary form, atomically (a temporary file renamed into place)."""
    atomic_write(path, message.SerializeToString())


def write_text_proto(path: str | os.PathLike, message: Message) -> None:
    """Write ``message`` as a text prototxt, atomically."""
    atomic_write(path, text_format.MessageToString(message).encode("utf-8"))


# Temporary files are named .tmp-<name>.<host>.<pid>.caffe-<random>, so that one left by a
# process that died mid-write (a killed snapshot) can be told from one still being written.
_TEMP_RE = re.compile(r"^\.tmp-.*\.([A-Za-z0-9_-]+)\.(\d+)\.caffe-[A-Za-z0-9_]+$")
_CLEANED_FOLDERS: set[str] = set()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: alive
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files that atomic writes on this host left in ``folder`` when
    their process died before the rename; returns the names removed."""
    host, removed = _host(), []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMP_RE.match(name)
        if not match or match.group(1) != host:
            continue
        pid = int(match.group(2))
        if pid == os.getpid() or _process_alive(pid):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    For writers that need a file name (h5py): the final name only ever holds a complete file.
    The first write into a folder also removes the temporaries of dead writers there.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in _CLEANED_FOLDERS:
        _CLEANED_FOLDERS.add(folder)
        clean_stale_temps(folder)
    prefix = f".tmp-{os.path.basename(path)}.{_host()}.{os.getpid()}.caffe-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
