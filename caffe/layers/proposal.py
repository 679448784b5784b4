"""Proposal: region proposals from an RPN's scores and box deltas (Faster R-CNN).

py-faster-rcnn (rbgirshick/py-faster-rcnn) runs this as a Python layer, rpn.proposal_layer,
configured by YAML ``param_str`` (feat_stride, scales) and its global config (cfg.TRAIN /
cfg.TEST: RPN_PRE_NMS_TOP_N, RPN_POST_NMS_TOP_N, RPN_NMS_THRESH, RPN_MIN_SIZE). Here it is a
built-in layer reading ``proposal_param`` (OpenCV's and OpenVINO's field names); an unset
field takes py-faster-rcnn's value for the layer's phase. ``generate_anchors`` and
``proposals`` are the math; the box overlap and NMS are ``caffe.bbox_util``'s pixel-convention
``pixel_iou`` / ``nms_pixels``.
"""

from __future__ import annotations

import numpy as np
import torch

from caffe import bbox_util
from caffe.layer import Layer, register
from caffe.proto import caffe_pb2

# py-faster-rcnn's config: (pre_nms_topN, post_nms_topN) per phase; nms thresh and min size.
PHASE_TOP_N = {caffe_pb2.TRAIN: (12000, 2000), caffe_pb2.TEST: (6000, 300)}
NMS_THRESH = 0.7
MIN_SIZE = 16
RATIOS = (0.5, 1.0, 2.0)
SCALES = (8.0, 16.0, 32.0)


def generate_anchors(base_size: int = 16, ratios=RATIOS, scales=SCALES) -> np.ndarray:
    """py-faster-rcnn's reference anchors (A, 4) [x1, y1, x2, y2], A = ratios x scales (ratio
    major), centred on the base_size box (0, 0, base_size - 1, base_size - 1).

    Per ratio r (h / w): w = round(sqrt(base^2 / r)), h = round(w * r) (numpy's round: halves
    to even); then each scale s multiplies w and h. Pixel convention: a box of width w spans
    x_ctr - (w - 1) / 2 .. x_ctr + (w - 1) / 2.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    ctr = 0.5 * (base_size - 1)
    ws = np.round(np.sqrt(base_size * base_size / ratios))
    hs = np.round(ws * ratios)
    ws = (ws[:, None] * scales[None, :]).reshape(-1)
    hs = (hs[:, None] * scales[None, :]).reshape(-1)
    return np.stack([ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1),
                     ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)], axis=1)


def shifted_anchors(anchors: torch.Tensor, height: int, width: int,
                    feat_stride: int) -> torch.Tensor:
    """Every anchor at every feature cell: (H * W * A, 4), ordered (h, w, a)."""
    ys = torch.arange(height, dtype=anchors.dtype, device=anchors.device) * feat_stride
    xs = torch.arange(width, dtype=anchors.dtype, device=anchors.device) * feat_stride
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
    return (shifts + anchors[None]).reshape(-1, 4)


def apply_deltas(boxes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """py-faster-rcnn's bbox_transform_inv: boxes moved by (dx, dy, dw, dh), pixel
    convention (width x2 - x1 + 1, centre x1 + width / 2)."""
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx, dy, dw, dh = deltas.unbind(1)
    pred_x = dx * widths + ctr_x
    pred_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack([pred_x - 0.5 * pred_w, pred_y - 0.5 * pred_h,
                        pred_x + 0.5 * pred_w, pred_y + 0.5 * pred_h], dim=1)


def proposals(fg_scores: torch.Tensor, deltas: torch.Tensor, im_info: torch.Tensor,
              anchors: torch.Tensor, feat_stride: int, pre_nms_top_n: int,
              post_nms_top_n: int, nms_thresh: float, min_size: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """rpn.proposal_layer's forward for one image.

    fg_scores (A, H, W) foreground probabilities, deltas (4A, H, W), im_info [height, width,
    scale], anchors (A, 4). Anchors are shifted over the map and moved by their deltas, clipped
    to the image, dropped when narrower or shorter than min_size * scale (pixel widths), sorted
    by score (ties: lower (h, w, a) index first), cut to pre_nms_top_n (0: all), NMSed, cut to
    post_nms_top_n (0: all). Returns boxes (R, 4) and scores (R,), best first.
    """
    a, height, width = fg_scores.shape
    boxes = shifted_anchors(anchors.to(deltas.dtype), height, width, feat_stride)
    deltas = deltas.view(a, 4, height, width).permute(2, 3, 0, 1).reshape(-1, 4)
    scores = fg_scores.permute(1, 2, 0).reshape(-1)
    boxes = apply_deltas(boxes, deltas)
    im_h, im_w, im_scale = im_info[0], im_info[1], im_info[2]
    limits = torch.stack([im_w - 1, im_h - 1, im_w - 1, im_h - 1])
    boxes = torch.minimum(boxes, limits).clamp_min(0)
    threshold = min_size * im_scale
    keep = ((boxes[:, 2] - boxes[:, 0] + 1 >= threshold)
            & (boxes[:, 3] - boxes[:, 1] + 1 >= threshold))
    boxes, scores = boxes[keep], scores[keep]
    order = torch.sort(scores, descending=True, stable=True).indices
    if pre_nms_top_n > 0:
        order = order[:pre_nms_top_n]
    boxes, scores = boxes[order], scores[order]
    kept = bbox_util.nms_pixels(boxes, nms_thresh)
    if post_nms_top_n > 0:
        kept = kept[:post_nms_top_n]
    return boxes[kept], scores[kept]


@register("Proposal")
class ProposalLayer(Layer):
    """Caffe type ``Proposal`` (py-faster-rcnn's rpn.proposal_layer); reads ``proposal_param``:
    ``feat_stride`` (16), ``base_size`` (16), ``ratio`` (0.5 1 2), ``scale`` (8 16 32),
    ``pre_nms_topn`` / ``post_nms_topn`` (unset: 12000 / 2000 in TRAIN, 6000 / 300 in TEST;
    0 keeps all), ``nms_thresh`` (0.7), ``min_size`` (16, at the original image scale).

    Bottoms: RPN class probabilities (1, 2A, H, W) (background A channels, then foreground),
    box deltas (1, 4A, H, W), im_info (1, >= 3) [height, width, scale]. Tops: rois (R, 5) rows
    [0, x1, y1, x2, y2] and optionally their scores (R, 1), R <= post_nms_topn, best first.
    One image per batch, as py-faster-rcnn. No backward.
    """

    exact_num_bottom = 3
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.proposal_param
        self.check(p.feat_stride > 0, f"feat_stride must be > 0 (got {p.feat_stride})")
        self.check(p.base_size > 0, f"base_size must be > 0 (got {p.base_size})")
        ratios = list(p.ratio) or list(RATIOS)
        scales = list(p.scale) or list(SCALES)
        self.check(all(r > 0 for r in ratios) and all(s > 0 for s in scales),
                   f"ratio and scale values must be > 0 (ratio {ratios}, scale {scales})")
        self.anchors = torch.from_numpy(generate_anchors(p.base_size, ratios, scales))
        self.feat_stride = int(p.feat_stride)
        pre, post = PHASE_TOP_N.get(self.phase, PHASE_TOP_N[caffe_pb2.TEST])
        self.pre_nms_top_n = int(p.pre_nms_topn) if p.HasField("pre_nms_topn") else pre
        self.post_nms_top_n = int(p.post_nms_topn) if p.HasField("post_nms_topn") else post
        self.nms_thresh = float(p.nms_thresh) if p.HasField("nms_thresh") else NMS_THRESH
        self.min_size = int(p.min_size) if p.HasField("min_size") else MIN_SIZE
        top[0].reshape(1, 5)
        if len(top) > 1:
            top[1].reshape(1, 1)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def reshape(self, bottom, top):
        scores, deltas, im_info = bottom
        a = self.anchors.shape[0]
        self.check(scores.num_axes == 4 and scores.shape[0] == 1,
                   f"Only single item batches are supported: scores (bottom 0) must be "
                   f"(1, 2A, H, W); got shape {list(scores.shape)}")
        self.check(scores.shape[1] == 2 * a,
                   f"scores (bottom 0) need 2 * {a} channels for {a} anchors (background, then "
                   f"foreground); got shape {list(scores.shape)}")
        self.check(list(deltas.shape) == [1, 4 * a, *scores.shape[2:]],
                   f"box deltas (bottom 1) must be [1, {4 * a}, {scores.shape[2]}, "
                   f"{scores.shape[3]}] for {a} anchors; got shape {list(deltas.shape)}")
        self.check(im_info.num_axes >= 1 and im_info.count_range(1) >= 3,
                   f"im_info (bottom 2) must hold [height, width, scale] per image; got "
                   f"shape {list(im_info.shape)}")
        # The number of proposals is known only after NMS: Forward shapes the tops.

    def forward(self, bottom, top):
        a = self.anchors.shape[0]
        boxes, scores = proposals(
            bottom[0].device_data()[0, a:], bottom[1].device_data()[0],
            bottom[2].device_data().reshape(bottom[2].shape[0], -1)[0],
            self.anchors.to(bottom[1].device_data().device), self.feat_stride,
            self.pre_nms_top_n, self.post_nms_top_n, self.nms_thresh, self.min_size)
        top[0].reshape(boxes.shape[0], 5)
        rois = top[0].mutable_device_data()
        rois[:, 0] = 0
        rois[:, 1:] = boxes
        if len(top) > 1:
            top[1].reshape(scores.shape[0], 1)
            top[1].mutable_device_data().copy_(scores[:, None])
