"""Test stand-ins for py-faster-rcnn's Python layers, written for these tests (numpy only).

The public Faster R-CNN / R-FCN prototxts name four Python modules of py-faster-rcnn's tree:
``roi_data_layer.layer.RoIDataLayer``, ``rpn.anchor_target_layer.AnchorTargetLayer``,
``rpn.proposal_layer.ProposalLayer`` and ``rpn.proposal_target_layer.ProposalTargetLayer``.
The classes here have the same names, bottoms, tops and pycaffe habits as those (``param_str_``
read as a Python dict literal, ``str(self.phase)`` as the config key, tops reshaped to a new
size in every forward) and simplified, deterministic math: no random sampling. ``install``
registers them under the modules' names so the prototxts load unmodified.

``ProposalLayer`` is an independent numpy version of the RPN proposal step (anchors, deltas,
clip, min size, sort, greedy NMS, top-N), used to cross-check the built-in ``Proposal``.
"""

from __future__ import annotations

import ast
import sys
import types

import numpy as np

import caffe

# py-faster-rcnn's config keys, per phase. Tests may lower the top-N (as a cfg file would).
CFG = {
    "TRAIN": {"RPN_PRE_NMS_TOP_N": 12000, "RPN_POST_NMS_TOP_N": 2000, "RPN_NMS_THRESH": 0.7,
              "RPN_MIN_SIZE": 16, "BATCH_SIZE": 128, "FG_FRACTION": 0.25,
              "RPN_BATCHSIZE": 256},
    "TEST": {"RPN_PRE_NMS_TOP_N": 6000, "RPN_POST_NMS_TOP_N": 300, "RPN_NMS_THRESH": 0.7,
             "RPN_MIN_SIZE": 16},
}
# RoIDataLayer's synthetic image (height, width) and ground truth [x1, y1, x2, y2, class].
IMAGE_SHAPE = (128, 160)
GT_BOXES = np.array([[8, 12, 70, 90, 3], [60, 30, 150, 120, 15]], dtype=np.float32)
BBOX_STDS = np.array([0.1, 0.1, 0.2, 0.2])  # BBOX_NORMALIZE_STDS (means are 0)


def _params(layer) -> dict:
    """param_str_ as py-faster-rcnn writes it ("'feat_stride': 16"): a dict's inside."""
    return ast.literal_eval("{" + layer.param_str_ + "}")


def anchors(feat_stride: int, height: int, width: int) -> np.ndarray:
    """py-faster-rcnn's 9 reference anchors (ratios 0.5 1 2 x scales 8 16 32 on a 16-pixel
    base box) shifted to every cell: (H * W * 9, 4), ordered (h, w, anchor)."""
    ws, hs = [], []
    for ratio in (0.5, 1.0, 2.0):
        w = np.round(np.sqrt(256.0 / ratio))
        h = np.round(w * ratio)
        for scale in (8, 16, 32):
            ws.append(w * scale)
            hs.append(h * scale)
    ws, hs = np.array(ws), np.array(hs)
    base = np.stack([7.5 - 0.5 * (ws - 1), 7.5 - 0.5 * (hs - 1),
                     7.5 + 0.5 * (ws - 1), 7.5 + 0.5 * (hs - 1)], axis=1)
    sy, sx = np.meshgrid(np.arange(height) * feat_stride, np.arange(width) * feat_stride,
                         indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


def overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of pixel boxes (inclusive ends): (A, 4) x (B, 4) -> (A, B)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)

    def area(x):
        return (x[:, 2] - x[:, 0] + 1) * (x[:, 3] - x[:, 1] + 1)

    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def box_targets(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(dx, dy, dw, dh) moving boxes onto gt (pixel widths x2 - x1 + 1)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    gw = gt[:, 2] - gt[:, 0] + 1
    gh = gt[:, 3] - gt[:, 1] + 1
    return np.stack([(gt[:, 0] + 0.5 * gw - boxes[:, 0] - 0.5 * w) / w,
                     (gt[:, 1] + 0.5 * gh - boxes[:, 1] - 0.5 * h) / h,
                     np.log(gw / w), np.log(gh / h)], axis=1)


def greedy_nms(boxes: np.ndarray, thresh: float) -> list[int]:
    """Greedy NMS over boxes sorted best first: drop a box whose IoU with a kept one > thresh."""
    order = np.arange(len(boxes))
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        order = order[1:][overlaps(boxes[i:i + 1], boxes[order[1:]])[0] <= thresh]
    return keep


class RoIDataLayer(caffe.Layer):
    """roi_data_layer.layer: tops data (1, 3, H, W), im_info (1, 3), gt_boxes (G, 5)."""

    def setup(self, bottom, top):
        self.num_classes = _params(self)["num_classes"]
        self.rng = np.random.RandomState(0)
        top[0].reshape(1, 3, 600, 1000)  # py-faster-rcnn's setup size; forward resizes
        top[1].reshape(1, 3)
        top[2].reshape(1, 4)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        h, w = IMAGE_SHAPE
        top[0].reshape(1, 3, h, w)
        top[0].data[...] = self.rng.randn(1, 3, h, w)  # unit scale for random weights
        top[1].reshape(1, 3)
        top[1].data[...] = [[h, w, 1.0]]
        top[2].reshape(*GT_BOXES.shape)
        top[2].data[...] = GT_BOXES

    def backward(self, top, propagate_down, bottom):
        pass


class AnchorTargetLayer(caffe.Layer):
    """rpn.anchor_target_layer: anchor labels (1 fg, 0 bg, -1 ignored) and box targets.

    Bottoms rpn_cls_score (1, 2A, H, W), gt_boxes, im_info, data; tops labels (1, 1, A*H, W),
    bbox_targets / inside / outside weights (1, 4A, H, W). Anchors leaving the image are
    ignored; IoU >= 0.7 (or best for a gt box) is fg, < 0.3 bg. No subsampling."""

    def setup(self, bottom, top):
        self.feat_stride = _params(self)["feat_stride"]
        height, width = bottom[0].data.shape[-2:]
        top[0].reshape(1, 1, 9 * height, width)
        for t in top[1:]:
            t.reshape(1, 36, height, width)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        height, width = bottom[0].data.shape[-2:]
        gt = bottom[1].data[:, :4].astype(np.float64)
        im_h, im_w = bottom[2].data[0, :2]
        boxes = anchors(self.feat_stride, height, width)
        inside = ((boxes[:, 0] >= 0) & (boxes[:, 1] >= 0)
                  & (boxes[:, 2] < im_w) & (boxes[:, 3] < im_h))
        iou = overlaps(boxes, gt)
        iou[~inside] = -1
        labels = np.full(len(boxes), -1.0)
        best = iou.max(axis=1)
        labels[inside & (best < 0.3)] = 0
        labels[iou.argmax(axis=0)] = 1
        labels[best >= 0.7] = 1
        targets = box_targets(boxes, gt[iou.argmax(axis=1)])
        in_w = np.repeat((labels == 1)[:, None], 4, axis=1).astype(np.float64)
        out_w = np.repeat((labels >= 0)[:, None], 4, axis=1) / max((labels >= 0).sum(), 1)

        def to_map(x, per_anchor):
            return x.reshape(1, height, width, 9 * per_anchor).transpose(0, 3, 1, 2)

        top[0].reshape(1, 1, 9 * height, width)
        top[0].data[...] = to_map(labels, 1).reshape(1, 1, 9 * height, width)
        for t, x in zip(top[1:], (targets, in_w, out_w)):
            t.reshape(1, 36, height, width)
            t.data[...] = to_map(x, 4)

    def backward(self, top, propagate_down, bottom):
        pass


class ProposalLayer(caffe.Layer):
    """rpn.proposal_layer: bottoms rpn_cls_prob_reshape (1, 2A, H, W), rpn_bbox_pred (1, 4A,
    H, W), im_info; tops rois (R, 5) [0, x1, y1, x2, y2] and optionally scores (R, 1)."""

    def setup(self, bottom, top):
        self.feat_stride = _params(self)["feat_stride"]
        top[0].reshape(1, 5)
        if len(top) > 1:
            top[1].reshape(1, 1)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        cfg = CFG[str(self.phase)]
        a = bottom[0].data.shape[1] // 2
        height, width = bottom[0].data.shape[-2:]
        scores = bottom[0].data[0, a:].transpose(1, 2, 0).reshape(-1)
        deltas = bottom[1].data[0].reshape(a, 4, height, width).transpose(2, 3, 0, 1)
        deltas = deltas.reshape(-1, 4)
        boxes = anchors(self.feat_stride, height, width)
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        cx = boxes[:, 0] + 0.5 * w + deltas[:, 0] * w
        cy = boxes[:, 1] + 0.5 * h + deltas[:, 1] * h
        pw, ph = np.exp(deltas[:, 2]) * w, np.exp(deltas[:, 3]) * h
        boxes = np.stack([cx - 0.5 * pw, cy - 0.5 * ph, cx + 0.5 * pw, cy + 0.5 * ph], axis=1)
        im_h, im_w, im_scale = bottom[2].data[0, :3]
        boxes = np.clip(boxes, 0, [im_w - 1, im_h - 1, im_w - 1, im_h - 1])
        min_size = cfg["RPN_MIN_SIZE"] * im_scale
        keep = ((boxes[:, 2] - boxes[:, 0] + 1 >= min_size)
                & (boxes[:, 3] - boxes[:, 1] + 1 >= min_size))
        boxes, scores = boxes[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")[:cfg["RPN_PRE_NMS_TOP_N"]]
        boxes, scores = boxes[order], scores[order]
        kept = greedy_nms(boxes, cfg["RPN_NMS_THRESH"])[:cfg["RPN_POST_NMS_TOP_N"]]
        top[0].reshape(len(kept), 5)
        top[0].data[:, 0] = 0
        top[0].data[:, 1:] = boxes[kept]
        if len(top) > 1:
            top[1].reshape(len(kept), 1)
            top[1].data[:, 0] = scores[kept]

    def backward(self, top, propagate_down, bottom):
        pass


class ProposalTargetLayer(caffe.Layer):
    """rpn.proposal_target_layer: bottoms rpn_rois (R, 5), gt_boxes (G, 5); tops rois (N, 5),
    labels (N,), bbox_targets / inside / outside weights (N, 4K). The gt boxes join the
    proposals; IoU >= 0.5 is fg (its gt's class), the rest bg; the first BATCH_SIZE kept, at
    most FG_FRACTION of them fg. Targets of fg rows in their class's 4 columns."""

    def setup(self, bottom, top):
        self.num_classes = _params(self)["num_classes"]
        top[0].reshape(1, 5)
        top[1].reshape(1)
        for t in top[2:]:
            t.reshape(1, 4 * self.num_classes)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        cfg = CFG[str(self.phase)]
        gt = bottom[1].data.astype(np.float64)
        rois = np.concatenate([bottom[0].data[:, 1:5], gt[:, :4]])
        iou = overlaps(rois, gt[:, :4])
        best, arg = iou.max(axis=1), iou.argmax(axis=1)
        fg = np.flatnonzero(best >= 0.5)[:int(cfg["FG_FRACTION"] * cfg["BATCH_SIZE"])]
        bg = np.flatnonzero(best < 0.5)[:cfg["BATCH_SIZE"] - len(fg)]
        pick = np.concatenate([fg, bg])
        labels = np.where(best[pick] >= 0.5, gt[arg[pick], 4], 0)
        targets = box_targets(rois[pick], gt[arg[pick], :4]) / BBOX_STDS
        n, k = len(pick), self.num_classes
        wide = np.zeros((n, 4 * k))
        weights = np.zeros((n, 4 * k))
        for c in range(4):  # each fg row's class columns: 4 strided writes, not a row loop
            cols = 4 * labels.astype(int) + c
            wide[np.arange(n), cols] = np.where(labels > 0, targets[:, c], 0)
            weights[np.arange(n), cols] = labels > 0
        top[0].reshape(n, 5)
        top[0].data[:, 0] = 0
        top[0].data[:, 1:] = rois[pick]
        top[1].reshape(n)
        top[1].data[...] = labels
        for t, x in zip(top[2:], (wide, weights, weights)):
            t.reshape(n, 4 * k)
            t.data[...] = x

    def backward(self, top, propagate_down, bottom):
        pass


MODULES = {
    "roi_data_layer.layer": {"RoIDataLayer": RoIDataLayer},
    "rpn.anchor_target_layer": {"AnchorTargetLayer": AnchorTargetLayer},
    "rpn.proposal_layer": {"ProposalLayer": ProposalLayer},
    "rpn.proposal_target_layer": {"ProposalTargetLayer": ProposalTargetLayer},
}


def install(monkeypatch) -> None:
    """Register the classes as py-faster-rcnn's modules (packages rpn, roi_data_layer) in
    sys.modules for one test, so ``python_param { module: 'rpn.proposal_layer' }`` imports."""
    for name, classes in MODULES.items():
        package, _, leaf = name.partition(".")
        if package not in sys.modules or not hasattr(sys.modules[package], "__path__"):
            pkg = types.ModuleType(package)
            pkg.__path__ = []
            monkeypatch.setitem(sys.modules, package, pkg)
        module = types.ModuleType(name)
        vars(module).update(classes)
        monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(sys.modules[package], leaf, module, raising=False)
