"""ImageSegData of DeepLab v2 (deeplab-public-ver2): images with their segmentation label maps,
named in a list file, padded and cropped together.

Caffe type ``ImageSegData``; reads ``image_data_param`` (source, root_folder, batch_size,
shuffle, rand_skip, new_height/new_width, is_color, and DeepLab's ``label_type`` and
``ignore_label``) and ``transform_param`` (crop_size, mirror, mean_value, scale; a mean_file is
refused, as DeepLab does). No bottoms.

    source file: one example a line, ``<image> <label image>`` (PIXEL), ``<image> <class>``
                 (IMAGE: every pixel gets the class) or ``<image>`` (NONE: every pixel gets
                 ignore_label)
    top[0]  data      N x C x h x w   (pixel - mean_value[c]) * scale
    top[1]  label     N x 1 x h x w   the label values
    top[2]  data_dim  N x 1 x 1 x 2   (min(h, rows), min(w, cols)) of each image as read

h x w is crop_size x crop_size, else the first image's size. Per example, as DeepLab's
TransformImgAndSeg: both files are read (resized to new_height x new_width when set, the label
map bilinearly too, as DeepLab does); an image smaller than the crop is padded at the bottom and
right, the image with the mean values and the label with ignore_label; the crop window is
random in TRAIN and centred ((rows - h) / 2, (cols - w) / 2) in TEST; ``mirror`` flips image and
label together with probability 1/2. DeepLab's ``scale_factors`` and ``crop_height/crop_width``
transform fields are not in this schema (their numbers are SSD's there), so random rescaling is
not offered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from caffe import common
from caffe.blob import Blob
from caffe.data.image_list import ImageListLoader, open_image_list, read_list_text, start_image_list
from caffe.data.prefetch import BasePrefetchingDataLayer
from caffe.errors import DataError
from caffe.layer import register
from caffe.proto import caffe_pb2

logger = logging.getLogger("caffe")

PIXEL = caffe_pb2.ImageDataParameter.PIXEL
IMAGE = caffe_pb2.ImageDataParameter.IMAGE
NONE = caffe_pb2.ImageDataParameter.NONE


def read_seg_list(source: str, label_type: int) -> list[tuple[str, str]]:
    """(image, label token) per non-empty line; the label token is '' for label_type NONE."""
    text = read_list_text(source)
    lines = []
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        label = tokens[1] if label_type != NONE and len(tokens) > 1 else ""
        lines.append((tokens[0], label))
    return lines


def saturate_u8(value: int) -> int:
    """A label value as OpenCV stores it in an 8-bit map (cv::Scalar saturates)."""
    return min(max(int(value), 0), 255)


class SegBatchLoader(ImageListLoader):
    def __init__(self, lines, param, transform, phase: int, rng, dtype, where: str) -> None:
        super().__init__(lines, param, rng, dtype, where)
        self.label_type = param.label_type
        self.ignore_label = int(param.ignore_label)
        self.crop = int(transform.crop_size)
        self.mirror = transform.mirror
        self.scale = float(transform.scale)
        self.mean_values = list(transform.mean_value)
        self.phase = phase

    def read(self, entry: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """(image H x W x C uint8, label H x W uint8) of one list entry."""
        image_name, label_token = entry
        image = self.read_file(image_name, self.is_color)
        image = image.reshape(image.shape[0], image.shape[1], -1)
        shape = image.shape[:2]
        if self.label_type == PIXEL:
            label = self.read_file(label_token, False)
            label = label.reshape(label.shape[:2])
            if label.shape != shape:
                raise DataError(f"{self.where}: image {image_name!r} is {list(shape)} but its "
                                f"label {label_token!r} is {list(label.shape)}")
        elif self.label_type == IMAGE:
            try:
                value = int(label_token)
            except ValueError:
                raise DataError(f"{self.where}: image {image_name!r}: class {label_token!r} is "
                                f"not an integer") from None
            label = np.full(shape, saturate_u8(value), np.uint8)
        else:
            label = np.full(shape, saturate_u8(self.ignore_label), np.uint8)
        return image, label

    def means(self, channels: int) -> np.ndarray:
        """One mean value per channel: the single ``mean_value`` repeated, zeros, or one each."""
        if len(self.mean_values) == 1:
            return np.full(channels, self.mean_values[0])
        if not self.mean_values:
            return np.zeros(channels)
        if len(self.mean_values) != channels:
            raise DataError(f"{self.where}: Specify either 1 mean_value or as many as channels: "
                            f"{channels} (got {len(self.mean_values)})")
        return np.asarray(self.mean_values, dtype=np.float64)

    def example(self, entry, height: int, width: int):
        """(data C x h x w, label h x w, (rows, cols)) of one entry, transformed."""
        image, label = self.read(entry)
        rows, cols = label.shape
        do_mirror = self.mirror and int(self.rng.integers(0, 2)) == 1
        # (pixel - mean) * scale first: DeepLab pads with the mean pixel, which this maps to 0.
        data = (image.astype(np.float64) - self.means(image.shape[2])) * self.scale
        if self.crop:
            pad_h, pad_w = max(self.crop - rows, 0), max(self.crop - cols, 0)
            if pad_h or pad_w:
                data = np.pad(data, ((0, pad_h), (0, pad_w), (0, 0)))
                label = np.pad(label, ((0, pad_h), (0, pad_w)),
                               constant_values=saturate_u8(self.ignore_label))
            full_h, full_w = label.shape
            if self.phase == caffe_pb2.TRAIN:
                h_off = int(self.rng.integers(0, full_h - self.crop + 1))
                w_off = int(self.rng.integers(0, full_w - self.crop + 1))
            else:
                h_off, w_off = (full_h - self.crop) // 2, (full_w - self.crop) // 2
            data = data[h_off:h_off + self.crop, w_off:w_off + self.crop]
            label = label[h_off:h_off + self.crop, w_off:w_off + self.crop]
        elif label.shape != (height, width):
            raise DataError(f"{self.where}: image {entry[0]!r} is {[rows, cols]}, the batch "
                            f"{[height, width]}; set a crop_size or new_height/new_width")
        if do_mirror:
            data, label = data[:, ::-1], label[:, ::-1]
        return data.transpose(2, 0, 1), label, (min(height, rows), min(width, cols))

    def load_batch(self, batch) -> None:
        """Fill ``batch.data``, and ``batch.label`` as (N, h * w + 2): each example's label map
        followed by its data_dim (a prefetch batch holds two arrays; forward splits them)."""
        height, width = self.out_size
        channels = 3 if self.is_color else 1
        area = height * width
        batch.ensure([self.batch_size, channels, height, width],
                     [self.batch_size, area + 2], self.dtype)
        for i in range(self.batch_size):
            data, label, dim = self.example(self.lines[self.lines_id], height, width)
            batch.data[i] = data
            batch.label[i, :area] = label.reshape(-1)
            batch.label[i, area:] = dim
            self.advance()


@register("ImageSegData")
class ImageSegDataLayer(BasePrefetchingDataLayer):
    """DeepLab's ImageSegData layer; see the module docstring."""

    exact_num_top = 3
    min_top = -1
    max_top = -1

    def data_layer_setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.layer_param.image_data_param
        transform = self.layer_param.transform_param
        self.check(not transform.HasField("mean_file"),
                   "ImageSegDataLayer does not support mean file")
        new_height, new_width = int(p.new_height), int(p.new_width)
        self.check((new_height == 0) == (new_width == 0),
                   f"Current implementation requires new_height and new_width to be set at the "
                   f"same time (new_height {new_height}, new_width {new_width})")
        self.check(p.batch_size > 0, f"Positive batch size required, got {p.batch_size}")
        lines, where = open_image_list(
            self, p.source, lambda source: read_seg_list(source, p.label_type), "is empty")
        loader = SegBatchLoader(lines, p, transform, self.phase, common.numpy_rng(),
                                self.np_dtype, where)
        start_image_list(self, loader, p, "images")
        image, _ = loader.read(loader.lines[loader.lines_id])
        crop = int(transform.crop_size)
        loader.out_size = (crop, crop) if crop else image.shape[:2]
        shape = [int(p.batch_size), image.shape[2], *loader.out_size]
        top[0].reshape(shape)
        top[1].reshape([shape[0], 1, *shape[2:]])
        top[2].reshape([shape[0], 1, 1, 2])
        logger.info("output data size: %s", ",".join(str(d) for d in shape))
        self.loader = loader

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        if getattr(self, "prefetcher", None) is None:
            raise self.data_error("the prefetch thread was stopped; call SetUp again")
        batch = self.prefetcher.pop()
        try:
            num, _, height, width = batch.data.shape
            area = height * width
            top[0].reshape(batch.data.shape)
            top[0].mutable_device_data().copy_(torch.from_numpy(batch.data))
            top[1].reshape([num, 1, height, width])
            top[1].mutable_device_data().view(num, area).copy_(
                torch.from_numpy(batch.label[:, :area]))
            top[2].reshape([num, 1, 1, 2])
            top[2].mutable_device_data().view(num, 2).copy_(
                torch.from_numpy(batch.label[:, area:]))
        finally:
            self.prefetcher.push_free(batch)
