"""Convert a set of images to an LMDB/LevelDB of Datums (Caffe's convert_imageset).

Usage: caffe convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE has one ``path label`` per line (label after the last space); images are read from
ROOTFOLDER + path. Record keys are ``%08d_<path>`` with the line number, so the database keeps the
list's order. Flags: -backend lmdb|leveldb, -shuffle, -gray, -resize_height/-resize_width (both
needed to resize), -check_size (all raw datums the same size), -encoded (store the image file, or
its re-encoding), -encode_type png|jpg|... (implies -encoded). Unreadable images are logged and
skipped, as Caffe does. The database is written in a temporary directory and renamed into place.
"""

from __future__ import annotations

import logging

from caffe import common
from caffe.data.datum import read_image_to_datum
from caffe.data.db import AtomicNewDB, backend_name
from caffe.errors import CaffeError, DataError
from caffe.layers.image_data import read_image_list
from caffe.tools.flags import FlagSet

COMMAND = "convert_imageset"
logger = logging.getLogger("caffe")


def flag_set() -> FlagSet:
    """The flags of ``caffe convert_imageset``, as ``-help`` lists them."""
    flags = FlagSet(COMMAND, "[FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\nConvert a set of images "
                    "to the leveldb/lmdb format used as input for Caffe.")
    return define_image_flags(flags)


def define_image_flags(flags: FlagSet) -> FlagSet:
    """The flags convert_imageset shares with convert_annoset (Caffe's and SSD's tools)."""
    flags.define("gray", False, "When this option is on, treat images as grayscale ones")
    flags.define("shuffle", False, "Randomly shuffle the order of images and their labels")
    flags.define("backend", "lmdb", "The backend {lmdb, leveldb} for storing the result")
    flags.define("resize_width", 0, "Width images are resized to")
    flags.define("resize_height", 0, "Height images are resized to")
    flags.define("check_size", False,
                 "When this option is on, check that all the datum have the same size")
    flags.define("encoded", False,
                 "When this option is on, the encoded image will be save in datum")
    flags.define("encode_type", "",
                 "Optional: What type should we encode the image as ('png','jpg',...).")
    return flags


def main(argv: list[str]) -> int:
    """Run ``caffe convert_imageset`` on ``argv`` (its flags and positional arguments); returns the
    exit status."""
    parsed = flag_set().parse_with_args(argv, (3,))
    if parsed is None:
        return 1
    values, args = parsed
    root_folder, list_file, db_name = args
    is_color = not values["gray"]
    encode_type = str(values["encode_type"])
    encoded = bool(values["encoded"]) or bool(encode_type)
    if encode_type and not values["encoded"]:
        logger.info("encode_type specified, assuming encoded=true.")
    resize_height = max(0, int(values["resize_height"]))
    resize_width = max(0, int(values["resize_width"]))
    backend = backend_name(values["backend"])

    lines = read_image_list(list_file)
    indices = list(range(len(lines)))
    if values["shuffle"]:
        logger.info("Shuffling data")
        indices = [int(i) for i in common.numpy_rng().permutation(len(lines))]
    logger.info("A total of %d images.", len(lines))

    def records():
        for line_id, index in enumerate(indices):
            name, label = lines[index]
            enc = encode_type
            if encoded and not enc:
                # Guess the encoding from the file name.
                dot = name.rfind(".")
                if dot < 0:
                    logger.warning("Failed to guess the encoding of '%s'", name)
                enc = name[dot + 1:].lower()
            try:
                datum = read_image_to_datum(root_folder + name, label, resize_height,
                                            resize_width, is_color, enc)
            except (ValueError, OSError) as exc:
                logger.error("Could not open or find file %s (%s)", root_folder + name, exc)
                continue
            yield f"{line_id:08d}_{name}", name, datum, datum.SerializeToString()

    count = write_records(db_name, backend, records(), bool(values["check_size"]))
    if count == 0 and lines:
        raise CaffeError(f"none of the {len(lines)} images in {list_file!r} could be read")
    return 0


def write_records(db_name: str, backend: str, records, check_size: bool = False) -> int:
    """Write ``(key, name, datum, value)`` records into a new database (atomically, committing
    every 1000 as Caffe's converters do); return how many were written. ``check_size``: every
    ``datum`` must hold as many bytes as the first one's channels * height * width."""
    count = 0
    data_size = None
    with AtomicNewDB(db_name, backend) as db:
        txn = db.new_transaction()
        for key, name, datum, value in records:
            if check_size:
                if data_size is None:
                    data_size = datum.channels * datum.height * datum.width
                elif len(datum.data) != data_size:
                    raise DataError(f"Incorrect data field size {len(datum.data)} for "
                                    f"{name!r} (the first image has {data_size})")
            txn.put(key, value)
            count += 1
            if count % 1000 == 0:
                txn.commit()
                txn = db.new_transaction()
                logger.info("Processed %d files.", count)
        if count % 1000 != 0:
            txn.commit()
            logger.info("Processed %d files.", count)
    return count
