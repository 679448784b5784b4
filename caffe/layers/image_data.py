"""ImageData layer: batches of image files named in a list file.

Caffe type ``ImageData``; reads ``image_data_param`` (source, root_folder, batch_size, shuffle,
rand_skip, new_height/new_width, is_color) and ``transform_param``. No bottoms. In TRAIN with
several solvers, solver r reads entries r, r + solver_count, ... of each epoch's permutation,
the same permutation on every solver.

    source file: one ``<path> <label>`` per line (the label follows the last space)
    top[0]  data   N x C x h x w   (C = 3 if is_color else 1, BGR; h, w: the crop size, or the
                                    first image's size after the optional resize)
    top[1]  label  N

Images are read with OpenCV's semantics (root_folder + path, resized to new_height x new_width
when both are set). With ``shuffle`` the list is permuted at setup and at every wrap-around.
Reading happens on a prefetch thread; a missing or undecodable image raises DataError from
forward naming the list file and the image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from caffe import common
from caffe.blob import Blob
from caffe.data.image import to_chw
from caffe.data.image_list import ImageListLoader, open_image_list, read_list_text, start_image_list
from caffe.data.prefetch import BasePrefetchingDataLayer, decode_threads
from caffe.errors import DataError
from caffe.layer import register

logger = logging.getLogger("caffe")


def read_image_list(source: str) -> list[tuple[str, int]]:
    """Parse a ``path label`` list (label after the last space), as Caffe's list readers do."""
    text = read_list_text(source)
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        path, sep, label = line.rpartition(" ")
        if not sep:
            path, label = line, "0"
        try:
            lines.append((path, int(label)))
        except ValueError:
            raise DataError(f"image list {source!r} line {number}: label {label!r} is not an "
                            f"integer (expected '<path> <label>')") from None
    return lines


class ImageBatchLoader(ImageListLoader):
    def __init__(self, lines, param, shuffle_rng, transformer, dtype, where: str,
                 shard: tuple[int, int] = (1, 0)) -> None:
        super().__init__(lines, param, shuffle_rng, dtype, where, shard)
        self.transformer = transformer
        self.threads = decode_threads()

    def read(self, entry: tuple[str, int]) -> np.ndarray:
        """Read one list entry's image file as C x H x W."""
        return to_chw(self.read_file(entry[0], self.is_color))

    def load_batch(self, batch) -> None:
        entries = []
        for _ in range(self.batch_size):
            entries.append(self.lines[self.lines_id])
            self.advance()
        images = self.map(self.read, entries)
        shape = self.transformer.infer_blob_shape(images[0])
        shape[0] = self.batch_size
        batch.ensure(shape, [self.batch_size], self.dtype)
        self.transform_images(images, batch.data, lambda i, exc: DataError(
            f"{self.where}: image {entries[i][0]!r}: {exc}"))
        batch.label[...] = [label for _, label in entries]


@register("ImageData")
class ImageDataLayer(BasePrefetchingDataLayer):
    """Caffe's ImageData layer; see the module docstring."""

    exact_num_top = 2
    min_top = -1
    max_top = -1
    legacy_param_name = "image_data_param"

    def data_layer_setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.layer_param.image_data_param
        new_height, new_width = int(p.new_height), int(p.new_width)
        self.check((new_height == 0 and new_width == 0) or (new_height > 0 and new_width > 0),
                   f"Current implementation requires new_height and new_width to be set at the "
                   f"same time (new_height {new_height}, new_width {new_width})")
        batch_size = int(p.batch_size)
        self.check(batch_size > 0, f"Positive batch size required, got {batch_size}")
        lines, where = open_image_list(self, p.source, read_image_list, "is empty")
        # With several solvers, the same permutation on every rank; each reads its slice.
        rng = common.shared_numpy_rng(self.name) if p.shuffle else None
        loader = ImageBatchLoader(lines, p, rng, self.transformer, self.np_dtype, where,
                                  common.shard(self.phase))
        start_image_list(self, loader, p, "images")
        image = loader.read(loader.lines[loader.lines_id])
        shape = self.transformer.infer_blob_shape(image)
        shape[0] = batch_size
        top[0].reshape(shape)
        logger.info("output data size: %s", ",".join(str(d) for d in shape))
        top[1].reshape([batch_size])
        self.loader = loader
