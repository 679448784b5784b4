"""Write the sizes of listed images: DetectionEvaluate's name_size_file (SSD's tool).

Usage: caffe get_image_size [FLAGS] ROOTFOLDER/ LISTFILE OUTFILE

LISTFILE is convert_annoset's list (``image annotation`` pairs); OUTFILE gets one line
``name height width`` per image, ``name`` being the file name without its directory and last
extension, or with -name_id_file (lines ``name id``) the image's id. An unreadable image is
an error (the fork logs it and writes a stale size).
"""

from __future__ import annotations

import logging
import os

from caffe.data.image import IMREAD_COLOR, imread
from caffe.errors import CaffeError
from caffe.protoio import atomic_write
from caffe.tools.convert_annoset import read_pairs
from caffe.tools.flags import FlagSet

COMMAND = "get_image_size"
logger = logging.getLogger("caffe")


def flag_set() -> FlagSet:
    """The flags of ``caffe get_image_size``, as ``-help`` lists them."""
    flags = FlagSet(COMMAND, "[FLAGS] ROOTFOLDER/ LISTFILE OUTFILE\nGet sizes of a set of "
                    "images.")
    flags.define("name_id_file", "", "A file which maps image_name to image_id.")
    return flags


def read_name_ids(path: str) -> dict[str, int]:
    """``name id`` pairs; a repeated name is an error."""
    try:
        with open(path, encoding="utf-8") as f:
            tokens = f.read().split()
    except OSError as exc:
        raise CaffeError(f"Failed to open name_id_file: {path} ({exc.strerror})") from None
    ids: dict[str, int] = {}
    for name, value in zip(tokens[::2], tokens[1::2]):
        if name in ids:
            raise CaffeError(f"{path}: image name {name!r} appears twice")
        try:
            ids[name] = int(value)
        except ValueError:
            break
    return ids


def main(argv: list[str]) -> int:
    """Run ``caffe get_image_size`` on ``argv`` (its flags and positional arguments); returns the
    exit status."""
    parsed = flag_set().parse_with_args(argv, (3,))
    if parsed is None:
        return 1
    values, args = parsed
    root_folder, list_file, out_file = args
    lines = read_pairs(list_file, classification=False)
    logger.info("A total of %d images.", len(lines))
    ids = read_name_ids(str(values["name_id_file"])) if values["name_id_file"] else {}
    if ids and len(ids) != len(lines):
        raise CaffeError(f"{values['name_id_file']} names {len(ids)} images, the list "
                         f"{len(lines)}")
    out = []
    for count, (name, _) in enumerate(lines, 1):
        path = os.path.join(root_folder, name)
        try:
            height, width = imread(path, IMREAD_COLOR).shape[:2]
        except ValueError as exc:
            raise CaffeError(str(exc)) from None
        stem = os.path.splitext(os.path.basename(path))[0]
        if ids and stem not in ids:
            raise CaffeError(f"image {stem!r} is not in {values['name_id_file']}")
        out.append(f"{ids[stem] if ids else stem} {height} {width}\n")
        if count % 1000 == 0:
            logger.info("Processed %d files.", count)
    if len(lines) % 1000 != 0:
        logger.info("Processed %d files.", len(lines))
    atomic_write(out_file, "".join(out).encode("utf-8"))
    return 0
