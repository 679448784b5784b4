"""WindowData layer: R-CNN style batches of warped image windows, foreground and background.

Caffe type ``WindowData``; reads ``window_data_param`` (source window file, batch_size,
fg_threshold, bg_threshold, fg_fraction, context_pad, crop_mode "warp"/"square", cache_images,
root_folder, scale) and ``transform_param`` (crop_size > 0 required, mirror, mean_file or
mean_value). No bottoms.

    window file, repeated per image:
        # <image_index>            (0, 1, 2, ... in order)
        <image_path>               (root_folder + path)
        <channels> <height> <width>
        <num_windows>
        <class_index> <overlap> <x1> <y1> <x2> <y2>     (num_windows lines, inclusive pixels)
    overlap >= fg_threshold: foreground (class_index > 0); overlap < bg_threshold: background
    (label and overlap forced to 0); windows in between are dropped.

    top[0]  data   batch_size x channels x crop_size x crop_size
    top[1]  label  batch_size

Each batch holds ``batch_size - int(batch_size * fg_fraction)`` background windows then the
foreground ones, each drawn uniformly with replacement. A window is optionally expanded so that,
once warped to crop_size, ``context_pad`` pixels of context surround it (and squared in
"square" mode); the part outside the image stays zero. The clipped region is resized bilinearly,
mirrored at random when ``mirror``, and placed at the padding offset; then
``(pixel - mean) * scale``, with the mean_file blob read at the centred crop position plus the
padding offset. Region arithmetic is in float32 with C's round-half-away-from-zero, as Caffe.
In TRAIN with several solvers, solver r draws from windows r, r + solver_count, ... of each pool.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from caffe import common
from caffe.blob import Blob
from caffe.data import image as cvimage
from caffe.data.prefetch import BasePrefetchingDataLayer, BatchLoader, decode_threads
from caffe.errors import DataError
from caffe.layer import register
from caffe.untrusted import short_repr

logger = logging.getLogger("caffe")

# Columns of a window row.
IMAGE_INDEX, LABEL, OVERLAP, X1, Y1, X2, Y2 = range(7)
_f32 = np.float32


def _round(x) -> int:
    """C's round(): half away from zero."""
    x = float(x)
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def parse_window_file(path: str, root_folder: str, fg_threshold: float, bg_threshold: float):
    """(images [(path, [c, h, w])], fg windows (n x 7), bg windows (m x 7), label histogram)."""
    try:
        with open(path, encoding="utf-8") as f:
            tokens = f.read().split()
    except OSError as exc:
        raise DataError(f"Failed to open window file {path!r}: {exc.strerror}") from None
    if not tokens:
        raise DataError(f"Window file {path!r} is empty")
    images, fg, bg = [], [], []
    hist = {0: 0}
    pos = 0

    def take(kind, what):
        nonlocal pos
        if pos >= len(tokens):
            raise DataError(f"window file {path!r}: unexpected end of file reading {what}")
        tok = tokens[pos]
        pos += 1
        try:
            return kind(tok)
        except ValueError:
            raise DataError(f"window file {path!r}: expected {what}, "
                            f"got {short_repr(tok)}") from None

    fg_t, bg_t = _f32(fg_threshold), _f32(bg_threshold)
    while pos < len(tokens):
        hashtag = take(str, "'#'")
        if hashtag != "#":
            raise DataError(f"window file {path!r}: expected '#' starting image "
                            f"{len(images)}, got {hashtag!r}")
        image_index = take(int, "an image index")
        image_path = root_folder + take(str, "an image path")
        size = [take(int, "channels"), take(int, "height"), take(int, "width")]
        images.append((image_path, size, image_index))
        num_windows = take(int, "the number of windows")
        for _ in range(num_windows):
            label = take(int, "a class index")
            overlap = _f32(take(float, "an overlap"))
            x1, y1, x2, y2 = (take(int, "a coordinate") for _ in range(4))
            row = [image_index, label, overlap, x1, y1, x2, y2]
            if overlap >= fg_t:
                if label <= 0:
                    raise DataError(f"window file {path!r}, image {image_index}: foreground "
                                    f"window with class index {label} (must be > 0)")
                fg.append(row)
                hist[label] = hist.get(label, 0) + 1
            elif overlap < bg_t:
                row[LABEL] = 0
                row[OVERLAP] = 0
                bg.append(row)
                hist[0] += 1
    return (images, np.asarray(fg, dtype=np.float64).reshape(-1, 7),
            np.asarray(bg, dtype=np.float64).reshape(-1, 7), hist)


class WindowBatchLoader(BatchLoader):
    def __init__(self, layer_where: str, images, fg, bg, cache, rng, batch_size: int,
                 channels: int, crop_size: int, context_pad: int, use_square: bool,
                 mirror: bool, fg_fraction: float, scale, mean, mean_values, dtype) -> None:
        self.where = layer_where
        self.images = images
        self.fg = fg
        self.bg = bg
        self.cache = cache
        self.rng = rng
        self.batch_size = batch_size
        self.channels = channels
        self.crop_size = crop_size
        self.context_pad = context_pad
        self.use_square = use_square
        self.mirror = mirror
        self.fg_fraction = fg_fraction
        self.scale = dtype.type(scale)
        self.mean = mean
        self.mean_values = mean_values
        self.dtype = dtype
        self.threads = decode_threads()

    def _image(self, index: int) -> np.ndarray:
        path = self.images[index][0]
        try:
            if self.cache is not None:
                return cvimage.imdecode(self.cache[index], cvimage.IMREAD_COLOR)
            return cvimage.imread(path, cvimage.IMREAD_COLOR)
        except ValueError as exc:
            raise DataError(f"{self.where}: Could not open or find file {path!r} ({exc})") \
                from None

    def geometry(self, window, rows: int, cols: int, do_mirror: bool):
        """(x1, y1, x2, y2 clipped region; warp height, width; pad_h, pad_w) of one window."""
        k = self.crop_size
        x1, y1, x2, y2 = (int(window[i]) for i in (X1, Y1, X2, Y2))
        warp_h = warp_w = k
        pad_h = pad_w = 0
        if self.context_pad > 0 or self.use_square:
            context_scale = _f32(k) / _f32(k - 2 * self.context_pad)
            half_height = _f32((y2 - y1 + 1) / 2.0)
            half_width = _f32((x2 - x1 + 1) / 2.0)
            center_x = _f32(x1) + half_width
            center_y = _f32(y1) + half_height
            if self.use_square:
                half_height = half_width = max(half_height, half_width)
            x1 = _round(center_x - half_width * context_scale)
            x2 = _round(center_x + half_width * context_scale)
            y1 = _round(center_y - half_height * context_scale)
            y2 = _round(center_y + half_height * context_scale)
            unclipped_height = y2 - y1 + 1
            unclipped_width = x2 - x1 + 1
            pad_x1 = max(0, -x1)
            pad_y1 = max(0, -y1)
            pad_x2 = max(0, x2 - cols + 1)
            pad_y2 = max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            clipped_height = y2 - y1 + 1
            clipped_width = x2 - x1 + 1
            scale_x = _f32(k) / _f32(unclipped_width)
            scale_y = _f32(k) / _f32(unclipped_height)
            warp_w = _round(_f32(clipped_width) * scale_x)
            warp_h = _round(_f32(clipped_height) * scale_y)
            pad_x1 = _round(_f32(pad_x1) * scale_x)
            pad_x2 = _round(_f32(pad_x2) * scale_x)
            pad_y1 = _round(_f32(pad_y1) * scale_y)
            pad_h = pad_y1
            # Mirroring mirrors the padding too.
            pad_w = pad_x2 if do_mirror else pad_x1
            warp_h = min(warp_h, k - pad_h)
            warp_w = min(warp_w, k - pad_w)
        return x1, y1, x2, y2, warp_h, warp_w, pad_h, pad_w

    def fill(self, out: np.ndarray, window, do_mirror: bool) -> None:
        """Warp one window into ``out`` (channels x crop x crop, zero-filled)."""
        index = int(window[IMAGE_INDEX])
        img = self._image(index)
        if img.ndim == 2:
            img = img[:, :, None]
        rows, cols, channels = img.shape
        if channels != self.channels:
            raise DataError(f"{self.where}: image {self.images[index][0]!r} has {channels} "
                            f"channels, the window file declares {self.channels}")
        x1, y1, x2, y2, warp_h, warp_w, pad_h, pad_w = self.geometry(window, rows, cols,
                                                                     do_mirror)
        if not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows) or warp_h <= 0 or warp_w <= 0:
            raise DataError(f"{self.where}: window ({int(window[X1])}, {int(window[Y1])}, "
                            f"{int(window[X2])}, {int(window[Y2])}) does not fit image "
                            f"{self.images[index][0]!r} of {cols}x{rows}")
        warped = cvimage.resize(np.ascontiguousarray(img[y1:y2 + 1, x1:x2 + 1]), warp_w, warp_h)
        if warped.ndim == 2:
            warped = warped[:, :, None]
        if do_mirror:
            warped = warped[:, ::-1]
        pixels = warped.transpose(2, 0, 1)
        dst = out[:, pad_h:pad_h + warp_h, pad_w:pad_w + warp_w]
        if self.mean is not None:
            off = (self.mean.shape[2] - self.crop_size) // 2
            np.subtract(pixels, self.mean[:, off + pad_h:off + pad_h + warp_h,
                                          off + pad_w:off + pad_w + warp_w],
                        out=dst, casting="unsafe")
        elif self.mean_values is not None:
            np.subtract(pixels, self.mean_values[:, None, None], out=dst, casting="unsafe")
        else:
            dst[...] = pixels
        np.multiply(dst, self.scale, out=dst)

    def load_batch(self, batch) -> None:
        c, k = self.channels, self.crop_size
        batch.ensure([self.batch_size, c, k, k], [self.batch_size], self.dtype)
        batch.data.fill(0)
        num_fg = int(_f32(self.batch_size) * _f32(self.fg_fraction))
        picks = []
        for is_fg, count in ((False, self.batch_size - num_fg), (True, num_fg)):
            pool = self.fg if is_fg else self.bg
            for _ in range(count):
                window = pool[int(self.rng.integers(0, len(pool)))]
                do_mirror = self.mirror and int(self.rng.integers(0, 2)) == 1
                picks.append((window, do_mirror))
        data = batch.data

        def fill(i: int) -> None:
            self.fill(data[i], *picks[i])

        self.map(fill, list(range(len(picks))))
        batch.label[...] = [window[LABEL] for window, _ in picks]


@register("WindowData")
class WindowDataLayer(BasePrefetchingDataLayer):
    """Caffe's WindowData layer; see the module docstring."""

    exact_num_top = 2
    min_top = -1
    max_top = -1
    legacy_param_name = "window_data_param"

    def data_layer_setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        p = self.layer_param.window_data_param
        tp = self.transform_param
        logger.info("Window data layer: foreground (object) overlap threshold: %g, background "
                    "(non-object) overlap threshold: %g, foreground sampling fraction: %g, "
                    "cache_images: %s, root_folder: %s", p.fg_threshold, p.bg_threshold,
                    p.fg_fraction, p.cache_images, p.root_folder)
        try:
            images, fg, bg, hist = parse_window_file(p.source, p.root_folder, p.fg_threshold,
                                                     p.bg_threshold)
        except DataError as exc:
            raise self.data_error(str(exc)) from None
        for position, (_, _, image_index) in enumerate(images):
            if image_index != position:
                raise self.data_error(f"window file {p.source!r}: image #{position} is "
                                      f"numbered {image_index}; indices must count from 0")
        logger.info("Number of images: %d", len(images))
        for label in sorted(hist):
            logger.info("class %d has %d samples", label, hist[label])
        logger.info("Amount of context padding: %d", p.context_pad)
        logger.info("Crop mode: %s", p.crop_mode)
        self.check(p.crop_mode in ("warp", "square"),
                   f"crop_mode must be 'warp' or 'square', got {p.crop_mode!r}")
        crop_size = int(tp.crop_size)
        self.check(crop_size > 0, f"transform_param.crop_size must be positive, got {crop_size}")
        self.check(2 * p.context_pad < crop_size,
                   f"context_pad {p.context_pad} leaves no room in crop_size {crop_size}")
        self.check(len(fg) > 0, f"no foreground windows (overlap >= {p.fg_threshold:g}) in "
                                f"{p.source!r}")
        self.check(len(bg) > 0, f"no background windows (overlap < {p.bg_threshold:g}) in "
                                f"{p.source!r}")
        count, rank = common.shard(self.phase)
        if count > 1:
            # Each solver draws from its own share of the windows.
            fg, bg = fg[rank::count], bg[rank::count]
            self.check(len(fg) > 0 and len(bg) > 0,
                       f"solver {rank} of {count} gets no foreground or no background window "
                       f"of {p.source!r}; fewer windows than solvers")
        channels = images[-1][1][0]
        batch_size = int(p.batch_size)
        self.check(batch_size > 0, f"window_data_param.batch_size must be positive, "
                                   f"got {batch_size}")
        cache = None
        if p.cache_images:
            cache = []
            for path, _, _ in images:
                try:
                    with open(path, "rb") as f:
                        cache.append(f.read())
                except OSError as exc:
                    raise self.data_error(f"Could not open or find file {path!r} "
                                          f"({exc.strerror})") from None
        mean = mean_values = None
        if tp.HasField("mean_file"):
            self.check(not len(tp.mean_value),
                       "Cannot specify mean_file and mean_value at the same time")
            mean = self.transformer.mean
            self.check(mean.shape[1] >= crop_size and mean.shape[2] >= crop_size,
                       f"mean_file blob {list(mean.shape)} is smaller than crop_size "
                       f"{crop_size}")
        elif len(tp.mean_value):
            values = np.asarray(tp.mean_value, dtype=np.float32).astype(self.np_dtype)
            self.check(len(values) in (1, channels),
                       f"Specify either 1 mean_value or as many as channels: {channels}")
            mean_values = np.broadcast_to(values, (channels,)).copy()
        rng = common.numpy_rng()
        where = f"{self.type_name} layer {self.name!r} (window file {p.source!r})"
        self.loader = WindowBatchLoader(where, images, fg, bg, cache, rng, batch_size, channels,
                                        crop_size, int(p.context_pad), p.crop_mode == "square",
                                        bool(tp.mirror), float(p.fg_fraction), p.scale, mean,
                                        mean_values, self.np_dtype)
        top[0].reshape([batch_size, channels, crop_size, crop_size])
        logger.info("output data size: %d,%d,%d,%d", batch_size, channels, crop_size, crop_size)
        top[1].reshape([batch_size])

