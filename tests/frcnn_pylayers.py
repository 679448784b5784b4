"""Python layers in the style of Faster R-CNN's and SSD's training code, written for the tests
(importable as python_param { module: 'frcnn_pylayers' }).

They lean on the pycaffe details real detector layers use: ``param_str_`` (the Faster R-CNN
fork's spelling) holding a YAML / dict string, a config indexed with ``str(self.phase)``
('TRAIN' / 'TEST'), tops reshaped to a new size every forward, bottoms of mixed shapes, and
numpy-only math. The data is synthetic: bright squares on a dark, noisy background, with their
boxes as ground truth.
"""

from __future__ import annotations

import ast

import numpy as np

import caffe
from caffe.layers.proposal import generate_anchors

# Per-phase settings, looked up as CFG[str(self.phase)] like the fork's cfg.TRAIN / cfg.TEST.
CFG = {
    "TRAIN": {"RPN_BATCHSIZE": 64, "RPN_FG_FRACTION": 0.5, "RPN_POSITIVE_OVERLAP": 0.6,
              "RPN_NEGATIVE_OVERLAP": 0.3, "BATCH_SIZE": 32, "FG_FRACTION": 0.25,
              "FG_THRESH": 0.5, "BG_THRESH_HI": 0.5, "BG_THRESH_LO": 0.0,
              "BBOX_MEANS": (0.0, 0.0, 0.0, 0.0), "BBOX_STDS": (0.1, 0.1, 0.2, 0.2)},
    "TEST": {"RPN_BATCHSIZE": 0},
}


def load_param_str(text: str) -> dict:
    """The layer's settings: YAML when PyYAML is installed (as the detectors read it), else a
    Python dict literal (the strings the tests write are both)."""
    if not text:
        return {}
    try:
        import yaml
    except ImportError:
        return ast.literal_eval(text)
    return yaml.safe_load(text)


def box_overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU (N, K) of pixel-convention boxes (ends inclusive: width x2 - x1 + 1)."""
    b, q = boxes[:, None, :], query[None, :, :]
    iw = np.minimum(b[..., 2], q[..., 2]) - np.maximum(b[..., 0], q[..., 0]) + 1
    ih = np.minimum(b[..., 3], q[..., 3]) - np.maximum(b[..., 1], q[..., 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    area_q = (q[..., 2] - q[..., 0] + 1) * (q[..., 3] - q[..., 1] + 1)
    return inter / (area_b + area_q - inter)


def box_deltas(boxes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Regression targets (dx, dy, dw, dh) that move ``boxes`` onto ``targets`` (N, 4 each),
    the inverse of the Proposal layer's delta application."""
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    tw = targets[:, 2] - targets[:, 0] + 1.0
    th = targets[:, 3] - targets[:, 1] + 1.0
    dx = (targets[:, 0] + 0.5 * tw - boxes[:, 0] - 0.5 * w) / w
    dy = (targets[:, 1] + 0.5 * th - boxes[:, 1] - 0.5 * h) / h
    return np.stack([dx, dy, np.log(tw / w), np.log(th / h)], axis=1)


def draw_squares(rng: np.random.RandomState, height: int, width: int, count: int,
                 side_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An image (3, H, W) with ``count`` bright squares, one per vertical strip so they never
    overlap, and their pixel boxes (count, 4) [x1, y1, x2, y2] (inclusive ends)."""
    image = rng.uniform(0.0, 0.2, (3, height, width))
    strip = width // count
    boxes = np.zeros((count, 4))
    for k in range(count):  # one square per object, at most a handful
        side = rng.randint(side_range[0], min(side_range[1], strip) + 1)
        x1 = k * strip + rng.randint(0, strip - side + 1)
        y1 = rng.randint(0, height - side + 1)
        image[:, y1:y1 + side, x1:x1 + side] = rng.uniform(0.8, 1.0)
        boxes[k] = (x1, y1, x1 + side - 1, y1 + side - 1)
    return image - 0.3, boxes


class SquaresRoIData(caffe.Layer):
    """ROI-data style input: tops data (1, 3, H, W), im_info (1, 3) [height, width, scale] and
    gt_boxes (G, 5) [x1, y1, x2, y2, class], G drawn from 1..max_objects every forward."""

    def setup(self, bottom, top):
        if len(top) != 3:
            raise ValueError("SquaresRoIData needs tops data, im_info, gt_boxes")
        p = load_param_str(self.param_str_)
        self.height, self.width = int(p["height"]), int(p["width"])
        self.max_objects = int(p.get("max_objects", 1))
        self.sides = tuple(p.get("sides", (12, 24)))
        self.rng = np.random.RandomState(int(p.get("seed", 0)))
        top[0].reshape(1, 3, self.height, self.width)
        top[1].reshape(1, 3)
        top[2].reshape(1, 5)

    def reshape(self, bottom, top):
        pass  # forward shapes gt_boxes, whose count changes per image

    def forward(self, bottom, top):
        count = self.rng.randint(1, self.max_objects + 1)
        image, boxes = draw_squares(self.rng, self.height, self.width, count, self.sides)
        blobs = (image[None], np.array([[self.height, self.width, 1.0]]),
                 np.hstack([boxes, np.ones((count, 1))]))
        for blob, value in zip(top, blobs):
            blob.reshape(*value.shape)
            blob.data[...] = value

    def backward(self, top, propagate_down, bottom):
        pass


class AnchorTarget(caffe.Layer):
    """RPN training targets. Bottoms: rpn_cls_score (1, 2A, H, W) (only its H, W are read),
    gt_boxes (G, 5), im_info (1, 3), data. Tops: labels (1, 1, A*H, W) (1 object, 0 background,
    -1 ignored), bbox targets, inside and outside weights (1, 4A, H, W)."""

    def setup(self, bottom, top):
        p = load_param_str(self.param_str_)
        self.feat_stride = int(p["feat_stride"])
        self.anchors = generate_anchors(int(p.get("base_size", 16)), p.get("ratios", (0.5, 1, 2)),
                                        p.get("scales", (8, 16, 32)))
        self.rng = np.random.RandomState(int(p.get("seed", 0)))
        a = len(self.anchors)
        height, width = bottom[0].data.shape[-2:]
        top[0].reshape(1, 1, a * height, width)
        for blob in top[1:]:
            blob.reshape(1, 4 * a, height, width)

    def reshape(self, bottom, top):
        pass

    def _subsample(self, labels: np.ndarray, value: int, limit: int) -> None:
        chosen = np.where(labels == value)[0]
        if len(chosen) > limit:
            labels[self.rng.choice(chosen, len(chosen) - limit, replace=False)] = -1

    def forward(self, bottom, top):
        cfg = CFG[str(self.phase)]
        height, width = bottom[0].data.shape[-2:]
        gt = bottom[1].data[:, :4]
        im_h, im_w = bottom[2].data[0, :2]
        a = len(self.anchors)
        ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4) * self.feat_stride
        all_anchors = (shifts + self.anchors[None]).reshape(-1, 4)  # (h, w, a) order
        inside = np.where((all_anchors[:, 0] >= 0) & (all_anchors[:, 1] >= 0)
                          & (all_anchors[:, 2] < im_w) & (all_anchors[:, 3] < im_h))[0]
        anchors = all_anchors[inside]

        overlaps = box_overlaps(anchors, gt)
        assigned = overlaps.argmax(axis=1)
        best = overlaps[np.arange(len(anchors)), assigned]
        best_for_gt = np.where(overlaps == overlaps.max(axis=0))[0]
        labels = np.full(len(anchors), -1.0)
        labels[best < cfg["RPN_NEGATIVE_OVERLAP"]] = 0
        labels[best_for_gt] = 1
        labels[best >= cfg["RPN_POSITIVE_OVERLAP"]] = 1
        num_fg = int(cfg["RPN_FG_FRACTION"] * cfg["RPN_BATCHSIZE"])
        self._subsample(labels, 1, num_fg)
        self._subsample(labels, 0, cfg["RPN_BATCHSIZE"] - int(np.sum(labels == 1)))

        targets = box_deltas(anchors, gt[assigned])
        inside_w = np.zeros((len(anchors), 4))
        inside_w[labels == 1] = 1.0
        outside_w = np.zeros((len(anchors), 4))
        outside_w[labels >= 0] = 1.0 / max(int(np.sum(labels >= 0)), 1)

        def unmap(values, fill):
            out = np.full((len(all_anchors),) + values.shape[1:], fill, dtype=np.float64)
            out[inside] = values
            return out

        labels = unmap(labels, -1).reshape(1, height, width, a).transpose(0, 3, 1, 2)
        outputs = [labels.reshape(1, 1, a * height, width)]
        for values in (targets, inside_w, outside_w):
            outputs.append(unmap(values, 0).reshape(1, height, width, 4 * a)
                           .transpose(0, 3, 1, 2))
        for blob, value in zip(top, outputs):
            blob.reshape(*value.shape)
            blob.data[...] = value

    def backward(self, top, propagate_down, bottom):
        pass  # targets carry no gradient


class ProposalTarget(caffe.Layer):
    """Second-stage training samples. Bottoms: rpn rois (R, 5) [0, x1, y1, x2, y2], gt_boxes
    (G, 5). Tops: sampled rois (S, 5), labels (S,), class-specific bbox targets, inside and
    outside weights (S, 4K); S changes with the number of candidates each forward."""

    def setup(self, bottom, top):
        p = load_param_str(self.param_str_)
        self.num_classes = int(p["num_classes"])
        self.rng = np.random.RandomState(int(p.get("seed", 0)))
        top[0].reshape(1, 5)
        top[1].reshape(1)
        for blob in top[2:]:
            blob.reshape(1, 4 * self.num_classes)

    def reshape(self, bottom, top):
        pass

    def _sample(self, candidates: np.ndarray, count: int) -> np.ndarray:
        if len(candidates) > count:
            return self.rng.choice(candidates, count, replace=False)
        return candidates

    def forward(self, bottom, top):
        cfg = CFG[str(self.phase)]
        gt = bottom[1].data
        # Ground truth joins the candidates, so every image has foreground samples.
        rois = np.vstack([bottom[0].data, np.hstack([np.zeros((len(gt), 1)), gt[:, :4]])])
        overlaps = box_overlaps(rois[:, 1:5], gt[:, :4])
        assigned = overlaps.argmax(axis=1)
        best = overlaps.max(axis=1)
        fg = self._sample(np.where(best >= cfg["FG_THRESH"])[0],
                          int(round(cfg["FG_FRACTION"] * cfg["BATCH_SIZE"])))
        bg = self._sample(np.where((best < cfg["BG_THRESH_HI"]) & (best >= cfg["BG_THRESH_LO"]))[0],
                          cfg["BATCH_SIZE"] - len(fg))
        keep = np.concatenate([fg, bg]).astype(np.int64)
        labels = gt[assigned[keep], 4].copy()
        labels[len(fg):] = 0
        rois = rois[keep]
        deltas = box_deltas(rois[:, 1:5], gt[assigned[keep], :4])
        deltas = (deltas - np.array(cfg["BBOX_MEANS"])) / np.array(cfg["BBOX_STDS"])

        targets = np.zeros((len(keep), 4 * self.num_classes))
        inside_w = np.zeros_like(targets)
        rows = np.where(labels > 0)[0]
        cols = 4 * labels[rows].astype(np.int64)[:, None] + np.arange(4)
        targets[rows[:, None], cols] = deltas[rows]
        inside_w[rows[:, None], cols] = 1.0
        outputs = (rois, labels, targets, inside_w, (inside_w > 0).astype(np.float64))
        for blob, value in zip(top, outputs):
            blob.reshape(*value.shape)
            blob.data[...] = value

    def backward(self, top, propagate_down, bottom):
        pass


class SquaresSSDData(caffe.Layer):
    """SSD-style input: tops data (N, 3, H, W) and label (1, 1, G, 8) rows [image, class,
    instance, xmin, ymin, xmax, ymax, difficult] in [0, 1] image coordinates, G the number of
    squares in the batch (1..max_objects per image, drawn every forward)."""

    def setup(self, bottom, top):
        p = load_param_str(self.param_str_)
        self.batch = int(p.get("batch", 2))
        self.height, self.width = int(p["height"]), int(p["width"])
        self.max_objects = int(p.get("max_objects", 1))
        self.sides = tuple(p.get("sides", (12, 24)))
        self.rng = np.random.RandomState(int(p.get("seed", 0)))
        top[0].reshape(self.batch, 3, self.height, self.width)
        top[1].reshape(1, 1, 1, 8)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        images, rows = [], []
        for i in range(self.batch):
            count = self.rng.randint(1, self.max_objects + 1)
            image, boxes = draw_squares(self.rng, self.height, self.width, count, self.sides)
            images.append(image)
            # Pixel boxes [x1, x2] cover x1 .. x2 + 1 in continuous image coordinates.
            scale = np.array([self.width, self.height, self.width, self.height])
            corners = (boxes + np.array([0, 0, 1, 1])) / scale
            rows.append(np.hstack([np.full((count, 1), i), np.ones((count, 1)),
                                   np.arange(count)[:, None], corners, np.zeros((count, 1))]))
        label = np.vstack(rows)[None, None]
        top[0].data[...] = np.stack(images)
        top[1].reshape(*label.shape)
        top[1].data[...] = label

    def backward(self, top, propagate_down, bottom):
        pass


class PhaseProbe(caffe.Layer):
    """Records what a detector layer reads at setup: phase, str(phase), param_str_."""

    seen: list = []

    def setup(self, bottom, top):
        settings = load_param_str(self.param_str_)
        PhaseProbe.seen.append({"phase": self.phase, "name": str(self.phase),
                                "cfg": CFG[str(self.phase)], "param_str_": self.param_str_,
                                "param_str": self.param_str, "settings": settings})

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff
