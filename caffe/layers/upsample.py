"""Upsample: SegNet's mask unpooling (two bottoms) and brocolli's nearest upsampling (one).

Two forks register a layer named ``Upsample``; one type serves both, told apart by the number
of bottoms, and both read ``upsample_param``:

- **SegNet** (alexgkendall/caffe-segnet), bottoms data (N, C, H, W) + the mask top of the MAX
  Pooling it undoes (same shape). ``upsample_param { upsample_h upsample_w }`` give the top size;
  otherwise (deprecated in SegNet) ``scale`` (2) or ``scale_h scale_w`` with ``pad_out_h
  pad_out_w`` (scale 2 only): top H = H * scale_h - pad_out_h. top = 0, then
  top[n, c].flat[mask[i]] = data[n, c].flat[i]; backward data_diff[i] = top_diff.flat[mask[i]].
  SegNet fixes the top size at its first Reshape; here it follows each bottom.
- **brocolli** (inisis/caffe), one bottom, ``upsample_param { scale dims_num (4) }``: nearest
  neighbour by the integer ``scale`` on the last two axes (dims_num 4) or the last axis
  (dims_num 3), = ``F.interpolate(mode='nearest')``. An unset scale means 1 here (brocolli's
  default; SegNet's 2 is the schema's). brocolli's backward is empty; here each bottom cell
  gets the sum of the top diff over its scale x scale block (the adjoint).
"""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers.max_unpool import check_mask, mask_indices, max_unpool, max_unpool_backward


def upsample_nearest(x: torch.Tensor, scale: int, axes: int = 2) -> torch.Tensor:
    """Repeat each element ``scale`` times along each of the last ``axes`` (1 or 2) axes."""
    if axes == 1:
        return x.repeat_interleave(scale, dim=-1)
    h, w = x.shape[-2:]
    y = x[..., :, None, :, None].expand(*x.shape[:-2], h, scale, w, scale)
    return y.reshape(*x.shape[:-2], h * scale, w * scale)


def upsample_nearest_backward(dy: torch.Tensor, scale: int, axes: int = 2) -> torch.Tensor:
    """The adjoint of ``upsample_nearest``: sum the top diff over each block."""
    if axes == 1:
        return dy.reshape(*dy.shape[:-1], -1, scale).sum(-1)
    h, w = dy.shape[-2] // scale, dy.shape[-1] // scale
    return dy.reshape(*dy.shape[:-2], h, scale, w, scale).sum((-3, -1))


@register("Upsample")
class UpsampleLayer(Layer):
    """Upsample: SegNet's with two bottoms (data, mask), brocolli's nearest with one."""

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        self.check(top[0] is not bottom[0], "Upsample does not allow in-place computation.")
        self.segnet = len(bottom) == 2
        if self.segnet:
            self._setup_segnet()
        else:
            self._setup_nearest()

    def _setup_segnet(self):
        p = self.layer_param.upsample_param
        has = p.HasField
        self.check((has("upsample_h") and has("upsample_w"))
                   or (not has("scale") and has("scale_h") and has("scale_w"))
                   or (not has("scale_h") and not has("scale_w")),
                   "upsample_h & upsample_w are required, else (DEPRECATED) scale OR scale_h & "
                   "scale_w are required.")
        self.out_hw = None
        if has("upsample_h") and has("upsample_w"):
            self.out_hw = (int(p.upsample_h), int(p.upsample_w))
            self.check(min(self.out_hw) > 1, f"upsample_h and upsample_w must be greater than 1 "
                                             f"(got {self.out_hw[0]} x {self.out_hw[1]})")
            return
        if has("scale_h"):
            self.scales = (int(p.scale_h), int(p.scale_w))
        else:
            self.scales = (int(p.scale), int(p.scale))
        self.check(min(self.scales) > 1, f"the scales must be greater than 1 (scale_h "
                                         f"{self.scales[0]}, scale_w {self.scales[1]})")
        self.pad_out = (bool(p.pad_out_h), bool(p.pad_out_w))
        for axis, name in enumerate("hw"):
            self.check(not self.pad_out[axis] or self.scales[axis] == 2,
                       f"Output {'height' if name == 'h' else 'width'} padding compensation "
                       f"requires scale_{name} == 2, otherwise the output size is ill-defined.")

    def _setup_nearest(self):
        p = self.layer_param.upsample_param
        self.scale = int(p.scale) if p.HasField("scale") else 1
        self.check(self.scale >= 1, f"scale must be positive, got {self.scale}")
        self.check(p.dims_num in (3, 4), f"dims_num must be 3 or 4, got {p.dims_num}")
        self.axes = 2 if p.dims_num == 4 else 1

    # --- reshape -----------------------------------------------------------------------------
    def reshape(self, bottom, top):
        if self.segnet:
            check_mask(self, bottom[0], bottom[1])
            n, c, h, w = bottom[0].shape
            if self.out_hw is not None:
                self.top_hw = self.out_hw
            else:
                self.top_hw = (h * self.scales[0] - self.pad_out[0],
                               w * self.scales[1] - self.pad_out[1])
            top[0].reshape([n, c, *self.top_hw])
            return
        shape = list(bottom[0].shape)
        self.check(len(shape) >= self.axes, f"bottom has too few axes for dims_num "
                                            f"{self.axes + 2} (bottom shape {shape})")
        for axis in range(len(shape) - self.axes, len(shape)):
            shape[axis] *= self.scale
        top[0].reshape(shape)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    # --- forward / backward ------------------------------------------------------------------
    def forward(self, bottom, top):
        if self.segnet:
            h, w = self.top_hw
            self.index = mask_indices(self, bottom[1].device_data(), h * w)
            max_unpool(bottom[0].device_data(), self.index, top[0].mutable_device_data())
        else:
            top[0].mutable_device_data().copy_(
                upsample_nearest(bottom[0].device_data(), self.scale, self.axes))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.segnet:
            max_unpool_backward(top[0].device_diff(), self.index, bottom[0].mutable_device_diff())
        else:
            bottom[0].mutable_device_diff().copy_(
                upsample_nearest_backward(top[0].device_diff(), self.scale, self.axes))

