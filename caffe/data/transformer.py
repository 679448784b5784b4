"""DataTransformer: Caffe's per-example preprocessing for data layers (TransformationParameter).

For one CxHxW example (uint8 pixels or floats), with crop size ``k`` (0: no crop)::

    offsets   TRAIN: h_off ~ U{0..H-k}, w_off ~ U{0..W-k}; TEST: ((H-k)/2, (W-k)/2) (integer)
    mirror    TRAIN or TEST, when ``mirror: true``: a fair coin per example
    top[c, h, w'] = (x[c, h_off+h, w_off+w] - mean[c, h_off+h, w_off+w]) * scale
              with w' = k-1-w when mirrored, else w; ``mean`` is the mean_file blob taken at the
              cropped source position, or ``mean_value`` (one, or one per channel); scale last.

Random draws come in Caffe's order per example: mirror coin, then h_off, then w_off. The
generator is drawn from the seeded stream by ``init_rand`` (caffe.set_random_seed makes TRAIN
crops and mirrors repeatable). Encoded datums are decoded with OpenCV's semantics (BGR), in
their native channel count unless ``force_color``/``force_gray``. All math is vectorized numpy
in the layer's dtype (float32: the same roundings as C++ Caffe).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from caffe import common
from caffe.data.datum import datum_to_image
from caffe.errors import DataError
from caffe.proto import caffe_pb2

logger = logging.getLogger("caffe")


def load_mean_file(path: str, dtype=np.float32) -> np.ndarray:
    """A mean binaryproto as a CxHxW array (the first item of a 4-D legacy or N-d blob)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read mean file {path!r} (cwd {os.getcwd()!r}): "
                        f"{exc.strerror}") from None
    proto = caffe_pb2.BlobProto()
    try:
        proto.ParseFromString(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError subclasses
        raise DataError(f"mean file {path!r} is not a BlobProto: {exc}") from None
    if proto.HasField("shape"):
        shape = list(proto.shape.dim)
    else:
        shape = [proto.num, proto.channels, proto.height, proto.width]
    values = np.asarray(proto.double_data if len(proto.double_data) else proto.data,
                        dtype=np.float64 if len(proto.double_data) else np.float32)
    count = int(np.prod(shape)) if shape else 0
    if count == 0 or values.size != count:
        raise DataError(f"mean file {path!r} holds {values.size} values for shape {shape}")
    # Caffe reads the mean through the legacy channels/height/width accessors.
    while len(shape) < 4:
        shape = [1] + shape
    c, h, w = shape[-3], shape[-2], shape[-1]
    return values[: c * h * w].reshape(c, h, w).astype(dtype)


class DataTransformer:
    """Crop, mirror, mean-subtract and scale examples as C++ Caffe's DataTransformer."""

    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int,
                 dtype=np.float32) -> None:
        self.param = param
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.scale = self.dtype.type(param.scale)
        self.crop_size = int(param.crop_size)
        self.mirror = bool(param.mirror)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        self.mean: np.ndarray | None = None
        self.mean_values: np.ndarray | None = None
        self.rng: np.random.Generator | None = None
        self._warned_force = False
        if self.force_color and self.force_gray:
            raise DataError("cannot set both force_color and force_gray")
        if param.HasField("mean_file"):
            if len(param.mean_value):
                raise DataError("Cannot specify mean_file and mean_value at the same time")
            if common.root_solver():
                logger.info("Loading mean file from: %s", param.mean_file)
            self.mean = load_mean_file(param.mean_file, self.dtype)
        elif len(param.mean_value):
            self.mean_values = np.asarray(param.mean_value, dtype=np.float32).astype(self.dtype)

    # --- randomness ------------------------------------------------------------------------
    @property
    def needs_rand(self) -> bool:
        """Whether transforming draws random numbers: mirroring, or a TRAIN crop."""
        return self.mirror or (self.phase == caffe_pb2.TRAIN and self.crop_size > 0)

    def init_rand(self) -> None:
        """Draw this transformer's generator from the seeded stream (call on the main thread)."""
        self.rng = common.numpy_rng() if self.needs_rand else None

    def _rand(self, n: int) -> int:
        if self.rng is None:
            self.init_rand()
        return int(self.rng.integers(0, n))

    def draw(self, height: int, width: int) -> tuple[bool, int, int]:
        """(mirror, h_off, w_off) for an example of ``height`` x ``width``, in Caffe's order."""
        do_mirror = self.mirror and self._rand(2) == 1
        h_off = w_off = 0
        k = self.crop_size
        if k:
            if self.phase == caffe_pb2.TRAIN:
                h_off = self._rand(height - k + 1)
                w_off = self._rand(width - k + 1)
            else:
                h_off = (height - k) // 2
                w_off = (width - k) // 2
        return do_mirror, h_off, w_off

    # --- shapes ----------------------------------------------------------------------------
    def decode(self, datum: caffe_pb2.Datum) -> np.ndarray:
        """The datum's pixels as CxHxW (decoding encoded data with force_color/force_gray)."""
        if not datum.encoded and (self.force_color or self.force_gray) \
                and not self._warned_force:
            self._warned_force = True
            logger.error("force_color and force_gray only for encoded datum")
        return datum_to_image(datum, self.force_color, self.force_gray)

    def infer_blob_shape(self, image: np.ndarray) -> list[int]:
        """[1, C, h, w] for one CxHxW example: the crop size, or the example's own size."""
        c, h, w = image.shape
        if c <= 0:
            raise DataError(f"example has {c} channels")
        k = self.crop_size
        if h < k or w < k:
            raise DataError(f"crop_size {k} is larger than the {h}x{w} example")
        return [1, c, k or h, k or w]

    def _check(self, image: np.ndarray) -> None:
        c, h, w = image.shape
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise DataError(f"mean_file blob shape {list(self.mean.shape)} does not match the "
                            f"example shape [{c}, {h}, {w}] (channels, height, width)")
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise DataError(f"Specify either 1 mean_value or as many as channels: {c} "
                            f"(got {len(self.mean_values)})")

    # --- transforms ------------------------------------------------------------------------
    def transform(self, image: np.ndarray, out: np.ndarray | None = None,
                  draw: tuple[bool, int, int] | None = None) -> np.ndarray:
        """Transform one CxHxW example into ``out`` (C x crop x crop, or C x H x W)."""
        c, height, width = image.shape
        self._check(image)
        shape = self.infer_blob_shape(image)[1:]
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif list(out.shape) != shape:
            raise DataError(f"example of shape [{c}, {height}, {width}] transforms to {shape}, "
                            f"but the batch holds {list(out.shape)}")
        do_mirror, h_off, w_off = draw if draw is not None else self.draw(height, width)
        h, w = shape[1], shape[2]
        src = image[:, h_off:h_off + h, w_off:w_off + w]
        # Writing through a reversed view mirrors the result while the mean is still read at
        # the source position, as Caffe indexes it.
        dst = out[:, :, ::-1] if do_mirror else out
        self._subtract_mean_and_scale(src, dst, h_off, w_off)
        return out

    def transform_datum(self, datum: caffe_pb2.Datum, out: np.ndarray | None = None
                        ) -> np.ndarray:
        """Decode a Datum and transform it into ``out`` (or a new array)."""
        return self.transform(self.decode(datum), out)

    def transform_batch(self, images, out: np.ndarray) -> np.ndarray:
        """Transform a sequence of CxHxW examples into the first items of ``out`` (N x ...)."""
        if len(images) == 0:
            raise DataError("There is no datum to add")
        if len(images) > out.shape[0]:
            raise DataError(f"{len(images)} examples do not fit a batch of {out.shape[0]}")
        for i, img in enumerate(images):
            self.transform(img, out[i])
        return out

    def transform_blob(self, inputs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Caffe's Transform(Blob, Blob): one crop/mirror draw for a whole N x C x H x W array."""
        inputs = np.asarray(inputs)
        n, c, height, width = inputs.shape
        self._check(inputs[0])
        k = self.crop_size
        shape = (n, c, k or height, k or width)
        if height < shape[2] or width < shape[3]:
            raise DataError(f"crop_size {k} is larger than the {height}x{width} input")
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        do_mirror, h_off, w_off = self.draw(height, width)
        h, w = shape[2], shape[3]
        src = inputs[:, :, h_off:h_off + h, w_off:w_off + w]
        dst = out[:n, :, :, ::-1] if do_mirror else out[:n]
        self._subtract_mean_and_scale(src, dst, h_off, w_off)
        return out

    def _subtract_mean_and_scale(self, src: np.ndarray, dst: np.ndarray, h_off: int,
                                 w_off: int) -> None:
        """dst <- (src - mean) * scale for a crop ``src`` (... x C x h x w) taken at (h_off,
        w_off): a mean_file mean is cropped at the same offsets, mean_values are per channel."""
        h, w = src.shape[-2:]
        if self.mean is not None:
            np.subtract(src, self.mean[:, h_off:h_off + h, w_off:w_off + w], out=dst,
                        casting="unsafe")
        elif self.mean_values is not None:
            np.subtract(src, self.mean_values[:, None, None] if len(self.mean_values) > 1
                        else self.mean_values[0], out=dst, casting="unsafe")
        else:
            dst[...] = src
        if self.scale != 1:
            np.multiply(dst, self.scale, out=dst)


def effective_transform_param(layer_param, legacy=None) -> caffe_pb2.TransformationParameter:
    """The layer's transform_param, completed from the legacy fields of ``legacy`` (a
    data_param / image_data_param / window_data_param) that the net upgrader would move."""
    tp = caffe_pb2.TransformationParameter()
    tp.CopyFrom(layer_param.transform_param)
    if legacy is not None:
        for name in ("scale", "mean_file", "crop_size", "mirror"):
            if legacy.DESCRIPTOR.fields_by_name.get(name) is not None \
                    and legacy.HasField(name) and not tp.HasField(name):
                setattr(tp, name, getattr(legacy, name))
        if legacy.DESCRIPTOR.fields_by_name.get("force_encoded_color") is not None \
                and legacy.force_encoded_color and not tp.HasField("force_color"):
            tp.force_color = True
    return tp
