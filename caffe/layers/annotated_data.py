"""AnnotatedData (SSD fork): batches of AnnotatedDatum records with their boxes, for detection.

Caffe type ``AnnotatedData`` of weiliu89/caffe (``ssd``). Reads ``data_param`` (source, backend,
batch_size, rand_skip, prefetch), ``annotated_data_param`` (batch_sampler list, label_map_file,
anno_type) and ``transform_param`` with the fork's extensions (resize_param, noise_param,
distort_param, expand_param, emit_constraint, crop_h/crop_w; see
caffe.data.annotated_transformer). No bottoms.

    top[0]  data   N x C x h x w   (shape from the first record of each batch after the resize
                                    policy and crop; FIT_SMALL_SIZE needs batch_size 1)
    top[1]  label  1 x 1 x G x 8   one row per box kept in the batch:
                                   [item_id, group_label, instance_id, xmin, ymin, xmax, ymax,
                                    difficult], boxes normalized to the output image; a batch
                                   without any box gives one row of -1.
                   N x 1 x 1 x 1   instead, when neither the first record nor anno_type
                                   carries an annotation type: each Datum's label

Per example: distort, expand, sample a crop (every ``batch_sampler`` whose draws meet its
constraint contributes windows; one is chosen at random; without any, the whole image), then
resize, noise, crop, mirror, mean and scale. The samplers run in every phase they are given,
as in the fork (model_libs' TEST layers carry one default sampler, whose windows are the whole
image). Records are read in key order, wrapping around; in TRAIN with several solvers each
keeps every ``solver_count``-th record from its rank, as the Data layer does.
``label_map_file`` is read when present (``layer.label_map``, a LabelMap, for names) and only
warned about otherwise, since the fork never opens it. A background thread prefetches batches;
random draws come from a generator taken from the seeded stream at setup (one child stream per
example, so decode threads do not change them). A record that is not an AnnotatedDatum, or
whose pixels cannot be decoded or transformed, raises DataError from forward naming the layer,
the database and the key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from caffe import common
from caffe.blob import Blob
from caffe.data.annotated_transformer import AnnotatedTransformer, Annotations
from caffe.data.annotation import read_label_map
from caffe.data.im_transforms import FIT_SMALL_SIZE
from caffe.data.prefetch import BasePrefetchingDataLayer, BatchLoader, decode_threads
from caffe.data.sampler import check_batch_sampler
from caffe.errors import CaffeError, DataError
from caffe.layer import register
from caffe.layers.data import DatumReader, open_reader
from caffe.proto import caffe_pb2

logger = logging.getLogger("caffe")

BBOX = caffe_pb2.AnnotatedDatum.BBOX
LABEL_WIDTH = 8


def label_rows(annotations: Sequence[Annotations | None], dtype) -> np.ndarray:
    """The (1, 1, G, 8) label blob of a batch's transformed boxes (one row of -1 when empty)."""
    parts = [np.column_stack([np.full(len(a), i), a.group, a.instance, a.boxes, a.difficult])
             for i, a in enumerate(annotations) if a is not None and len(a)]
    if not parts:
        return np.full((1, 1, 1, LABEL_WIDTH), -1, dtype=dtype)
    rows = np.concatenate(parts).astype(dtype)
    return rows.reshape(1, 1, -1, LABEL_WIDTH)


class AnnotatedBatchLoader(BatchLoader):
    """Reads ``batch_size`` AnnotatedDatums per batch and augments and transforms them."""

    def __init__(self, reader: DatumReader, transformer, annotated: AnnotatedTransformer,
                 batch_samplers, batch_size: int, output_labels: bool, anno_type: int | None,
                 anno_type_forced: bool, rng: np.random.Generator, dtype, where: str) -> None:
        self.reader = reader
        self.transformer = transformer
        self.annotated = annotated
        self.batch_samplers = list(batch_samplers)
        self.batch_size = batch_size
        self.output_labels = output_labels
        self.anno_type = anno_type  # None: the records carry no annotation type
        self.anno_type_forced = anno_type_forced
        self.rng = rng
        self.dtype = dtype
        self.where = where  # "AnnotatedData layer 'x' (lmdb database '/path')"
        self.threads = decode_threads()
        self.fit_small = (annotated.resize is not None
                          and annotated.resize.resize_mode == FIT_SMALL_SIZE)

    def error(self, key: str, message: str) -> DataError:
        """A DataError naming the layer and the record key."""
        return DataError(f"{self.where}, record {key!r}: {message}")

    def parse(self, key: str, value: bytes) -> caffe_pb2.AnnotatedDatum:
        """Parse one record as an AnnotatedDatum; a bad record is an error naming its key."""
        record = caffe_pb2.AnnotatedDatum()
        try:
            record.ParseFromString(value)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise self.error(key, f"the value ({len(value)} bytes) is not a serialized "
                                  f"AnnotatedDatum ({exc})") from None
        if not record.HasField("datum"):
            raise self.error(key, f"the value ({len(value)} bytes) is not an AnnotatedDatum "
                                  f"(it holds no datum; a database of plain Datums is read by "
                                  f"the Data layer)")
        return record

    def decode(self, item: tuple[str, caffe_pb2.AnnotatedDatum]) -> np.ndarray:
        """The record's pixels as HxWxC (OpenCV's layout)."""
        key, record = item
        try:
            return self.transformer.decode(record.datum).transpose(1, 2, 0)
        except (ValueError, DataError) as exc:
            raise self.error(key, str(exc)) from None

    def first_shape(self, key: str, img: np.ndarray) -> list[int]:
        """The top shape inferred from the first record's image, as the fork does at setup."""
        try:
            return self.annotated.infer_shape(img.shape[0], img.shape[1], img.shape[2])
        except DataError as exc:
            raise self.error(key, str(exc)) from None

    def check_type(self, key: str, record: caffe_pb2.AnnotatedDatum) -> None:
        """Every record carries the first record's annotation type (unless anno_type forces
        one)."""
        if self.anno_type is None or self.anno_type_forced:
            return
        if not record.HasField("type"):
            raise self.error(key, "Some datum misses AnnotationType.")
        if record.type != self.anno_type:
            raise self.error(key, f"Different AnnotationType: {record.type} (the first "
                                  f"record has {self.anno_type})")

    def load_batch(self, batch) -> None:
        records = [self.reader.take() for _ in range(self.batch_size)]
        items = [(key, self.parse(key, value)) for key, value in records]
        images = self.map(self.decode, items)
        shape = self.first_shape(items[0][0], images[0])
        for key, record in items:
            self.check_type(key, record)
        # The samplers see the boxes even when the label top carries Datum labels, as in the
        # fork.
        annos = [Annotations.from_proto(record) for _, record in items]
        seeds = self.rng.integers(0, 2**63, size=len(items))
        rngs = [np.random.default_rng(int(s)) for s in seeds]
        annotate = self.output_labels and self.anno_type is not None

        def augment(i: int):
            try:
                return self.annotated.augment(images[i], annos[i], self.batch_samplers, rngs[i])
            except DataError as exc:
                raise self.error(items[i][0], str(exc)) from None

        augmented = self.map(augment, list(range(len(items))))
        if self.fit_small:
            shape = self.first_shape(items[0][0], augmented[0][0])
        shape[0] = self.batch_size
        label_shape = ([self.batch_size, 1, 1, 1] if self.output_labels and not annotate
                       else None)
        batch.ensure(shape, label_shape, self.dtype)

        def transform(i: int):
            img, boxes = augmented[i]
            try:
                return self.annotated.transform(img, boxes if annotate else None,
                                                batch.data[i], rngs[i])
            except DataError as exc:
                raise self.error(items[i][0], str(exc)) from None

        transformed = self.map(transform, list(range(len(items))))
        if annotate:
            batch.label = label_rows(transformed, self.dtype)
        elif self.output_labels:
            batch.label.reshape(-1)[...] = [record.datum.label for _, record in items]

    def close(self) -> None:
        super().close()
        self.reader.close()


@register("AnnotatedData")
class AnnotatedDataLayer(BasePrefetchingDataLayer):
    """The SSD fork's AnnotatedData layer; see the module docstring."""

    def data_layer_setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        dp = self.layer_param.data_param
        ap = self.layer_param.annotated_data_param
        batch_size = int(dp.batch_size)
        self.check(batch_size > 0, f"data_param.batch_size must be positive, got {batch_size}")
        self.check(bool(dp.source), "data_param.source is not set")
        try:
            annotated = AnnotatedTransformer(self.transform_param, self.phase, self.transformer)
            for i, bs in enumerate(ap.batch_sampler):
                try:
                    check_batch_sampler(bs)
                except DataError as exc:
                    raise DataError(f"batch_sampler {i}: {exc}") from None
        except DataError as exc:
            raise self.data_error(str(exc)) from None
        if annotated.resize is not None and annotated.resize.resize_mode == FIT_SMALL_SIZE:
            self.check(batch_size == 1, "Only support batch size of 1 for FIT_SMALL_SIZE.")
        # The fork only stores the path; a label map that cannot be read is reported, not fatal.
        self.label_map = None
        if ap.label_map_file:
            try:
                self.label_map = read_label_map(ap.label_map_file)
            except CaffeError as exc:
                logger.warning("%s layer %r: %s (label names unavailable)", self.type_name,
                               self.name, exc)
        reader, where = open_reader(self, dp)
        loader = AnnotatedBatchLoader(reader, self.transformer, annotated, ap.batch_sampler,
                                      batch_size, self.output_labels, None, False,
                                      common.numpy_rng(), self.np_dtype, where)
        try:
            key, value = reader.peek()
            record = loader.parse(key, value)
            shape = loader.first_shape(key, loader.decode((key, record)))
        except BaseException:
            loader.close()
            raise
        shape[0] = batch_size
        top[0].reshape(shape)
        logger.info("output data size: %s", ",".join(str(d) for d in shape))
        if self.output_labels:
            if record.HasField("type") or ap.HasField("anno_type"):
                loader.anno_type = record.type
                if ap.HasField("anno_type"):
                    logger.warning("type stored in AnnotatedDatum is shadowed.")
                    loader.anno_type = ap.anno_type
                    loader.anno_type_forced = True
                if loader.anno_type != BBOX:
                    loader.close()
                    raise self.data_error(f"Unknown annotation type {loader.anno_type}.")
                boxes = sum(len(g.annotation) for g in record.annotation_group)
                top[1].reshape([1, 1, max(boxes, 1), LABEL_WIDTH])
            else:
                top[1].reshape([batch_size, 1, 1, 1])
        self.loader = loader
