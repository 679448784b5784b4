"""Base classes of the data layers and the background prefetcher (Caffe's base_data_layer).

``BaseDataLayer``: no bottoms, one data top and an optional label top, a ``DataTransformer``
built from ``transform_param``; no backward.

``BasePrefetchingDataLayer``: a daemon thread fills batches ahead of the net, through two queues
as in Caffe: ``free`` batches go to the loader, ``full`` batches come back to ``forward``
(``data_param.prefetch`` of them, default 4, so memory is bounded and buffers are reused). A
subclass builds a *loader* in ``data_layer_setup``: an object with ``load_batch(batch)`` and
``close()`` that must not refer back to the layer, so that deleting the layer stops the thread.
An exception in the thread is handed to the main thread and raised from the next ``forward``
as a ``DataError`` (the loader's messages name the source and the record).

Randomness is drawn from the seeded stream on the main thread at setup: caffepy's process state
is thread-local, and loaders own their generators.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from caffe.blob import Blob
from caffe.data.transformer import DataTransformer, effective_transform_param
from caffe.errors import DataError
from caffe.layer import Layer

logger = logging.getLogger("caffe")


def _threads_from_environment() -> int:
    """CAFFE_DATA_THREADS as a thread count (at least 1); a value that is not an integer falls
    back to 1 with a warning rather than breaking ``import caffe``."""
    value = os.environ.get("CAFFE_DATA_THREADS", "").strip()
    if not value:
        return 1
    try:
        return max(1, int(value))
    except ValueError:
        warnings.warn(f"CAFFE_DATA_THREADS={value!r} is not an integer; using 1 decode thread",
                      RuntimeWarning, stacklevel=2)
        return 1


_decode_threads = _threads_from_environment()


def set_decode_threads(count: int) -> None:
    """Threads each prefetcher uses to decode and transform examples (default 1, or the
    CAFFE_DATA_THREADS environment variable). Applies to layers set up afterwards."""
    global _decode_threads
    if int(count) < 1:
        raise DataError(f"decode thread count must be >= 1, got {count}")
    _decode_threads = int(count)


def decode_threads() -> int:
    """How many threads a data layer's loader decodes images with (``set_decode_threads``)."""
    return _decode_threads


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a batch's host arrays for a net of torch ``dtype`` (float64 or
    float32)."""
    return np.dtype(np.float64 if dtype == torch.float64 else np.float32)


class Batch:
    """One prefetched batch: host arrays reused from batch to batch."""

    __slots__ = ("data", "label")

    def __init__(self) -> None:
        self.data: np.ndarray | None = None
        self.label: np.ndarray | None = None

    def ensure(self, data_shape: Sequence[int], label_shape: Sequence[int] | None,
               dtype) -> None:
        """Reallocate only when a shape changes."""
        if self.data is None or self.data.shape != tuple(data_shape) \
                or self.data.dtype != dtype:
            self.data = np.empty(tuple(data_shape), dtype=dtype)
        if label_shape is None:
            self.label = None
        elif self.label is None or self.label.shape != tuple(label_shape):
            self.label = np.empty(tuple(label_shape), dtype=dtype)


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher:
    """A daemon thread that calls ``load_batch(batch)`` on free batches and queues them full."""

    POLL_S = 0.05

    def __init__(self, load_batch: Callable[[Batch], None], count: int, name: str,
                 on_exit: Callable[[], None] | None = None) -> None:
        self.name = name
        self._load_batch = load_batch
        self._on_exit = on_exit
        self._free: queue.Queue = queue.Queue()
        self._full: queue.Queue = queue.Queue()
        for _ in range(max(1, int(count))):
            self._free.put(Batch())
        self._stop = threading.Event()
        self._error: DataError | None = None
        self._thread = threading.Thread(target=self._run, name=f"prefetch[{name}]", daemon=True)

    def start(self) -> None:
        """Start the prefetch thread; it fills free batches until stopped."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the prefetch thread is still running."""
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    batch = self._free.get(timeout=self.POLL_S)
                except queue.Empty:
                    continue
                try:
                    self._load_batch(batch)
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self._full.put(_Failure(exc))
                    return
                self._full.put(batch)
        finally:
            if self._on_exit is not None:
                try:
                    self._on_exit()
                except Exception:  # noqa: BLE001 - closing must not mask the real error
                    logger.debug("prefetch[%s]: error while closing the loader", self.name,
                                 exc_info=True)

    def pop(self, timeout: float | None = None) -> Batch:
        """The next full batch; raises the loader's error as DataError."""
        if self._error is not None:
            raise self._error
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while True:
            try:
                item = self._full.get(timeout=self.POLL_S)
            except queue.Empty:
                if not waited:
                    waited = True
                    logger.debug("%s: prefetch queue empty, waiting for data", self.name)
                if not self._thread.is_alive() and self._full.empty():
                    self._error = DataError(f"{self.name}: the prefetch thread has stopped")
                    raise self._error from None
                if deadline is not None and time.monotonic() > deadline:
                    raise DataError(f"{self.name}: no batch arrived within {timeout} s") from None
                continue
            if isinstance(item, _Failure):
                exc = item.exc
                if isinstance(exc, DataError):
                    self._error = exc
                else:
                    self._error = DataError(f"{self.name}: the prefetch thread failed: "
                                            f"{type(exc).__name__}: {exc}")
                    self._error.__cause__ = exc
                raise self._error
            return item

    def push_free(self, batch: Batch) -> None:
        """Hand a consumed batch back to the thread for refilling."""
        self._free.put(batch)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to finish and wait for it (briefly: it only waits on queues)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class BaseDataLayer(Layer):
    """No bottoms; top[0] data, optional top[1] label; transform_param drives a DataTransformer.

    Subclasses implement ``data_layer_setup(bottom, top)``. ``legacy_param_name`` names the
    parameter message whose legacy transform fields (scale, mean_file, crop_size, mirror) are
    honoured when the net was not upgraded.
    """

    exact_num_bottom = 0
    min_top = 1
    max_top = 2
    legacy_param_name: str | None = None

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        self.output_labels = len(top) > 1
        self.np_dtype = numpy_dtype(self.dtype)
        legacy = (getattr(self.layer_param, self.legacy_param_name)
                  if self.legacy_param_name else None)
        self.transform_param = effective_transform_param(self.layer_param, legacy)
        try:
            self.transformer = DataTransformer(self.transform_param, self.phase, self.np_dtype)
        except DataError as exc:
            raise DataError(f"{self.type_name} layer {self.name!r}: {exc}") from None
        self.transformer.init_rand()
        self.data_layer_setup(bottom, top)

    def data_layer_setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """The data layer's own setup: read its parameters, open its source and shape the tops."""
        raise NotImplementedError

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Tops are shaped at setup and by each forward, from the batch read."""

    def backward(self, top, propagate_down, bottom) -> None:
        """Data layers have no backward."""

    def data_error(self, message: str) -> DataError:
        """A DataError naming the layer's type and name."""
        return DataError(f"{self.type_name} layer {self.name!r}: {message}")


class BatchLoader:
    """What a prefetching layer's thread runs. Must hold no reference to the layer.

    Loaders that call ``transform_images`` keep their DataTransformer in ``transformer``.
    """

    def load_batch(self, batch: Batch) -> None:
        """Fill ``batch`` with the next batch of examples (runs on the prefetch thread)."""
        raise NotImplementedError

    def close(self) -> None:
        """Shut down the decode pool, if any, without waiting for queued work."""
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def map(self, fn, items) -> list:
        """``[fn(x) for x in items]``, on the loader's decode threads when there are several."""
        threads = getattr(self, "threads", 1)
        if threads <= 1 or len(items) < 2:
            return [fn(x) for x in items]
        if getattr(self, "_pool", None) is None:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="caffe-decode")
        return list(self._pool.map(fn, items))

    def transform_images(self, images: Sequence[np.ndarray], data: np.ndarray,
                         error: Callable[[int, DataError], Exception]) -> None:
        """Transform ``images[i]`` (C x H x W) into ``data[i]`` with the loader's
        ``transformer``; ``error(i, exc)`` is what to raise when image i fails."""
        transformer = self.transformer
        # Random draws stay sequential (and so repeatable); the pixel work may run in parallel.
        draws = [transformer.draw(img.shape[1], img.shape[2]) for img in images]

        def transform(i: int) -> None:
            try:
                transformer.transform(images[i], data[i], draws[i])
            except DataError as exc:
                raise error(i, exc) from None

        self.map(transform, list(range(len(images))))


class BasePrefetchingDataLayer(BaseDataLayer):
    """A BaseDataLayer whose batches are loaded ahead by a background thread.

    ``data_layer_setup`` must set ``self.loader`` (a BatchLoader) and shape the tops.
    """

    loader: BatchLoader

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        self.stop_prefetch()
        super().setup(bottom, top)
        count = self.layer_param.data_param.prefetch or 1
        self.prefetcher = Prefetcher(self.loader.load_batch, count,
                                     f"{self.type_name} layer {self.name!r}",
                                     on_exit=self.loader.close)
        self._finalizer = weakref.finalize(self, self.prefetcher.stop)
        self.prefetcher.start()

    def stop_prefetch(self) -> None:
        """Stop the prefetch thread (also done when the layer is garbage collected)."""
        prefetcher = getattr(self, "prefetcher", None)
        if prefetcher is not None:
            self._finalizer.detach()
            prefetcher.stop()
            self.prefetcher = None

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        if getattr(self, "prefetcher", None) is None:
            raise self.data_error("the prefetch thread was stopped; call SetUp again")
        batch = self.prefetcher.pop()
        try:
            top[0].reshape(batch.data.shape)
            top[0].mutable_device_data().copy_(torch.from_numpy(batch.data))
            if self.output_labels and batch.label is not None:
                top[1].reshape(batch.label.shape)
                top[1].mutable_device_data().copy_(torch.from_numpy(batch.label))
        finally:
            self.prefetcher.push_free(batch)
