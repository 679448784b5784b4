"""ROIPooling: max pooling of every region of interest into a fixed grid (Faster R-CNN).

The fork is rbgirshick/caffe-fast-rcnn (``faster-rcnn`` branch, 4115385d):
roi_pooling_layer.cpp's Forward_cpu and roi_pooling_layer.cu's ROIPoolBackward (the fork has
no CPU backward). ``roi_pool`` and ``roi_pool_backward`` are the math on tensors; the layer
class reads ``roi_pooling_param`` and moves blobs.

Every bin of every ROI is answered at once from a 2-D sparse table (range-maximum query):
level (kh, kw) holds, at (h, w), the maximum of the 2^kh x 2^kw block starting there (with its
first row-major position), so a bin's maximum is the best of four overlapping blocks. Memory is
levels x N x C x H x W int64, the levels set by the largest bin, not by the number of ROIs.
"""

from __future__ import annotations

import torch

from caffe.layer import Layer, register


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's round(): halves go away from zero (torch.round goes to even)."""
    whole = torch.trunc(x)
    return whole + torch.where((x - whole).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def _floor_log2(n: torch.Tensor, levels: int) -> torch.Tensor:
    """floor(log2(n)) of positive integers n < 2^levels, exactly."""
    powers = 2 ** torch.arange(1, levels, device=n.device)
    return (n.unsqueeze(-1) >= powers).sum(-1)


def _levels(n: int) -> int:
    """Number of sparse-table levels for blocks of length up to ``n``."""
    return max(int(n), 1).bit_length()


class ROIGeometry:
    """The integer ROI box and bin edges of Faster R-CNN's ROIPooling, per ROI.

    start/end: C round() of coord * spatial_scale (in the blob's dtype); ROI size
    max(end - start + 1, 1) (a malformed ROI is pooled as 1x1 at its start); bin size
    size / pooled in the blob's dtype; bin p covers [floor(p * bin), ceil((p + 1) * bin)) offset
    by start and clipped to the map.
    """

    def __init__(self, rois: torch.Tensor, pooled_h: int, pooled_w: int, spatial_scale: float,
                 height: int, width: int) -> None:
        self.batch = rois[:, 0].to(torch.int64)
        box = round_half_away(rois[:, 1:5] * spatial_scale).to(torch.int64)
        self.start_w, self.start_h, self.end_w, self.end_h = box.unbind(1)
        self.bin_h = (self.end_h - self.start_h + 1).clamp_min(1).to(rois.dtype) / pooled_h
        self.bin_w = (self.end_w - self.start_w + 1).clamp_min(1).to(rois.dtype) / pooled_w
        self.hstart, self.hend = self._edges(self.bin_h, self.start_h, pooled_h, height)
        self.wstart, self.wend = self._edges(self.bin_w, self.start_w, pooled_w, width)

    @staticmethod
    def _edges(bin_size, start, pooled, limit):
        p = torch.arange(pooled, dtype=bin_size.dtype, device=bin_size.device)
        lo = torch.floor(p * bin_size[:, None]).to(torch.int64) + start[:, None]
        hi = torch.ceil((p + 1) * bin_size[:, None]).to(torch.int64) + start[:, None]
        return lo.clamp(0, limit), hi.clamp(0, limit)


def _order_code(x: torch.Tensor):
    """``(codes, decode)``: int64 codes ordered as ``x``'s values (equal values, -0 and +0
    included, get equal codes) and the map from codes back to values. float32 flips its bits
    from sign-magnitude to two's complement order (an involution); other dtypes rank their
    distinct values."""
    if x.dtype == torch.float32:
        def flip(bits):
            return bits ^ ((bits >> 31) & 0x7FFFFFFF)

        codes = flip((x + 0.0).view(torch.int32)).to(torch.int64)  # + 0.0: -0 -> +0
        return codes, lambda code: flip(code.to(torch.int32)).view(torch.float32)
    values, rank = torch.unique(x, return_inverse=True)
    return rank, lambda code: values[code]


def _sparse_table(key: torch.Tensor, levels_h: int, levels_w: int) -> torch.Tensor:
    """Block maxima of ``key`` (N, H, W, C): (levels_h, levels_w, N, H, W, C), entry
    [kh, kw, n, h, w] = max of key[n, h:h + 2^kh, w:w + 2^kw] per channel. Entries whose block
    leaves the map hold a shorter block's maximum and are never queried."""
    h, w = key.shape[1:3]
    table = key.new_empty((levels_h, levels_w, *key.shape))
    table[0, 0] = key
    for kw in range(1, levels_w):
        s, prev, cur = 1 << (kw - 1), table[0, kw - 1], table[0, kw]
        cur[:, :, w - s:] = prev[:, :, w - s:]
        torch.maximum(prev[:, :, :w - s], prev[:, :, s:], out=cur[:, :, :w - s])
    for kh in range(1, levels_h):
        s, prev, cur = 1 << (kh - 1), table[kh - 1], table[kh]
        cur[:, :, h - s:] = prev[:, :, h - s:]
        torch.maximum(prev[:, :, :h - s], prev[:, :, s:], out=cur[:, :, :h - s])
    return table


def _query_corners(start, end, levels):
    """For 1-D bins [start, end) (clamped to length >= 1): the level k = floor(log2(len)) and
    the two block starts start and end - 2^k that together cover the bin."""
    empty = end <= start
    lo = torch.where(empty, torch.zeros_like(start), start)
    hi = torch.where(empty, torch.ones_like(end), end)
    k = _floor_log2(hi - lo, levels)
    return k, lo, hi - (1 << k), empty


def roi_pool(features: torch.Tensor, rois: torch.Tensor, pooled_h: int, pooled_w: int,
             spatial_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Faster R-CNN ROI max pooling.

    features (N, C, H, W); rois (R, 5) rows [batch, x1, y1, x2, y2] in image coordinates.
    Returns top (R, C, pooled_h, pooled_w), the maximum over each bin (0 for an empty bin), and
    argmax (same shape, int64): the flat index h * W + w in the ROI's feature plane of the
    first maximum in row-major order, -1 for an empty bin. Both are views of channel-last
    (R, pooled_h, pooled_w, C) tensors; copy them where a contiguous layout is needed.

    The table holds key = order code of the value, shifted left, with (mask - position) in
    the low bits, so one integer maximum gives the largest value and, among equal values, the
    first position. It is channel-last, so each corner lookup copies whole rows of C keys.
    """
    n, c, height, width = features.shape
    r = rois.shape[0]
    geo = ROIGeometry(rois, pooled_h, pooled_w, spatial_scale, height, width)
    kh, h0, h1, empty_h = _query_corners(geo.hstart, geo.hend, _levels(height))
    kw, w0, w1, empty_w = _query_corners(geo.wstart, geo.wend, _levels(width))
    levels_h = int(kh.max()) + 1 if r else 1
    levels_w = int(kw.max()) + 1 if r else 1
    bits = max(height * width - 1, 1).bit_length()
    mask = (1 << bits) - 1
    codes, decode = _order_code(features.permute(0, 2, 3, 1))
    position = torch.arange(height * width, device=features.device).view(height, width, 1)
    table = _sparse_table((codes << bits) | (mask - position), levels_h, levels_w)
    table = table.view(-1, c)

    # Table row (level, batch, h, w) of each corner block, shaped (R, PH, PW).
    level = kh[:, :, None] * levels_w + kw[:, None, :]
    plane = (level * n + geo.batch[:, None, None]) * height
    best = None
    for rows in (h0, h1):
        for cols in (w0, w1):
            key = table.index_select(0, ((plane + rows[:, :, None]) * width
                                         + cols[:, None, :]).reshape(-1))
            best = key if best is None else torch.maximum(best, key, out=best)
    best = best.view(r, pooled_h, pooled_w, c)
    empty = (empty_h[:, :, None] | empty_w[:, None, :])[..., None]
    argmax = (mask - (best & mask)).masked_fill_(empty, -1)
    top = decode(best >> bits).masked_fill_(empty, 0)
    return top.permute(0, 3, 1, 2), argmax.permute(0, 3, 1, 2)


def _credited_cells(start, end, bin_size, pooled: int, size: int):
    """Along one axis, per ROI and bin p: the cells i that the fork's backward kernel credits
    bin p from, i.e. i inside the unclipped ROI [start, end] with floor((i - start) / bin) <= p
    < ceil((i - start + 1) / bin) (both clipped to [0, pooled]). Both bounds grow with i, so
    the cells form an interval: returns (lo, hi), each (R, pooled), empty when lo > hi."""
    i = torch.arange(size, device=start.device)
    offset = (i - start[:, None]).to(bin_size.dtype)
    first = torch.floor(offset / bin_size[:, None]).to(torch.int64).clamp(0, pooled)
    last = torch.ceil((offset + 1) / bin_size[:, None]).to(torch.int64).clamp(0, pooled)
    inside = (i >= start[:, None]) & (i <= end[:, None])
    p = torch.arange(pooled, device=start.device).view(1, -1, 1)
    credited = inside[:, None] & (p >= first[:, None]) & (p < last[:, None])
    lo = torch.where(credited, i, size).amin(-1)
    hi = torch.where(credited, i, -1).amax(-1)
    return lo, hi


def roi_pool_backward(top_diff: torch.Tensor, argmax: torch.Tensor, rois: torch.Tensor,
                      features_shape: tuple[int, ...], spatial_scale: float) -> torch.Tensor:
    """The gradient w.r.t. the features of ``roi_pool``, as the fork's CUDA kernel gives it.

    A bottom cell receives a bin's top diff when it is the bin's argmax, lies inside the ROI's
    unclipped box (inclusive ends) and the bin is among those the kernel derives for the cell
    by dividing its offset by the bin size. A malformed ROI (end < start once scaled) contains
    no cell, so it gets no gradient although its 1x1 window was pooled.
    """
    n, c, height, width = features_shape
    r, _, pooled_h, pooled_w = top_diff.shape
    geo = ROIGeometry(rois, pooled_h, pooled_w, spatial_scale, height, width)
    lo_h, hi_h = _credited_cells(geo.start_h, geo.end_h, geo.bin_h, pooled_h, height)
    lo_w, hi_w = _credited_cells(geo.start_w, geo.end_w, geo.bin_w, pooled_w, width)
    # Channel-last (R, PH, PW, C), as roi_pool makes it: each scatter row is one cell's C diffs.
    argmax = argmax.permute(0, 2, 3, 1)
    # Plane indices are far below 2^24, so float32 division and floor are exact; an empty
    # bin's -1 lands on row -1, outside every interval.
    pos = argmax.to(torch.float32)
    h = torch.floor(pos / width)
    w = pos - h * width
    keep = ((h >= lo_h[:, :, None, None]) & (h <= hi_h[:, :, None, None])
            & (w >= lo_w[:, None, :, None]) & (w <= hi_w[:, None, :, None]))
    row = argmax.clamp_min(0) + (geo.batch * (height * width)).view(r, 1, 1, 1)
    diff = top_diff.permute(0, 2, 3, 1)
    grad = top_diff.new_zeros((n * height * width, c))
    grad.scatter_add_(0, row.reshape(-1, c),
                      torch.where(keep, diff, torch.zeros_like(diff)).reshape(-1, c))
    return grad.view(n, height, width, c).permute(0, 3, 1, 2)


def check_rois(layer: Layer, bottom) -> None:
    """Caffe-style checks on an ROI blob: (R, 5) rows [batch, x1, y1, x2, y2] whose batch index
    (truncated to int, as the fork casts it) names an image of the features."""
    rois, features = bottom[1], bottom[0]
    layer.check(rois.num_axes >= 1 and rois.count_range(1) == 5,
                f"rois (bottom 1) must be (R, 5) rows [batch, x1, y1, x2, y2]; got shape "
                f"{list(rois.shape)}")
    layer.check(features.num_axes == 4,
                f"features (bottom 0) must be (N, C, H, W); got shape {list(features.shape)}")
    if rois.shape[0]:
        batch = rois.device_data().reshape(-1, 5)[:, 0].to(torch.int64)
        bad = (batch < 0) | (batch >= features.shape[0])
        if bool(bad.any()):
            which = int(bad.nonzero()[0, 0])
            layer.check(False, f"ROI {which} has batch index {int(batch[which])}, outside "
                               f"[0, {features.shape[0]}) for features of shape "
                               f"{list(features.shape)} (rois shape {list(rois.shape)})")


@register("ROIPooling")
class ROIPoolingLayer(Layer):
    """Caffe type ``ROIPooling`` (Faster R-CNN, rbgirshick/caffe-fast-rcnn); reads
    ``roi_pooling_param``: ``pooled_h``, ``pooled_w`` (both > 0), ``spatial_scale``
    (default 1; image to feature-map coordinates, e.g. 1/16).

    Bottoms: features (N, C, H, W) and rois (R, 5) rows [batch, x1, y1, x2, y2]. Top:
    (R, C, pooled_h, pooled_w), the maximum of every bin of every ROI (see ``roi_pool``).
    Backward: each bin's top diff goes to its argmax cell (see ``roi_pool_backward``); no
    gradient reaches the rois.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.roi_pooling_param
        self.check(p.pooled_h > 0, f"pooled_h must be > 0 (got {p.pooled_h})")
        self.check(p.pooled_w > 0, f"pooled_w must be > 0 (got {p.pooled_w})")
        self.pooled_h, self.pooled_w = int(p.pooled_h), int(p.pooled_w)
        self.spatial_scale = float(p.spatial_scale)
        self.argmax: torch.Tensor | None = None

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom, top):
        check_rois(self, bottom)
        top[0].reshape(bottom[1].shape[0], bottom[0].shape[1], self.pooled_h, self.pooled_w)

    def _rois(self, bottom) -> torch.Tensor:
        return bottom[1].device_data().reshape(-1, 5)

    def forward(self, bottom, top):
        out, self.argmax = roi_pool(bottom[0].device_data(), self._rois(bottom), self.pooled_h,
                                    self.pooled_w, self.spatial_scale)
        top[0].mutable_device_data().copy_(out)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        grad = roi_pool_backward(top[0].device_diff(), self.argmax, self._rois(bottom),
                                 tuple(bottom[0].shape), self.spatial_scale)
        bottom[0].mutable_device_diff().copy_(grad)
