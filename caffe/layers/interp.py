"""Interp of DeepLab v2 (deeplab-public-ver2): bilinear resizing on an align-corners grid.

Reads ``interp_param { height width | zoom_factor | shrink_factor, pad_beg pad_end }``. The
bottom (N, C, H, W) is first cropped to rows and columns [-pad_beg, size + pad_end) (pads must
be <= 0), giving H_eff x W_eff; the top size is, checked in DeepLab's order: shrink_factor s
alone: (H_eff - 1) / s + 1; zoom_factor z alone: H_eff + (H_eff - 1)(z - 1); height and width:
as given; shrink and zoom: shrink, then zoom. Top pixel (h, w) reads the cropped input at
(h * r_h, w * r_w) with r = (in - 1) / (out - 1) computed in float32 (0 for a 1-pixel top), as
DeepLab does: the integer part picks the pixel, the float32 fraction weights it against its
successor (the last row/column has no successor). Equal sizes copy. The backward is the adjoint
(DeepLab's caffe_cpu_interp2_backward). Later DeepLab/PSPNet copies also take the size from a
second bottom: with two bottoms the top is bottom[1]'s height x width (then no size field may be
set), and bottom[1] gets no gradient.
"""

from __future__ import annotations

import numpy as np
import torch

from caffe.layer import register
from caffe.layers._resize import MatrixCache, ResizeLayer, weight_matrix


def interp_axis_matrix(in_full: int, offset: int, in_eff: int, out_size: int,
                       dtype: torch.dtype) -> torch.Tensor:
    """(out_size, in_full): DeepLab's weights along one axis for the crop [offset, offset +
    in_eff) of an axis of length in_full."""
    f32 = np.float32
    ratio = f32(in_eff - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
    pos = ratio * np.arange(out_size, dtype=f32)           # float32, as DeepLab's h1r
    low = pos.astype(np.int64)                             # truncation = floor (pos >= 0)
    step = (low < in_eff - 1).astype(np.int64)
    w_high = torch.from_numpy(pos - low.astype(f32)).to(dtype)
    w_low = 1 - w_high
    return weight_matrix(out_size, in_full, offset + low, offset + low + step, w_low, w_high)


def interp_output_size(param, h_eff: int, w_eff: int) -> tuple[int, int] | None:
    """DeepLab's top (height, width) for the cropped input, or None when no rule applies."""
    has = param.HasField
    shrink, zoom = param.shrink_factor, param.zoom_factor
    if has("shrink_factor") and not has("zoom_factor"):
        return (h_eff - 1) // shrink + 1, (w_eff - 1) // shrink + 1
    if has("zoom_factor") and not has("shrink_factor"):
        return h_eff + (h_eff - 1) * (zoom - 1), w_eff + (w_eff - 1) * (zoom - 1)
    if has("height") and has("width"):
        return param.height, param.width
    if has("shrink_factor") and has("zoom_factor"):
        h, w = (h_eff - 1) // shrink + 1, (w_eff - 1) // shrink + 1
        return h + (h - 1) * (zoom - 1), w + (w - 1) * (zoom - 1)
    return None


@register("Interp")
class InterpLayer(ResizeLayer):
    """Interp (DeepLab v2): bottom (N, C, H, W) -> top (N, C, H_out, W_out), see the module."""

    exact_num_bottom = -1
    min_bottom = 1
    max_bottom = 2

    def setup(self, bottom, top):
        p = self.layer_param.interp_param
        if len(bottom) == 2:
            given = [f for f in ("shrink_factor", "zoom_factor", "height", "width")
                     if p.HasField(f)]
            self.check(not given, f"Interp cannot take its size from a second bottom when "
                                  f"{', '.join(given)} is also set (ambiguous)")
        self.pad_beg, self.pad_end = int(p.pad_beg), int(p.pad_end)
        self.check(self.pad_beg <= 0, f"Only supports non-pos padding (cropping) for now "
                                      f"(pad_beg {self.pad_beg})")
        self.check(self.pad_end <= 0, f"Only supports non-pos padding (cropping) for now "
                                      f"(pad_end {self.pad_end})")
        if p.HasField("shrink_factor"):
            self.check(p.shrink_factor >= 1,
                       f"Shrink factor must be positive (shrink_factor {p.shrink_factor})")
        if p.HasField("zoom_factor"):
            self.check(p.zoom_factor >= 1,
                       f"Zoom factor must be positive (zoom_factor {p.zoom_factor})")
        self.check(top[0] is not bottom[0], "Interp does not allow in-place computation.")
        self.matrices = MatrixCache(self._build)

    def _build(self, h, w, h_eff, w_eff, h_out, w_out, dtype):
        offset = -self.pad_beg
        return (interp_axis_matrix(h, offset, h_eff, h_out, dtype),
                interp_axis_matrix(w, offset, w_eff, w_out, dtype))

    def reshape(self, bottom, top):
        shape = self.bottom_shape(bottom)
        _, _, h, w = shape
        h_eff, w_eff = h + self.pad_beg + self.pad_end, w + self.pad_beg + self.pad_end
        self.check(h_eff > 0 and w_eff > 0,
                   f"the cropped input must not be empty: {h_eff} x {w_eff} (bottom shape "
                   f"{shape}, pad_beg {self.pad_beg}, pad_end {self.pad_end})")
        if len(bottom) == 2:
            size = tuple(self.bottom_shape(bottom[1:])[2:])
        else:
            size = interp_output_size(self.layer_param.interp_param, h_eff, w_eff)
        self.check(size is not None, "interp_param needs zoom_factor, shrink_factor, or height "
                                     "and width")
        h_out, w_out = size
        self.reshape_top(top, shape, h_out, w_out, (h, w, h_eff, w_eff, h_out, w_out))
