"""SSD's image transforms (the fork's util/im_transforms): resize policies, noise, distortion.

Images are HxWxC arrays (OpenCV's layout, BGR), uint8 unless noted. The box side of a resize
policy (``update_bbox_by_resize_policy``, ``extrapolate_bbox``, ``infer_new_size``) is the
fork's float32 arithmetic in its operation order, so boxes match it exactly.

As in the fork, ``ResizeParameter.prob`` and ``NoiseParameter.prob`` are not consulted: a
resize or noise policy that is set is always applied. Resizing with ``interp_mode`` LINEAR
works without OpenCV (caffe.data.image.resize); every other interpolation, the noise effects,
and saturation/hue distortion need OpenCV (the ``data`` extra: opencv-python-headless).
"""

from __future__ import annotations

import numpy as np

from caffe.data import image
from caffe.errors import DataError
from caffe.proto import caffe_pb2

F32 = np.float32
RP = caffe_pb2.ResizeParameter
WARP, FIT_SMALL_SIZE, FIT_LARGE_SIZE_AND_PAD = RP.WARP, RP.FIT_SMALL_SIZE, \
    RP.FIT_LARGE_SIZE_AND_PAD

# ResizeParameter.Interp_mode -> OpenCV interpolation flag.
_CV_INTERP = {RP.LINEAR: 1, RP.AREA: 3, RP.NEAREST: 0, RP.CUBIC: 2, RP.LANCZOS4: 4}
_NUMPY_PAD = {RP.MIRRORED: "reflect", RP.REPEAT_NEAREST: "edge"}  # BORDER_REFLECT101, _REPLICATE


def require_opencv(what: str):
    """The cv2 module, or a DataError naming the extra that provides it."""
    cv = image._cv()
    if cv is None:
        raise DataError(f"{what} needs OpenCV: pip install 'caffepy[data]' "
                        f"(opencv-python-headless)")
    return cv


# --- resize policy: geometry ---------------------------------------------------------------
def infer_new_size(param: caffe_pb2.ResizeParameter, old_width: int, old_height: int
                   ) -> tuple[int, int]:
    """InferNewSize: (width, height) an old_width x old_height image has after resizing."""
    height, width = int(param.height), int(param.width)
    if param.resize_mode == FIT_SMALL_SIZE:
        orig_aspect = F32(old_width) / F32(old_height)
        aspect = F32(width) / F32(height)
        if orig_aspect < aspect:
            height = int(F32(width) / orig_aspect)
        else:
            width = int(orig_aspect * F32(height))
    elif param.resize_mode not in (WARP, FIT_LARGE_SIZE_AND_PAD):
        raise DataError(f"Unknown resize mode {param.resize_mode}")
    return width, height


def update_bbox_by_resize_policy(param: caffe_pb2.ResizeParameter, old_width: int,
                                 old_height: int, boxes: np.ndarray) -> np.ndarray:
    """UpdateBBoxByResizePolicy: normalized boxes (K, 4) of an old_width x old_height image in
    the coordinates of the resized image (padding included for FIT_LARGE_SIZE_AND_PAD)."""
    new_height, new_width = F32(param.height), F32(param.width)
    ow, oh = F32(old_width), F32(old_height)
    orig_aspect = ow / oh
    new_aspect = new_width / new_height
    zero = F32(0)
    x_min, y_min = boxes[:, 0] * ow, boxes[:, 1] * oh
    x_max, y_max = boxes[:, 2] * ow, boxes[:, 3] * oh

    def scaled(lo, hi, new, old):
        return np.maximum(zero, lo * new / old), np.minimum(new, hi * new / old)

    mode = param.resize_mode
    if mode == WARP:
        x_min, x_max = scaled(x_min, x_max, new_width, ow)
        y_min, y_max = scaled(y_min, y_max, new_height, oh)
    elif mode == FIT_LARGE_SIZE_AND_PAD:
        two = F32(2)
        if orig_aspect > new_aspect:
            padding = (new_height - new_width / orig_aspect) / two
            x_min, x_max = scaled(x_min, x_max, new_width, ow)
            inner = new_height - two * padding
            y_min = padding + np.maximum(zero, y_min * inner / oh)
            y_max = padding + np.minimum(new_height, y_max * inner / oh)
        else:
            padding = (new_width - orig_aspect * new_height) / two
            inner = new_width - two * padding
            x_min = padding + np.maximum(zero, x_min * inner / ow)
            x_max = padding + np.minimum(new_width, x_max * inner / ow)
            y_min, y_max = scaled(y_min, y_max, new_height, oh)
    elif mode == FIT_SMALL_SIZE:
        if orig_aspect < new_aspect:
            new_height = new_width / orig_aspect
        else:
            new_width = orig_aspect * new_height
        x_min, x_max = scaled(x_min, x_max, new_width, ow)
        y_min, y_max = scaled(y_min, y_max, new_height, oh)
    else:
        raise DataError(f"Unknown resize mode {mode}")
    return np.stack([x_min / new_width, y_min / new_height, x_max / new_width,
                     y_max / new_height], axis=-1).astype(F32)


def extrapolate_bbox(param: caffe_pb2.ResizeParameter, height: int, width: int,
                     crop_box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """ExtrapolateBBox: with FIT_SMALL_SIZE and height_scale/width_scale set, boxes scaled from
    the crop to the (height_scale, width_scale) frame; otherwise unchanged."""
    h_scale, w_scale = F32(param.height_scale), F32(param.width_scale)
    if not (h_scale > 0 and w_scale > 0 and param.resize_mode == FIT_SMALL_SIZE):
        return boxes
    orig_aspect = F32(width) / F32(height)
    resize_height, resize_width = F32(param.height), F32(param.width)
    if orig_aspect < resize_width / resize_height:
        resize_height = resize_width / orig_aspect
    else:
        resize_width = resize_height * orig_aspect
    crop_height = resize_height * (crop_box[3] - crop_box[1])
    crop_width = resize_width * (crop_box[2] - crop_box[0])
    if crop_width < w_scale or crop_height < h_scale:
        raise DataError(f"crop of {crop_width} x {crop_height} pixels is smaller than "
                        f"width_scale x height_scale {w_scale} x {h_scale}")
    factor = np.array([crop_width / w_scale, crop_height / h_scale] * 2, dtype=F32)
    return (boxes * factor).astype(F32)


# --- resize policy: pixels -----------------------------------------------------------------
def _resize(img: np.ndarray, width: int, height: int, interp: int) -> np.ndarray:
    if interp == RP.LINEAR and image._cv() is None:
        out = image.resize(img, width, height)
    else:
        cv = require_opencv(f"resize_param interp_mode {RP.Interp_mode.Name(interp)}")
        out = cv.resize(np.ascontiguousarray(img), (int(width), int(height)),
                        interpolation=_CV_INTERP[interp])
    return out.reshape(out.shape[0], out.shape[1], img.shape[2])


def _pad(img: np.ndarray, top: int, bottom: int, left: int, right: int,
         param: caffe_pb2.ResizeParameter) -> np.ndarray:
    if param.pad_mode in _NUMPY_PAD:
        return np.pad(img, ((top, bottom), (left, right), (0, 0)), mode=_NUMPY_PAD[param.pad_mode])
    channels = img.shape[2]
    values = np.zeros(channels)
    if len(param.pad_value):
        if len(param.pad_value) not in (1, channels):
            raise DataError(f"Specify either 1 pad_value or as many as channels: {channels}")
        values[:] = np.asarray(param.pad_value, dtype=F32)[:channels]
    if img.dtype == np.uint8:  # cv::Scalar is saturated to the image's depth
        values = np.clip(np.rint(values), 0, 255)
    out = np.empty((img.shape[0] + top + bottom, img.shape[1] + left + right, channels),
                   dtype=img.dtype)
    out[...] = values.astype(img.dtype)
    out[top:top + img.shape[0], left:left + img.shape[1]] = img
    return out


def apply_resize(img: np.ndarray, param: caffe_pb2.ResizeParameter, interp: int
                 ) -> np.ndarray:
    """ApplyResize with the interpolation ``interp`` (drawn by the caller from interp_mode)."""
    new_height, new_width = int(param.height), int(param.width)
    rows, cols = img.shape[:2]
    orig_aspect = F32(cols) / F32(rows)
    new_aspect = F32(new_width) / F32(new_height)
    mode = param.resize_mode
    if mode == WARP:
        return _resize(img, new_width, new_height, interp)
    if mode == FIT_LARGE_SIZE_AND_PAD:
        if orig_aspect > new_aspect:
            height = int(np.floor(F32(new_width) / orig_aspect))
            out = _resize(img, new_width, height, interp)
            pad = int(np.floor((new_height - height) / 2.0))
            return _pad(out, pad, new_height - height - pad, 0, 0, param)
        width = int(np.floor(orig_aspect * F32(new_height)))
        out = _resize(img, width, new_height, interp)
        pad = int(np.floor((new_width - width) / 2.0))
        return _pad(out, 0, 0, pad, new_width - width - pad, param)
    if mode == FIT_SMALL_SIZE:
        if orig_aspect < new_aspect:
            return _resize(img, new_width, int(np.floor(F32(new_width) / orig_aspect)), interp)
        return _resize(img, int(np.floor(orig_aspect * F32(new_height))), new_height, interp)
    raise DataError(f"Unknown resize mode {mode}")


# --- noise ---------------------------------------------------------------------------------
def check_noise_param(param: caffe_pb2.NoiseParameter) -> None:
    """Refuse, at setup, the noise options the pipeline cannot honour."""
    if param.convert_to_lab:
        raise DataError("noise_param.convert_to_lab is not supported: it makes a float Lab "
                        "image, which the fork's transformer then reads as bytes")
    if param.saltpepper and len(param.saltpepper_param.value) == 0:
        raise DataError("noise_param.saltpepper needs saltpepper_param.value (1 or one per "
                        "channel)")
    if any((param.decolorize, param.gauss_blur, param.hist_eq, param.clahe, param.jpeg > 0,
            param.erode, param.convert_to_hsv)):
        require_opencv("noise_param")


def _on_luma(cv, img: np.ndarray, fn) -> np.ndarray:
    if img.shape[2] == 1:
        return fn(img[:, :, 0])[:, :, None]
    ycrcb = cv.cvtColor(img, cv.COLOR_BGR2YCrCb)
    ycrcb[:, :, 0] = fn(np.ascontiguousarray(ycrcb[:, :, 0]))
    return cv.cvtColor(ycrcb, cv.COLOR_YCrCb2BGR)


def apply_noise(img: np.ndarray, param: caffe_pb2.NoiseParameter, rng: np.random.Generator
                ) -> np.ndarray:
    """ApplyNoise: the enabled effects in the fork's order (decolorize, gauss_blur, hist_eq,
    clahe, jpeg, erode, posterize, inverse, saltpepper, convert_to_hsv) on a uint8 image."""
    if img.dtype != np.uint8:
        raise DataError(f"noise_param needs uint8 pixels, got {img.dtype}")
    out = np.ascontiguousarray(img)
    cv = image._cv()
    if param.decolorize:
        gray = cv.cvtColor(out, cv.COLOR_BGR2GRAY)
        out = cv.cvtColor(gray, cv.COLOR_GRAY2BGR)
    if param.gauss_blur:
        out = cv.GaussianBlur(out, (7, 7), 1.5).reshape(out.shape)
    if param.hist_eq:
        out = _on_luma(cv, out, cv.equalizeHist)
    if param.clahe:
        out = _on_luma(cv, out, cv.createCLAHE(clipLimit=4).apply)
    if param.jpeg > 0:
        ok, buf = cv.imencode(".jpg", out, [cv.IMWRITE_JPEG_QUALITY, int(param.jpeg)])
        out = cv.imdecode(buf, cv.IMREAD_COLOR)
    if param.erode:
        element = cv.getStructuringElement(cv.MORPH_ELLIPSE, (3, 3), (1, 1))
        out = cv.erode(out, element).reshape(out.shape)
    if param.posterize:  # colorReduce with div 64
        out = (out // 64 * 64 + 32).astype(np.uint8)
    if param.inverse:
        out = 255 - out
    if param.saltpepper:
        values = np.asarray(param.saltpepper_param.value, dtype=F32)
        channels = out.shape[2]
        if len(values) not in (1, channels):
            raise DataError(f"Specify either 1 saltpepper value or as many as channels: "
                            f"{channels}")
        count = int(np.floor(F32(param.saltpepper_param.fraction) * out.shape[1]
                             * out.shape[0]))
        out = out.copy()
        cols = rng.integers(0, out.shape[1], count)
        rows = rng.integers(0, out.shape[0], count)
        out[rows, cols] = values.astype(np.uint8)
    if param.convert_to_hsv:
        out = cv.cvtColor(out, cv.COLOR_BGR2HSV)
    return out.reshape(out.shape[0], out.shape[1], -1)


# --- photometric distortion ----------------------------------------------------------------
def _convert(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """cv::Mat::convertTo(-1, alpha, beta) on uint8: saturate(round(alpha * x + beta))."""
    value = img.astype(F32) * F32(alpha) + F32(beta)
    return np.clip(np.rint(value), 0, 255).astype(np.uint8)


def draw_distortion(param: caffe_pb2.DistortionParameter, rng: np.random.Generator) -> list:
    """ApplyDistort's random choices, in its order: a list of (op, value) steps."""
    def coin(prob: float) -> bool:
        return rng.random() < prob

    steps = []
    contrast_first = rng.random() > 0.5
    order = (("brightness", "contrast", "saturation", "hue") if contrast_first
             else ("brightness", "saturation", "hue", "contrast"))
    for name in order:
        if name == "brightness" and coin(param.brightness_prob):
            delta = F32(param.brightness_delta)
            steps.append(("brightness", rng.uniform(-delta, delta)))
        elif name == "contrast" and coin(param.contrast_prob):
            steps.append(("contrast", rng.uniform(param.contrast_lower, param.contrast_upper)))
        elif name == "saturation" and coin(param.saturation_prob):
            steps.append(("saturation", rng.uniform(param.saturation_lower,
                                                    param.saturation_upper)))
        elif name == "hue" and coin(param.hue_prob):
            delta = F32(param.hue_delta)
            steps.append(("hue", rng.uniform(-delta, delta)))
    if coin(param.random_order_prob):
        steps.append(("order", rng.permutation(3)))
    return steps


def check_distort_param(param: caffe_pb2.DistortionParameter) -> None:
    """The fork's CHECKs on the distortion ranges, at setup."""
    if param.brightness_delta < 0:
        raise DataError("brightness_delta must be non-negative.")
    if param.hue_delta < 0:
        raise DataError("hue_delta must be non-negative.")
    for name in ("contrast", "saturation"):
        lower, upper = getattr(param, f"{name}_lower"), getattr(param, f"{name}_upper")
        if getattr(param, f"{name}_prob") > 0:
            if upper < lower:
                raise DataError(f"{name} upper must be >= lower.")
            if lower < 0:
                raise DataError(f"{name} lower must be non-negative.")
    if param.saturation_prob > 0 or param.hue_prob > 0:
        require_opencv("distort_param saturation/hue")


def _on_hsv(img: np.ndarray, channel: int, alpha: float, beta: float) -> np.ndarray:
    cv = require_opencv("distort_param saturation/hue")
    hsv = cv.cvtColor(np.ascontiguousarray(img), cv.COLOR_BGR2HSV)
    hsv[:, :, channel] = _convert(hsv[:, :, channel], alpha, beta)
    return cv.cvtColor(hsv, cv.COLOR_HSV2BGR)


def apply_distortion(img: np.ndarray, steps: list) -> np.ndarray:
    """ApplyDistort with drawn ``steps``: brightness adds, contrast multiplies, saturation
    scales S and hue shifts H in OpenCV's 8-bit HSV (saturating, as convertTo does), order
    permutes the three channels."""
    if not steps:
        return img
    if img.dtype != np.uint8:
        raise DataError(f"distort_param needs uint8 pixels, got {img.dtype}")
    out = img
    for op, value in steps:
        if op in ("saturation", "hue", "order") and out.shape[2] != 3:
            raise DataError(f"distort_param {op} needs a 3-channel image, got "
                            f"{out.shape[2]} channels")
        if op == "brightness" and abs(value) > 0:
            out = _convert(out, 1, value)
        elif op == "contrast" and abs(value - 1) > 1e-3:
            out = _convert(out, value, 0)
        elif op == "saturation":
            out = _on_hsv(out, 1, value, 0)
        elif op == "hue" and abs(value) > 0:
            out = _on_hsv(out, 0, 1, value)
        elif op == "order":
            out = out[:, :, value]
    return out
