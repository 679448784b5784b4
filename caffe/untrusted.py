"""Untrusted-model file roots: where a net's layers may read and write, and how errors quote
what they read.

A model from someone else names files in its prototxt: data sources, mean files, label maps,
HDF5Output's ``file_name``, SSD's output directory. In untrusted mode (Python layers refused,
see ``caffe.net.python_layers_allowed``) every such path must resolve, links followed, inside
the file root: the model's folder, or an explicit root (``caffe.Net(..., file_root=...)`` or
the ``CAFFE_FILE_ROOT`` environment variable). Relative paths resolve from the working
directory, as in Caffe. The root is checked before any layer is created, so a refused net
opens and writes nothing; layers that read further names from a list file (HDF5Data) check
those against the root captured here.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

from caffe.errors import DataError

FILE_ROOT_ENV = "CAFFE_FILE_ROOT"

# LayerParameter string fields (in any nested parameter message) that name files.
READ_FIELDS = ("source", "mean_file", "meanfile", "root_folder", "label_map_file",
               "name_size_file", "video_file")
WRITE_FIELDS = ("file_name", "output_directory", "save_file")

_ROOT: contextvars.ContextVar[str | None] = contextvars.ContextVar("caffe_file_root",
                                                                    default=None)


def short_repr(text: str | bytes, limit: int = 32) -> str:
    """A short, escaped quote of file contents for an error message: at most ``limit``
    characters, non-printable ones escaped, so a secret file is not echoed into logs."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="backslashreplace")
    quoted = repr(text[:limit])
    return quoted + ("..." if len(text) > limit else "")


def resolve_root(source: str | None, file_root: str | os.PathLike | None) -> str:
    """The untrusted-mode root: ``file_root``, else ``CAFFE_FILE_ROOT``, else the folder of the
    model file ``source``, else the working directory (a NetParameter built in memory)."""
    if file_root is None:
        file_root = os.environ.get(FILE_ROOT_ENV) or None
    if file_root is None and source and os.path.isfile(source):
        file_root = os.path.dirname(os.path.abspath(source))
    return os.path.realpath(os.fspath(file_root) if file_root is not None else os.getcwd())


def inside(path: str, root: str) -> bool:
    """Whether ``path`` (relative to the working directory) resolves inside ``root``."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def check_path(path: str, root: str | None, what: str) -> None:
    """Refuse ``path`` outside ``root`` (no check when ``root`` is None: trusted mode)."""
    if root is None or not path:
        return
    try:
        allowed = inside(path, root)
    except ValueError:  # an embedded NUL: no file has that name
        raise DataError(f"{what} {short_repr(path, 80)} is not a valid path") from None
    if not allowed:
        # The path may come from a list file: quote a bounded, escaped prefix of it.
        raise DataError(f"{what} {short_repr(path, 80)} is outside the allowed file root "
                        f"{root!r}; untrusted models may only read and write inside it. Pass "
                        f"caffe.Net(..., file_root=...) or set {FILE_ROOT_ENV} to allow another "
                        f"folder")


def _string_fields(message, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(dotted field path, field name, value) of every set string field, recursively."""
    for field, value in message.ListFields():
        name = f"{prefix}{field.name}"
        repeated = field.is_repeated if hasattr(field, "is_repeated") \
            else field.label == field.LABEL_REPEATED  # protobuf < 6 has no is_repeated
        values = value if repeated else [value]
        if field.type == field.TYPE_MESSAGE:
            for sub in values:
                yield from _string_fields(sub, name + ".")
        elif field.type == field.TYPE_STRING:
            for text in values:
                yield name, field.name, text


def check_layer_paths(param, root: str, where) -> None:
    """Refuse a net whose layers name files outside ``root``; ``where(layer_name)`` gives the
    file:line for the message."""
    for lp in param.layer:
        for dotted, name, value in _string_fields(lp):
            if dotted.count(".") == 0:
                continue  # LayerParameter's own strings: name, type, bottom, top
            if name in READ_FIELDS or name in WRITE_FIELDS:
                try:
                    check_path(value, root, dotted)
                except DataError as exc:
                    raise DataError(f"{where(lp.name)}: layer {lp.name!r}: {exc}") from None


@contextlib.contextmanager
def active_root(root: str | None):
    """Make ``root`` the file root layers see (``current_root``) while a net is built."""
    token = _ROOT.set(root)
    try:
        yield
    finally:
        _ROOT.reset(token)


def current_root() -> str | None:
    """The file root of the net being built, or None when it is trusted."""
    return _ROOT.get()
