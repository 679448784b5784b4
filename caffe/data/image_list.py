"""The image-list side shared by ImageData, DenseImageData (SegNet) and ImageSegData (DeepLab).

All three read a list file of entries naming images under ``root_folder``, optionally shuffled at
setup and at every wrap-around, optionally starting ``rand_skip`` entries in, and report an image
that cannot be read as a DataError naming the layer, the list and the file. The list syntax and
what an entry yields differ per layer and stay in the layer's module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from caffe import common
from caffe.data.datum import read_image
from caffe.data.prefetch import BaseDataLayer, BatchLoader
from caffe.errors import DataError

logger = logging.getLogger("caffe")


def read_list_text(source: str) -> str:
    """The text of the list file ``source``; a DataError when it cannot be opened."""
    try:
        with open(source, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise DataError(f"cannot open image list {source!r}: {exc.strerror}") from None


class ImageListLoader(BatchLoader):
    """A BatchLoader walking the entries of an image list.

    Reads root_folder, new_height/new_width, is_color, shuffle and batch_size from the layer's
    list parameter (``image_data_param`` or ``dense_image_data_param``); ``rng`` shuffles the
    list (and may serve the subclass's own draws). ``where`` prefixes every error.

    ``shard = (count, rank)``: walk only entries rank, rank + count, ... of the (shuffled)
    list; with the same ``rng`` stream on every rank, each epoch's permutation is the same
    everywhere, so the ranks' slices are disjoint and together cover it.
    """

    def __init__(self, lines: list, param, rng: np.random.Generator | None, dtype,
                 where: str, shard: tuple[int, int] = (1, 0)) -> None:
        self.all_lines = lines
        self.shard_count, self.shard_rank = shard
        if len(lines) < self.shard_count:
            raise DataError(f"{where}: {len(lines)} entries cannot be shared by "
                            f"{self.shard_count} solvers")
        self.lines = lines[self.shard_rank::self.shard_count] if self.shard_count > 1 else lines
        self.root_folder = param.root_folder
        self.new_height, self.new_width = int(param.new_height), int(param.new_width)
        self.is_color = param.is_color
        self.shuffle_list = param.shuffle
        self.batch_size = int(param.batch_size)
        self.rng = rng
        self.dtype = dtype
        self.where = where
        self.lines_id = 0

    def shuffle(self) -> None:
        """Reshuffle the list lines (each rank keeps its own shard of the shuffled list)."""
        if self.shard_count > 1:
            order = self.rng.permutation(len(self.all_lines))
            self.lines = [self.all_lines[i] for i in order[self.shard_rank::self.shard_count]]
            return
        order = self.rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def advance(self) -> None:
        """Move past the current entry; at the end start again (reshuffled with ``shuffle``)."""
        self.lines_id += 1
        if self.lines_id >= len(self.lines):
            logger.debug("Restarting data prefetching from start.")
            self.lines_id = 0
            if self.shuffle_list:
                self.shuffle()

    def read_file(self, name: str, is_color: bool, resize: bool = True) -> np.ndarray:
        """root_folder + name as OpenCV reads it (H x W or H x W x C), resized to new_height x
        new_width when set and ``resize``."""
        height, width = (self.new_height, self.new_width) if resize else (0, 0)
        try:
            return read_image(self.root_folder + name, height, width, is_color)
        except ValueError as exc:
            raise DataError(f"{self.where}: Could not load {name!r}: {exc}") from None


def open_image_list(layer: BaseDataLayer, source: str, parse: Callable[[str], list],
                    empty: str) -> tuple[list, str]:
    """The entries ``parse`` reads from the list file ``source`` (``image list <source> <empty>``
    when there are none), and the ``where`` prefix for the loader's errors."""
    logger.info("Opening file %s", source)
    try:
        lines = parse(source)
    except DataError as exc:
        raise layer.data_error(str(exc)) from None
    if not lines:
        raise layer.data_error(f"image list {source!r} {empty}")
    return lines, f"{layer.type_name} layer {layer.name!r} (list {source!r})"


def start_image_list(layer: BaseDataLayer, loader: ImageListLoader, param, noun: str) -> None:
    """Setup's last step on the list: shuffle it when asked, log its size (``A total of N
    <noun>.``), and with ``rand_skip`` start a random number of entries in."""
    if param.shuffle:
        logger.info("Shuffling data")
        loader.shuffle()
    count = len(loader.lines)
    logger.info("A total of %d %s.", count, noun)
    if param.rand_skip:
        skip = int(common.numpy_rng().integers(0, param.rand_skip))
        logger.info("Skipping first %d data points.", skip)
        if skip >= count:
            raise layer.data_error(f"Not enough points to skip ({skip} of {count})")
        loader.lines_id = skip
