"""pycaffe's ``Detector``: windowed detection (R-CNN style) with a Net in TEST phase.

Each window ``(ymin, xmin, ymax, xmax)`` of an image is cut out, warped to the net's input
size by the Transformer and classified; all windows of all images go through the net in
batches. With ``context_pad`` the window is first enlarged so that, once warped, a border of
``context_pad`` pixels of the net input shows the window's surroundings (as R-CNN's feature
extraction does); parts of that border outside the image are filled with the mean.

Selective Search proposals need an external MATLAB tool and are not available: compute the
windows elsewhere and pass them to ``detect_windows``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from caffe import io as caffe_io
from caffe.classifier import configure_transformer
from caffe.errors import CaffeError
from caffe.net import Net
from caffe.proto import caffe_pb2

CROP_MODES = ("list", "selective_search")


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None, context_pad=None)``."""

    def __init__(self, model_file, pretrained_file, mean: np.ndarray | None = None,
                 input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None, context_pad: int | None = None
                 ) -> None:
        Net.__init__(self, model_file, phase=caffe_pb2.TEST, weights=pretrained_file)
        if not self.inputs:
            raise CaffeError("Detector: the net has no input blob to feed windows into")
        self.transformer = configure_transformer(self, mean, input_scale, raw_scale,
                                                 channel_swap)
        self.configure_crop(context_pad)

    def detect(self, inputs, crop_mode: str = "list") -> list[dict]:
        """Detections by crop mode, as Caffe's detect.py chooses: ``"list"`` takes
        ``(image, windows)`` pairs, ``"selective_search"`` image file names."""
        if crop_mode == "list":
            return self.detect_windows(inputs)
        if crop_mode == "selective_search":
            return self.detect_selective_search(inputs)
        raise CaffeError(f"Detector: unknown crop_mode {crop_mode!r} (one of "
                         f"{', '.join(CROP_MODES)})")

    def detect_windows(self, images_windows: Iterable[tuple[object, Sequence]]) -> list[dict]:
        """Classify the given windows of the given images.

        ``images_windows``: ``(image, windows)`` pairs, where ``image`` is a file name (read
        with ``caffe.io.load_image``) or an H x W x K array, and ``windows`` are
        ``(ymin, xmin, ymax, xmax)`` boxes (end exclusive). Returns one dict per window:
        ``{"window", "prediction", "filename"}`` in the order given.
        """
        images_windows = [(image, [np.asarray(w) for w in windows])
                          for image, windows in images_windows]
        window_inputs = []
        for image, windows in images_windows:
            if isinstance(image, np.ndarray):
                pixels = image.astype(np.float32)
            else:
                pixels = caffe_io.load_image(image).astype(np.float32)
            if pixels.ndim == 2:
                pixels = pixels[:, :, np.newaxis]
            for window in windows:
                window_inputs.append(self.crop(pixels, window))
        if not window_inputs:
            return []

        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2])
                            + tuple(self.blobs[in_].data.shape[2:]), dtype=np.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]

        detections = []
        ix = 0
        for image, windows in images_windows:
            filename = None if isinstance(image, np.ndarray) else image
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix],
                                   "filename": filename})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames: Iterable[str]) -> list[dict]:
        """Not available: Selective Search needs the MATLAB selective_search_ijcv_with_python
        package, which caffepy does not ship."""
        raise CaffeError("Detector.detect_selective_search: Selective Search window proposals "
                         "are not available in caffepy (they need the external MATLAB tool "
                         "selective_search_ijcv_with_python); compute the windows elsewhere and "
                         "pass (image, windows) pairs to detect_windows")

    def crop(self, im: np.ndarray, window: Sequence[float]) -> np.ndarray:
        """Cut ``window`` (ymin, xmin, ymax, xmax) out of ``im`` (H x W x K), with context
        around it when ``context_pad`` is set."""
        window = np.asarray(window)
        im_h, im_w = im.shape[:2]
        ymin, xmin, ymax, xmax = (int(v) for v in window[:4])
        if not (0 <= ymin < ymax <= im_h and 0 <= xmin < xmax <= im_w):
            raise CaffeError(f"Detector: window {tuple(window.tolist())} (ymin, xmin, ymax, "
                             f"xmax) is empty or outside the {im_h}x{im_w} image")
        if not self.context_pad:
            return im[ymin:ymax, xmin:xmax]

        crop_size = self.blobs[self.inputs[0]].width  # square inputs, as R-CNN uses
        # Enlarge the box so that the window fills all but context_pad pixels of each side.
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        box = window[:4].astype(np.float64)
        half_h = (box[2] - box[0] + 1) / 2.0
        half_w = (box[3] - box[1] + 1) / 2.0
        center = (box[0] + half_h, box[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        full_h = box[2] - box[0] + 1
        full_w = box[3] - box[1] + 1
        scale_h = crop_size / full_h
        scale_w = crop_size / full_w
        # Where the enlarged box leaves the image, the warped crop starts this far in.
        pad_y = int(round(max(0.0, -box[0]) * scale_h))
        pad_x = int(round(max(0.0, -box[1]) * scale_w))

        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise CaffeError(f"Detector: window {tuple(window.tolist())} has no pixels inside "
                             f"the {im_h}x{im_w} image")
        crop_h = min(int(round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), crop_size - pad_x)

        y0, x0, y1, x1 = (int(v) for v in box)
        context_crop = caffe_io.resize_image(im[y0:y1, x0:x1], (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context_crop
        return crop

    def configure_crop(self, context_pad: int | None) -> None:
        """Set the crop size (the net input as H x W x K) and the context padding; with
        padding, also the fill value: the mean, taken back to raw image space."""
        in_ = self.inputs[0]
        transpose = self.transformer.transpose[in_]
        # The axis order that undoes the transpose: K x H x W -> H x W x K.
        inverse = list(np.argsort(transpose))
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        channel_order = self.transformer.channel_swap.get(in_)
        raw_scale = self.transformer.raw_scale.get(in_)
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float32).transpose(inverse)
        if channel_order is not None:
            channel_order = list(channel_order)
            crop_mean = crop_mean[:, :, [channel_order.index(i)
                                         for i in range(crop_mean.shape[2])]]
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
