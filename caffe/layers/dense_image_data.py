"""DenseImageData of SegNet (alexgkendall/caffe-segnet): batches of images with a label image
each, named in a list file.

Caffe type ``DenseImageData``; reads ``dense_image_data_param`` (source, root_folder,
batch_size, shuffle, rand_skip, new_height/new_width, is_color, mirror,
crop_height/crop_width) and ``transform_param`` (scale, mean_file / mean_value). No bottoms.

    source file: whitespace-separated pairs ``<image> <label image>``
    top[0]  data   N x C x h x w   (C = 3 if is_color else 1, BGR)
    top[1]  label  N x 1 x h x w   (the label image's grey values, unscaled)

Both files are read from root_folder + name; with new_height x new_width the image is resized
bilinearly and the label image by nearest neighbour (OpenCV's INTER_NEAREST, so no label value
is invented). Then, per example, as SegNet: ``mirror`` flips image and label together with
probability 1/2; ``crop_height x crop_width`` cuts the same random window out of both;
``transform_param`` applies its mean and scale to the image only. h x w is the crop, else the
image size (with batch_size 1 and no resize or crop, each batch takes its own image's size).
``transform_param``'s own mirror and crop_size would move image and label apart, so they are
refused (SegNet: a FIXME CHECK). With ``shuffle`` the list is permuted at setup and at every
wrap-around.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from caffe import common
from caffe.blob import Blob
from caffe.data.image_list import ImageListLoader, open_image_list, read_list_text, start_image_list
from caffe.data.prefetch import BasePrefetchingDataLayer
from caffe.errors import DataError
from caffe.layer import register

logger = logging.getLogger("caffe")


def read_pair_list(source: str) -> list[tuple[str, str]]:
    """The (image, label image) pairs of a list file: whitespace-separated tokens two by two, as
    SegNet reads them with ``infile >> image >> label``."""
    tokens = read_list_text(source).split()
    return list(zip(tokens[0::2], tokens[1::2]))


def resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv::resize with INTER_NEAREST: destination pixel x takes source floor(x * src / dst)."""
    src_h, src_w = img.shape[:2]
    rows = np.minimum(np.floor(np.arange(height) * (src_h / height)).astype(np.intp), src_h - 1)
    cols = np.minimum(np.floor(np.arange(width) * (src_w / width)).astype(np.intp), src_w - 1)
    return img[rows[:, None], cols[None, :]]


class DenseBatchLoader(ImageListLoader):
    def __init__(self, lines, param, transformer, rng, dtype, where: str) -> None:
        super().__init__(lines, param, rng, dtype, where)
        self.crop_height, self.crop_width = int(param.crop_height), int(param.crop_width)
        self.mirror = param.mirror
        self.transformer = transformer

    def read(self, entry: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """(image C x H x W, label H x W) of one list entry, resized but not cropped."""
        image_name, label_name = entry
        image = self.read_file(image_name, self.is_color)
        label = self.read_file(label_name, False, resize=False)
        if self.new_height > 0:
            label = resize_nearest(label, self.new_height, self.new_width)
        label = label.reshape(label.shape[:2])
        if label.shape != image.shape[:2]:
            raise DataError(f"{self.where}: Input and label image heights and widths must "
                            f"match: {image_name!r} is {list(image.shape[:2])}, "
                            f"{label_name!r} is {list(label.shape)}")
        chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        return chw, label

    def output_size(self, image: np.ndarray) -> tuple[int, int]:
        """The (height, width) of one example: the crop size, or the image's own."""
        if self.crop_height > 0:
            return self.crop_height, self.crop_width
        return image.shape[1], image.shape[2]

    def load_batch(self, batch) -> None:
        examples = []
        for _ in range(self.batch_size):
            entry = self.lines[self.lines_id]
            image, label = self.read(entry)
            if self.mirror and int(self.rng_draw(2)):
                image, label = image[:, :, ::-1], label[:, ::-1]
            if self.crop_height > 0:
                height, width = label.shape
                if height < self.crop_height or width < self.crop_width:
                    raise DataError(f"{self.where}: image {entry[0]!r} "
                                    f"({height} x {width}) is smaller than the crop "
                                    f"({self.crop_height} x {self.crop_width})")
                h_off = int(self.rng_draw(height - self.crop_height + 1))
                w_off = int(self.rng_draw(width - self.crop_width + 1))
                window = (slice(h_off, h_off + self.crop_height),
                          slice(w_off, w_off + self.crop_width))
                image, label = image[(slice(None), *window)], label[window]
            examples.append((image, label))
            self.advance()
        channels, height, width = examples[0][0].shape
        for image, _ in examples[1:]:
            if image.shape != (channels, height, width):
                raise DataError(f"{self.where}: images of one batch differ in size "
                                f"({list(image.shape)} and {[channels, height, width]}); "
                                f"set new_height/new_width or a crop")
        batch.ensure([self.batch_size, channels, height, width],
                     [self.batch_size, 1, height, width], self.dtype)
        for i, (image, label) in enumerate(examples):
            self.transformer.transform(np.ascontiguousarray(image), batch.data[i])
            batch.label[i, 0] = label

    def rng_draw(self, n: int) -> int:
        """A uniform integer in [0, n) from the layer's stream (crop offsets)."""
        return self.rng.integers(0, n)


@register("DenseImageData")
class DenseImageDataLayer(BasePrefetchingDataLayer):
    """SegNet's DenseImageData layer; see the module docstring."""

    exact_num_top = 2
    min_top = -1
    max_top = -1

    def data_layer_setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.layer_param.dense_image_data_param
        new_height, new_width = int(p.new_height), int(p.new_width)
        crop_height, crop_width = int(p.crop_height), int(p.crop_width)
        self.check((new_height == 0) == (new_width == 0),
                   f"Current implementation requires new_height and new_width to be set at the "
                   f"same time (new_height {new_height}, new_width {new_width})")
        self.check((crop_height == 0) == (crop_width == 0),
                   f"Current implementation requires crop_height and crop_width to be set at "
                   f"the same time (crop_height {crop_height}, crop_width {crop_width})")
        transform = self.layer_param.transform_param
        self.check(not transform.mirror and transform.crop_size == 0,
                   "transform_param mirror and crop_size would transform the image and its "
                   "label differently; use dense_image_data_param mirror and "
                   "crop_height/crop_width")
        self.check(p.batch_size > 0, f"Positive batch size required, got {p.batch_size}")
        lines, where = open_image_list(self, p.source, read_pair_list,
                                       "has no (image, label) pair")
        loader = DenseBatchLoader(lines, p, self.transformer, common.numpy_rng(),
                                  self.np_dtype, where)
        start_image_list(self, loader, p, "examples")
        image, _ = loader.read(loader.lines[loader.lines_id])
        height, width = loader.output_size(image)
        top[0].reshape([p.batch_size, image.shape[0], height, width])
        top[1].reshape([p.batch_size, 1, height, width])
        logger.info("output data size: %d,%d,%d,%d", p.batch_size, image.shape[0], height,
                    width)
        self.loader = loader
