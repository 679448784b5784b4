"""DetectionEvaluate (SSD fork, weiliu89/caffe ``ssd``): true/false positive records for mAP.

Caffe type ``DetectionEvaluate``; reads ``detection_evaluate_param``: ``num_classes``
(required), ``background_label_id`` (0), ``overlap_threshold`` (0.5),
``evaluate_difficult_gt`` (true), ``name_size_file`` (lines ``name height width``: evaluate in
the pixels of each original image, images taken in turn across forwards) and ``resize_param``
(how the test images were resized, to map boxes back: WARP, FIT_SMALL_SIZE,
FIT_LARGE_SIZE_AND_PAD).

    bottom[0]  detections    (1, 1, N, 7)  [image, label, score, xmin, ymin, xmax, ymax] as
                                           DetectionOutput writes them (label -1 rows skipped)
    bottom[1]  ground truth  (1, 1, G, 8)  [image, label, instance, xmin, ymin, xmax, ymax,
                                           difficult] as AnnotatedData writes them (read up to
                                           the first image -1)
    top[0]     records       (1, 1, C' + N', 5), C' = num_classes minus the background,
                                           N' = detection rows whose label is not -1

First one row ``[-1, c, num_pos, -1, -1]`` per non-background class c (num_pos: its ground-truth
boxes, difficult ones only with ``evaluate_difficult_gt``), then per image (ascending), per label
(ascending) one row ``[image, label, score, tp, fp]`` per detection. Where the image has ground
truth of that label the detections go by descending score, each taking the box it overlaps most
(the first such): a true positive if the overlap reaches ``overlap_threshold`` and the box is
still free, a false positive otherwise; a detection whose best box is difficult (and not
evaluated) gets tp = fp = 0, which the solver skips. Elsewhere every detection is a false
positive, in input order. Rows left over are zeros. Overlaps are the fork's: normalized boxes,
or with ``name_size_file`` pixel boxes with the ``+ 1`` convention (boxes clipped and mapped
back through ``resize_param`` first). Has no backward.
"""

from __future__ import annotations

import numpy as np

from caffe.layer import Layer, register
from caffe.proto import caffe_pb2

_f32 = np.float32
_RESIZE = caffe_pb2.ResizeParameter


def read_name_size_file(path: str) -> list[tuple[int, int]]:
    """(height, width) per ``name height width`` entry, up to the first that does not parse."""
    with open(path, encoding="utf-8") as f:
        tokens = f.read().split()
    sizes = []
    for start in range(0, len(tokens) - 2, 3):
        try:
            sizes.append((int(tokens[start + 1]), int(tokens[start + 2])))
        except ValueError:
            break
    return sizes


# --- box arithmetic in float32, as NormalizedBBox holds it -----------------------------------
def _box_size(boxes: np.ndarray, normalized: bool = True) -> np.ndarray:
    """BBoxSize: w * h (normalized) or (w + 1) * (h + 1) (pixels); 0 for an inverted box."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    area = w * h if normalized else (w + _f32(1)) * (h + _f32(1))
    return np.where((w < 0) | (h < 0), _f32(0), area).astype(_f32)


def _scale(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """ScaleBBox: corners times the size; the size in pixels unless both sides are <= 1."""
    out = (boxes * np.asarray([width, height, width, height], dtype=_f32)).astype(_f32)
    return out, _box_size(out, normalized=not (width > 1 or height > 1))


def _clip(boxes: np.ndarray, height: float = 1.0, width: float = 1.0) -> np.ndarray:
    """ClipBBox: corners into [0, width] x [0, height] (the unit box by default)."""
    upper = np.asarray([width, height, width, height], dtype=_f32)
    return np.maximum(np.minimum(boxes, upper), _f32(0)).astype(_f32)


def _pad_window(height: int, width: int, param) -> np.ndarray:
    """The part of a FIT_LARGE_SIZE_AND_PAD input that holds the image, normalized."""
    resize_h, resize_w = _f32(param.height), _f32(param.width)
    aspect = _f32(width) / _f32(height)
    if aspect > resize_w / resize_h:
        padding = (resize_h - resize_w / aspect) / _f32(2)
        edge = padding / resize_h
        return np.asarray([0, edge, 1, 1.0 - np.float64(edge)], dtype=_f32)
    padding = (resize_w - resize_h * aspect) / _f32(2)
    edge = padding / resize_w
    return np.asarray([edge, 0, 1.0 - np.float64(edge), 1], dtype=_f32)


def output_boxes(boxes: np.ndarray, height: int, width: int, resize_param=None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """OutputBBox: normalized (K, 4) boxes of the net's input to pixel boxes of the original
    ``height`` x ``width`` image, with their sizes, undoing ``resize_param``'s resize."""
    mode = resize_param.resize_mode if resize_param is not None else _RESIZE.WARP
    if mode == _RESIZE.FIT_LARGE_SIZE_AND_PAD:
        if resize_param.height <= 0 or resize_param.width <= 0:
            raise ValueError("resize_param height and width must be positive")
        src = _pad_window(height, width, resize_param)
        inside = ~((boxes[:, 0] >= src[2]) | (boxes[:, 2] <= src[0])
                   | (boxes[:, 1] >= src[3]) | (boxes[:, 3] <= src[1]))
        span = np.asarray([src[2] - src[0], src[3] - src[1]] * 2, dtype=_f32)
        projected = _clip(((boxes - np.tile(src[:2], 2)) / span).astype(_f32))
        boxes = np.where(inside[:, None], projected, boxes)
    elif mode == _RESIZE.FIT_SMALL_SIZE and resize_param.height_scale \
            and resize_param.width_scale:
        scaled, _ = _scale(boxes, resize_param.height_scale, resize_param.width_scale)
        clipped = _clip(scaled, float(height), float(width))
        return clipped, _box_size(clipped)
    elif mode not in (_RESIZE.WARP, _RESIZE.FIT_SMALL_SIZE):
        raise ValueError(f"Unknown resize mode {mode}")
    return _scale(_clip(boxes), height, width)


def overlaps(det: np.ndarray, det_size: np.ndarray, gt: np.ndarray, gt_size: np.ndarray,
             normalized: bool) -> np.ndarray:
    """JaccardOverlap of every detection with every ground-truth box (D, G), from the boxes'
    stored sizes; in pixels the intersection counts both edges (``+ 1``), as the fork does."""
    a, b = det[:, None, :], gt[None, :, :]
    apart = ((b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0])
             | (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1]))
    low = np.where(apart[..., None], _f32(0), np.maximum(a[..., :2], b[..., :2]))
    high = np.where(apart[..., None], _f32(0), np.minimum(a[..., 2:], b[..., 2:]))
    extent = (high - low).astype(_f32)
    if not normalized:
        extent = extent + _f32(1)
    inter = extent[..., 0] * extent[..., 1]
    size_a = np.where((det[:, 2] < det[:, 0]) | (det[:, 3] < det[:, 1]), _f32(0), det_size)
    size_b = np.where((gt[:, 2] < gt[:, 0]) | (gt[:, 3] < gt[:, 1]), _f32(0), gt_size)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = inter / ((size_a[:, None] + size_b[None, :]) - inter)
    return np.where((extent[..., 0] > 0) & (extent[..., 1] > 0), ratio, _f32(0)).astype(_f32)


def _pair_keys(item: np.ndarray, label: np.ndarray) -> np.ndarray:
    return (item.astype(np.int64) << 32) | (label.astype(np.int64) & 0xFFFFFFFF)


@register("DetectionEvaluate")
class DetectionEvaluateLayer(Layer):
    """SSD's DetectionEvaluate layer; see the module docstring."""

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.detection_evaluate_param
        self.check(param.HasField("num_classes"), "Must provide num_classes.")
        self.num_classes = int(param.num_classes)
        self.background_label_id = int(param.background_label_id)
        self.overlap_threshold = _f32(param.overlap_threshold)
        self.check(self.overlap_threshold > 0, f"overlap_threshold must be non negative "
                   f"(got {param.overlap_threshold})")
        self.evaluate_difficult_gt = bool(param.evaluate_difficult_gt)
        self.sizes: list[tuple[int, int]] = []
        if param.HasField("name_size_file"):
            try:
                self.sizes = read_name_size_file(param.name_size_file)
            except OSError as exc:
                self.check(False, f"Failed to open name size file: {param.name_size_file} "
                           f"({exc.strerror})")
        self.resize_param = param.resize_param if param.HasField("resize_param") else None
        self.count = 0
        # Without a name_size_file the boxes are compared normalized.
        self.use_normalized_bbox = not self.sizes

    def reshape(self, bottom, top):
        det, gt = bottom
        self.check(self.count <= len(self.sizes),
                   f"image counter {self.count} past the {len(self.sizes)} name sizes")
        self.check(det.num == 1 and det.channels == 1 and det.width == 7,
                   f"detections must be (1, 1, N, 7) as DetectionOutput writes them (bottom "
                   f"{self.layer_param.bottom[0]!r} shape {list(det.shape)})")
        self.check(gt.num == 1 and gt.channels == 1 and gt.width == 8,
                   f"ground truth must be (1, 1, G, 8) as AnnotatedData writes it (bottom "
                   f"{self.layer_param.bottom[1]!r} shape {list(gt.shape)})")
        rows = det.cpu_data().reshape(-1, 7)
        num_valid_det = int(np.count_nonzero(rows[:, 1] != -1))
        num_pos_classes = self.num_classes - (self.background_label_id != -1)
        top[0].reshape([1, 1, num_pos_classes + num_valid_det, 5])

    def forward(self, bottom, top):
        dets = bottom[0].cpu_data().reshape(-1, 7)
        gts = bottom[1].cpu_data().reshape(-1, 8)
        det_item = dets[:, 0].astype(np.int64)
        det_label = dets[:, 1].astype(np.int64)
        det_keep = (det_item != -1) & (det_label != -1)
        end = np.flatnonzero(gts[:, 0].astype(np.int64) == -1)
        gts = gts[:end[0] if end.size else len(gts)]
        gt_item = gts[:, 0].astype(np.int64)
        gt_label = gts[:, 1].astype(np.int64)
        background = self.background_label_id
        self.check(not np.any(gt_label == background),
                   f"Found background label in the dataset (label {background} in bottom "
                   f"{self.layer_param.bottom[1]!r})")
        self.check(not np.any(det_label[det_keep] == background),
                   f"Found background label in the detection results (label {background} in "
                   f"bottom {self.layer_param.bottom[0]!r})")
        gt_difficult = gts[:, 7].astype(_f32) != 0
        out = np.zeros(top[0].shape, dtype=np.float64).reshape(-1, 5)

        counted = gt_label if self.evaluate_difficult_gt else gt_label[~gt_difficult]
        classes = np.asarray([c for c in range(self.num_classes) if c != background],
                             dtype=np.int64)
        num_pos = np.asarray([np.count_nonzero(counted == c) for c in classes])
        head = len(classes)
        out[:head] = np.stack([np.full(head, -1), classes, num_pos, np.full(head, -1),
                               np.full(head, -1)], axis=1) if head else out[:0]

        item, label = det_item[det_keep], det_label[det_keep]
        score = dets[det_keep, 2].astype(_f32)
        boxes = dets[det_keep, 3:7].astype(_f32)
        has_gt = np.isin(_pair_keys(item, label), _pair_keys(gt_item, gt_label))
        # Images ascending, labels ascending; by descending score where there is ground truth
        # to match, in input order where every detection is a false positive.
        order = np.lexsort((np.where(has_gt, -score, _f32(0)), label, item))
        item, label, score, boxes, has_gt = (a[order] for a in (item, label, score, boxes,
                                                                has_gt))
        tp = np.zeros(item.size, dtype=np.int64)
        fp = (~has_gt).astype(np.int64)
        gt_boxes = gts[:, 3:7].astype(_f32)
        images = np.unique(item)
        for rank, image in enumerate(images.tolist()):
            sel = np.flatnonzero((item == image) & has_gt)
            on_image = np.flatnonzero(gt_item == image)
            if sel.size:
                tp[sel], fp[sel] = self._match(rank, boxes[sel], label[sel],
                                               gt_boxes[on_image], gt_label[on_image],
                                               gt_difficult[on_image])
        if self.sizes:
            self.count = (self.count + len(images)) % len(self.sizes)
        out[head:head + item.size] = np.stack([item, label, score, tp, fp], axis=1)
        top[0].mutable_cpu_data()[...] = out.reshape(top[0].shape)

    def _match(self, rank: int, det: np.ndarray, det_label: np.ndarray, gt: np.ndarray,
               gt_label: np.ndarray, difficult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tp, fp) of one image's detections (by label, then descending score) against its
        ground truth."""
        if self.use_normalized_bbox:
            det_size, gt_size = _box_size(det), _box_size(gt)
        else:
            height, width = self.sizes[(self.count + rank) % len(self.sizes)]
            try:
                det, det_size = output_boxes(det, height, width, self.resize_param)
                gt, gt_size = output_boxes(gt, height, width, self.resize_param)
            except ValueError as exc:
                self.check(False, f"resize_param: {exc}")
        overlap = overlaps(det, det_size, gt, gt_size, self.use_normalized_bbox)
        # Only boxes of the detection's own label compete; the first best one is taken.
        overlap = np.where(det_label[:, None] == gt_label[None, :], overlap, -np.inf)
        best = np.argmax(overlap, axis=1)
        matched = overlap[np.arange(best.size), best] >= self.overlap_threshold
        counts = matched & (self.evaluate_difficult_gt | ~difficult[best])
        # A box goes to the first (highest scoring) counting detection that picks it.
        first = np.zeros(best.size, dtype=bool)
        picks = np.flatnonzero(counts)
        _, at = np.unique(best[picks], return_index=True)
        first[picks[at]] = True
        tp = first.astype(np.int64)
        fp = ((~matched) | (counts & ~first)).astype(np.int64)
        return tp, fp

    def backward(self, top, propagate_down, bottom):
        self.check(not any(propagate_down),
                   "DetectionEvaluate has no backward (the fork: Not Implemented)")
