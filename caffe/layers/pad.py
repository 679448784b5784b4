"""Pad of the inisis/caffe (brocolli) fork: pad or crop the last two axes (PyTorch's F.pad /
nn.ZeroPad2d / ReflectionPad2d / ReplicationPad2d after conversion).

Reads ``pad_param { pad_type (CONSTANT | REPLICATE | REFLECT) pad_u pad_d pad_l pad_r
pad_value }``: pad_u rows above, pad_d below, pad_l columns left, pad_r right. Padding with all
four negative crops instead (brocolli handles no other mix of signs: here a mix of zero and
negative pads also crops, and positive with negative pads is refused). brocolli's backward is
empty; here it is the adjoint of the forward (torch's pad backward kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caffe.layer import Layer, register
from caffe.proto import caffe_pb2

_aten = torch.ops.aten
_P = caffe_pb2.PadParameter
_MODES = {_P.CONSTANT: "constant", _P.REPLICATE: "replicate", _P.REFLECT: "reflect"}


def _planes(t: torch.Tensor) -> torch.Tensor:
    """(..., H, W) as (1, prod(...), H, W), the layout torch's 2-d pad kernels take."""
    return t.reshape(1, -1, t.shape[-2], t.shape[-1])


def pad2d(x: torch.Tensor, pads: tuple[int, int, int, int], mode: str = "constant",
          value: float = 0.0) -> torch.Tensor:
    """Pad (or, with pads <= 0, crop) the last two axes; ``pads`` = (up, down, left, right)."""
    up, down, left, right = pads
    if max(pads) <= 0:
        h, w = x.shape[-2], x.shape[-1]
        return x[..., -up:h + down, -left:w + right]
    y = F.pad(_planes(x), (left, right, up, down), mode=mode,
              **({"value": value} if mode == "constant" else {}))
    return y.reshape(*x.shape[:-2], *y.shape[-2:])


def pad2d_backward(dy: torch.Tensor, x_shape, pads: tuple[int, int, int, int],
                   mode: str = "constant") -> torch.Tensor:
    """The adjoint of ``pad2d``: the bottom diff of shape ``x_shape`` from the top diff."""
    up, down, left, right = pads
    h, w = x_shape[-2], x_shape[-1]
    if max(pads) <= 0:
        dx = dy.new_zeros(x_shape)
        dx[..., -up:h + down, -left:w + right] = dy
        return dx
    if mode == "constant":
        return dy[..., up:up + h, left:left + w]
    planes = _planes(dy)
    like = planes.new_empty(planes.shape[:2] + (h, w))
    backward = (_aten.reflection_pad2d_backward if mode == "reflect"
                else _aten.replication_pad2d_backward)
    return backward(planes, like, [left, right, up, down]).reshape(x_shape)


@register("Pad")
class PadLayer(Layer):
    """Pad (brocolli): bottom (..., H, W), 2 to 4 axes -> (..., H + pad_u + pad_d,
    W + pad_l + pad_r).

    CONSTANT fills with pad_value, REPLICATE repeats the edge, REFLECT mirrors without repeating
    the edge (each REFLECT pad must be smaller than the axis it pads). No in-place use.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.check(top[0] is not bottom[0], "Pad Layer does not allow in-place computation.")
        p = self.layer_param.pad_param
        self.pads = (int(p.pad_u), int(p.pad_d), int(p.pad_l), int(p.pad_r))
        self.mode = _MODES[p.pad_type]
        self.value = float(p.pad_value)
        self.check(min(self.pads) >= 0 or max(self.pads) <= 0,
                   f"pads must all be >= 0 (padding) or all <= 0 (cropping); got pad_u "
                   f"{self.pads[0]}, pad_d {self.pads[1]}, pad_l {self.pads[2]}, pad_r "
                   f"{self.pads[3]}")

    def reshape(self, bottom, top):
        shape = list(bottom[0].shape)
        self.check(2 <= len(shape) <= 4, f"bottom must have 2 to 4 axes (bottom shape {shape})")
        up, down, left, right = self.pads
        h, w = shape[-2] + up + down, shape[-1] + left + right
        self.check(h >= 0 and w >= 0,
                   f"the crop is larger than the bottom: top would be {h} x {w} (bottom shape "
                   f"{shape}, pads {list(self.pads)})")
        if self.mode == "reflect" and max(self.pads) > 0:
            self.check(max(up, down) < shape[-2] and max(left, right) < shape[-1],
                       f"REFLECT pads must be smaller than the padded axis (bottom shape "
                       f"{shape}, pads {list(self.pads)})")
        top[0].reshape(shape[:-2] + [h, w])

    def forward(self, bottom, top):
        top[0].mutable_device_data().copy_(
            pad2d(bottom[0].device_data(), self.pads, self.mode, self.value))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].mutable_device_diff().copy_(
                pad2d_backward(top[0].device_diff(), bottom[0].shape, self.pads, self.mode))
