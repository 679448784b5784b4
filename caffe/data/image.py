"""Image decoding, encoding and resizing with OpenCV's conventions (BGR, HxWxC, uint8).

OpenCV (``cv2``) is used when it is installed, so that pixels match C++ Caffe's exactly; otherwise
Pillow decodes and encodes (RGB converted to BGR) and torch resizes bilinearly with OpenCV's
half-pixel sampling grid (values may differ from OpenCV's fixed-point ``INTER_LINEAR`` by one
grey level). JPEG decoders can also differ by a grey level; PNG is lossless everywhere.
"""

from __future__ import annotations

import io

import numpy as np

_UNLOADED = object()
# OpenCV (optional extra opencv-python-headless) is imported on first use: it costs ~0.1 s.
cv2 = _UNLOADED

# cv::imread / cv::imdecode flags.
IMREAD_UNCHANGED = -1
IMREAD_GRAYSCALE = 0
IMREAD_COLOR = 1


def _cv():
    """The cv2 module, or None when OpenCV is not installed."""
    global cv2
    if cv2 is _UNLOADED:
        try:
            import cv2 as module
        except ImportError:  # pragma: no cover - exercised only where OpenCV is absent
            module = None
        cv2 = module
    return cv2


def has_opencv() -> bool:
    return _cv() is not None


def imdecode(buffer: bytes, flag: int = IMREAD_COLOR) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) to an HxW (gray) or HxWxC (BGR[A]) uint8 array.

    Raises ValueError when the bytes are not an image this build can decode.
    """
    cv = _cv()
    if cv is not None:
        img = cv.imdecode(np.frombuffer(buffer, dtype=np.uint8), flag)
        if img is None:
            raise ValueError(f"could not decode {len(buffer)} bytes as an image")
        return img
    return _pil_decode(io.BytesIO(buffer), flag)


def imread(path: str, flag: int = IMREAD_COLOR) -> np.ndarray:
    """Read an image file like cv::imread; raises ValueError if it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            buffer = f.read()
    except OSError as exc:
        raise ValueError(f"could not open or find file {path!r} ({exc.strerror})") from None
    try:
        return imdecode(buffer, flag)
    except ValueError:
        raise ValueError(f"could not decode image file {path!r}") from None


def imencode(img: np.ndarray, ext: str) -> bytes:
    """Encode an HxW or HxWxC BGR uint8 image; ``ext`` like 'png' or 'jpg' (cv::imencode)."""
    ext = ext.lower().lstrip(".")
    cv = _cv()
    if cv is not None:
        ok, buf = cv.imencode("." + ext, img)
        if not ok:
            raise ValueError(f"could not encode image as {ext!r}")
        return buf.tobytes()
    from PIL import Image

    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "tif": "TIFF",
           "tiff": "TIFF", "ppm": "PPM", "pgm": "PPM"}.get(ext)
    if fmt is None:
        raise ValueError(f"could not encode image as {ext!r}: unknown format")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        img = img[:, :, 2::-1] if img.shape[2] == 3 else img[:, :, [2, 1, 0, 3]]
    out = io.BytesIO()
    # OpenCV's default JPEG quality is 95.
    Image.fromarray(np.ascontiguousarray(img)).save(out, format=fmt, **(
        {"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize to ``width`` x ``height`` (cv::resize with INTER_LINEAR)."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    cv = _cv()
    if cv is not None:
        out = cv.resize(img, (int(width), int(height)), interpolation=cv.INTER_LINEAR)
        if img.ndim == 3 and out.ndim == 2:
            out = out[:, :, None]
        return out
    import torch
    import torch.nn.functional as F

    chw = torch.from_numpy(np.array(img.reshape(img.shape[0], img.shape[1], -1), copy=True))
    chw = chw.permute(2, 0, 1)[None].to(torch.float32)
    out = F.interpolate(chw, size=(int(height), int(width)), mode="bilinear",
                        align_corners=False)[0].permute(1, 2, 0).numpy()
    if img.dtype == np.uint8:
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    else:
        out = out.astype(img.dtype)
    return out if img.ndim == 3 else out[:, :, 0]


def to_chw(img: np.ndarray) -> np.ndarray:
    """HxW or HxWxC (interleaved, as OpenCV holds it) -> CxHxW planar, as Caffe stores it.

    A strided view, not a copy: the transformer reads it once while writing its output.
    """
    if img.ndim == 2:
        return img[None]
    return img.transpose(2, 0, 1)


def to_hwc(chw: np.ndarray) -> np.ndarray:
    """CxHxW planar -> HxWxC interleaved (for encoding)."""
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


def _pil_decode(stream, flag: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(stream)
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"could not decode image: {exc}") from None
    if flag == IMREAD_GRAYSCALE:
        return np.asarray(im.convert("L"))
    if flag == IMREAD_COLOR:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
    # IMREAD_UNCHANGED: keep gray as gray and alpha as a fourth channel (BGRA).
    if im.mode in ("L", "1"):
        return np.asarray(im.convert("L"))
    if im.mode in ("I;16", "I;16B", "I"):
        return np.asarray(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])
    return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
