"""BilinearInterpolate of the inisis/caffe (brocolli) fork (PyTorch's bilinear
``F.interpolate`` / ``nn.Upsample`` after conversion).

Reads ``bilinear_interpolate_param { dst_h dst_w | scale_factor, align_corners (true) }``:
the top is dst_h x dst_w (a missing one keeps the bottom's size), or int(H * scale_factor) x
int(W * scale_factor) (float32 product). Source coordinate of top row i: align_corners:
i * (H - 1) / (dst_h - 1); otherwise (i + 0.5) * H / dst_h - 0.5, clamped to [0, H - 1]; the
ratio is float32 as in brocolli. Rows floor(y) and floor(y) + 1 (kept inside the input) are
weighted by the distances to y, then likewise the columns (= ``F.interpolate(mode='bilinear',
align_corners=...)``). brocolli's backward is empty; here it is the adjoint. For a 1-pixel
input or top axis, where brocolli's arithmetic breaks down (division by zero, index -1), this
layer uses torch's values.
"""

from __future__ import annotations

import numpy as np
import torch

from caffe.layer import register
from caffe.layers._resize import MatrixCache, ResizeLayer, weight_matrix


def bilinear_axis_matrix(in_size: int, out_size: int, align_corners: bool,
                         dtype: torch.dtype) -> torch.Tensor:
    """(out_size, in_size): brocolli's interpolation weights along one axis."""
    f32 = np.float32
    i = torch.arange(out_size, dtype=dtype)
    if align_corners:
        ratio = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
        pos = torch.tensor(ratio, dtype=dtype) * i
    else:
        # brocolli: float(src) / dst * (Dtype(i) + 0.5) - 0.5 in double, stored as Dtype.
        ratio = float(f32(in_size) / f32(out_size))
        pos = (ratio * (i.double() + 0.5) - 0.5).to(dtype)
    pos = pos.clamp(0, in_size - 1)
    if in_size == 1:
        low = np.zeros(out_size, dtype=np.int64)
        ones = torch.ones(out_size, dtype=dtype)
        return weight_matrix(out_size, 1, low, low, ones, torch.zeros_like(ones))
    low = pos.floor().clamp(0, in_size - 2)
    high = low + 1
    return weight_matrix(out_size, in_size, low.long().numpy(), high.long().numpy(),
                         high - pos, pos - low)


@register("BilinearInterpolate")
class BilinearInterpolateLayer(ResizeLayer):
    """BilinearInterpolate (brocolli): bottom (N, C, H, W) -> top (N, C, dst_h, dst_w)."""

    def setup(self, bottom, top):
        p = self.layer_param.bilinear_interpolate_param
        has_dst = p.HasField("dst_h") or p.HasField("dst_w")
        self.check(has_dst != p.HasField("scale_factor"),
                   "give dst_h / dst_w or scale_factor (one of the two)")
        self.align_corners = bool(p.align_corners)
        self.check(top[0] is not bottom[0],
                   "BilinearInterpolate does not allow in-place computation.")
        self.matrices = MatrixCache(
            lambda h, w, h_out, w_out, dtype: (
                bilinear_axis_matrix(h, h_out, self.align_corners, dtype),
                bilinear_axis_matrix(w, w_out, self.align_corners, dtype)))

    def _top_size(self, h: int, w: int) -> tuple[int, int]:
        p = self.layer_param.bilinear_interpolate_param
        if p.HasField("scale_factor"):
            s = np.float32(p.scale_factor)
            return int(np.float32(h) * s), int(np.float32(w) * s)
        return (p.dst_h if p.HasField("dst_h") else h), (p.dst_w if p.HasField("dst_w") else w)

    def reshape(self, bottom, top):
        shape = self.bottom_shape(bottom)
        _, _, h, w = shape
        h_out, w_out = self._top_size(h, w)
        self.reshape_top(top, shape, h_out, w_out, (h, w, h_out, w_out))
