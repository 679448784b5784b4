"""Coordinate maps between the tops of a NetSpec net (pycaffe's ``caffe.coord_map``).

Each spatial layer relates an output coordinate ``y`` to an input coordinate ``x`` by an affine
map per spatial axis, ``y = a * x + b``, written as ``(axis, a, b)`` where ``axis`` is the first
axis the map applies to (``None`` for layers that leave coordinates alone):

- Convolution, Pooling, Im2col (stride s, dilated kernel k, pad p):
  ``a = 1 / s``, ``b = (p - (k - 1) / 2) / s``;
- Deconvolution: ``a = s``, ``b = (k - 1) / 2 - p``;
- Crop (offset o from ``crop_param.axis``): ``a = 1``, ``b = -o``;
- element-wise layers (ReLU, BatchNorm, Eltwise, ...): the identity ``(None, 1, 0)``.

``coord_map_from_to(top_from, top_to)`` composes those maps along the graph to a common
ancestor and gives the map taking ``top_to`` coordinates to ``top_from`` coordinates;
``crop(top_from, top_to)`` uses it to write the Crop layer that aligns ``top_from`` with
``top_to``, as FCN nets do after upsampling.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from caffe.errors import CaffeError
from caffe.net_spec import Function, Top
from caffe.net_spec import layers as L

__all__ = ["coord_map", "coord_map_from_to", "compose", "inverse", "crop", "conv_params",
           "crop_params", "UndefinedMapException", "AxisMismatchException",
           "UnconnectedTopsError", "CropMismatchError", "PASS_THROUGH_LAYERS"]

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log",
                       "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split",
                       "TanH", "Threshold"]

CoordMap = tuple[Any, Any, Any]


class UndefinedMapException(CaffeError):
    """The layer has no coordinate map (InnerProduct, global pooling, ...)."""


class AxisMismatchException(CaffeError):
    """Two maps start at different axes and cannot be composed."""


class UnconnectedTopsError(CaffeError, RuntimeError):
    """No chain of spatial layers joins the two tops."""


class CropMismatchError(CaffeError, AssertionError):
    """The map between two tops is not a whole, non-negative shift, so Crop cannot align them."""


def _per_axis(values: Any, default: Any) -> np.ndarray:
    return np.array(default if values is None else values, ndmin=1)


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(axis, stride, dilated kernel extent, pad)`` of a Convolution/Deconvolution/Im2col or
    Pooling layer, from its parameter message dict or its flat keywords."""
    message = "pooling_param" if fn.type_name == "Pooling" else "convolution_param"
    params = fn.params.get(message, fn.params)
    if params.get("global_pooling"):
        raise UndefinedMapException(f"{fn.type_name} with global_pooling has no coordinate map")
    axis = params.get("axis", 1)
    if "kernel_h" in params or "kernel_w" in params:
        kernel = _per_axis([params["kernel_h"], params["kernel_w"]], None)
    elif "kernel_size" in params:
        kernel = _per_axis(params["kernel_size"], None)
    else:
        raise UndefinedMapException(f"{fn.type_name} without kernel_size has no coordinate map")
    if "stride_h" in params or "stride_w" in params:
        stride = _per_axis([params.get("stride_h", 1), params.get("stride_w", 1)], None)
    else:
        stride = _per_axis(params.get("stride"), 1)
    if "pad_h" in params or "pad_w" in params:
        pad = _per_axis([params.get("pad_h", 0), params.get("pad_w", 0)], None)
    else:
        pad = _per_axis(params.get("pad"), 0)
    dilation = _per_axis(params.get("dilation"), 1)
    # A value given once holds for every spatial axis, as in ConvolutionParameter.
    num = max(len(kernel), len(stride), len(pad), len(dilation))
    if any(len(v) not in (1, num) for v in (kernel, stride, pad, dilation)):
        raise UndefinedMapException(f"{fn.type_name}: kernel {kernel}, stride {stride}, pad "
                                    f"{pad} and dilation {dilation} disagree on the number of "
                                    "spatial axes")
    kernel, stride, pad, dilation = (np.repeat(v, num) if len(v) == 1 else v
                                     for v in (kernel, stride, pad, dilation))
    return axis, stride, (kernel - 1) * dilation + 1, pad


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """``(axis, offset)`` of a Crop layer, with Caffe's defaults (axis 2, offset 0)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), _per_axis(params.get("offset"), 0)


def coord_map(fn: Function) -> CoordMap:
    """The ``(axis, scale, shift)`` map from a layer's bottom coordinates to its top's."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        # The map's axis counts from the last non-spatial axis, as the conv maps' axis does.
        return axis - 1, 1, -offset
    raise UndefinedMapException(f"layer type {fn.type_name} has no coordinate map")


def compose(base_map: CoordMap, next_map: CoordMap) -> CoordMap:
    """Apply ``next_map`` after ``base_map``: scales multiply, the next shift is scaled by
    the base scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException(f"cannot compose coordinate maps on axis {ax1} and {ax2}")
    return axis, a1 * a2, a1 * b2 + b1


def inverse(coord_map: CoordMap) -> CoordMap:
    """The map back: ``x = (y - b) / a``."""
    axis, a, b = coord_map
    return axis, 1 / a, -b / a


def _mapped_bottoms(top: Top) -> tuple[Top, ...]:
    # A Crop layer's second bottom only gives the output shape; coordinates follow the first.
    if top.fn.type_name == "Crop":
        return top.fn.inputs[:1]
    return top.fn.inputs


def _ancestor_maps(start: Top) -> Iterator[tuple[Top, CoordMap]]:
    """Walk up from ``start`` through layers with a coordinate map, depth first, yielding each
    blob reached and the composition of the maps of the layers between it and ``start``."""
    maps: dict[Top, CoordMap] = {start: (None, 1, 0)}
    frontier = [start]
    while frontier:
        top = frontier.pop()
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(top):
            maps[bottom] = compose(maps[top], step)
            frontier.append(bottom)


def coord_map_from_to(top_from: Top, top_to: Top) -> CoordMap:
    """The map from ``top_to`` coordinates to ``top_from`` coordinates, through the nearest
    common ancestor blob of the two tops."""
    from_maps = dict(_ancestor_maps(top_from))
    for top, to_map in _ancestor_maps(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise UnconnectedTopsError("could not compute the coordinate map between the tops: they are "
                               f"not joined by spatial layers ({top_from.fn.type_name} top and "
                               f"{top_to.fn.type_name} top)")


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer that cuts ``top_from`` to the extent of ``top_to``, aligned by the
    coordinate map between them (which must be a whole, non-negative shift)."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    a = np.asarray(a)
    b = np.asarray(b)
    if not (a == 1).all():
        raise CropMismatchError(f"scale mismatch on crop (a = {a}): the tops have different "
                                "strides")
    if not (b <= 0).all():
        raise CropMismatchError(f"cannot crop negative offset (b = {b}): top_from is smaller "
                                "than top_to")
    if not (np.round(b) == b).all():
        raise CropMismatchError(f"cannot crop noninteger offset (b = {b})")
    # Crop counts axes from the first cropped one, one past the map's axis; a map through
    # element-wise layers only (axis None) is a zero shift, for which Crop's default axis does.
    offsets = [int(o) for o in np.atleast_1d(-np.round(b))]
    crop_axis = 2 if axis is None else axis + 1
    return L.Crop(top_from, top_to, crop_param=dict(axis=crop_axis, offset=offsets))
