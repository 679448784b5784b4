"""Phase: TRAIN (0) or TEST (1), an int that prints as its name.

BVLC pycaffe hands Python layers ``self.phase`` as a plain int and exports ``caffe.TRAIN`` /
``caffe.TEST`` as 0 / 1; the Faster R-CNN fork (caffe-fast-rcnn) exports a ``Phase`` enum whose
``str()`` is ``'TRAIN'`` / ``'TEST'``, and its Python layers index their config with
``cfg[str(self.phase)]``. One value serves both: it is the int (equal, hashable and usable as
the int, assignable to a protobuf ``phase`` field) and prints as the fork's name.
"""

from __future__ import annotations

import enum


class Phase(enum.IntEnum):
    """Caffe's ``Phase`` enum (caffe.proto: TRAIN = 0, TEST = 1)."""

    TRAIN = 0
    TEST = 1

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        # f"{phase}" reads as str() ('TRAIN'), as the fork's enum does; a spec such as
        # f"{phase:d}" formats the int.
        return self.name if not spec else format(int(self), spec)


TRAIN = Phase.TRAIN
TEST = Phase.TEST
