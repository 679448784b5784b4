"""HDF5Data layer: rows of HDF5 datasets, one top per dataset named like the top.

Caffe type ``HDF5Data``; reads ``hdf5_data_param`` (source: a text file listing .h5 files,
whitespace separated; batch_size; shuffle). No bottoms, no transform_param (refused).

    top[i]  batch_size x d1 x ... x dk   for the dataset named ``top[i]`` of shape N x d1 x ...

Rows are read in order, continuing into the next file and wrapping around after the last. With
``shuffle``, the file order is permuted at setup and at each wrap, and the rows of each file are
permuted when it is loaded and each time its end is reached (as Caffe). Relative .h5 paths are
taken from the working directory, or else from the list file's directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from caffe import common
from caffe.blob import Blob
from caffe.data.prefetch import numpy_dtype
from caffe.errors import DataError
from caffe.layer import Layer, register

logger = logging.getLogger("caffe")


def read_hdf5_file_list(source: str) -> list[str]:
    """The .h5 names listed in ``source``, whitespace separated.

    Names are bytes to Caffe: they are decoded as the file system does (``os.fsdecode``), so a
    list naming non-UTF-8 files works and a binary list fails on its first unopenable name.
    """
    try:
        with open(source, "rb") as f:
            names = [os.fsdecode(token) for token in f.read().split()]
    except OSError as exc:
        raise DataError(f"Failed to open source file {source!r}: {exc.strerror}") from None
    base = os.path.dirname(os.path.abspath(source))
    resolved = []
    for name in names:
        if not os.path.isabs(name) and not os.path.exists(name) \
                and os.path.exists(os.path.join(base, name)):
            name = os.path.join(base, name)
        resolved.append(name)
    return resolved


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _check_declared_size(filename: str, name: str, dataset) -> None:
    """Refuse a dataset whose declared size the file cannot back, before allocating for it.

    Only a plain contiguous dataset must store all its bytes in the file; chunked (compressed
    or sparse), external and virtual ones are bounded by the machine's memory alone.
    """
    import h5py

    nbytes = dataset.size * dataset.dtype.itemsize
    if nbytes > _physical_memory():
        raise DataError(f"HDF5 dataset {name!r} in {filename!r} declares shape "
                        f"{list(dataset.shape)} ({nbytes} bytes), more than this machine's "
                        f"memory")
    plist = dataset.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.CONTIGUOUS and plist.get_external_count() == 0:
        stored = dataset.id.get_storage_size()
        if stored < nbytes:
            raise DataError(f"HDF5 dataset {name!r} in {filename!r} declares shape "
                            f"{list(dataset.shape)} ({nbytes} bytes) but the file stores "
                            f"{stored} bytes of it")


def load_hdf5_datasets(filename: str, names: Sequence[str], dtype,
                       row_shapes: Sequence[tuple[int, ...]] | None = None) -> list[np.ndarray]:
    """Read the named datasets of one file as arrays of ``dtype`` (float or integer data).

    Shapes (and ``row_shapes``, the first file's, when given) are checked before any data is
    read; h5py failures on a truncated or garbage file become ``DataError``s.
    """
    import h5py

    try:
        f = h5py.File(filename, "r")
    except (OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"Failed opening HDF5 file: {filename!r} ({exc})") from None
    where = ""
    try:
        with f:
            datasets = []
            for name in names:
                dataset = f.get(name)
                if not isinstance(dataset, h5py.Dataset):
                    raise DataError(f"Failed to find HDF5 dataset {name!r} in {filename!r} "
                                    f"(it holds {sorted(f.keys())})")
                if dataset.ndim < 1:
                    raise DataError(f"HDF5 dataset {name!r} in {filename!r} must have at "
                                    f"least 1 axis")
                if dataset.dtype.kind not in "fiub":
                    raise DataError(f"HDF5 dataset {name!r} in {filename!r}: unsupported "
                                    f"datatype {dataset.dtype}")
                datasets.append(dataset)
            num = datasets[0].shape[0]
            for i, (name, dataset) in enumerate(zip(names, datasets)):
                if dataset.shape[0] != num:
                    raise DataError(f"HDF5 datasets in {filename!r} differ in their number of "
                                    f"rows: {names[0]!r} has {num}, {name!r} has "
                                    f"{dataset.shape[0]}")
                if row_shapes is not None and tuple(dataset.shape[1:]) != tuple(row_shapes[i]):
                    raise DataError(f"dataset {name!r} in {filename!r} has rows of shape "
                                    f"{list(dataset.shape[1:])}, the first file's have "
                                    f"{list(row_shapes[i])}")
                _check_declared_size(filename, name, dataset)
            arrays = []
            for name, dataset in zip(names, datasets):
                where = f" (dataset {name!r})"
                arrays.append(np.ascontiguousarray(dataset[()], dtype=dtype))
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, MemoryError) as exc:
        raise DataError(f"Failed reading HDF5 file {filename!r}{where}: "
                        f"{type(exc).__name__}: {exc}") from None
    return arrays


@register("HDF5Data")
class HDF5DataLayer(Layer):
    """Caffe's HDF5Data layer; see the module docstring."""

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        self.check(not self.layer_param.HasField("transform_param"),
                   f"{self.type_name} does not transform data.")
        p = self.layer_param.hdf5_data_param
        self.batch_size = int(p.batch_size)
        self.check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        self.shuffle = bool(p.shuffle)
        self.np_dtype = numpy_dtype(self.dtype)
        self.top_names = list(self.layer_param.top) or [f"top{i}" for i in range(len(top))]
        self.check(len(self.top_names) == len(top),
                   f"{len(top)} top blobs but {len(self.top_names)} top names")
        logger.info("Loading list of HDF5 filenames from: %s", p.source)
        try:
            self.filenames = read_hdf5_file_list(p.source)
        except DataError as exc:
            raise DataError(f"{self.type_name} layer {self.name!r}: {exc}") from None
        logger.info("Number of HDF5 files: %d", len(self.filenames))
        if not self.filenames:
            raise DataError(f"{self.type_name} layer {self.name!r}: Must have at least 1 HDF5 "
                            f"filename listed in {p.source!r}")
        self.rng = common.numpy_rng() if self.shuffle else None
        self.file_permutation = np.arange(len(self.filenames))
        if self.shuffle:
            self.file_permutation = self.rng.permutation(len(self.filenames))
        self.current_file = 0
        self._load_file(self.filenames[self.file_permutation[0]])
        self.current_row = 0
        self.row_shapes = [a.shape[1:] for a in self.hdf_blobs]
        for blob, shape in zip(top, self.row_shapes):
            blob.reshape([self.batch_size, *shape])
        self._staging = [np.empty((self.batch_size, *s), dtype=self.np_dtype)
                         for s in self.row_shapes]

    def _load_file(self, filename: str) -> None:
        logger.debug("Loading HDF5 file: %s", filename)
        try:
            self.hdf_blobs = load_hdf5_datasets(filename, self.top_names, self.np_dtype,
                                                getattr(self, "row_shapes", None))
        except DataError as exc:
            raise DataError(f"{self.type_name} layer {self.name!r}: {exc}") from None
        num = self.hdf_blobs[0].shape[0]
        self.data_permutation = (self.rng.permutation(num) if self.shuffle
                                 else np.arange(num))
        self.check(num > 0, f"HDF5 file {filename!r} has no rows")

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Tops keep the shape set at setup."""

    def _next_file(self) -> None:
        if len(self.filenames) > 1:
            self.current_file += 1
            if self.current_file == len(self.filenames):
                self.current_file = 0
                if self.shuffle:
                    self.file_permutation = self.rng.permutation(len(self.filenames))
                logger.debug("Looping around to first file.")
            self._load_file(self.filenames[self.file_permutation[self.current_file]])
        self.current_row = 0
        if self.shuffle:
            self.data_permutation = self.rng.permutation(self.hdf_blobs[0].shape[0])

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        filled = 0
        while filled < self.batch_size:
            if self.current_row == self.hdf_blobs[0].shape[0]:
                self._next_file()
            take = min(self.batch_size - filled, self.hdf_blobs[0].shape[0] - self.current_row)
            rows = self.data_permutation[self.current_row:self.current_row + take]
            for staging, array in zip(self._staging, self.hdf_blobs):
                np.take(array, rows, axis=0, out=staging[filled:filled + take])
            filled += take
            self.current_row += take
        for blob, staging in zip(top, self._staging):
            blob.mutable_device_data().copy_(torch.from_numpy(staging))

    def backward(self, top, propagate_down, bottom) -> None:
        """Data layers have no backward."""
