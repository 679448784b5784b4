"""Exceptions raised by caffepy. Every user-facing failure is a ``CaffeError``."""

from __future__ import annotations


class CaffeError(Exception):
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
