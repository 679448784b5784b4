"""Compute the mean image of a set of images given by a leveldb/lmdb (compute_image_mean).

Usage: caffe compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]

Sums every Datum (encoded ones decoded natively) in float32, divides by the count, writes the
1 x C x H x W mean as a binaryproto (legacy num/channels/height/width fields, as Caffe writes
it; atomically) and logs each channel's mean value. Flags: -backend lmdb|leveldb.
"""

from __future__ import annotations

import logging

import numpy as np

from caffe.data.datum import datum_to_image, parse_datum
from caffe.data.db import READ, backend_name, open_db
from caffe.errors import DataError
from caffe.proto import caffe_pb2
from caffe.protoio import write_binary_proto
from caffe.tools.flags import FlagSet

COMMAND = "compute_image_mean"
logger = logging.getLogger("caffe")


def flag_set() -> FlagSet:
    """The flags of ``caffe compute_image_mean``, as ``-help`` lists them."""
    flags = FlagSet(COMMAND, "[FLAGS] INPUT_DB [OUTPUT_FILE]\nCompute the mean_image of a set "
                    "of images given by a leveldb/lmdb")
    flags.define("backend", "lmdb", "The backend {leveldb, lmdb} containing the images")
    return flags


def compute_mean(source: str, backend: str = "lmdb") -> tuple[np.ndarray, int]:
    """The float32 C x H x W mean of every Datum in a database, and the count."""
    total = None
    count = 0
    with open_db(source, READ, backend_name(backend)) as db:
        cursor = db.new_cursor()
        try:
            if not cursor.valid():
                raise DataError(f"database {source!r} is empty")
            while cursor.valid():
                key = cursor.key()
                try:
                    image = datum_to_image(parse_datum(cursor.value()))
                except Exception as exc:  # noqa: BLE001 - DecodeError or ValueError
                    raise DataError(f"database {source!r}, record {key!r}: {exc}") from None
                if total is None:
                    logger.info("Starting iteration")
                    total = np.zeros(image.shape, dtype=np.float32)
                if image.shape != total.shape:
                    raise DataError(f"database {source!r}, record {key!r}: Incorrect data field "
                                    f"size {image.size} (shape {list(image.shape)}; the first "
                                    f"record has {list(total.shape)})")
                # Accumulate in float32, one datum at a time, as Caffe's float BlobProto does.
                total += image
                count += 1
                if count % 10000 == 0:
                    logger.info("Processed %d files.", count)
                cursor.next()
        finally:
            cursor.close()
    if count % 10000 != 0:
        logger.info("Processed %d files.", count)
    return total / np.float32(count), count


def write_binaryproto(proto, path: str) -> None:
    """Serialize ``proto`` to ``path`` atomically (temp file + os.replace)."""
    write_binary_proto(path, proto)


def mean_blobproto(mean: np.ndarray) -> caffe_pb2.BlobProto:
    """The mean image (C, H, W) as the 1 x C x H x W BlobProto Caffe's mean files hold."""
    blob = caffe_pb2.BlobProto()
    blob.num = 1
    blob.channels, blob.height, blob.width = (int(d) for d in mean.shape)
    blob.data.extend(mean.reshape(-1).tolist())
    return blob


def main(argv: list[str]) -> int:
    """Run ``caffe compute_image_mean`` on ``argv`` (its flags and positional arguments); returns
    the exit status."""
    parsed = flag_set().parse_with_args(argv, (1, 2))
    if parsed is None:
        return 1
    values, args = parsed
    mean, _ = compute_mean(args[0], str(values["backend"]))
    if len(args) == 2:
        logger.info("Write to %s", args[1])
        write_binaryproto(mean_blobproto(mean), args[1])
    channels = mean.shape[0]
    logger.info("Number of channels: %d", channels)
    dim = mean.shape[1] * mean.shape[2]
    for c in range(channels):
        # cumsum adds sequentially in float32, as the C++ loop does.
        total = np.cumsum(mean[c].reshape(-1), dtype=np.float32)[-1]
        logger.info("mean_value channel [%d]: %s", c, f"{float(total / np.float32(dim)):.6g}")
    return 0
