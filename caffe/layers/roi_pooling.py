"""ROIPooling: max pooling of every region of interest into a fixed grid (Faster R-CNN).

The fork is rbgirshick/caffe-fast-rcnn (``faster-rcnn`` branch, 4115385d):
roi_pooling_layer.cpp's Forward_cpu and roi_pooling_layer.cu's ROIPoolBackward (the fork has
no CPU backward). ``roi_pool`` and ``roi_pool_backward`` are the math on tensors; the layer
class reads ``roi_pooling_param`` and moves blobs.

Every bin of every ROI is answered at once from a 2-D sparse table (range-maximum query):
level (kh, kw) holds, at (h, w), the maximum of the 2^kh x 2^kw block starting there (and,
when the argmax is wanted, the block's first row-major position of it), so a bin's maximum is
the best of four overlapping blocks. Memory is levels x N x C x H x W, the levels set by the
largest bin, not by the number of ROIs; the blocks are gathered a chunk of bins at a time.
The layer's forward computes the maxima only; the argmax is found when a backward needs it.
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


# Bins answered per gather: 2^16 x C float32 keeps each step's temporaries near the caches.
_CHUNK_ELEMENTS = 1 << 18


def _block_tables(x: torch.Tensor, levels_h: int, levels_w: int, with_position: bool):
    """Block maxima of ``x`` (N, H, W, C): ``(values, positions)``, each (levels_h, levels_w,
    N, H, W, C); entry [kh, kw, n, h, w] is the maximum of x[n, h:h + 2^kh, w:w + 2^kw] per
    channel and (``with_position``, else None) the flat index h * W + w of its first cell in
    row-major order. Width levels are built on single rows and height levels stack blocks
    downwards, so the earlier block of every merge holds the earlier positions: on a tie it
    wins. Entries whose block leaves the map hold a shorter block's maximum and are never
    queried."""
    n, h, w, c = x.shape
    values = x.new_empty((levels_h, levels_w, n, h, w, c))
    values[0, 0] = x
    positions = None
    if with_position:
        # Positions as floats (exact below 2^24, with room for the query's offset of h * w).
        exact = torch.float32 if h * w < 1 << 23 else torch.float64
        positions = torch.empty(values.shape, dtype=exact, device=x.device)
        positions[0, 0] = torch.arange(h * w, dtype=exact, device=x.device).view(h, w, 1)

    def merge(prev, cur, prev_pos, cur_pos, axis, s, size):
        head = [slice(None)] * axis
        a, b = prev[(*head, slice(0, size - s))], prev[(*head, slice(s, None))]
        cur[(*head, slice(size - s, None))] = prev[(*head, slice(size - s, None))]
        torch.maximum(a, b, out=cur[(*head, slice(0, size - s))])
        if prev_pos is not None:
            cur_pos[(*head, slice(size - s, None))] = prev_pos[(*head, slice(size - s, None))]
            # where(b > a, pos_b, pos_a) as pos_a + (b > a) * (pos_b - pos_a), in float.
            pos_a, out = prev_pos[(*head, slice(0, size - s))], cur_pos[(*head, slice(0, size - s))]
            later = torch.gt(b, a, out=torch.empty_like(pos_a))
            torch.addcmul(pos_a, later, prev_pos[(*head, slice(s, None))] - pos_a, out=out)

    def at(table, kh, kw):
        return None if table is None else table[kh, kw]

    for kw in range(1, levels_w):
        merge(values[0, kw - 1], values[0, kw], at(positions, 0, kw - 1), at(positions, 0, kw),
              2, 1 << (kw - 1), w)
    for kh in range(1, levels_h):
        for kw in range(levels_w):
            merge(values[kh - 1, kw], values[kh, kw], at(positions, kh - 1, kw),
                  at(positions, kh, kw), 1, 1 << (kh - 1), h)
    return values, positions


def _query_corners(start, end, levels):
    """For 1-D bins [start, end) (clamped to length >= 1): the level k = floor(log2(len)) and
    the two block starts start and end - 2^k that together cover the bin."""
    empty = end <= start
    lo = torch.where(empty, torch.zeros_like(start), start)
    hi = torch.where(empty, torch.ones_like(end), end)
    k = _floor_log2(hi - lo, levels)
    return k, lo, hi - (1 << k), empty


def _pool(features: torch.Tensor, rois: torch.Tensor, pooled_h: int, pooled_w: int,
          spatial_scale: float, with_argmax: bool):
    """Channel-last (R, PH, PW, C) bin maxima of every ROI and, ``with_argmax``, their first
    positions (as exact floats, -1 for an empty bin; else None).

    Each bin is covered by four overlapping power-of-two blocks (a 2-D sparse table, levels
    set by the largest bin): its maximum is theirs, and its first maximum in row-major order
    is the earliest first maximum among the blocks that reach the bin's maximum. The corner
    blocks are gathered as whole rows of C channels, a chunk of bins at a time."""
    n, c, height, width = features.shape
    r = rois.shape[0]
    geo = ROIGeometry(rois, pooled_h, pooled_w, spatial_scale, height, width)
    kh, h0, h1, empty_h = _query_corners(geo.hstart, geo.hend, _levels(height))
    kw, w0, w1, empty_w = _query_corners(geo.wstart, geo.wend, _levels(width))
    levels_h = int(kh.max()) + 1 if r else 1
    levels_w = int(kw.max()) + 1 if r else 1
    values, positions = _block_tables(features.permute(0, 2, 3, 1), levels_h, levels_w,
                                      with_argmax)
    values = values.view(-1, c)
    positions = None if positions is None else positions.view(-1, c)

    # Table row (level, batch, h, w) of each corner block, (4, R * PH * PW).
    level = kh[:, :, None] * levels_w + kw[:, None, :]
    plane = (level * n + geo.batch[:, None, None]) * height
    corners = torch.stack([((plane + rows[:, :, None]) * width + cols[:, None, :]).reshape(-1)
                           for rows in (h0, h1) for cols in (w0, w1)])
    bins = corners.shape[1]
    top = features.new_empty((bins, c))
    argmax = positions.new_empty((bins, c)) if with_argmax else None
    step = max(_CHUNK_ELEMENTS // max(c, 1), 1)
    for lo in range(0, bins, step):
        rows = corners[:, lo:lo + step]
        best = torch.index_select(values, 0, rows[0], out=top[lo:lo + step])
        if positions is None:
            for k in range(1, 4):
                torch.maximum(best, values.index_select(0, rows[k]), out=best)
            continue
        found = [best.clone()] + [values.index_select(0, rows[k]) for k in range(1, 4)]
        for v in found[1:]:
            torch.maximum(best, v, out=best)
        first = argmax[lo:lo + step].fill_(2 * height * width)
        short = torch.empty_like(first)
        for k, v in enumerate(found):
            # The earliest first maximum among the corners that reach the bin's maximum: a
            # corner short of it is pushed past every position (masks as float factors:
            # torch's elementwise kernels are far faster on them than on bool and where).
            torch.ne(v, best, out=short)
            cand = positions.index_select(0, rows[k]).add_(short, alpha=height * width)
            torch.minimum(first, cand, out=first)
        # A NaN maximum equals no corner: take the earliest corner's first position instead.
        first.sub_(torch.ge(first, height * width, out=short), alpha=height * width)
    empty = (empty_h[:, :, None] | empty_w[:, None, :]).reshape(-1, 1)
    top.add_(0.0)  # a -0 maximum reads +0: equal zeros are one value, as in the argmax
    if bool(empty.any()):
        top.masked_fill_(empty, 0)
        if with_argmax:
            argmax.masked_fill_(empty, -1)
    top = top.view(r, pooled_h, pooled_w, c)
    return top, None if argmax is None else argmax.view(r, pooled_h, pooled_w, c)


def roi_pool(features: torch.Tensor, rois: torch.Tensor, pooled_h: int, pooled_w: int,
             spatial_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Faster R-CNN ROI max pooling.

    features (N, C, H, W); rois (R, 5) rows [batch, x1, y1, x2, y2] in image coordinates.
    Returns top (R, C, pooled_h, pooled_w), the maximum over each bin (0 for an empty bin), and
    argmax (same shape, int64): the flat index h * W + w in the ROI's feature plane of the
    first maximum in row-major order, -1 for an empty bin. Both are views of channel-last
    (R, pooled_h, pooled_w, C) tensors; copy them where a contiguous layout is needed.
    """
    top, argmax = _pool(features, rois, pooled_h, pooled_w, spatial_scale, True)
    return top.permute(0, 3, 1, 2), argmax.to(torch.int64).permute(0, 3, 1, 2)


def roi_pool_max(features: torch.Tensor, rois: torch.Tensor, pooled_h: int, pooled_w: int,
                 spatial_scale: float) -> torch.Tensor:
    """``roi_pool``'s top alone (no argmax: about half the work), the same view layout."""
    return _pool(features, rois, pooled_h, pooled_w, spatial_scale, False)[0].permute(0, 3, 1, 2)


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
    # Channel-last (R * PH * PW, C), as roi_pool makes it: each scatter row is one cell's C diffs.
    argmax = argmax.permute(0, 2, 3, 1).reshape(-1, c)
    # Positions and rows as floats: exact (float32 below 2^24), far cheaper than int64 here.
    argmax = argmax.to(torch.float32 if n * height * width < 1 << 24 else torch.float64)
    diff = top_diff.new_empty((r * pooled_h * pooled_w, c))
    diff.view(r, pooled_h, pooled_w, c).copy_(top_diff.permute(0, 2, 3, 1))
    # A bin whose credited cells cover it passes its argmax (which lies in the bin) as it is;
    # the others (empty bins, malformed ROIs, edges where the kernel's division and the bin
    # edges round apart) are tested cell by cell. An empty bin's -1 lands on row -1, outside
    # every interval.
    full_h = (lo_h <= geo.hstart) & (hi_h >= geo.hend - 1) & (geo.hend > geo.hstart)
    full_w = (lo_w <= geo.wstart) & (hi_w >= geo.wend - 1) & (geo.wend > geo.wstart)
    partial = torch.nonzero(~(full_h[:, :, None] & full_w[:, None, :]).reshape(-1))[:, 0]
    if partial.numel():
        roi = partial // (pooled_h * pooled_w)
        p, q = (partial // pooled_w) % pooled_h, partial % pooled_w
        pos = argmax[partial]
        h = torch.floor(pos / width)
        w = pos - h * width
        keep = ((h >= lo_h[roi, p, None]) & (h <= hi_h[roi, p, None])
                & (w >= lo_w[roi, q, None]) & (w <= hi_w[roi, q, None]))
        diff[partial] = torch.where(keep, diff[partial], torch.zeros_like(pos, dtype=diff.dtype))
    row = argmax.clamp_min(0).view(r, pooled_h * pooled_w * c)
    row = row.add_((geo.batch * (height * width)).to(row.dtype)[:, None]).to(torch.int64)
    grad = top_diff.new_zeros((n * height * width, c))
    grad.scatter_add_(0, row.view(-1, c), diff)
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
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom, top):
        check_rois(self, bottom)
        top[0].reshape(bottom[1].shape[0], bottom[0].shape[1], self.pooled_h, self.pooled_w)

    def _rois(self, bottom) -> torch.Tensor:
        return bottom[1].device_data().reshape(-1, 5)

    def forward(self, bottom, top):
        # The argmax is found when a backward asks for it, from a copy of this pass's inputs
        # (a TEST forward skips that half of the work; the copy keeps Caffe's semantics if the
        # bottoms change before the backward).
        features, rois = bottom[0].device_data(), self._rois(bottom)
        out = roi_pool_max(features, rois, self.pooled_h, self.pooled_w, self.spatial_scale)
        top[0].mutable_device_data().copy_(out)
        self._inputs = (features.clone(), rois.clone())
        self.argmax = None

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.argmax is None:
            # Positions as exact floats (roi_pool_backward takes them as the int64 argmax).
            self.argmax = _pool(*self._inputs, self.pooled_h, self.pooled_w,
                                self.spatial_scale, True)[1].permute(0, 3, 1, 2)
        grad = roi_pool_backward(top[0].device_diff(), self.argmax, self._rois(bottom),
                                 tuple(bottom[0].shape), self.spatial_scale)
        bottom[0].mutable_device_diff().copy_(grad)
