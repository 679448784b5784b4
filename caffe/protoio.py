"""Reading and writing proto files (Caffe's util/io and upgrade entry points), atomically."""

from __future__ import annotations

import contextlib
import os
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


def parse_text(text: str, message: Message, source: str = "<string>") -> Message:
    """Parse prototxt ``text`` into ``message``; syntax errors name source, line and column."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        where = f"{source}:{line}:{column}" if line else source
        detail = str(exc)
        if line and detail.startswith(f"{line}:{column} : "):
            detail = detail[len(f"{line}:{column} : "):]
        context = ""
        if line:
            lines = text.splitlines()
            if 0 < line <= len(lines):
                context = f"\n    {lines[line - 1].rstrip()}\n    {' ' * max(column - 1, 0)}^"
        raise ProtoError(f"{where}: cannot parse {message.DESCRIPTOR.name}: {detail}{context}") \
            from None
    return message


def read_text_proto(path: str | os.PathLike, message: Message, what: str = "prototxt") -> Message:
    data = _read_bytes(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtoError(f"{os.fspath(path)}: not a text prototxt (is it a binary file?)") from None
    return parse_text(text, message, os.fspath(path))


def read_binary_proto(path: str | os.PathLike, message: Message, what: str = "binary proto") \
        -> Message:
    data = _read_bytes(path, what)
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
    atomic_write(path, message.SerializeToString())


def write_text_proto(path: str | os.PathLike, message: Message) -> None:
    atomic_write(path, text_format.MessageToString(message).encode("utf-8"))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    For writers that need a file name (h5py): the final name only ever holds a complete file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
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
