"""pycaffe's ``caffe.io``: array/proto conversions, the input Transformer and image helpers.

- ``blobproto_to_array``, ``array_to_blobproto``, ``arraylist_to_blobprotovector_str``,
  ``blobprotovector_str_to_arraylist``, ``array_to_datum``, ``datum_to_array``;
- ``Transformer``: per-input preprocessing of HxWxK images into KxHxW net inputs
  (resize, transpose, channel swap, raw scale, mean, input scale) and its inverse;
- ``load_image`` (float32 in [0, 1], RGB, HxWx3 or HxWx1), ``resize_image``, ``oversample``.
- SSD detection data (from ``caffe.data.annotation``): ``read_label_map``, ``write_label_map``,
  ``label_file_to_label_map``, ``name_to_label``, ``label_to_name``, ``label_to_display_name``,
  ``read_rich_image_to_annotated_datum``, ``annotated_datum_to_array``.

Same names, arguments, checks and messages as pycaffe. Images are read with Pillow (pycaffe used
scikit-image); grey conversion uses scikit-image's weights (0.2125 R + 0.7154 G + 0.0721 B).
``resize_image`` interpolates on the half-pixel grid (bilinear for order 1, nearest for 0) with
edge clamping; other orders use scipy.ndimage.zoom.
"""

from __future__ import annotations

import math

import numpy as np

from caffe.data.annotation import (  # noqa: F401 - the SSD fork's annotation helpers
    annotated_datum_to_array,
    label_file_to_label_map,
    label_to_display_name,
    label_to_name,
    name_to_label,
    read_label_map,
    read_rich_image_to_annotated_datum,
    write_label_map,
)
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2


class IOValueError(CaffeError, ValueError):
    """A bad argument to a caffe.io function (a ValueError, as pycaffe raises)."""


# --- proto / datum / ndarray conversion -----------------------------------------------------
def blobproto_to_array(blob, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff) as an array of its shape (legacy 4-D fields honoured)."""
    values = blob.diff if return_diff else blob.data
    if return_diff and not len(values) and len(blob.double_diff):
        values = blob.double_diff
    elif not return_diff and not len(values) and len(blob.double_data):
        values = blob.double_data
    data = np.array(values)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = [blob.num, blob.channels, blob.height, blob.width]
    else:
        shape = list(blob.shape.dim)
    count = math.prod(shape)
    if count != data.size or min(shape, default=0) < 0:
        what = "diff" if return_diff else "data"
        raise IOValueError(f"BlobProto shape {shape} holds {count} values but its {what} has "
                           f"{data.size}")
    return data.reshape(shape)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None):
    """A BlobProto with ``arr``'s shape and values (and ``diff`` if given), as float."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """Serialize a list of arrays as a BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(str) -> list[np.ndarray]:  # noqa: A002 - pycaffe's name
    """Parse a serialized BlobProtoVector into a list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(str)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None):
    """A Datum from a CxHxW array: raw bytes for uint8, ``float_data`` otherwise."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise IOValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum) -> np.ndarray:
    """The CxHxW array of a Datum (uint8 from ``data``, float64 from ``float_data``); the
    label is ``datum.label``."""
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(
            datum.channels, datum.height, datum.width).copy()
    return np.array(datum.float_data).astype(float).reshape(
        datum.channels, datum.height, datum.width)


# --- pre-processing ---------------------------------------------------------------------------
class Transformer:
    """Transform input for feeding into a Net.

    ``inputs``: {input name: shape (N, K, H, W)}, e.g. ``{'data': net.blobs['data'].data.shape}``.
    ``preprocess`` runs: to float32, resize to (H, W), transpose, channel swap, ``*= raw_scale``,
    ``-= mean``, ``*= input_scale``; ``deprocess`` inverts it.
    """

    def __init__(self, inputs) -> None:
        self.inputs = {name: tuple(shape) for name, shape in dict(inputs).items()}
        self.transpose: dict = {}
        self.channel_swap: dict = {}
        self.raw_scale: dict = {}
        self.mean: dict = {}
        self.input_scale: dict = {}

    def __check_input(self, in_) -> None:
        if in_ not in self.inputs:
            raise CaffeError(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_, data) -> np.ndarray:
        """Format an (H' x W' x K) image for input ``in_``: returns a K x H x W float32 array."""
        self.__check_input(in_)
        # A private float32 copy: the caller's array is never modified.
        caffe_in = np.array(data, dtype=np.float32, copy=True)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[channel_swap, :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data) -> np.ndarray:
        """Invert ``preprocess``: a K x H x W (or 1 x K x H x W) array back to an image."""
        self.__check_input(in_)
        decaf_in = np.array(data, copy=True).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order) -> None:
        """Order of dimensions, e.g. (2, 0, 1) turns H x W x K into K x H x W."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise CaffeError("Transpose order needs to have the same number of dimensions as "
                             "the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order) -> None:
        """Channel order, e.g. (2, 1, 0) for RGB -> BGR (channels are the first axis after the
        transpose)."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise CaffeError("Channel swap needs to have the same number of dimensions as the "
                             "input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale) -> None:
        """Scale applied before the mean: e.g. 255 for models trained on [0, 255] images."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean) -> None:
        """Mean to subtract: one value per channel (K,) or an elementwise (K x H x W) array
        (resized to the input size if it differs)."""
        self.__check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise IOValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise IOValueError("Mean shape invalid")
            if ms != self.inputs[in_][1:]:
                in_shape = self.inputs[in_][1:]
                m_min, m_max = mean.min(), mean.max()
                normal_mean = (mean - m_min) / (m_max - m_min)
                mean = resize_image(normal_mean.transpose((1, 2, 0)),
                                    in_shape[1:]).transpose((2, 0, 1)) * \
                    (m_max - m_min) + m_min
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale) -> None:
        """Scale applied after mean subtraction (raw_scale comes before)."""
        self.__check_input(in_)
        self.input_scale[in_] = scale


# --- image IO ---------------------------------------------------------------------------------
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """Load an image as float32 in [0, 1]: H x W x 3 RGB (``color``) or H x W x 1 intensity.
    Grey images are tiled to 3 channels when ``color``; alpha is dropped."""
    from PIL import Image

    try:
        with Image.open(filename) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("L" if im.mode == "1" else "RGB")
            arr = np.asarray(im)
    except OSError as exc:
        raise CaffeError(f"load_image: cannot read {filename!r}: {exc}") from None
    if arr.dtype == np.uint8:
        img = arr / 255.0
    elif arr.dtype.kind in "ui":  # 16-bit images (Pillow's I;16 or I modes)
        img = arr / 65535.0
    else:
        img = arr.astype(np.float64)
    if img.ndim == 3 and img.shape[2] == 2:  # grey + alpha
        img = img[:, :, 0]
    if img.ndim == 3 and not color:
        img = img[:, :, :3] @ _GRAY_WEIGHTS
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def resize_image(im: np.ndarray, new_dims, interp_order: int = 1) -> np.ndarray:
    """Resize an H x W x K array to ``new_dims`` (height, width), as float32."""
    im = np.asarray(im)
    new_dims = (int(new_dims[0]), int(new_dims[1]))
    if im.shape[-1] in (1, 3) and im.size and im.min() == im.max():
        # A constant image stays constant (and avoids any interpolation noise).
        ret = np.empty((new_dims[0], new_dims[1], im.shape[-1]), dtype=np.float32)
        ret.fill(im.min())
        return ret
    if interp_order in (0, 1):
        import torch
        import torch.nn.functional as F

        src = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float64))
        src = src.permute(2, 0, 1)[None]
        mode = "bilinear" if interp_order == 1 else "nearest-exact"
        kwargs = {"align_corners": False} if interp_order == 1 else {}
        out = F.interpolate(src, size=new_dims, mode=mode, **kwargs)[0].permute(1, 2, 0)
        return out.numpy().astype(np.float32)
    from scipy.ndimage import zoom

    scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
    resized = zoom(im, scale + (1,), order=interp_order, mode="nearest", grid_mode=True)
    return resized.astype(np.float32)


def oversample(images, crop_dims) -> np.ndarray:
    """The 4 corner crops and the centre crop of each image, then their mirrors: 10 crops
    per image (10*N x h x w x K), in pycaffe's order."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0
    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    curr = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[curr] = (i, j, i + crop_dims[0], j + crop_dims[1])
            curr += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0,
                                                                crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]),
                     dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]
    return crops
