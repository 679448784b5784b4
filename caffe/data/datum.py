"""Datum <-> image conversions, as Caffe's util/io.cpp does them.

A ``Datum`` holds one example: raw uint8 pixels (``data``, CxHxW planar BGR), an encoded image
file (``data`` with ``encoded: true``; channels/height/width may be unset), or floats
(``float_data``), plus an integer ``label``.
"""

from __future__ import annotations

import os

import numpy as np

from caffe.data import image
from caffe.proto import caffe_pb2


def parse_datum(value: bytes) -> caffe_pb2.Datum:
    """Deserialize a Datum; raises google.protobuf.message.DecodeError on bad bytes."""
    datum = caffe_pb2.Datum()
    datum.ParseFromString(value)
    return datum


def datum_to_image(datum: caffe_pb2.Datum, force_color: bool = False,
                   force_gray: bool = False) -> np.ndarray:
    """The pixels of ``datum`` as a CxHxW array: uint8 for raw or encoded data, float32 for
    ``float_data``. Encoded data is decoded natively (channels as stored) unless ``force_color``
    (3 channels) or ``force_gray`` (1 channel) is set. Raises ValueError on inconsistent sizes or
    undecodable bytes.
    """
    if datum.encoded:
        if force_color and force_gray:
            raise ValueError("cannot set both force_color and force_gray")
        flag = (image.IMREAD_COLOR if force_color else image.IMREAD_GRAYSCALE if force_gray
                else image.IMREAD_UNCHANGED)
        img = image.imdecode(datum.data, flag)
        if img.dtype != np.uint8:
            raise ValueError(f"Image data type must be unsigned byte (decoded {img.dtype})")
        return image.to_chw(img)
    c, h, w = datum.channels, datum.height, datum.width
    if c <= 0 or h < 0 or w < 0:
        raise ValueError(f"datum has invalid shape channels={c} height={h} width={w}")
    size = c * h * w
    if len(datum.data):
        if len(datum.data) != size:
            raise ValueError(f"datum data holds {len(datum.data)} bytes, expected "
                             f"channels*height*width = {c}*{h}*{w} = {size}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != size:
        raise ValueError(f"datum float_data holds {len(datum.float_data)} values, expected "
                         f"channels*height*width = {c}*{h}*{w} = {size}")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


def image_to_datum(chw: np.ndarray, label: int = 0) -> caffe_pb2.Datum:
    """A raw Datum from a CxHxW uint8 array (Caffe's CVMatToDatum after the HWC->CHW step)."""
    chw = np.asarray(chw)
    if chw.ndim != 3 or chw.dtype != np.uint8:
        raise ValueError(f"image_to_datum needs a CxHxW uint8 array, got {chw.dtype} "
                         f"{chw.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in chw.shape)
    datum.data = np.ascontiguousarray(chw).tobytes()
    datum.label = int(label)
    return datum


def encoded_datum(hwc: np.ndarray, encoding: str, label: int = 0) -> caffe_pb2.Datum:
    """An encoded Datum from an HxW[xC] BGR image (Caffe's EncodeCVMatToDatum)."""
    datum = caffe_pb2.Datum()
    datum.data = image.imencode(hwc, encoding)
    datum.channels = 1 if hwc.ndim == 2 else int(hwc.shape[2])
    datum.height, datum.width = int(hwc.shape[0]), int(hwc.shape[1])
    datum.encoded = True
    datum.label = int(label)
    return datum


def _matches_ext(filename: str, encoding: str) -> bool:
    ext = os.path.splitext(filename)[1].lstrip(".").lower()
    encoding = encoding.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def read_image(filename: str, height: int = 0, width: int = 0,
               is_color: bool = True, min_dim: int = 0, max_dim: int = 0) -> np.ndarray:
    """Caffe's ReadImageToCVMat: HxWxC BGR (or HxW gray) uint8, resized when both sizes > 0.
    The SSD fork's ``min_dim`` / ``max_dim`` (either > 0; they take precedence over the sizes)
    scale both sides by one factor: up until the short side reaches ``min_dim``, then down if
    the long side would pass ``max_dim``.
    Raises ValueError when the file is missing or not an image."""
    img = image.imread(filename, image.IMREAD_COLOR if is_color else image.IMREAD_GRAYSCALE)
    if min_dim > 0 or max_dim > 0:
        factor = _dim_scale_factor(img.shape[0], img.shape[1], min_dim, max_dim)
        if factor != 1:
            img = image.resize_by_factor(img, float(factor))
    elif height > 0 and width > 0:
        img = image.resize(img, width, height)
    return img


def _dim_scale_factor(rows: int, cols: int, min_dim: int, max_dim: int) -> np.float32:
    """The fork's float32 scale factor for ``min_dim`` / ``max_dim``."""
    factor = np.float32(1)
    if min_dim > 0 and min(rows, cols) < min_dim:
        factor = np.float32(min_dim) / np.float32(min(rows, cols))
    if max_dim > 0 and int(factor * np.float32(max(rows, cols))) > max_dim:
        factor = np.float32(max_dim) / np.float32(max(rows, cols))
    return factor


def read_image_to_datum(filename: str, label: int, height: int = 0, width: int = 0,
                        is_color: bool = True, encoding: str = "", min_dim: int = 0,
                        max_dim: int = 0) -> caffe_pb2.Datum:
    """Caffe's ReadImageToDatum. With an ``encoding`` and no resize/colour change the file's own
    bytes are stored (as ReadFileToDatum does, leaving channels/height/width unset); otherwise
    the decoded image is re-encoded, or stored raw when ``encoding`` is empty. ``min_dim`` /
    ``max_dim``: the SSD fork's aspect-keeping resize (see ``read_image``)."""
    img = read_image(filename, height, width, is_color, min_dim, max_dim)
    if encoding:
        native_color = img.ndim == 3 and img.shape[2] == 3
        if native_color == is_color and not height and not width and not min_dim \
                and not max_dim and _matches_ext(filename, encoding):
            datum = caffe_pb2.Datum()
            with open(filename, "rb") as f:
                datum.data = f.read()
            datum.label = int(label)
            datum.encoded = True
            return datum
        return encoded_datum(img, encoding, label)
    return image_to_datum(image.to_chw(img), label)
