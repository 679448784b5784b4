"""The SSD fork's DataTransformer extensions for AnnotatedDatum: one example's image and boxes.

For one decoded image (HxWxC) and its boxes, in the fork's order::

    distort   (distort_param)  brightness / contrast / saturation / hue / channel order
    expand    (expand_param)   with probability ``prob``, place the image at a random integer
                               offset on a canvas ``ratio`` times larger (ratio ~ U[1,
                               max_expand_ratio]) filled with the mean values (0 without)
    sample    (batch_sampler)  crop to one window drawn by caffe.data.sampler, if any
    resize    (resize_param)   WARP / FIT_SMALL_SIZE / FIT_LARGE_SIZE_AND_PAD
    noise     (noise_param)
    crop      crop_size or crop_h x crop_w: random offsets in TRAIN, centred in TEST
    mirror    a fair coin when ``mirror``
    top       (x - mean) * scale, CxHxW, through caffe.data.transformer.DataTransformer

Boxes follow each geometric step with the fork's TransformAnnotation: optional resize policy
update, the ``emit_constraint`` against the step's window (CENTER / MIN_OVERLAP), projection
into the window (dropped when outside or of zero area after clipping), mirror, and the
FIT_SMALL_SIZE extrapolation; an AnnotationGroup left without boxes is dropped. Crop windows
are used as normalized boxes exactly as the fork uses them (the pixel crop truncates the scaled
window to integers, the boxes keep the unrounded window).

Where this pipeline departs from the fork, it is in the fork's encoded/raw special cases: the
fork re-encodes each distorted, expanded or cropped encoded image as JPEG (here the decoded
pixels are carried on, so no JPEG loss is added), skips distortion for raw datums with an error
log, fills the expansion of a raw datum with byte 32, and cannot resize raw datums; here raw and
encoded datums go through the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caffe import bbox_util
from caffe.data import im_transforms, sampler
from caffe.data.transformer import DataTransformer
from caffe.errors import DataError
from caffe.proto import caffe_pb2

F32 = np.float32


@dataclass
class Annotations:
    """The boxes of one example, flattened in AnnotationGroup then Annotation order."""

    boxes: np.ndarray       # (K, 4) float32 normalized [xmin, ymin, xmax, ymax]
    group: np.ndarray       # (K,) group_label
    instance: np.ndarray    # (K,) instance_id
    difficult: np.ndarray   # (K,) bool

    @classmethod
    def from_proto(cls, anno_datum: caffe_pb2.AnnotatedDatum) -> Annotations:
        """The boxes, group labels, instance ids and difficult flags of an AnnotatedDatum."""
        rows = [(g.group_label, a.instance_id, a.bbox)
                for g in anno_datum.annotation_group for a in g.annotation]
        boxes = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for _, _, b in rows],
                         dtype=F32).reshape(-1, 4)
        return cls(boxes, np.array([r[0] for r in rows], dtype=np.int64),
                   np.array([r[1] for r in rows], dtype=np.int64),
                   np.array([r[2].difficult for r in rows], dtype=bool))

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray, boxes: np.ndarray) -> Annotations:
        """The annotations at ``keep``, with ``boxes`` (already transformed) in place of the old
        ones."""
        return Annotations(boxes[keep], self.group[keep], self.instance[keep],
                           self.difficult[keep])


def _window(xmin, ymin, xmax, ymax) -> np.ndarray:
    return np.array([xmin, ymin, xmax, ymax], dtype=F32)


class AnnotatedTransformer:
    """Applies transform_param's SSD steps to (image, Annotations); see the module docstring.

    ``base`` is the layer's DataTransformer (mean, scale, decoding). Random draws come from the
    numpy Generator passed to ``transform``.
    """

    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int,
                 base: DataTransformer) -> None:
        self.param = param
        self.phase = phase
        self.base = base
        self.crop_h = int(param.crop_size or param.crop_h)
        self.crop_w = int(param.crop_size or param.crop_w)
        self.resize = param.resize_param if param.HasField("resize_param") else None
        self.noise = param.noise_param if param.HasField("noise_param") else None
        self.distort = param.distort_param if param.HasField("distort_param") else None
        self.expand = param.expand_param if param.HasField("expand_param") else None
        self.emit = param.emit_constraint if param.HasField("emit_constraint") else None
        if self.resize is not None:
            if not (self.resize.height > 0 and self.resize.width > 0):
                raise DataError(f"resize_param height and width must be > 0, got "
                                f"{self.resize.height} x {self.resize.width}")
            if self.resize.resize_mode not in (im_transforms.WARP, im_transforms.FIT_SMALL_SIZE,
                                               im_transforms.FIT_LARGE_SIZE_AND_PAD):
                raise DataError(f"Unknown resize mode {self.resize.resize_mode}")
            interps = list(self.resize.interp_mode)
            if any(i != caffe_pb2.ResizeParameter.LINEAR for i in interps):
                im_transforms.require_opencv("resize_param interp_mode other than LINEAR")
        if self.expand is not None and not self.expand.max_expand_ratio > 1:
            raise DataError(f"expand_param max_expand_ratio must be > 1, got "
                            f"{self.expand.max_expand_ratio}")
        if self.distort is not None:
            im_transforms.check_distort_param(self.distort)
        if self.noise is not None:
            im_transforms.check_noise_param(self.noise)
        if self.emit is not None and self.emit.emit_type not in (bbox_util.EMIT_CENTER,
                                                                 bbox_util.EMIT_MIN_OVERLAP):
            raise DataError(f"Unknown emit type {self.emit.emit_type}")

    # --- shapes ----------------------------------------------------------------------------
    def infer_shape(self, height: int, width: int, channels: int) -> list[int]:
        """InferBlobShape: [1, C, h, w] of an example of ``height`` x ``width``."""
        if channels <= 0:
            raise DataError(f"example has {channels} channels")
        if self.resize is not None:
            width, height = im_transforms.infer_new_size(self.resize, width, height)
        if height < self.crop_h or width < self.crop_w:
            raise DataError(f"crop {self.crop_h} x {self.crop_w} is larger than the "
                            f"{height} x {width} example")
        return [1, channels, self.crop_h or height, self.crop_w or width]

    # --- annotation ------------------------------------------------------------------------
    def transform_annotation(self, anno: Annotations, height: int, width: int,
                             window: np.ndarray, do_resize: bool, do_mirror: bool
                             ) -> Annotations:
        """TransformAnnotation: the boxes of a ``height`` x ``width`` image seen through the
        normalized ``window`` (after the resize policy when ``do_resize``)."""
        boxes = anno.boxes
        resize = self.resize if do_resize else None
        if resize is not None:
            if height <= 0 or width <= 0:
                raise DataError(f"image of {height} x {width} cannot be resized")
            boxes = im_transforms.update_bbox_by_resize_policy(resize, width, height, boxes)
        keep = np.ones(len(boxes), dtype=bool)
        if self.emit is not None:
            keep = bbox_util.np_meet_emit_constraint(window, boxes, self.emit.emit_type,
                                                     self.emit.emit_overlap)
        projected, valid = bbox_util.np_project(window, boxes)
        keep &= valid
        if do_mirror:
            one = F32(1)
            projected = np.stack([one - projected[:, 2], projected[:, 1],
                                  one - projected[:, 0], projected[:, 3]], axis=-1)
        if resize is not None:
            projected = im_transforms.extrapolate_bbox(resize, height, width, window,
                                                       projected)
        return anno.select(keep, projected)

    # --- geometric steps -------------------------------------------------------------------
    def expand_image(self, img: np.ndarray, anno: Annotations, rng: np.random.Generator
                     ) -> tuple[np.ndarray, Annotations]:
        """ExpandImage: the image on a larger mean-filled canvas, with its boxes."""
        if rng.random() > self.expand.prob:
            return img, anno
        max_ratio = F32(self.expand.max_expand_ratio)
        if abs(float(max_ratio) - 1.0) < 1e-2:
            return img, anno
        ratio = F32(rng.uniform(1.0, max_ratio))
        rows, cols, channels = img.shape
        height, width = int(F32(rows) * ratio), int(F32(cols) * ratio)
        h_off = F32(np.floor(F32(rng.random() * (height - rows))))
        w_off = F32(np.floor(F32(rng.random() * (width - cols))))
        window = _window(-w_off / F32(cols), -h_off / F32(rows), (F32(width) - w_off) / F32(cols),
                         (F32(height) - h_off) / F32(rows))
        canvas = np.empty((height, width, channels), dtype=img.dtype)
        canvas[...] = self._fill_values(channels, height, width, img.dtype)
        top, left = int(h_off), int(w_off)
        canvas[top:top + rows, left:left + cols] = img
        return canvas, self.transform_annotation(anno, rows, cols, window, False, False)

    def _fill_values(self, channels: int, height: int, width: int, dtype) -> np.ndarray:
        base = self.base
        if base.mean is not None:
            if base.mean.shape != (channels, height, width):
                raise DataError(f"expand_param with mean_file: the mean blob "
                                f"{list(base.mean.shape)} must match the expanded image "
                                f"[{channels}, {height}, {width}]")
            values = base.mean.transpose(1, 2, 0)
        elif base.mean_values is not None:
            if len(base.mean_values) not in (1, channels):
                raise DataError(f"Specify either 1 mean_value or as many as channels: "
                                f"{channels}")
            values = np.broadcast_to(base.mean_values, (channels,))
        else:
            return np.zeros(channels, dtype=dtype)
        if dtype == np.uint8:  # assigning to a uint8 cv::Mat saturates and rounds
            return np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.asarray(values, dtype=dtype)

    def crop_image(self, img: np.ndarray, anno: Annotations, sample: np.ndarray
                   ) -> tuple[np.ndarray, Annotations]:
        """CropImage: the pixels of the clipped window ``sample`` (truncated to integers)
        and the boxes projected into it."""
        rows, cols = img.shape[:2]
        window = bbox_util.np_clip(sample)
        scaled = window * np.array([cols, rows, cols, rows], dtype=F32)
        w_off, h_off = int(scaled[0]), int(scaled[1])
        width, height = int(scaled[2] - scaled[0]), int(scaled[3] - scaled[1])
        if width <= 0 or height <= 0:
            raise DataError(f"sampled window {sample.tolist()} of a {rows} x {cols} image "
                            f"crops to {height} x {width} pixels")
        crop = img[h_off:h_off + height, w_off:w_off + width]
        return crop, self.transform_annotation(anno, rows, cols, window, False, False)

    # --- the whole example -----------------------------------------------------------------
    def augment(self, img: np.ndarray, anno: Annotations, batch_samplers,
                rng: np.random.Generator) -> tuple[np.ndarray, Annotations]:
        """Distort, expand and sample (load_batch's steps before Transform)."""
        if self.distort is not None:
            img = im_transforms.apply_distortion(img, im_transforms.draw_distortion(
                self.distort, rng))
        if self.expand is not None:
            img, anno = self.expand_image(img, anno, rng)
        if batch_samplers:
            samples = sampler.generate_batch_samples(anno.boxes, batch_samplers, rng)
            if len(samples):
                img, anno = self.crop_image(img, anno, samples[rng.integers(len(samples))])
        return img, anno

    def transform(self, img: np.ndarray, anno: Annotations | None, out: np.ndarray,
                  rng: np.random.Generator) -> Annotations | None:
        """Transform: resize, noise, crop, mirror, mean and scale ``img`` (HxWxC) into ``out``
        (C x h x w); returns the boxes in the output's coordinates."""
        rows, cols = img.shape[:2]
        do_mirror = bool(self.param.mirror) and rng.integers(2) == 1
        if self.resize is not None:
            modes = list(self.resize.interp_mode)
            interp = modes[rng.integers(len(modes))] if modes else \
                caffe_pb2.ResizeParameter.LINEAR
            img = im_transforms.apply_resize(img, self.resize, interp)
        if self.noise is not None:
            img = im_transforms.apply_noise(img, self.noise, rng)
        img_h, img_w = img.shape[:2]
        height, width = out.shape[1:]
        if img.shape[2] != out.shape[0] or (not self.crop_h and img_h != height) \
                or (not self.crop_w and img_w != width) or img_h < height or img_w < width:
            raise DataError(f"example of {rows} x {cols} pixels transforms to "
                            f"[{img.shape[2]}, {self.crop_h or img_h}, {self.crop_w or img_w}], "
                            f"but the batch holds {list(out.shape)} (the first example of the "
                            f"batch sets its shape; use resize_param to give every example "
                            f"one size)")
        h_off = w_off = 0
        if self.crop_h and self.crop_w:
            if self.phase == caffe_pb2.TRAIN:
                h_off = int(rng.integers(img_h - height + 1))
                w_off = int(rng.integers(img_w - width + 1))
            else:
                h_off, w_off = (img_h - height) // 2, (img_w - width) // 2
        chw = img.transpose(2, 0, 1)
        self.base._check(chw)
        src = chw[:, h_off:h_off + height, w_off:w_off + width]
        dst = out[:, :, ::-1] if do_mirror else out
        self.base._subtract_mean_and_scale(src, dst, h_off, w_off)
        if anno is None:
            return None
        window = _window(F32(w_off) / F32(img_w), F32(h_off) / F32(img_h),
                         F32(w_off + width) / F32(img_w), F32(h_off + height) / F32(img_h))
        return self.transform_annotation(anno, rows, cols, window, True, do_mirror)
