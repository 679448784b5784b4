"""Pooling: 2-D max, average or stochastic pooling (Caffe's PoolingLayer).

``PoolPlan`` is the pooling engine on torch tensors for one geometry; SPP and LRN reuse it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from caffe import common
from caffe.functional import pool_window_geometry
from caffe.layer import Layer, register
from caffe.layers._conv_util import pool_output_size
from caffe.proto import caffe_pb2

MAX = caffe_pb2.PoolingParameter.MAX
AVE = caffe_pb2.PoolingParameter.AVE
STOCHASTIC = caffe_pb2.PoolingParameter.STOCHASTIC
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)

_aten = torch.ops.aten
_METHOD_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}


def _torch_pool_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output size torch's ceil-mode pooling gives (it always applies the last-window rule)."""
    return pool_output_size(size, kernel, stride, pad, correct_last=True)


class PoolPlan:
    """One Caffe pooling geometry over (N, C, H, W) inputs of a fixed H, W, run on torch.

    Output size per axis: ceil((in + 2 pad - kernel) / stride) + 1, less one when padding is on
    and the last window would start in the padding. Windows are clipped to the input, so padded
    positions never win a MAX; AVE divides by the window clipped to the padded input, i.e.
    (hend - hstart) * (wend - wstart) before clipping to the image. MAX picks the first maximum
    in row-major scan order and records its flat h * W + w index in the input plane.

    Geometries torch's pooling kernels accept are run natively; the others (pad above half the
    kernel, a window starting past the image, a kernel wider than the padded input) run on an
    explicitly padded copy of the input.
    """

    def __init__(self, method: int, kernel: tuple[int, int], stride: tuple[int, int],
                 pad: tuple[int, int], in_hw: tuple[int, int]) -> None:
        self.method = method
        self.kernel = list(kernel)
        self.stride = list(stride)
        self.pad = list(pad)
        self.in_hw = tuple(in_hw)
        self.pooled = self.output_size(kernel, stride, pad, in_hw)
        self.native = method != STOCHASTIC and all(
            pad[i] <= kernel[i] // 2 and kernel[i] <= in_hw[i] + 2 * pad[i]
            and _torch_pool_size(in_hw[i], kernel[i], stride[i], pad[i]) == self.pooled[i]
            for i in range(2))
        # Explicitly padded input: left/top pad as asked, right/bottom so the last window fits.
        self.padded_hw = tuple((self.pooled[i] - 1) * stride[i] + kernel[i] for i in range(2))
        self.used_hw = tuple(min(in_hw[i], self.padded_hw[i] - pad[i]) for i in range(2))
        starts = [torch.arange(self.pooled[i]) * stride[i] - pad[i] for i in range(2)]
        empty = (starts[0][:, None] >= in_hw[0]) | (starts[1][None, :] >= in_hw[1])
        self.empty = empty if bool(empty.any()) else None
        self._buf: torch.Tensor | None = None
        self._consts: dict = {}

    @staticmethod
    def output_size(kernel, stride, pad, in_hw) -> tuple[int, int]:
        """Caffe's pooled (height, width)."""
        padded = bool(pad[0] or pad[1])
        return tuple(pool_output_size(in_hw[i], kernel[i], stride[i], pad[i], padded)
                     for i in range(2))

    # --- helpers -----------------------------------------------------------------------------
    def _const(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A per-window constant map (PH, PW) on ``like``'s device, cached per dtype/device."""
        key = (name, like.dtype, like.device)
        value = self._consts.get(key)
        if value is None:
            if name == "inv_divisor":
                value = self._inverse_divisor().to(like.dtype)
            elif name == "empty":
                value = self.empty
            else:  # "valid": 1 where the window holds at least one input element
                value = (~self.empty).to(like.dtype)
            value = self._consts[key] = value.to(like.device)
        return value

    def _inverse_divisor(self) -> torch.Tensor:
        # One copy of Caffe's AVE divisor (the window clipped to the padded input):
        # caffe.functional's, which the exported modules use too.
        sizes, empty = [], []
        for i in range(2):
            _, size, is_empty = pool_window_geometry(self.in_hw[i], self.kernel[i],
                                                     self.stride[i], self.pad[i],
                                                     self.pooled[i])
            sizes.append(torch.tensor(size, dtype=torch.float64))
            empty.append(torch.tensor(is_empty))
        inv = 1.0 / (sizes[0][:, None] * sizes[1][None, :])
        # Caffe divides an empty sum by a non-positive size here (NaN or -0); we output 0.
        inv[empty[0][:, None] | empty[1][None, :]] = 0.0
        return inv

    def _padded_input(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        shape = (*x.shape[:2], *self.padded_hw)
        if self._buf is None or self._buf.shape != shape or self._buf.dtype != x.dtype or \
                self._buf.device != x.device:
            self._buf = torch.empty(shape, dtype=x.dtype, device=x.device)
        self._buf.fill_(fill)
        (uh, uw), (ph, pw) = self.used_hw, self.pad
        self._buf[:, :, ph:ph + uh, pw:pw + uw].copy_(x[:, :, :uh, :uw])
        return self._buf

    # --- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, out: torch.Tensor, index: torch.Tensor | None = None,
                train: bool = True) -> None:
        """Pool ``x`` (N, C, H, W) into ``out`` (N, C, PH, PW). MAX and STOCHASTIC (TRAIN) also
        write the chosen input index of every window into ``index`` (int64, shape of out)."""
        if self.method == MAX:
            self._forward_max(x, out, index)
        elif self.method == AVE:
            if self.native:
                _aten.avg_pool2d.out(x, self.kernel, self.stride, self.pad, True, True, None,
                                     out=out)
            else:
                buf = self._padded_input(x, 0.0)
                _aten.avg_pool2d.out(buf, self.kernel, self.stride, [0, 0], False, True, 1,
                                     out=out)
                out.mul_(self._const("inv_divisor", out))
        elif train:
            self._forward_stochastic_train(x, out, index)
        else:
            self._forward_stochastic_test(x, out)

    def _forward_max(self, x, out, index):
        if self.native:
            _aten.max_pool2d_with_indices.out(x, self.kernel, self.stride, self.pad, [1, 1],
                                              True, out=out, indices=index)
            return
        buf = self._padded_input(x, float("-inf"))
        _aten.max_pool2d_with_indices.out(buf, self.kernel, self.stride, [0, 0], [1, 1], False,
                                          out=out, indices=index)
        # Indices point into the padded plane; move them to the input plane.
        wp = self.padded_hw[1]
        row = torch.div(index, wp, rounding_mode="floor")
        col = index - row * wp
        index.copy_((row - self.pad[0]) * self.in_hw[1] + (col - self.pad[1]))
        if self.empty is not None:
            empty = self._const("empty", out)
            out.masked_fill_(empty, -FLT_MAX)
            index.masked_fill_(empty, -1)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, PH, PW, kh * kw) copy of every window, zero beyond the input."""
        buf = self._padded_input(x, 0.0)
        win = buf.unfold(2, self.kernel[0], self.stride[0]).unfold(3, self.kernel[1],
                                                                  self.stride[1])
        return win.reshape(*win.shape[:4], -1)

    def _forward_stochastic_train(self, x, out, index):
        # Sample one element per window with probability proportional to its (non-negative)
        # value: the first position whose running sum reaches u * window sum, u ~ U(0, 1).
        win = self._windows(x)
        running = win.cumsum(-1)
        u = torch.rand(out.shape, dtype=x.dtype, device=x.device,
                       generator=common.generator(x.device))
        threshold = (u * running[..., -1]).unsqueeze(-1)
        pick = (running >= threshold).to(torch.uint8).argmax(-1)
        torch.gather(win, -1, pick.unsqueeze(-1), out=out.unsqueeze(-1))
        kw = self.kernel[1]
        rows = torch.arange(self.pooled[0], device=x.device).view(-1, 1) * self.stride[0]
        cols = torch.arange(self.pooled[1], device=x.device).view(1, -1) * self.stride[1]
        row = rows + torch.div(pick, kw, rounding_mode="floor")
        col = cols + pick % kw
        index.copy_(row * self.in_hw[1] + col)
        if self.empty is not None:
            empty = self._const("empty", out)
            out.masked_fill_(empty, 0.0)
            index.masked_fill_(empty, -1)

    def _forward_stochastic_test(self, x, out):
        # Probability-weighted average: sum(x^2) / sum(x), FLT_MIN guarding empty sums.
        win = self._windows(x)
        torch.div((win * win).sum(-1), win.sum(-1).add_(FLT_MIN), out=out)

    # --- backward ----------------------------------------------------------------------------
    def backward(self, dy: torch.Tensor, x: torch.Tensor, dx: torch.Tensor,
                 index: torch.Tensor | None = None, train: bool = True) -> None:
        """Write the gradient w.r.t. ``x`` into ``dx`` (overwritten) from the top diff ``dy``."""
        if self.method == MAX and self.native:
            _aten.max_pool2d_with_indices_backward.grad_input(
                dy, x, self.kernel, self.stride, self.pad, [1, 1], True, index, grad_input=dx)
        elif self.method == MAX or (self.method == STOCHASTIC and train):
            self._scatter(dy, dx, index)
        elif self.method == AVE and self.native:
            _aten.avg_pool2d_backward.grad_input(dy, x, self.kernel, self.stride, self.pad,
                                                 True, True, None, grad_input=dx)
        elif self.method == AVE:
            buf = self._padded_input(x, 0.0)
            g = dy * self._const("inv_divisor", dy)
            grad = _aten.avg_pool2d_backward(g, buf, self.kernel, self.stride, [0, 0], False,
                                             True, 1)
            self._unpad_into(grad, dx)
        else:
            self._backward_stochastic_test(dy, x, dx)

    def _scatter(self, dy, dx, index):
        n, c = dx.shape[:2]
        if self.empty is not None:
            dy = dy * self._const("valid", dy)
            index = index.clamp(min=0)
        flat = dx.view(n * c, -1)
        flat.zero_()
        flat.scatter_add_(1, index.view(n * c, -1), dy.reshape(n * c, -1))

    def _unpad_into(self, grad: torch.Tensor, dx: torch.Tensor) -> None:
        (uh, uw), (ph, pw) = self.used_hw, self.pad
        if (uh, uw) != self.in_hw:
            dx.zero_()
        dx[:, :, :uh, :uw].copy_(grad[:, :, ph:ph + uh, pw:pw + uw])

    def _backward_stochastic_test(self, dy, x, dx):
        # d/dx_i [Q / S] = (2 x_i S - Q) / S^2 per window, summed over the windows holding x_i.
        win = self._windows(x)
        s = win.sum(-1, keepdim=True).add_(FLT_MIN)
        q = (win * win).sum(-1, keepdim=True)
        dwin = (2 * win * s - q) / (s * s) * dy.unsqueeze(-1)
        n, c, ph, pw, _ = dwin.shape
        kh, kw = self.kernel
        cols = dwin.view(n, c, ph, pw, kh, kw).permute(0, 1, 4, 5, 2, 3).reshape(
            n, c * kh * kw, ph * pw)
        grad = F.fold(cols, self.padded_hw, self.kernel, stride=self.stride)
        self._unpad_into(grad, dx)


@register("Pooling")
class PoolingLayer(Layer):
    """Caffe type ``Pooling``; reads ``pooling_param``: ``pool`` (MAX, AVE, STOCHASTIC),
    ``kernel_size`` or ``kernel_h``/``kernel_w``, ``stride`` or ``stride_h``/``stride_w``,
    ``pad`` or ``pad_h``/``pad_w`` (MAX and AVE only; must be below the kernel),
    ``global_pooling`` (kernel = the whole input plane).

    Bottom: (N, C, H, W). Top 0: (N, C, PH, PW), PH = ceil((H + 2 pad - kernel) / stride) + 1
    (less one when padded and the last window would start in the padding). MAX may have a
    second top: the argmax of every window as a float flat index h * W + w into its input plane.
    AVE divides by the window size clipped to the padded input. STOCHASTIC (for non-negative
    inputs) samples one element with probability x / sum(window) in TRAIN and outputs
    sum(x^2) / sum(x) in TEST. Backward routes each top diff to the max (MAX; the first one in
    row-major order on ties) or sampled (STOCHASTIC TRAIN) element, spreads it / divisor over the
    window (AVE), or applies the exact gradient of sum(x^2) / sum(x) (STOCHASTIC TEST).
    """

    exact_num_bottom = 1
    min_top = 1

    def __init__(self, param, dtype=torch.float32):
        super().__init__(param, dtype)
        self.method = param.pooling_param.pool
        self.max_top = 2 if self.method == MAX else 1

    def setup(self, bottom, top):
        p = self.layer_param.pooling_param
        has = p.HasField
        if p.global_pooling:
            self.check(not (has("kernel_size") or has("kernel_h") or has("kernel_w")),
                       "With Global_pooling: true Filter size cannot specified")
        else:
            self.check(has("kernel_size") or (has("kernel_h") and has("kernel_w")),
                       "For non-square filters both kernel_h and kernel_w are required "
                       "(square filters: kernel_size).")
            self.check(not (has("kernel_size") and (has("kernel_h") or has("kernel_w"))),
                       "Filter size is kernel_size OR kernel_h and kernel_w; not both")
        self.check((not has("pad") and has("pad_h") and has("pad_w"))
                   or (not has("pad_h") and not has("pad_w")),
                   "pad is pad OR pad_h and pad_w are required.")
        self.check((not has("stride") and has("stride_h") and has("stride_w"))
                   or (not has("stride_h") and not has("stride_w")),
                   "Stride is stride OR stride_h and stride_w are required.")
        self.global_pooling = p.global_pooling
        self.check(bottom[0].num_axes == 4,
                   f"Input must have 4 axes, corresponding to (num, channels, height, width); "
                   f"got bottom shape {list(bottom[0].shape)}")
        if self.global_pooling:
            self.kernel = (bottom[0].shape[2], bottom[0].shape[3])
        elif has("kernel_size"):
            self.kernel = (p.kernel_size, p.kernel_size)
        else:
            self.kernel = (p.kernel_h, p.kernel_w)
        self.check(self.kernel[0] > 0 and self.kernel[1] > 0,
                   f"Filter dimensions cannot be zero (kernel {list(self.kernel)}).")
        self.pad = (p.pad_h, p.pad_w) if has("pad_h") else (p.pad, p.pad)
        self.stride = (p.stride_h, p.stride_w) if has("stride_h") else (p.stride, p.stride)
        self.check(self.stride[0] > 0 and self.stride[1] > 0,
                   f"Stride dimensions cannot be zero (stride {list(self.stride)}).")
        if self.global_pooling:
            self.check(self.pad == (0, 0) and self.stride == (1, 1),
                       "With Global_pooling: true; only pad = 0 and stride = 1")
        if self.pad != (0, 0):
            self.check(self.method in (AVE, MAX),
                       f"Padding implemented only for average and max pooling (pool "
                       f"{_METHOD_NAMES.get(self.method, self.method)}).")
            self.check(self.pad[0] < self.kernel[0] and self.pad[1] < self.kernel[1],
                       f"pad {list(self.pad)} must be smaller than the kernel "
                       f"{list(self.kernel)}")
        self.plan: PoolPlan | None = None
        self.index: torch.Tensor | None = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            self.check(False, f"Input must have 4 axes, corresponding to (num, channels, "
                              f"height, width); got bottom shape {list(shape)}")
        in_hw = (shape[2], shape[3])
        if self.plan is None or self.plan.in_hw != in_hw:
            kernel = in_hw if self.global_pooling else self.kernel
            pooled = PoolPlan.output_size(kernel, self.stride, self.pad, in_hw)
            self.check(pooled[0] > 0 and pooled[1] > 0,
                       f"pooled output size {list(pooled)} is empty: kernel {list(kernel)} "
                       f"with pad {list(self.pad)} does not fit the input {list(in_hw)}")
            self.plan = PoolPlan(self.method, kernel, self.stride, self.pad, in_hw)
        top_shape = (shape[0], shape[1], *self.plan.pooled)
        top[0].reshape(top_shape)
        if len(top) > 1:
            top[1].reshape(top_shape)
        if self.method != AVE and (self.index is None or self.index.shape != top_shape
                                   or self.index.device != common.device()):
            self.index = torch.empty(top_shape, dtype=torch.int64, device=common.device())

    def forward(self, bottom, top):
        train = self.phase == caffe_pb2.TRAIN
        self.plan.forward(bottom[0].device_data(), top[0].mutable_device_data(), self.index,
                          train)
        if len(top) > 1:
            top[1].mutable_device_data().copy_(self.index)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        self.plan.backward(top[0].device_diff(), bottom[0].device_data(),
                           bottom[0].mutable_device_diff(), self.index,
                           self.phase == caffe_pb2.TRAIN)
