"""Image decoding, encoding and resizing with OpenCV's conventions (BGR, HxWxC, uint8).

OpenCV (``cv2``) is used when it is installed, so that pixels match C++ Caffe's exactly; otherwise
Pillow decodes and encodes (RGB converted to BGR) and torch resizes bilinearly with OpenCV's
half-pixel sampling grid (values may differ from OpenCV's fixed-point ``INTER_LINEAR`` by one
grey level). JPEG decoders can also differ by a grey level; PNG is lossless everywhere.
"""

from __future__ import annotations

import io
import os

import numpy as np

from caffe.errors import DataError

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
    """Whether cv2 (the ``data`` extra's opencv-python-headless) is importable."""
    return _cv() is not None


# Decoding allocates width x height x channels bytes before a pixel is read, so the size an
# image's header declares is bounded first (128 Mpixel, e.g. 16384 x 8192; C++ Caffe has none).
MAX_PIXELS_ENV = "CAFFE_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 1 << 27


class ImageSizeError(DataError, ValueError):
    """An encoded image whose header declares more pixels than the configured bound (a caffe
    error that is also the ValueError image decoding raises, for existing handlers)."""


def max_pixels() -> int:
    """The pixel bound: ``CAFFE_MAX_IMAGE_PIXELS`` when set, else ``DEFAULT_MAX_PIXELS``."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{MAX_PIXELS_ENV}={value!r}: expected an integer") from None


def _png_size(buffer: bytes) -> tuple[int, int] | None:
    if buffer[:8] == b"\x89PNG\r\n\x1a\n" and buffer[12:16] == b"IHDR" and len(buffer) >= 24:
        return int.from_bytes(buffer[16:20], "big"), int.from_bytes(buffer[20:24], "big")
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(buffer: bytes) -> tuple[int, int] | None:
    """Width and height from the first start-of-frame segment, walking the segment lengths."""
    if buffer[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(buffer)
    while pos + 4 <= end:
        if buffer[pos] != 0xFF:
            return None
        marker = buffer[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # segments without a length
            pos += 2
            continue
        length = int.from_bytes(buffer[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF and pos + 9 <= end:
            return (int.from_bytes(buffer[pos + 7:pos + 9], "big"),
                    int.from_bytes(buffer[pos + 5:pos + 7], "big"))
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        pos += 2 + length
    return None


def _pil_size(buffer: bytes) -> tuple[int, int] | None:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is in the data extra
        return None
    try:
        with Image.open(io.BytesIO(buffer)) as im:  # reads the header only
            return im.size
    except Image.DecompressionBombError:
        return (1 << 31, 1 << 31)
    except Exception:  # noqa: BLE001 - not an image Pillow knows: the decoder will say so
        return None


def declared_size(buffer: bytes) -> tuple[int, int] | None:
    """(width, height) an encoded image's header declares, without decoding it; None when
    the format is not recognised."""
    return _png_size(buffer) or _jpeg_size(buffer) or _pil_size(buffer)


def check_declared_size(buffer: bytes) -> None:
    """Refuse an image whose header declares more than ``max_pixels()`` pixels."""
    size = declared_size(buffer)
    limit = max_pixels()
    if size is not None and size[0] * size[1] > limit:
        raise ImageSizeError(f"encoded image ({len(buffer)} bytes) declares {size[0]}x{size[1]} "
                             f"pixels, more than the limit of {limit} ({MAX_PIXELS_ENV})")


def imdecode(buffer: bytes, flag: int = IMREAD_COLOR) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) to an HxW (gray) or HxWxC (BGR[A]) uint8 array.

    Raises ValueError when the bytes are not an image this build can decode, and
    ``ImageSizeError`` (a DataError and a ValueError) when its header declares more pixels
    than ``max_pixels()``, before anything is allocated for them.
    """
    buffer = bytes(buffer)
    check_declared_size(buffer)
    cv = _cv()
    if cv is not None:
        try:
            img = cv.imdecode(np.frombuffer(buffer, dtype=np.uint8), flag)
        except cv.error as exc:  # OpenCV's own checks (its pixel limit, a broken header)
            raise ValueError(f"could not decode {len(buffer)} bytes as an image: "
                             f"{str(exc).strip().splitlines()[-1][:200]}") from None
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
    except ImageSizeError as exc:
        raise ImageSizeError(f"image file {path!r}: {exc}") from None
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


def resize_by_factor(img: np.ndarray, factor: float) -> np.ndarray:
    """Bilinear resize by ``factor`` on both axes (cv::resize with dsize (0, 0) and fx = fy):
    each side becomes ``round(side * factor)`` (half to even, as cvRound) and OpenCV samples
    with the factor itself rather than the rounded size ratio."""
    width = int(np.rint(img.shape[1] * float(factor)))
    height = int(np.rint(img.shape[0] * float(factor)))
    cv = _cv()
    if cv is None:
        return resize(img, width, height)
    out = cv.resize(img, None, fx=float(factor), fy=float(factor), interpolation=cv.INTER_LINEAR)
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


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
