"""Data layer: batches of Datums read from an LMDB or LevelDB database.

Caffe type ``Data``; reads ``data_param`` (source, backend LMDB/LEVELDB, batch_size, rand_skip,
prefetch) and ``transform_param`` (see caffe.data.transformer). No bottoms.

    top[0]  data   N x C x h x w   (N = batch_size; C, h, w from the first datum of each batch:
                                    its channels and the crop size, or its height and width)
    top[1]  label  N               (optional)

Records are read in key order and the reader wraps around to the first record after the last.
In TRAIN with several solvers, each solver keeps every ``solver_count``-th record starting at
its rank, as Caffe 1.0 shards (in TEST too with caffepy's parallel test). ``rand_skip`` skips
a random number (< rand_skip) of records at setup. A background thread prefetches batches; a
record that is not a Datum, or whose pixels cannot be decoded or transformed, raises DataError
from forward naming the database and key.

Nets in one process share one handle per LMDB, so a TRAIN and a TEST net may read the same
source. py-lmdb refuses a second handle on an environment the process already holds, so a
script that inspects the LMDB with its own ``lmdb.open(source)`` must ``env.close()`` it before
building the net (or read it through ``caffe.data.db.open_db(source)``, which shares caffe's
handle); otherwise setup raises a DataError saying this.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from caffe import common
from caffe.blob import Blob
from caffe.data.datum import parse_datum
from caffe.data.db import READ, backend_name, open_db
from caffe.data.prefetch import BasePrefetchingDataLayer, BatchLoader, decode_threads
from caffe.errors import DataError
from caffe.layer import register
from caffe.proto import caffe_pb2

logger = logging.getLogger("caffe")


class DatumReader:
    """Walks a database's records forever: wraps at the end, keeps this solver's shard."""

    def __init__(self, db, keep_every: int = 1, keep_offset: int = 0) -> None:
        self.db = db
        self.cursor = db.new_cursor()
        self.keep_every = max(1, keep_every)
        self.keep_offset = keep_offset
        self.offset = 0
        if not self.cursor.valid():
            self.cursor.close()
            raise DataError(f"{db.backend} database {db.path!r} is empty")

    def _advance(self) -> None:
        self.cursor.next()
        if not self.cursor.valid():
            logger.debug("Restarting data prefetching from start.")
            self.cursor.seek_to_first()
        self.offset += 1

    def _seek_shard(self) -> None:
        while self.offset % self.keep_every != self.keep_offset:
            self._advance()

    def skip(self, count: int) -> None:
        """Skip ``count`` records (Data's ``rand_skip``)."""
        for _ in range(count):
            self._advance()

    def peek(self) -> tuple[str, bytes]:
        """The current ``(key, value)`` of this rank's shard, without moving on."""
        self._seek_shard()
        return self.cursor.key(), self.cursor.value()

    def take(self) -> tuple[str, bytes]:
        """The current ``(key, value)``, then move to the next record (wrapping at the end)."""
        record = self.peek()
        self._advance()
        return record

    def close(self) -> None:
        """Close the cursor and the database."""
        self.cursor.close()
        self.db.close()


class DatumBatchLoader(BatchLoader):
    """Reads, decodes and transforms ``batch_size`` datums per batch."""

    def __init__(self, reader: DatumReader, transformer, batch_size: int, output_labels: bool,
                 dtype, where: str) -> None:
        self.reader = reader
        self.transformer = transformer
        self.batch_size = batch_size
        self.output_labels = output_labels
        self.dtype = dtype
        self.where = where  # "Data layer 'x' (lmdb database '/path')"
        self.threads = decode_threads()

    def error(self, key: str, message: str) -> DataError:
        """A DataError naming the layer and the record key."""
        return DataError(f"{self.where}, record {key!r}: {message}")

    def parse(self, key: str, value: bytes) -> caffe_pb2.Datum:
        """Parse one record as a Datum; a bad record is an error naming its key."""
        try:
            return parse_datum(value)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise self.error(key, f"the value ({len(value)} bytes) is not a serialized Datum "
                                  f"({exc})") from None

    def decode(self, record: tuple[str, caffe_pb2.Datum]) -> np.ndarray:
        """Decode a Datum's pixels to a C x H x W array; errors name the record key."""
        key, datum = record
        try:
            return self.transformer.decode(datum)
        except (ValueError, DataError) as exc:
            raise self.error(key, str(exc)) from None

    def load_batch(self, batch) -> None:
        records = [self.reader.take() for _ in range(self.batch_size)]
        datums = [(key, self.parse(key, value)) for key, value in records]
        images = self.map(self.decode, datums)
        try:
            shape = self.transformer.infer_blob_shape(images[0])
        except DataError as exc:
            raise self.error(datums[0][0], str(exc)) from None
        shape[0] = self.batch_size
        batch.ensure(shape, [self.batch_size] if self.output_labels else None, self.dtype)
        if not self._transform_as_one(images, batch.data, datums[0][0]):
            self.transform_images(images, batch.data,
                                 lambda i, exc: self.error(datums[i][0], str(exc)))
        if self.output_labels:
            batch.label[...] = [datum.label for _, datum in datums]

    def _transform_as_one(self, images: Sequence[np.ndarray], data: np.ndarray,
                          first_key: str) -> bool:
        """Transform the whole batch with one set of array operations when every example gets
        the same transform: no mirror and no crop (so no random draw is made either way), and
        one shape and dtype for all. The per-example path does the same elementwise math per
        item, so the values are identical; False: use it instead."""
        transformer = self.transformer
        if transformer.mirror or transformer.crop_size:
            return False
        first = images[0]
        if any(img.shape != first.shape or img.dtype != first.dtype for img in images):
            return False
        try:
            transformer.transform_blob(np.stack(images), out=data)
        except DataError as exc:  # the same for every example: the first one is named
            raise self.error(first_key, str(exc)) from None
        return True

    def close(self) -> None:
        super().close()
        self.reader.close()


def open_reader(layer, dp) -> tuple[DatumReader, str]:
    """Open ``data_param``'s database for ``layer`` and a reader of this solver's shard of it
    (TRAIN shards by rank, and TEST too under caffepy's parallel test), past ``rand_skip``'s
    random skip; also the description of the source that batch errors name."""
    backend = backend_name(dp.backend)
    where = f"{layer.type_name} layer {layer.name!r} ({backend} database {dp.source!r})"
    try:
        db = open_db(dp.source, READ, backend)
    except DataError as exc:
        raise layer.data_error(str(exc)) from None
    logger.info("Opened %s %s", backend, dp.source)
    count, rank = common.shard(layer.phase)
    try:
        reader = DatumReader(db, count, rank)
    except DataError as exc:
        db.close()
        raise layer.data_error(str(exc)) from None
    if dp.rand_skip:
        skip = int(common.numpy_rng().integers(0, dp.rand_skip))
        logger.info("Skipping first %d data points.", skip)
        try:
            reader.skip(skip)
        except BaseException:
            reader.close()
            raise
    return reader, where


@register("Data")
class DataLayer(BasePrefetchingDataLayer):
    """Caffe's Data layer (LMDB/LevelDB of Datums); see the module docstring."""

    legacy_param_name = "data_param"

    def data_layer_setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        dp = self.layer_param.data_param
        batch_size = int(dp.batch_size)
        self.check(batch_size > 0, f"data_param.batch_size must be positive, got {batch_size}")
        self.check(bool(dp.source), "data_param.source is not set")
        reader, where = open_reader(self, dp)
        loader = DatumBatchLoader(reader, self.transformer, batch_size, self.output_labels,
                                  self.np_dtype, where)
        try:
            key, value = reader.peek()
            image = loader.decode((key, loader.parse(key, value)))
            try:
                shape = self.transformer.infer_blob_shape(image)
            except DataError as exc:
                raise loader.error(key, str(exc)) from None
        except BaseException:
            loader.close()
            raise
        shape[0] = batch_size
        top[0].reshape(shape)
        logger.info("output data size: %s", ",".join(str(d) for d in shape))
        if self.output_labels:
            top[1].reshape([batch_size])
        self.loader = loader
