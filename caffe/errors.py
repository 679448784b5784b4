"""Exceptions raised by caffepy. Every user-facing failure is a ``CaffeError``.

``CaffeError`` is a ``RuntimeError``, as the ``std::runtime_error``s pycaffe surfaced were, so
scripts written against pycaffe that catch ``RuntimeError`` keep working.
"""

from __future__ import annotations

# PEP 678 notes: ``BaseException.add_note`` exists from Python 3.11; on 3.9/3.10 the same
# ``__notes__`` list is filled by hand (pytest and later tracebacks read it).
_HAS_ADD_NOTE = hasattr(BaseException, "add_note")


class CaffeError(RuntimeError):
    """Base class: a Caffe CHECK that failed, with a message a user can act on."""


class ProtoError(CaffeError):
    """A prototxt or binary proto file that cannot be read (names file, line, column)."""


class LayerError(CaffeError):
    """A layer rejected its parameters or its bottom/top shapes."""


class NetError(CaffeError):
    """A net definition that cannot be built (unknown blob, duplicate top, ...)."""


class SolverError(CaffeError):
    """A solver definition or snapshot that cannot be used."""


class DataError(CaffeError):
    """A database, image list or HDF5 source that cannot be read."""


def add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` without changing its type (PEP 678's ``add_note``).

    Used for exceptions raised by user code (Python layers): their callers' ``except`` clauses
    see the original exception object, and the traceback shows caffepy's context under it.
    """
    if _HAS_ADD_NOTE:
        exc.add_note(note)
        return
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        exc.__notes__ = notes
    notes.append(note)
