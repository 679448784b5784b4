"""MemoryData layer: batches taken from arrays held in memory.

Caffe type ``MemoryData``; reads ``memory_data_param`` (batch_size, channels, height, width).
No bottoms.

    top[0]  data   batch_size x channels x height x width
    top[1]  label  batch_size (at setup; batch_size x 1 x 1 x 1 after a forward, as Caffe)

``reset(data, labels)`` (what ``net.set_input_arrays`` calls) installs float32 C-contiguous
arrays of shape N x channels x height x width and N (or N x 1 x 1 x 1), N a multiple of
batch_size; no transformation is applied. Each forward copies the next batch and wraps around
after the last. ``add_datum_vector`` and ``add_mat_vector`` transform Datums or HxWxC images with
transform_param first, as Caffe's AddDatumVector/AddMatVector. In TRAIN with several solvers
(caffepy), every solver is given the same arrays and solver r reads batches r, r + solver_count,
... of them (wrapping around), so at every step the solvers read different batches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from caffe import common
from caffe.blob import Blob
from caffe.data.datum import datum_to_image
from caffe.data.image import to_chw
from caffe.data.prefetch import BaseDataLayer
from caffe.errors import LayerError
from caffe.layer import register

logger = logging.getLogger("caffe")


class InputArrayError(LayerError, RuntimeError):
    """An array given to set_input_arrays that the MemoryData layer cannot take (pycaffe raises
    RuntimeError with these messages)."""


def _check_contiguous_array(arr, name: str, channels: int, height: int, width: int) -> None:
    if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
        raise InputArrayError(f"{name} must be C contiguous")
    if arr.ndim != 4:
        raise InputArrayError(f"{name} must be 4-d")
    if arr.dtype != np.float32:
        raise InputArrayError(f"{name} must be float32")
    if arr.shape[1] != channels:
        raise InputArrayError(f"{name} has wrong number of channels")
    if arr.shape[2] != height:
        raise InputArrayError(f"{name} has wrong height")
    if arr.shape[3] != width:
        raise InputArrayError(f"{name} has wrong width")


@register("MemoryData")
class MemoryDataLayer(BaseDataLayer):
    """Caffe's MemoryData layer; see the module docstring."""

    exact_num_top = 2
    min_top = -1
    max_top = -1

    def data_layer_setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.layer_param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.channels = int(p.channels)
        self.height = int(p.height)
        self.width = int(p.width)
        self.check(self.batch_size * self.channels * self.height * self.width > 0,
                   f"batch_size, channels, height, and width must be specified and positive in "
                   f"memory_data_param (got {self.batch_size}, {self.channels}, {self.height}, "
                   f"{self.width})")
        top[0].reshape([self.batch_size, self.channels, self.height, self.width])
        top[1].reshape([self.batch_size])
        self._data: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._n = 0
        self._pos = 0
        self.has_new_data = False

    def reset(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Use ``data`` (N x C x H x W float32) and ``labels`` (N or N x 1 x 1 x 1 float32),
        with pycaffe's checks and messages. The arrays are referenced, not copied."""
        if isinstance(labels, np.ndarray) and labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, None, None, None])
        _check_contiguous_array(data, "data array", self.channels, self.height, self.width)
        _check_contiguous_array(labels, "labels array", 1, 1, 1)
        if data.shape[0] != labels.shape[0]:
            raise InputArrayError("data and labels must have the same first dimension")
        if data.shape[0] % self.batch_size != 0:
            raise InputArrayError("first dimensions of input arrays must be a multiple of "
                                  "batch size")
        self._reset(data, labels.reshape(-1))

    # Caffe's name for it.
    Reset = reset

    def _reset(self, data: np.ndarray, labels: np.ndarray) -> None:
        n = data.shape[0]
        self.check(n > 0 and n % self.batch_size == 0,
                   f"n must be a multiple of batch size (n {n}, batch_size {self.batch_size})")
        if self.layer_param.HasField("transform_param"):
            logger.warning("%s does not transform array data on Reset()", self.type_name)
        self._data = data
        self._labels = labels
        self._n = n
        count, rank = common.shard(self.phase)
        # Sharding needs a batch for every solver; else every solver reads them all.
        self._stride = count if n // self.batch_size >= count else 1
        self._pos = rank * self.batch_size if self._stride > 1 else 0

    def add_datum_vector(self, datums) -> None:
        """Transform Datums with transform_param and use them as the data (AddDatumVector)."""
        self.check(not self.has_new_data,
                   "Can't add data until current data has been consumed.")
        self.check(len(datums) > 0, "There is no datum to add.")
        self.check(len(datums) % self.batch_size == 0,
                   "The added data must be a multiple of the batch size.")
        images = [datum_to_image(d) for d in datums]
        self._add(images, [d.label for d in datums])

    def add_mat_vector(self, mats, labels) -> None:
        """Transform HxWxC (BGR, uint8) images and use them as the data (AddMatVector)."""
        self.check(not self.has_new_data,
                   "Can't add mat until current data has been consumed.")
        self.check(len(mats) > 0, "There is no mat to add")
        self.check(len(mats) % self.batch_size == 0,
                   "The added data must be a multiple of the batch size.")
        self.check(len(labels) == len(mats),
                   f"{len(labels)} labels for {len(mats)} images")
        self._add([to_chw(np.asarray(m)) for m in mats], labels)

    def _add(self, images, labels) -> None:
        n = len(images)
        data = np.empty((n, self.channels, self.height, self.width), dtype=self.np_dtype)
        self.transformer.transform_batch(images, data)
        self._reset(data, np.asarray(labels, dtype=self.np_dtype))
        self.has_new_data = True

    def set_batch_size(self, new_size: int) -> None:
        """Change the batch size (pycaffe's MemoryData set_batch_size); not while data is
        pending."""
        self.check(not self.has_new_data,
                   "Can't change batch_size until current data has been consumed.")
        self.batch_size = int(new_size)

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        self.check(self._data is not None,
                   "MemoryDataLayer needs to be initialized by calling Reset")
        top[0].reshape([self.batch_size, self.channels, self.height, self.width])
        top[1].reshape([self.batch_size, 1, 1, 1])
        end = self._pos + self.batch_size
        top[0].mutable_device_data().copy_(torch.from_numpy(self._data[self._pos:end]))
        top[1].mutable_device_data().view(-1).copy_(
            torch.from_numpy(self._labels[self._pos:end]))
        step = self._stride * self.batch_size
        if self._pos + step >= self._n:
            self.has_new_data = False
        self._pos = (self._pos + step) % self._n
