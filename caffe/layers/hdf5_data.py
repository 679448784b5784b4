"""HDF5Data layer: rows of HDF5 datasets, one top per dataset named like the top.

Caffe type ``HDF5Data``; reads ``hdf5_data_param`` (source: a text file listing .h5 files,
whitespace separated; batch_size; shuffle). No bottoms, no transform_param (refused).

    top[i]  batch_size x d1 x ... x dk   for the dataset named ``top[i]`` of shape N x d1 x ...

Rows are read in order, continuing into the next file and wrapping around after the last. With
``shuffle``, the file order is permuted at setup and at each wrap, and the rows of each file are
permuted when it is loaded and each time its end is reached (as Caffe). Relative .h5 paths are
taken from the working directory, or else from the list file's directory.

Only the rows of each batch are read from the file (Caffe loads whole files into memory), and
a declared shape is checked before anything is read: more than INT_MAX values (the bound of the
blob C++ Caffe reads a dataset into) or more bytes than a contiguous dataset stores are refused.
A single listed file of at most ``MEMORY_CACHE_BYTES`` keeps the rows its first pass read, and
later passes take their batches from memory (as Caffe's in-memory copy): h5py's per-read cost
(~40 us) would otherwise be most of a small net's iteration. In TRAIN with several solvers,
each keeps the rows whose running offset modulo ``solver_count`` is its rank. An untrusted net
(see caffe.untrusted) refuses listed files outside its file root.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from caffe import common, untrusted
from caffe.blob import INT_MAX, Blob
from caffe.data.prefetch import numpy_dtype
from caffe.errors import DataError
from caffe.layer import Layer, register

logger = logging.getLogger("caffe")

#: a single listed file whose datasets hold at most this many bytes (in the net's dtype) is kept
#: in memory once its first pass has read every row
MEMORY_CACHE_BYTES = 256 * 2**20


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
    """Refuse a dataset whose declared size a blob cannot hold or the file cannot back.

    Only a plain contiguous dataset must store all its bytes in the file; chunked (compressed
    or sparse), external and virtual ones are bounded by INT_MAX and the machine's memory.
    """
    import h5py

    nbytes = dataset.size * dataset.dtype.itemsize
    if dataset.size > INT_MAX:
        # C++ Caffe loads a dataset into one blob, whose count is an int.
        raise DataError(f"HDF5 dataset {name!r} in {filename!r} declares shape "
                        f"{list(dataset.shape)} ({dataset.size} values), more than a blob "
                        f"holds (INT_MAX = {INT_MAX})")
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


def open_hdf5_datasets(filename: str, names: Sequence[str],
                       row_shapes: Sequence[tuple[int, ...]] | None = None):
    """Open one file and its named datasets (float or integer data) without reading them.

    Returns ``(file, datasets)``; the caller closes the file. Shapes (and ``row_shapes``, the
    first file's, when given) and declared sizes are checked here; h5py failures on a
    truncated or garbage file become ``DataError``s.
    """
    import h5py

    try:
        f = h5py.File(filename, "r")
    except (OSError, ValueError, RuntimeError) as exc:
        if os.path.exists(filename):
            raise DataError(f"Failed opening HDF5 file: {filename!r} ({exc})") from None
        # A name read from a list file that names no file may be any text (a secret file given
        # as the list): quote only a short escaped prefix of it.
        raise DataError(f"Failed opening HDF5 file: {untrusted.short_repr(filename)} (no such "
                        f"file)") from None
    try:
        datasets = []
        for name in names:
            dataset = f.get(name)
            if not isinstance(dataset, h5py.Dataset):
                raise DataError(f"Failed to find HDF5 dataset {name!r} in {filename!r} "
                                f"(it holds {sorted(f.keys())[:20]})")
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
    except BaseException as exc:
        f.close()
        if isinstance(exc, DataError):
            raise
        if isinstance(exc, (OSError, KeyError, ValueError, TypeError, RuntimeError)):
            raise DataError(f"Failed reading HDF5 file {filename!r}: "
                            f"{type(exc).__name__}: {exc}") from None
        raise
    return f, datasets


def read_rows(dataset, rows: np.ndarray, out: np.ndarray) -> None:
    """Copy ``dataset[rows]`` into ``out`` (cast to its dtype), reading only those rows.

    A run of consecutive rows is one hyperslab read; any other set is read in increasing
    order (h5py's point selections must be sorted) and put back in the asked order.
    """
    if len(rows) == 0:
        return
    first = int(rows[0])
    if np.array_equal(rows, np.arange(first, first + len(rows))):
        out[...] = dataset[first:first + len(rows)]
        return
    order = np.argsort(rows, kind="stable")
    out[order] = dataset[np.asarray(rows)[order]]


def load_hdf5_datasets(filename: str, names: Sequence[str], dtype,
                       row_shapes: Sequence[tuple[int, ...]] | None = None) -> list[np.ndarray]:
    """Read the named datasets of one file whole, as arrays of ``dtype`` (for tools and tests;
    the layer reads only the rows of each batch). Checks as ``open_hdf5_datasets``."""
    f, datasets = open_hdf5_datasets(filename, names, row_shapes)
    where = ""
    try:
        with f:
            arrays = []
            for name, dataset in zip(names, datasets):
                where = f" (dataset {name!r})"
                if dataset.size * np.dtype(dtype).itemsize > _physical_memory():
                    raise DataError(f"HDF5 dataset {name!r} in {filename!r} declares shape "
                                    f"{list(dataset.shape)}, more than this machine's memory")
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
        # TRAIN shards by rank (and TEST too under caffepy's parallel test), as Data does.
        self.solver_count, self.solver_rank = common.shard(self.phase)
        self.offset = 0
        self._file = None
        logger.info("Loading list of HDF5 filenames from: %s", p.source)
        try:
            self.filenames = read_hdf5_file_list(p.source)
            root = untrusted.current_root()
            for i, name in enumerate(self.filenames):
                untrusted.check_path(name, root, f"HDF5 file {i + 1} listed in {p.source!r}")
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
        self._load_file(self.file_permutation[0])
        self.current_row = 0
        self.row_shapes = [tuple(d.shape[1:]) for d in self.hdf_datasets]
        for blob, shape in zip(top, self.row_shapes):
            blob.reshape([self.batch_size, *shape])
        nbytes = sum(blob.count for blob in top) * np.dtype(self.np_dtype).itemsize
        if nbytes > _physical_memory():
            raise DataError(f"{self.type_name} layer {self.name!r}: a batch of "
                            f"{self.batch_size} rows of shapes {self.row_shapes} needs "
                            f"{nbytes} bytes, more than this machine's memory")
        self._staging = [np.empty((self.batch_size, *s), dtype=self.np_dtype)
                         for s in self.row_shapes]

    def _load_file(self, index: int) -> None:
        """Open the file ``filenames[index]`` (closing the current one) and draw its row order."""
        filename = self.filenames[index]
        logger.debug("Loading HDF5 file: %s", filename)
        self._close_file()
        try:
            self._file, self.hdf_datasets = open_hdf5_datasets(
                filename, self.top_names, getattr(self, "row_shapes", None))
        except DataError as exc:
            raise DataError(f"{self.type_name} layer {self.name!r}: {exc}") from None
        self.current_filename = filename
        self.num_rows = int(self.hdf_datasets[0].shape[0])
        self.check(self.num_rows > 0, f"HDF5 file {filename!r} has no rows")
        self.data_permutation = None  # identity, without an arange of num_rows
        # Rows kept for the next passes over a lone file (filled as the first pass reads them).
        self.row_cache = None
        self.cache_complete = False
        itemsize = np.dtype(self.np_dtype).itemsize
        if len(self.filenames) == 1 and self.solver_count == 1 and \
                sum(d.size for d in self.hdf_datasets) * itemsize <= MEMORY_CACHE_BYTES:
            self.row_cache = [np.empty(d.shape, dtype=self.np_dtype) for d in self.hdf_datasets]
        if self.shuffle:
            if self.num_rows * 8 > _physical_memory():
                raise DataError(f"{self.type_name} layer {self.name!r}: HDF5 file "
                                f"{filename!r} declares {self.num_rows} rows, too many to "
                                f"shuffle in this machine's memory")
            self.data_permutation = self.rng.permutation(self.num_rows)

    def _close_file(self) -> None:
        if getattr(self, "_file", None) is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - closing a broken file must not mask the error
                pass
            self._file = None

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Tops keep the shape set at setup."""

    def _next_file(self) -> None:
        # A lone file is not reloaded: its pass that ends here has put every row in the cache.
        self.cache_complete = self.row_cache is not None
        if len(self.filenames) > 1:
            self.current_file += 1
            if self.current_file == len(self.filenames):
                self.current_file = 0
                if self.shuffle:
                    self.file_permutation = self.rng.permutation(len(self.filenames))
                logger.debug("Looping around to first file.")
            self._load_file(self.file_permutation[self.current_file])
        self.current_row = 0
        if self.shuffle:
            self.data_permutation = self.rng.permutation(self.num_rows)

    def _read(self, rows, targets: Sequence[np.ndarray]) -> None:
        """Rows ``rows`` (a slice or an index array) of the current file into ``targets``."""
        if self.cache_complete:
            for cache, target in zip(self.row_cache, targets):
                if isinstance(rows, slice):
                    target[...] = cache[rows]
                else:
                    np.take(cache, rows, axis=0, out=target)
            return
        indices = rows if not isinstance(rows, slice) else np.arange(rows.start, rows.stop)
        for name, target, dataset in zip(self.top_names, targets, self.hdf_datasets):
            try:
                read_rows(dataset, indices, target)
            except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise DataError(f"{self.type_name} layer {self.name!r}: Failed reading HDF5 "
                                f"file {self.current_filename!r} (dataset {name!r}): "
                                f"{type(exc).__name__}: {exc}") from None
        if self.row_cache is not None:
            for cache, target in zip(self.row_cache, targets):
                cache[rows] = target

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        # Rows are read in order (or in the shuffled order); with several solvers in TRAIN
        # each keeps the rows whose running offset % solver_count == its rank (as BVLC
        # Caffe's later HDF5DataLayer::Skip; 1.0 did not shard), so rows kept within one file
        # are a strided run and are read together. On CPU the rows go straight into the tops.
        host = common.mode() == common.CPU
        batches = [blob.mutable_cpu_data() for blob in top] if host else self._staging
        step, rank = self.solver_count, self.solver_rank
        filled = 0
        while filled < self.batch_size:
            if self.current_row == self.num_rows:
                self._next_file()
            skip = (rank - self.offset) % step
            left = self.num_rows - self.current_row
            if skip >= left:
                self.offset += left
                self.current_row = self.num_rows
                continue
            self.current_row += skip
            self.offset += skip
            take = min(self.batch_size - filled, (left - skip + step - 1) // step)
            span = (take - 1) * step + 1
            if step == 1 and self.data_permutation is None:
                rows = slice(self.current_row, self.current_row + take)
            else:
                positions = np.arange(self.current_row, self.current_row + span, step)
                rows = positions if self.data_permutation is None else \
                    self.data_permutation[positions]
            self._read(rows, [batch[filled:filled + take] for batch in batches])
            filled += take
            self.current_row += span
            self.offset += span
        if not host:
            for blob, staging in zip(top, self._staging):
                blob.mutable_device_data().copy_(torch.from_numpy(staging))

    def backward(self, top, propagate_down, bottom) -> None:
        """Data layers have no backward."""

    def __del__(self) -> None:
        self._close_file()
