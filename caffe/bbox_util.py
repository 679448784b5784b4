"""Box utilities shared by the detection layers (the SSD fork's ``bbox_util``).

SSD (weiliu89/caffe, ``ssd`` branch) keeps what PriorBox, DetectionOutput and MultiBoxLoss share
in one module; this is its counterpart, on torch tensors. Boxes are rows ``[xmin, ymin, xmax,
ymax]`` in normalized image coordinates (SSD's ``NormalizedBBox``), in the last axis of size 4.

- ``box_area`` / ``iou``: SSD's BBoxSize and JaccardOverlap (normalized convention: width is
  ``xmax - xmin``, no ``+ 1``; an inverted box has area 0; boxes that only touch overlap 0).
- ``encode`` / ``decode``: EncodeBBox / DecodeBBox for the CORNER, CENTER_SIZE and CORNER_SIZE
  codes, with the variance either applied here or already in the target.
- ``nms``: ApplyNMSFast (score threshold, pre-NMS ``top_k``, adaptive ``eta``).
- ``match``: MatchBBox (greedy bipartite, then optionally every prediction to its best ground
  truth above a threshold).
- ``hard_negatives``: MineHardExamples' MAX_NEGATIVE selection, vectorised over a batch.

``iou`` and ``nms`` have plain signatures so that other detection layers (a Faster R-CNN
Proposal layer, say) can use them.
"""

from __future__ import annotations

import numpy as np
import torch

# PriorBoxParameter.CodeType values.
CORNER = 1
CENTER_SIZE = 2
CORNER_SIZE = 3

# MatchBBox keeps only overlaps above this (smaller ones count as "no overlap").
MIN_OVERLAP = 1e-6


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of each box ``(..., 4)`` -> ``(...)``; 0 for a box with xmax < xmin or ymax < ymin."""
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return torch.where((width < 0) | (height < 0), torch.zeros_like(width), width * height)


def iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Jaccard overlap of every box in ``boxes_a`` (A, 4) with every box in ``boxes_b`` (B, 4):
    (A, B); leading batch axes broadcast, (..., A, 4) x (..., B, 4) -> (..., A, B).
    Intersections with zero width or height give 0."""
    # Coordinates as contiguous (..., 4, A) planes, then (A, 1) against (1, B): broadcasting
    # over unit-stride rows is several times faster than over the interleaved boxes. The
    # (A, B) temporaries dominate the cost, hence the in-place steps.
    a = boxes_a.transpose(-1, -2).contiguous()[..., :, :, None]
    b = boxes_b.transpose(-1, -2).contiguous()[..., :, None, :]
    inter = torch.minimum(a[..., 2, :, :], b[..., 2, :, :]).sub_(
        torch.maximum(a[..., 0, :, :], b[..., 0, :, :]))
    inter_h = torch.minimum(a[..., 3, :, :], b[..., 3, :, :]).sub_(
        torch.maximum(a[..., 1, :, :], b[..., 1, :, :]))
    disjoint = (inter <= 0).logical_or_(inter_h <= 0)
    inter.mul_(inter_h)
    union = torch.add(box_area(boxes_a)[..., :, None], box_area(boxes_b)[..., None, :],
                      out=inter_h).sub_(inter)
    return inter.div_(union).masked_fill_(disjoint, 0.0)


def _corners(boxes: torch.Tensor):
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def encode(boxes: torch.Tensor, priors: torch.Tensor, variances: torch.Tensor, code_type: int,
           variance_encoded_in_target: bool) -> torch.Tensor:
    """EncodeBBox: the regression target of ground-truth ``boxes`` relative to ``priors``
    (all ``(..., 4)``, broadcast). CENTER_SIZE: ((cx - pcx) / pw, (cy - pcy) / ph, log(w / pw),
    log(h / ph)); CORNER: corner offsets; CORNER_SIZE: corner offsets / prior size. Each is
    divided by the prior's variance unless ``variance_encoded_in_target``."""
    px1, py1, px2, py2 = _corners(priors)
    x1, y1, x2, y2 = _corners(boxes)
    if code_type == CORNER:
        out = boxes - priors
    elif code_type == CENTER_SIZE:
        pw, ph = px2 - px1, py2 - py1
        w, h = x2 - x1, y2 - y1
        out = torch.stack([((x1 + x2) / 2 - (px1 + px2) / 2) / pw,
                           ((y1 + y2) / 2 - (py1 + py2) / 2) / ph,
                           torch.log(w / pw), torch.log(h / ph)], dim=-1)
    elif code_type == CORNER_SIZE:
        pw, ph = px2 - px1, py2 - py1
        out = (boxes - priors) / torch.stack([pw, ph, pw, ph], dim=-1)
    else:
        raise ValueError(f"Unknown code type {code_type}")
    return out if variance_encoded_in_target else out / variances


def decode(loc: torch.Tensor, priors: torch.Tensor, variances: torch.Tensor, code_type: int,
           variance_encoded_in_target: bool) -> torch.Tensor:
    """DecodeBBox, the inverse of ``encode``: boxes from location predictions ``loc`` relative
    to ``priors`` (``(..., 4)``, broadcast). Boxes are not clipped."""
    if not variance_encoded_in_target:
        loc = loc * variances
    px1, py1, px2, py2 = _corners(priors)
    if code_type == CORNER:
        return priors + loc
    pw, ph = px2 - px1, py2 - py1
    if code_type == CENTER_SIZE:
        cx = loc[..., 0] * pw + (px1 + px2) / 2
        cy = loc[..., 1] * ph + (py1 + py2) / 2
        w = torch.exp(loc[..., 2]) * pw
        h = torch.exp(loc[..., 3]) * ph
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    if code_type == CORNER_SIZE:
        return priors + loc * torch.stack([pw, ph, pw, ph], dim=-1)
    raise ValueError(f"Unknown code type {code_type}")


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, top_k: int = -1,
        eta: float = 1.0, score_threshold: float | None = None, max_elements: int = 1 << 24,
        min_area: float | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression (SSD's ApplyNMSFast): indices into ``boxes`` (K, 4) of the
    kept boxes, best score first.

    Candidates are the boxes with score > ``score_threshold`` (all when None), sorted by score
    (stable: ties keep index order), the first ``top_k`` of them when ``top_k > -1``. A candidate
    is kept when its overlap with every kept box is <= the current threshold; after each keep,
    when ``eta < 1`` and the threshold is above 0.5, the threshold is multiplied by ``eta``.
    With a fixed threshold and at most ``max_elements`` candidate pairs, the whole overlap
    matrix is formed; otherwise overlaps are computed one kept box at a time. ``min_area``
    (SSD's ApplyNMS, used in mining): after the top_k cut, boxes of smaller area are dropped.
    """
    if score_threshold is None:
        candidates = torch.arange(scores.numel(), device=scores.device)
    else:
        candidates = torch.nonzero(scores > score_threshold).reshape(-1)
    width = candidates.numel() if top_k < 0 else min(top_k, candidates.numel())
    candidates = candidates[stable_top_k(scores[candidates][None], width)[0]]
    if min_area is not None:
        candidates = candidates[box_area(boxes[candidates]) >= min_area]
    count = candidates.numel()
    if count == 0:
        return candidates
    if eta < 1 or count * count > max_elements:
        keep = _greedy_rows(boxes[candidates], threshold, eta)
    else:
        picked = boxes[candidates]
        keep = nms_keep(picked[None], torch.ones_like(candidates, dtype=torch.bool)[None],
                        threshold)[0]
    return candidates[keep]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, top_k: int = -1,
                score_threshold: float | None = None, max_elements: int = 1 << 24
                ) -> list[torch.Tensor]:
    """``nms`` (fixed threshold, eta 1) of B independent sets at once: ``boxes`` (B, P, 4) or
    (P, 4) shared by every set, ``scores`` (B, P); the kept indices of each set, best first.
    Sets whose overlap matrices together would exceed ``max_elements`` go one at a time."""
    count, num = scores.shape
    shared = boxes.dim() == 2
    live = scores if score_threshold is None else torch.where(
        scores > score_threshold, scores, torch.full_like(scores, -float("inf")))
    width = num if top_k < 0 else min(top_k, num)
    if score_threshold is not None:
        width = min(width, int((scores > score_threshold).sum(dim=1).max()))
    if width == 0:
        return [scores.new_empty(0, dtype=torch.int64) for _ in range(count)]
    order = stable_top_k(live, width)
    valid = live.gather(1, order) > -float("inf")
    picked = boxes[order] if shared else boxes.gather(1, order[..., None].expand(-1, -1, 4))
    keep = nms_keep(picked, valid, threshold, min(max_elements, 1 << 20))
    return [order[b][keep[b]] for b in range(count)]


def stable_top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries of each row of ``values`` (B, P), largest first,
    equal values in index order: ``torch.sort(values, 1, descending=True, stable=True)``'s
    first ``k`` columns, without sorting whole rows. ``topk`` finds each row's k-th value; the
    entries above it and the first ones equal to it (by index) are the chosen k, and only they
    are sorted."""
    rows, num = values.shape
    if k >= num // 4 or bool(torch.isnan(values).any()):
        return torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    if k == 0:
        return values.new_empty((rows, 0), dtype=torch.int64)
    kth = torch.topk(values, k, dim=1, sorted=False).values.amin(1, keepdim=True)
    chosen = values >= kth
    if int(chosen.sum(1).max()) > k:  # ties at the k-th value: the first ones by index
        tied = values == kth
        need = k - (values > kth).sum(1, keepdim=True)
        chosen = (values > kth) | (tied & (tied.cumsum(1) <= need))
    index = torch.nonzero(chosen)[:, 1].view(rows, k)
    order = torch.sort(values.gather(1, index), dim=1, descending=True, stable=True).indices
    return index.gather(1, order)


def nms_keep(picked: torch.Tensor, valid: torch.Tensor, threshold: float,
             max_elements: int = 1 << 20) -> torch.Tensor:
    """Greedy NMS (fixed threshold) of B sets of K boxes ``picked`` (B, K, 4) already in score
    order, ``valid`` (B, K) marking real candidates (padding neither suppresses nor is kept):
    the (B, K) mask of the kept boxes. A box is suppressed by an earlier kept one whose ``iou``
    with it exceeds ``threshold`` (as float32). Sets go a chunk of about ``max_elements``
    overlaps at a time, so memory stays bounded and the temporaries near the caches."""
    sets, k = valid.shape
    keep = torch.zeros_like(valid)
    step = min(max(max_elements // max(k * k, 1), 1), sets)
    # Workspace reused by every chunk: fresh large tensors cost page faults on each call.
    work = picked.new_empty((3, step, k, k))
    for lo in range(0, sets, step):
        part = slice(lo, lo + step)
        chunk = picked[part]
        earlier = _suppression(chunk, float(np.float32(threshold)), work[:, :chunk.shape[0]])
        earlier.mul_(valid[part, :, None]).triu_(diagonal=1)
        keep[part] = _greedy_fixed_point_float(earlier) & valid[part]
    return keep


def _suppression(boxes: torch.Tensor, threshold: float, work: torch.Tensor) -> torch.Tensor:
    """float (B, K, K): 1 where ``iou(boxes, boxes) > threshold``, else 0, written in ``work``
    (3, B, K, K). For threshold >= 0 the intersection's sides are clamped at 0 instead of
    masked: a disjoint pair's ratio is then 0 (or 0/0) and fails the test as iou's 0 does;
    other pairs take iou's exact operations."""
    if threshold < 0:
        return torch.gt(iou(boxes, boxes), threshold, out=work[0])
    a = boxes.transpose(-1, -2).contiguous()
    lo, hi = a[:, :, :, None], a[:, :, None, :]
    inter, inter_h, other = work.unbind(0)
    torch.minimum(lo[:, 2], hi[:, 2], out=inter).sub_(torch.maximum(lo[:, 0], hi[:, 0],
                                                                    out=other))
    torch.minimum(lo[:, 3], hi[:, 3], out=inter_h).sub_(torch.maximum(lo[:, 1], hi[:, 1],
                                                                      out=other))
    inter.clamp_min_(0).mul_(inter_h.clamp_min_(0))
    area = box_area(boxes)
    union = torch.add(area[:, :, None], area[:, None, :], out=inter_h).sub_(inter)
    return torch.gt(inter.div_(union), threshold, out=other)


def _greedy_fixed_point_float(earlier: torch.Tensor) -> torch.Tensor:
    """``_greedy_fixed_point`` on ``earlier`` (..., K, K) already strictly upper triangular
    and as floats (1: row suppresses column)."""
    keep = torch.ones(earlier.shape[:-1], dtype=torch.bool, device=earlier.device)
    while True:
        suppressors = torch.matmul(keep.to(earlier.dtype)[..., None, :], earlier)[..., 0, :]
        again = suppressors == 0
        if torch.equal(again, keep):
            return keep
        keep = again


def _greedy_fixed_point(suppresses: torch.Tensor) -> torch.Tensor:
    """Greedy NMS with a fixed threshold as a matrix iteration over (..., K, K): candidate i (in
    score order) is kept iff no kept j < i has ``suppresses[j, i]``. Iterating keep <- not
    any(earlier kept suppressor) from all-kept fixes one more leading candidate per step at
    least, and its fixed point is the greedy answer (which is unique); it takes as many steps
    as the longest chain of suppressions, usually a handful."""
    # As a float matrix product (one BLAS call per step): row k of ``earlier`` counts for
    # candidate i when k is kept.
    earlier = torch.triu(suppresses, diagonal=1).to(torch.float32)
    keep = torch.ones(suppresses.shape[:-1], dtype=torch.bool, device=suppresses.device)
    while True:
        suppressors = torch.matmul(keep.to(torch.float32)[..., None, :], earlier)[..., 0, :]
        again = suppressors == 0
        if torch.equal(again, keep):
            return keep
        keep = again


def _greedy_rows(boxes: torch.Tensor, threshold: float, eta: float) -> torch.Tensor:
    """Greedy NMS of ``boxes`` (K, 4) in score order, one step per kept box: it keeps each
    candidate's largest overlap with the kept set (an overlap row per kept box), and the next
    kept box is the first later candidate within the current threshold (every candidate between
    was rejected under the same kept set and threshold). The threshold shrinks by ``eta`` after
    each keep while above 0.5."""
    count = boxes.shape[0]
    worst = torch.zeros(count, dtype=boxes.dtype, device=boxes.device)
    keep = torch.zeros(count, dtype=torch.bool, device=boxes.device)
    adaptive = np.float32(threshold)
    start = 0
    while start < count:
        passing = torch.nonzero(worst[start:] <= float(adaptive))
        if passing.numel() == 0:
            break
        k = start + int(passing[0])
        keep[k] = True
        start = k + 1
        rest = worst[start:]
        torch.maximum(rest, iou(boxes[k:k + 1], boxes[start:])[0], out=rest)
        if eta < 1 and adaptive > 0.5:
            adaptive = np.float32(adaptive * np.float32(eta))
    return keep


def match(gt_boxes: torch.Tensor, pred_boxes: torch.Tensor, bipartite_only: bool,
          overlap_threshold: float, ignore: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD's MatchBBox of predictions (P, 4) against ground truths (G, 4).

    Returns ``(indices, overlaps)``, both (P,): the matched ground-truth index (-1 none, -2 for
    predictions in ``ignore``) and the best overlap of each prediction (0 when none exceeds
    1e-6). Greedy bipartite matching first: repeatedly the largest remaining overlap pairs its
    prediction and ground truth (ties: lowest prediction, then lowest ground truth), once per
    ground truth. Unless ``bipartite_only``, every prediction still unmatched then takes its
    most-overlapping ground truth among those with overlap >= ``overlap_threshold``.
    """
    num_pred, num_gt = pred_boxes.shape[0], gt_boxes.shape[0]
    dev = pred_boxes.device
    indices = torch.full((num_pred,), -1, dtype=torch.int64, device=dev)
    overlaps = torch.zeros(num_pred, dtype=pred_boxes.dtype, device=dev)
    if num_gt == 0:
        return indices, overlaps
    pairwise = iou(pred_boxes, gt_boxes)
    stored = pairwise > MIN_OVERLAP
    if ignore is not None:
        stored &= ~ignore[:, None]
        indices[ignore] = -2
    pairwise = torch.where(stored, pairwise, torch.zeros_like(pairwise))
    overlaps = pairwise.max(dim=1).values
    # Bipartite: -1 marks pairs no longer available (overlaps are > 1e-6 where stored).
    pool = torch.where(stored, pairwise, torch.full_like(pairwise, -1.0))
    for _ in range(num_gt):
        flat = int(torch.argmax(pool))
        i, j = divmod(flat, num_gt)
        if pool[i, j] < 0:
            break
        indices[i] = j
        overlaps[i] = pairwise[i, j]
        pool[i, :] = -1.0
        pool[:, j] = -1.0
    if not bipartite_only:
        eligible = stored & (pairwise >= overlap_threshold) & (indices == -1)[:, None]
        candidates = torch.where(eligible, pairwise, torch.full_like(pairwise, -1.0))
        best = torch.argmax(candidates, dim=1)  # first of equal maxima: lowest index
        found = eligible.any(dim=1)
        indices = torch.where(found, best, indices)
        overlaps = torch.where(found, pairwise.gather(1, best[:, None])[:, 0], overlaps)
    return indices, overlaps


def hard_negatives(loss: torch.Tensor, eligible: torch.Tensor, num_sel: torch.Tensor
                   ) -> torch.Tensor:
    """Per row of ``loss`` (N, P), the mask of the ``num_sel[n]`` eligible entries with the
    largest loss (MineHardExamples' selection; ties: lower index first)."""
    masked = torch.where(eligible, loss, torch.full_like(loss, -float("inf")))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    rank = torch.arange(loss.shape[1], device=loss.device).expand_as(order)
    chosen = torch.zeros_like(eligible)
    chosen.scatter_(1, order, rank < num_sel[:, None])
    return chosen & eligible


# --- Faster R-CNN's pixel convention (for the Proposal layer) ------------------------------------
def pixel_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Faster R-CNN's overlap of boxes in pixel coordinates, whose ends are inclusive (width
    x2 - x1 + 1), as its nms and bbox_overlaps compute it: (A, 4) x (B, 4) -> (A, B)."""
    a, b = boxes_a[:, None, :], boxes_b[None, :, :]
    inter_w = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1
    inter_h = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1
    inter = inter_w.clamp_min(0) * inter_h.clamp_min(0)

    def area(boxes):
        return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)

    return inter / (area(boxes_a)[:, None] + area(boxes_b)[None, :] - inter)


def nms_pixels(boxes: torch.Tensor, threshold: float, block: int = 1024) -> torch.Tensor:
    """Faster R-CNN's greedy NMS (nms_kernel.cu, py_cpu_nms) of ``boxes`` (K, 4) already sorted
    best first: indices of the kept boxes, best first. A box is dropped when its ``pixel_iou``
    with a kept better box exceeds ``threshold``.

    Candidates go ``block`` at a time: those overlapping a box kept in an earlier block are
    dropped, the rest are resolved among themselves by the fixed-point greedy; memory stays
    O(block * K), never K x K."""
    count = boxes.shape[0]
    keep = torch.zeros(count, dtype=torch.bool, device=boxes.device)
    for start in range(0, count, block):
        cand = boxes[start:start + block]
        kept = boxes[:start][keep[:start]]
        alive = ~(pixel_iou(kept, cand) > threshold).any(dim=0)
        suppresses = (pixel_iou(cand, cand) > threshold) & alive[:, None]
        keep[start:start + block] = _greedy_fixed_point(suppresses) & alive
    return torch.nonzero(keep).reshape(-1)


# --- NormalizedBBox geometry of the data pipeline (numpy float32) ------------------------------
# SSD's sampler and DataTransformer work on boxes one NormalizedBBox at a time in float; these
# are the same formulas, in the same operation order, over float32 arrays (..., 4), broadcast.
# Box sizes are always computed from the corners (the fork's cached ``size`` field, where set,
# holds the same value).

def np_box_size(boxes: np.ndarray) -> np.ndarray:
    """BBoxSize (normalized): width * height, 0 for an inverted box."""
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return np.where((width < 0) | (height < 0), np.float32(0), width * height)


def np_intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IntersectBBox: the common box of ``a`` and ``b``, or [0, 0, 0, 0] when they are apart."""
    apart = ((b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0])
             | (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1]))
    inter = np.concatenate([np.maximum(a[..., :2], b[..., :2]),
                            np.minimum(a[..., 2:], b[..., 2:])], axis=-1)
    return np.where(apart[..., None], np.float32(0), inter)


def np_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """JaccardOverlap (normalized) of ``a`` and ``b`` elementwise."""
    inter = np_intersect(a, b)
    width = inter[..., 2] - inter[..., 0]
    height = inter[..., 3] - inter[..., 1]
    size = width * height
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = size / (np_box_size(a) + np_box_size(b) - size)
    return np.where((width > 0) & (height > 0), ratio, np.float32(0)).astype(np.float32)


def np_coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """BBoxCoverage: the part of ``a``'s area that ``b`` covers, elementwise."""
    size = np_box_size(np_intersect(a, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = size / np_box_size(a)
    return np.where(size > 0, ratio, np.float32(0)).astype(np.float32)


def np_clip(boxes: np.ndarray) -> np.ndarray:
    """ClipBBox: every coordinate into [0, 1]."""
    return np.clip(boxes, np.float32(0), np.float32(1)).astype(np.float32)


def np_locate(src: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """LocateBBox: ``boxes`` given relative to ``src`` in the coordinates ``src`` lives in."""
    width = src[..., 2:3] - src[..., 0:1]
    height = src[..., 3:4] - src[..., 1:2]
    scale = np.concatenate([width, height, width, height], axis=-1)
    return (np.concatenate([src[..., :2], src[..., :2]], axis=-1) + boxes * scale
            ).astype(np.float32)


def np_project(src: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ProjectBBox: ``boxes`` in the coordinates of the window ``src``, clipped to [0, 1], and
    the mask of those that overlap the window and keep a positive area."""
    overlaps = ~((boxes[..., 0] >= src[..., 2]) | (boxes[..., 2] <= src[..., 0])
                 | (boxes[..., 1] >= src[..., 3]) | (boxes[..., 3] <= src[..., 1]))
    width = src[..., 2:3] - src[..., 0:1]
    height = src[..., 3:4] - src[..., 1:2]
    origin = np.concatenate([src[..., :2], src[..., :2]], axis=-1)
    scale = np.concatenate([width, height, width, height], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        projected = np_clip((boxes - origin) / scale)
    return projected, overlaps & (np_box_size(projected) > 0)


EMIT_CENTER = 0
EMIT_MIN_OVERLAP = 1


def np_meet_emit_constraint(src: np.ndarray, boxes: np.ndarray, emit_type: int,
                            emit_overlap: float) -> np.ndarray:
    """MeetEmitConstraint: CENTER keeps boxes whose centre lies in the window ``src`` (edges
    included); MIN_OVERLAP those whose area the window covers by more than ``emit_overlap``."""
    if emit_type == EMIT_CENTER:
        two = np.float32(2)
        x_center = (boxes[..., 0] + boxes[..., 2]) / two
        y_center = (boxes[..., 1] + boxes[..., 3]) / two
        return ((x_center >= src[..., 0]) & (x_center <= src[..., 2])
                & (y_center >= src[..., 1]) & (y_center <= src[..., 3]))
    if emit_type == EMIT_MIN_OVERLAP:
        return np_coverage(boxes, np.broadcast_to(src, boxes.shape)) > np.float32(emit_overlap)
    raise ValueError(f"Unknown emit type {emit_type}")
