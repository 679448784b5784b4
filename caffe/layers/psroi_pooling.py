"""PSROIPooling: position-sensitive ROI average pooling (R-FCN).

The fork is daijifeng001/caffe-rfcn (543f8f6a), psroi_pooling_layer.cu (the fork's CPU path is
NOT_IMPLEMENTED). ``psroi_pool`` and ``psroi_pool_backward`` are the math on tensors; the
layer class reads ``psroi_pooling_param`` and moves blobs.

Bin sums come from a summed-area table of the features (kept in float64, so the four-corner
differences lose nothing next to the fork's float32 loop); the backward pass is the adjoint:
each bin's diff / area is written at its four corners and integrated by two cumulative sums.
"""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers.roi_pooling import check_rois, round_half_away


def _psroi_bins(rois: torch.Tensor, group_size: int, spatial_scale: float, height: int,
                width: int):
    """Per ROI: batch index and the clipped bin edges (R, g) along h and w.

    R-FCN rounds the coordinates BEFORE scaling: start = round(x1) * scale, end =
    (round(x2) + 1) * scale (not integral); size max(end - start, 0.1); bin p covers
    [floor(p * bin + start), ceil((p + 1) * bin + start)) clipped to [0, H] (or W).
    """
    batch = rois[:, 0].to(torch.int64)
    rounded = round_half_away(rois[:, 1:5])
    start = rounded[:, 0:2] * spatial_scale
    end = (rounded[:, 2:4] + 1) * spatial_scale
    size = (end - start).clamp_min(0.1)
    bin_size = size / group_size
    p = torch.arange(group_size, dtype=rois.dtype, device=rois.device)
    edges = []
    for axis, limit in ((1, height), (0, width)):  # (y: rows, x: cols)
        b, s = bin_size[:, axis:axis + 1], start[:, axis:axis + 1]
        lo = torch.floor(p * b + s).to(torch.int64).clamp(0, limit)
        hi = torch.ceil((p + 1) * b + s).to(torch.int64).clamp(0, limit)
        edges += [lo, hi]
    return batch, edges


def _corner_index(batch, edges, output_dim, group_size, channels, height, width):
    """Flat indices into an (N, C, H+1, W+1) table of the four corners (hs,ws), (hs,we),
    (he,ws), (he,we) of every output (R, output_dim, g, g), and the bin areas."""
    hs, he, ws, we = edges
    g = group_size
    ctop = torch.arange(output_dim, device=batch.device).view(1, -1, 1, 1)
    gh = torch.arange(g, device=batch.device).view(1, 1, -1, 1)
    gw = torch.arange(g, device=batch.device).view(1, 1, 1, -1)
    channel = (ctop * g + gh) * g + gw
    plane = (batch.view(-1, 1, 1, 1) * channels + channel) * (height + 1)

    def at(rows, cols):
        return (plane + rows[:, None, :, None]) * (width + 1) + cols[:, None, None, :]

    area = (he - hs)[:, None, :, None] * (we - ws)[:, None, None, :]
    return (at(hs, ws), at(hs, we), at(he, ws), at(he, we)), area


def psroi_pool(features: torch.Tensor, rois: torch.Tensor, output_dim: int, group_size: int,
               spatial_scale: float) -> torch.Tensor:
    """R-FCN position-sensitive ROI pooling.

    features (N, output_dim * g^2, H, W); rois (R, 5) rows [batch, x1, y1, x2, y2]. Returns
    (R, output_dim, g, g): output (ctop, ph, pw) is the mean of channel (ctop * g + ph) * g + pw
    over bin (ph, pw) (0 for an empty bin).
    """
    n, c, height, width = features.shape
    batch, edges = _psroi_bins(rois, group_size, spatial_scale, height, width)
    table = features.new_zeros((n, c, height + 1, width + 1), dtype=torch.float64)
    table[:, :, 1:, 1:] = features.to(torch.float64).cumsum(2).cumsum(3)
    flat = table.view(-1)
    (a, b, cc, d), area = _corner_index(batch, edges, output_dim, group_size, c, height, width)
    total = flat[d] - flat[b] - flat[cc] + flat[a]
    mean = torch.where(area > 0, total / area.clamp_min(1), torch.zeros_like(total))
    return mean.to(features.dtype)


def psroi_pool_backward(top_diff: torch.Tensor, rois: torch.Tensor,
                        features_shape: tuple[int, ...], spatial_scale: float) -> torch.Tensor:
    """The gradient w.r.t. the features of ``psroi_pool``: every cell of a bin (in the bin's
    channel) receives top_diff / bin_area; empty bins give nothing."""
    n, c, height, width = features_shape
    _, output_dim, group_size, _ = top_diff.shape
    batch, edges = _psroi_bins(rois, group_size, spatial_scale, height, width)
    (a, b, cc, d), area = _corner_index(batch, edges, output_dim, group_size, c, height, width)
    share = torch.where(area > 0, top_diff.to(torch.float64) / area.clamp_min(1),
                        torch.zeros_like(top_diff, dtype=torch.float64))
    delta = top_diff.new_zeros(n * c * (height + 1) * (width + 1), dtype=torch.float64)
    for index, sign in ((a, 1.0), (b, -1.0), (cc, -1.0), (d, 1.0)):
        delta.index_add_(0, index.reshape(-1), share.reshape(-1), alpha=sign)
    grad = delta.view(n, c, height + 1, width + 1).cumsum(2).cumsum(3)
    return grad[:, :, :height, :width].to(top_diff.dtype)


@register("PSROIPooling")
class PSROIPoolingLayer(Layer):
    """Caffe type ``PSROIPooling`` (R-FCN, daijifeng001/caffe-rfcn); reads
    ``psroi_pooling_param``: ``spatial_scale``, ``output_dim`` and ``group_size`` (all
    required, the last two > 0).

    Bottoms: features (N, output_dim * group_size^2, H, W) and rois (R, 5) rows
    [batch, x1, y1, x2, y2]. Top: (R, output_dim, group_size, group_size), each output the
    average of its own channel over its bin (see ``psroi_pool``). Backward: the top diff
    spread evenly over the bin; no gradient reaches the rois.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.psroi_pooling_param
        for field in ("spatial_scale", "output_dim", "group_size"):
            self.check(p.HasField(field), f"psroi_pooling_param.{field} is required")
        self.check(p.output_dim > 0, f"output_dim must be > 0 (got {p.output_dim})")
        self.check(p.group_size > 0, f"group_size must be > 0 (got {p.group_size})")
        self.output_dim, self.group_size = int(p.output_dim), int(p.group_size)
        self.spatial_scale = float(p.spatial_scale)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom, top):
        check_rois(self, bottom)
        g = self.group_size
        channels = bottom[0].shape[1]
        self.check(channels == self.output_dim * g * g,
                   f"input channel number does not match layer parameters: features have "
                   f"{channels} channels (shape {list(bottom[0].shape)}), output_dim * "
                   f"group_size^2 = {self.output_dim} * {g}^2 = {self.output_dim * g * g}")
        top[0].reshape(bottom[1].shape[0], self.output_dim, g, g)

    def _rois(self, bottom) -> torch.Tensor:
        return bottom[1].device_data().reshape(-1, 5)

    def forward(self, bottom, top):
        top[0].mutable_device_data().copy_(psroi_pool(
            bottom[0].device_data(), self._rois(bottom), self.output_dim, self.group_size,
            self.spatial_scale))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        bottom[0].mutable_device_diff().copy_(psroi_pool_backward(
            top[0].device_diff(), self._rois(bottom), tuple(bottom[0].shape),
            self.spatial_scale))
