"""Convert images and annotations to an LMDB/LevelDB of AnnotatedDatums (SSD's tool).

Usage: caffe convert_annoset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME   (also: convert_annoset ...)

LISTFILE holds whitespace-separated pairs, read from ROOTFOLDER + each path:
``-anno_type detection``: ``img.jpg anno.xml`` (image, annotation file in ``-label_type`` xml,
json or txt; names looked up in ``-label_map_file``, a LabelMap prototxt; ``-check_label``
refuses duplicate names); ``-anno_type classification`` (the default, as in the fork):
``img.jpg 7``. Every record is an AnnotatedDatum keyed ``%08d_<image path>``; boxes are
normalized by the original image size (see caffe.data.annotation).

Image flags as convert_imageset's (-gray, -shuffle, -backend, -resize_height/-resize_width,
-check_size, -encoded, -encode_type), plus the fork's -min_dim/-max_dim (keep the aspect ratio:
scale the short side up to min_dim, the long side down to max_dim). As the fork, -encoded with
no -encode_type re-encodes each image in its file's format rather than copying the file.
Unreadable images are logged and skipped; a bad annotation file or an unknown name is an error
naming the file. The database is written in a temporary directory and renamed into place.
"""

from __future__ import annotations

import logging

from caffe import common
from caffe.data.annotation import name_to_label, read_label_map, read_rich_image_to_annotated_datum
from caffe.data.datum import read_image_to_datum
from caffe.data.db import backend_name
from caffe.data.image_list import read_list_text
from caffe.errors import CaffeError, DataError
from caffe.proto import caffe_pb2
from caffe.tools.convert_imageset import define_image_flags, write_records
from caffe.tools.flags import FlagSet

COMMAND = "convert_annoset"
logger = logging.getLogger("caffe")


def flag_set() -> FlagSet:
    """The flags of ``caffe convert_annoset``, as ``-help`` lists them."""
    flags = FlagSet(COMMAND, "[FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\nConvert a set of images "
                    "and annotations to the leveldb/lmdb format used as input for Caffe.")
    flags.define("anno_type", "classification",
                 "The type of annotation {classification, detection}.")
    flags.define("label_type", "xml", "The type of annotation file format.")
    flags.define("label_map_file", "", "A file with LabelMap protobuf message.")
    flags.define("check_label", False,
                 "When this option is on, check that there is no duplicated name/label.")
    flags.define("min_dim", 0, "Minimum dimension images are resized to (keep same aspect "
                 "ratio)")
    flags.define("max_dim", 0, "Maximum dimension images are resized to (keep same aspect "
                 "ratio)")
    return define_image_flags(flags)


def read_pairs(list_file: str, classification: bool) -> list[tuple[str, str | int]]:
    """The (image, annotation) pairs of ``list_file``: whitespace-separated tokens taken two at
    a time (an integer label for classification)."""
    tokens = read_list_text(list_file).split()
    if len(tokens) % 2:
        raise DataError(f"list file {list_file!r}: {len(tokens)} fields, expected pairs of "
                        f"'<image> <annotation>'")
    pairs: list[tuple[str, str | int]] = []
    for name, second in zip(tokens[::2], tokens[1::2]):
        if classification:
            try:
                pairs.append((name, int(second)))
            except ValueError:
                raise DataError(f"list file {list_file!r}: label {second!r} of {name!r} is not "
                                f"an integer (-anno_type classification)") from None
        else:
            pairs.append((name, second))
    return pairs


def main(argv: list[str]) -> int:
    """Run ``caffe convert_annoset`` on ``argv`` (its flags and positional arguments); returns the
    exit status."""
    parsed = flag_set().parse_with_args(argv, (3,))
    if parsed is None:
        return 1
    values, args = parsed
    root_folder, list_file, db_name = args
    anno_type = str(values["anno_type"])
    if anno_type not in ("classification", "detection"):
        raise CaffeError(f"Unknown anno_type {anno_type!r} (classification or detection)")
    label_type = str(values["label_type"])
    if anno_type == "detection" and label_type not in ("xml", "json", "txt"):
        raise CaffeError(f"Unknown label file type {label_type!r} (xml, json or txt)")
    is_color = not values["gray"]
    encode_type = str(values["encode_type"])
    encoded = bool(values["encoded"])
    sizes = {k: max(0, int(values[k])) for k in ("resize_height", "resize_width", "min_dim",
                                                 "max_dim")}
    backend = backend_name(values["backend"])

    labels: dict[str, int] = {}
    if anno_type == "detection":
        label_map_file = str(values["label_map_file"])
        if not label_map_file:
            raise CaffeError("-anno_type detection needs -label_map_file (a LabelMap prototxt)")
        labels = name_to_label(read_label_map(label_map_file), bool(values["check_label"]),
                               source=label_map_file)
    lines = read_pairs(list_file, anno_type == "classification")
    if values["shuffle"]:
        logger.info("Shuffling data")
        lines = [lines[int(i)] for i in common.numpy_rng().permutation(len(lines))]
    logger.info("A total of %d images.", len(lines))
    if encode_type and not encoded:
        logger.info("encode_type specified, assuming encoded=true.")

    def records():
        for line_id, (name, second) in enumerate(lines):
            enc = encode_type
            if encoded and not enc:
                # The fork keeps the dot ('.jpg'): the extension never matches, so the image
                # is re-encoded rather than copied.
                dot = name.rfind(".")
                if dot < 0:
                    logger.warning("Failed to guess the encoding of '%s'", name)
                enc = name[dot:].lower() if dot >= 0 else ""
            try:
                if anno_type == "classification":
                    anno_datum = caffe_pb2.AnnotatedDatum()
                    anno_datum.datum.CopyFrom(read_image_to_datum(
                        root_folder + name, int(second), sizes["resize_height"],
                        sizes["resize_width"], is_color, enc, sizes["min_dim"],
                        sizes["max_dim"]))
                else:
                    anno_datum = read_rich_image_to_annotated_datum(
                        root_folder + name, root_folder + str(second), sizes["resize_height"],
                        sizes["resize_width"], sizes["min_dim"], sizes["max_dim"], is_color,
                        enc, label_type, labels)
                    anno_datum.type = caffe_pb2.AnnotatedDatum.BBOX
            except DataError:
                raise
            except (ValueError, OSError) as exc:
                logger.error("Could not open or find file %s (%s)", root_folder + name, exc)
                logger.warning("Failed to read %s", name)
                continue
            yield (f"{line_id:08d}_{name}", name, anno_datum.datum,
                   anno_datum.SerializeToString())

    count = write_records(db_name, backend, records(), bool(values["check_size"]))
    if count == 0 and lines:
        raise CaffeError(f"none of the {len(lines)} images in {list_file!r} could be read")
    return 0
