"""Caffe's layer math as plain functions on torch tensors (what ``torch.nn.functional`` is to
``torch.nn``).

Each function takes tensors and plain Python options (ints, floats, bools, tuples) and returns
new tensors, so autograd differentiates it, ``torch.jit.trace``/``torch.export`` record it, and
the exporter's modules call it (``caffe.export``). The semantics are Caffe 1.0's exactly: pooling
output sizes with Caffe's ceil rule and pad clipping, its AVE divisor, Eltwise MAX's tie rule,
and so on. Shapes are read from the tensors at call time (Reshape's 0 and -1, Crop's sizes), so
a function works for any batch size.

This module imports only ``math`` and ``torch`` (and pure functions of the layer modules that
do the same): ``caffe.export.codegen`` copies these functions' source into a standalone
``model.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffe.layers._resize import resize_planes as _resize_planes
from caffe.layers.hard_activations import hard_sigmoid, hard_swish
from caffe.layers.loss import get_normalizer
from caffe.layers.normalize import l2_norm
from caffe.layers.pad import pad2d
from caffe.layers.relu6 import relu6 as _relu6
from caffe.layers.shuffle_channel import shuffle_channel
from caffe.layers.upsample import upsample_nearest

FLT_MAX = 3.4028234663852886e38
FLT_MIN = 1.1754943508222875e-38
# PoolingParameter.PoolMethod, LRNParameter.NormRegion, EltwiseParameter.EltwiseOp,
# ReductionParameter.ReductionOp and LossParameter.NormalizationMode values.
POOL_MAX, POOL_AVE, POOL_STOCHASTIC = 0, 1, 2
ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1
ELTWISE_PROD, ELTWISE_SUM, ELTWISE_MAX = 0, 1, 2
REDUCE_SUM, REDUCE_ASUM, REDUCE_SUMSQ, REDUCE_MEAN = 1, 2, 3, 4
NORM_FULL, NORM_VALID, NORM_BATCH_SIZE, NORM_NONE = 0, 1, 2, 3
BNLL_THRESHOLD = 50.0

__all__ = [
    "absval", "accuracy", "argmax", "batch_norm", "bias", "bnll", "c_pow", "clip", "concat",
    "constant", "convolution", "crop", "deconvolution", "dropout", "eltwise", "elu", "embed",
    "euclidean_loss", "exp", "flatten", "hard_sigmoid", "hard_swish", "inner_product", "log",
    "lrn", "lstm", "max_unpool_by_mask", "mvn", "normalize", "pad_blob", "permute",
    "pixel_shuffle", "pool_output_size", "pooling", "power", "prelu", "reduction", "relu",
    "relu6", "reshape", "resize_planes", "rnn", "scale", "shuffle_channel", "sigmoid",
    "sigmoid_cross_entropy_loss", "slice_blob", "softmax", "softmax_with_loss", "swish",
    "tanh", "threshold", "tile", "top_k_ranked", "upsample",
]


# --- shape arithmetic ------------------------------------------------------------------------

def pool_output_size(input_size: int, kernel: int, stride: int, pad: int,
                     correct_last: bool) -> int:
    """Caffe's pooling output size: ceil((in + 2 pad - kernel) / stride) + 1, minus one when
    padding is on (``correct_last``) and the last window would start in the padding."""
    out = int(math.ceil((input_size + 2 * pad - kernel) / stride)) + 1
    if correct_last and (out - 1) * stride >= input_size + pad:
        out -= 1
    return out


def c_pow(base: float, exponent: float) -> float:
    """C's pow: NaN for a negative base with a fractional exponent, inf for 0 ** negative."""
    if base == 0 and exponent < 0:
        return math.inf
    try:
        return math.pow(base, exponent)
    except ValueError:
        return math.nan
    except OverflowError:
        return math.inf


# --- vision layers ---------------------------------------------------------------------------

def _conv_nd_generic(x, weight, stride, pad, dilation, group):
    """Convolution of (N, C, *in) over any number of spatial axes: one product per kernel tap
    of the strided, zero-padded input (for ranks torch has no kernel for)."""
    nsp = weight.dim() - 2
    pads = []
    for i in reversed(range(nsp)):
        pads += [pad[i], pad[i]]
    xp = F.pad(x, pads)
    out = [(xp.shape[2 + i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i] + 1
           for i in range(nsp)]
    n, c = x.shape[0], x.shape[1]
    o = weight.shape[0]
    wg = weight.reshape(group, o // group, c // group, -1)
    y = None
    for tap in range(wg.shape[-1]):
        index, rest = [], tap
        for i in reversed(range(nsp)):
            index.append(rest % weight.shape[2 + i])
            rest //= weight.shape[2 + i]
        index.reverse()
        window = tuple(slice(index[i] * dilation[i],
                             index[i] * dilation[i] + (out[i] - 1) * stride[i] + 1, stride[i])
                       for i in range(nsp))
        part = xp[(slice(None), slice(None)) + window].reshape(n, group, c // group, -1)
        term = torch.einsum("goc,ngcl->ngol", wg[..., tap], part)
        y = term if y is None else y + term
    return y.reshape(n, o, *out)


def convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                stride: tuple, pad: tuple, dilation: tuple, group: int = 1,
                axis: int = 1, transposed: bool = False) -> torch.Tensor:
    """Caffe's Convolution (``transposed``: Deconvolution) of x ``(..., C, *spatial)``, C on
    ``axis``: out = (in + 2 pad - extent) / stride + 1 (floor), or for Deconvolution
    stride (in - 1) + extent - 2 pad, extent = dilation (kernel - 1) + 1."""
    lead = x.shape[:axis]
    spatial = x.shape[axis + 1:]
    xs = x.reshape(-1, x.shape[axis], *spatial)
    w = weight
    nsp = len(spatial)
    if nsp == 0:  # a 0-d convolution is a 1-d one over a length-1 axis
        xs, w = xs.unsqueeze(-1), w.unsqueeze(-1)
        stride, pad, dilation = (1,), (0,), (1,)
    nd = max(nsp, 1)
    if transposed:
        conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
        y = conv_t(xs, w, bias, stride, pad, 0, group, dilation)
    elif nd <= 3:
        conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        y = conv(xs, w, bias, stride, pad, dilation, group)
    else:
        y = _conv_nd_generic(xs, w, stride, pad, dilation, group)
        if bias is not None:
            y = y + bias.reshape(-1, *([1] * nd))
    if nsp == 0:
        y = y.squeeze(-1)
    return y.reshape(*lead, y.shape[1], *y.shape[2:])


def deconvolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  stride: tuple, pad: tuple, dilation: tuple, group: int = 1,
                  axis: int = 1) -> torch.Tensor:
    """Caffe's Deconvolution: the transposed convolution (see ``convolution``)."""
    return convolution(x, weight, bias, stride=stride, pad=pad, dilation=dilation, group=group,
                       axis=axis, transposed=True)


def inner_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  axis: int = 1, transpose: bool = False) -> torch.Tensor:
    """Caffe's InnerProduct: x flattened from ``axis`` on times W^T (W (N, K); (K, N) when
    ``transpose``) plus b; top shape x.shape[:axis] + (N,)."""
    w = weight.t() if transpose else weight
    return F.linear(x.reshape(*x.shape[:axis], -1), w, bias)


def pool_window_geometry(size: int, kernel: int, stride: int, pad: int, pooled: int
                         ) -> tuple[int, list[int], list[bool]]:
    """Right padding that makes the last window fit, and the AVE divisor per window along one
    axis: the window clipped to the padded input, as Caffe counts it."""
    right = (pooled - 1) * stride + kernel - size - pad
    starts = [p * stride - pad for p in range(pooled)]
    sizes = [min(s + kernel, size + pad) - s for s in starts]
    empty = [s >= size for s in starts]
    return right, sizes, empty


def pooling(x: torch.Tensor, *, method: int, kernel: tuple, stride: tuple, pad: tuple,
            global_pooling: bool = False, training: bool = False) -> torch.Tensor:
    """Caffe's 2-D Pooling of x (N, C, H, W).

    Output per axis: ceil((in + 2 pad - kernel) / stride) + 1, less one when padded and the
    last window would start in the padding. The input is padded explicitly (left/top by pad,
    right/bottom so that the last window fits, or cropped), so no ceil-mode rule of torch is
    relied upon. MAX ignores padding (a window with no input gives -FLT_MAX); AVE divides the
    window sum by the window clipped to the padded input (0 for a window with no input);
    STOCHASTIC gives its TEST-phase sum(x^2) / sum(x).
    """
    h, w = x.shape[2], x.shape[3]
    if global_pooling:
        kernel, stride, pad = (h, w), (1, 1), (0, 0)
    padded = bool(pad[0] or pad[1])
    ph = pool_output_size(h, kernel[0], stride[0], pad[0], padded)
    pw = pool_output_size(w, kernel[1], stride[1], pad[1], padded)
    right_h, sizes_h, empty_h = pool_window_geometry(h, kernel[0], stride[0], pad[0], ph)
    right_w, sizes_w, empty_w = pool_window_geometry(w, kernel[1], stride[1], pad[1], pw)
    spec = [pad[1], right_w, pad[0], right_h]
    any_empty = any(empty_h) or any(empty_w)
    if method == POOL_MAX:
        xp = F.pad(x, spec, value=-math.inf) if any(spec) else x
        y = F.max_pool2d(xp, kernel, stride)
        if any_empty:
            mask = torch.tensor(empty_h, device=x.device)[:, None] | \
                torch.tensor(empty_w, device=x.device)[None, :]
            y = y.masked_fill(mask, -FLT_MAX)
        return y
    xp = F.pad(x, spec) if any(spec) else x
    if method == POOL_AVE:
        total = F.avg_pool2d(xp, kernel, stride, divisor_override=1)
        inv = [[0.0 if (empty_h[i] or empty_w[j]) else 1.0 / (sizes_h[i] * sizes_w[j])
                for j in range(pw)] for i in range(ph)]
        return total * torch.tensor(inv, dtype=x.dtype, device=x.device)
    if training:
        raise NotImplementedError("STOCHASTIC pooling exports its TEST-phase form only")
    win = xp.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1]).flatten(-2)
    return (win * win).sum(-1) / (win.sum(-1) + FLT_MIN)


def lrn(x: torch.Tensor, *, local_size: int, alpha: float, beta: float, k: float = 1.0,
        norm_region: int = ACROSS_CHANNELS) -> torch.Tensor:
    """Caffe's LRN of x (N, C, H, W). ACROSS_CHANNELS: y = x (k + alpha / n sum_window x^2)^-beta
    over the n channels centred on c (zero beyond the ends). WITHIN_CHANNEL (``k`` unused):
    y = x (1 + alpha p)^-beta, p the AVE pooling of x^2 over n x n windows, stride 1, pad
    (n - 1) / 2."""
    square = x * x
    pre_pad = (local_size - 1) // 2
    if norm_region == ACROSS_CHANNELS:
        # The channel window's sum as shifted adds of the zero-padded squares (a pooling
        # kernel along the channel axis is ~10x slower), scaled by alpha / n as Caffe does.
        c = x.shape[1]
        padded = F.pad(square, (0, 0, 0, 0, pre_pad, pre_pad))
        total = padded[:, :c]
        for d in range(1, local_size):
            total = total + padded[:, d:d + c]
        scale = total * (alpha / local_size) + k
    else:
        scale = pooling(square, method=POOL_AVE, kernel=(local_size, local_size),
                        stride=(1, 1), pad=(pre_pad, pre_pad)) * alpha + 1.0
    if beta == 0.75:  # Caffe's default: two vectorized roots, within 2 ulp of pow, 2x faster
        root = scale.rsqrt()
        return x * (root * root.sqrt())
    return x * scale.pow(-beta)


def normalize(x: torch.Tensor, weight: torch.Tensor, *, across_spatial: bool = True,
              eps: float = 1e-10) -> torch.Tensor:
    """SSD's Normalize: y = x / sqrt(sum x^2 + eps) * s, the sum over C*H*W per image
    (``across_spatial``) or over C per pixel; s a scalar or one value per channel."""
    n, c = x.shape[0], x.shape[1]
    x3 = x.reshape(n, c, -1)
    y = x3 / l2_norm(x3, across_spatial, eps) * weight.reshape(1, -1, 1)
    return y.reshape(x.shape)


def resize_planes(x: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor) -> torch.Tensor:
    """Interp / BilinearInterpolate: out = A_h @ x @ A_w^T per (N, C) plane, with the
    layer's interpolation matrices."""
    return _resize_planes(x, a_h, a_w)


def upsample(x: torch.Tensor, *, scale: int, axes: int = 2) -> torch.Tensor:
    """brocolli's one-bottom Upsample: nearest neighbour, each value repeated ``scale`` times
    along each of the last ``axes`` axes."""
    return upsample_nearest(x, scale, axes)


def pad_blob(x: torch.Tensor, *, pads: tuple, mode: str = "constant", value: float = 0.0
             ) -> torch.Tensor:
    """The fork's Pad layer: pad (or crop, with pads <= 0) the last two axes by
    (up, down, left, right), constant, reflect or replicate."""
    return pad2d(x, pads, mode, value)


def pixel_shuffle(x: torch.Tensor, *, factor: int) -> torch.Tensor:
    """The fork's PixelShuffle: (N, C r^2, H, W) -> (N, C, H r, W r), torch's channel order."""
    return F.pixel_shuffle(x, factor)


def max_unpool_by_mask(x: torch.Tensor, mask: torch.Tensor, *, out_hw: tuple) -> torch.Tensor:
    """MaxUnPool / SegNet's two-bottom Upsample: a zero (N, C, H', W') top with each value of x
    placed at the flat index its mask holds in its plane (the gradient gathers it back)."""
    n, c = x.shape[0], x.shape[1]
    index = mask.reshape(n * c, -1).to(torch.int64)
    planes = x.new_zeros(n * c, out_hw[0] * out_hw[1]).scatter(1, index, x.reshape(n * c, -1))
    return planes.reshape(n, c, out_hw[0], out_hw[1])


def permute(x: torch.Tensor, *, order: tuple) -> torch.Tensor:
    """SSD's Permute: the axes of x in ``order`` (laid out contiguously, as the fork does)."""
    return x.permute(*order).contiguous()


# --- neurons ---------------------------------------------------------------------------------

def relu(x: torch.Tensor, *, negative_slope: float = 0.0) -> torch.Tensor:
    """max(x, 0) + negative_slope * min(x, 0); the gradient at x = 0 is the negative side's."""
    if negative_slope == 0:
        return torch.relu(x)
    return torch.where(x > 0, x, x * negative_slope)


def relu6(x: torch.Tensor, *, negative_slope: float = 0.0, threshold: float = 6.0
          ) -> torch.Tensor:
    """ReLU6 (fork): min(max(x, 0) + negative_slope * min(x, 0), threshold)."""
    return _relu6(x, negative_slope, threshold)


def prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PReLU: max(x, 0) + a_c min(x, 0), a one value per channel (axis 1) or a scalar."""
    a = weight.reshape(()) if weight.numel() == 1 and weight.dim() == 0 else \
        weight.reshape((-1,) + (1,) * (x.dim() - 2))
    return torch.where(x > 0, x, x * a)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Caffe's Sigmoid: 1 / (1 + exp(-x))."""
    return torch.sigmoid(x)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """Caffe's TanH."""
    return torch.tanh(x)


def absval(x: torch.Tensor) -> torch.Tensor:
    """``|x|``; the gradient is sign(x), 0 at 0."""
    return torch.abs(x)


def bnll(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) without overflow (Caffe's threshold 50)."""
    return F.softplus(x, beta=1.0, threshold=BNLL_THRESHOLD)


def elu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """max(x, 0) + alpha (exp(min(x, 0)) - 1)."""
    return torch.where(x > 0, x, torch.expm1(x.clamp_max(0)) * alpha)


def swish(x: torch.Tensor, *, beta: float = 1.0) -> torch.Tensor:
    """x * sigmoid(beta x)."""
    return x * torch.sigmoid(x * beta)


def clip(x: torch.Tensor, *, min: float, max: float) -> torch.Tensor:  # noqa: A002
    """max(min, min(x, max)); gradient 1 on [min, max], inclusive."""
    return torch.clamp(x, min, max)


def threshold(x: torch.Tensor, *, threshold: float = 0.0) -> torch.Tensor:
    """1 where x > threshold, else 0 (no gradient)."""
    return (x > threshold).to(x.dtype)


def power(x: torch.Tensor, *, power: float = 1.0, scale: float = 1.0, shift: float = 0.0
          ) -> torch.Tensor:
    """(shift + scale x)^power; a constant (1 for power 0, shift^power for scale 0) with zero
    gradient when power * scale = 0, as Caffe."""
    if power * scale == 0:
        return torch.full_like(x, 1.0 if power == 0 else c_pow(shift, power))
    y = x * scale
    if shift != 0:
        y = y + shift
    if power != 1:
        y = y.pow(power)
    return y


def exp(x: torch.Tensor, *, inner_scale: float = 1.0, outer_scale: float = 1.0) -> torch.Tensor:
    """Exp: base^(shift + scale x) = outer_scale * exp(inner_scale * x), with
    inner_scale = ln(base) scale and outer_scale = base^shift."""
    y = torch.exp(x * inner_scale)
    return y * outer_scale if outer_scale != 1 else y


def log(x: torch.Tensor, *, base_scale: float = 1.0, input_scale: float = 1.0,
        input_shift: float = 0.0) -> torch.Tensor:
    """Log: ln(shift + scale x) * base_scale, base_scale = 1 / ln(base)."""
    y = x * input_scale
    if input_shift != 0:
        y = y + input_shift
    y = torch.log(y)
    return y * base_scale if base_scale != 1 else y


def dropout(x: torch.Tensor, *, ratio: float = 0.5, scale_train: bool = True,
            training: bool = False) -> torch.Tensor:
    """Dropout: in training zero each value with probability ``ratio`` and scale the kept ones
    by 1 / (1 - ratio) (``scale_train``; otherwise scale by 1 - ratio when testing)."""
    if training:
        y = F.dropout(x, ratio, True)
        return y if scale_train else y * (1.0 - ratio)
    return x if scale_train else x * (1.0 - ratio)


# --- normalization ---------------------------------------------------------------------------

def batch_norm(x: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor,
               scale_factor: torch.Tensor, *, eps: float = 1e-5,
               moving_average_fraction: float = 0.999, use_global_stats: bool | None = None,
               training: bool = False) -> torch.Tensor:
    """Caffe's BatchNorm (no affine part) of x (N, C, ...).

    ``mean``/``variance`` hold running sums and ``scale_factor`` s their weight: global
    statistics are sum / s (0 when s is 0). ``use_global_stats`` None means Caffe's default:
    global statistics when testing. With batch statistics (biased variance for normalizing)
    the sums are updated in place: s <- f s + 1, mean <- f mean + batch mean,
    variance <- f variance + m / (m - 1) batch variance.
    """
    if use_global_stats is None:
        use_global_stats = not training
    n, c = x.shape[0], x.shape[1]
    x3 = x.reshape(n, c, -1)
    if use_global_stats:
        factor = scale_factor.reshape(-1)
        inv = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
        mu = mean.reshape(-1) * inv
        var = variance.reshape(-1) * inv
        y = (x3 - mu.reshape(1, -1, 1)) * torch.rsqrt(var + eps).reshape(1, -1, 1)
        return y.reshape(x.shape)
    m = x3.shape[0] * x3.shape[2]
    mu = x3.mean(dim=(0, 2))
    centered = x3 - mu.reshape(1, -1, 1)
    var = (centered * centered).mean(dim=(0, 2))
    with torch.no_grad():
        correction = m / (m - 1) if m > 1 else 1.0
        scale_factor.mul_(moving_average_fraction).add_(1.0)
        mean.mul_(moving_average_fraction).add_(mu.reshape(mean.shape))
        variance.mul_(moving_average_fraction).add_(var.reshape(variance.shape),
                                                    alpha=correction)
    y = centered * torch.rsqrt(var + eps).reshape(1, -1, 1)
    return y.reshape(x.shape)


def _operand_view(operand: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """``operand`` covering axes [axis, axis + operand.dim()) of an ndim-D blob, shaped to
    broadcast against it (a 0-d operand is a scalar)."""
    if operand.dim() == 0:
        return operand
    return operand.reshape(*operand.shape, *([1] * (ndim - axis - operand.dim())))


def scale(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
          axis: int = 1) -> torch.Tensor:
    """Caffe's Scale: y = x * s (+ b), s (learned, or the second bottom) and b covering x's axes
    from ``axis`` on for as many axes as they have."""
    y = x * _operand_view(weight, x.dim(), axis)
    if bias is not None:
        y = y + _operand_view(bias, x.dim(), axis)
    return y


def bias(x: torch.Tensor, bias: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    """Caffe's Bias: y = x + b, b covering x's axes from ``axis`` on."""
    return x + _operand_view(bias, x.dim(), axis)


def mvn(x: torch.Tensor, *, normalize_variance: bool = True, across_channels: bool = False,
        eps: float = 1e-9) -> torch.Tensor:
    """Caffe's MVN: per (n, c) plane (per n with ``across_channels``) y = x - mean, divided by
    std + eps with ``normalize_variance``; the top takes the 4-D (num, channels, height, width)
    shape."""
    shape = list(x.shape) + [1] * (4 - x.dim())
    groups = shape[0] if across_channels else shape[0] * shape[1]
    x2 = x.reshape(groups, -1)
    y = x2 - x2.mean(dim=1, keepdim=True)
    if normalize_variance:
        std = (y * y).mean(dim=1, keepdim=True).sqrt() + eps
        y = y / std
    return y.reshape(shape)


# --- blob plumbing ---------------------------------------------------------------------------

def concat(*xs: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Caffe's Concat of ``xs`` along ``axis`` (one bottom passes through)."""
    return xs[0] if len(xs) == 1 else torch.cat(xs, dim=axis)


def slice_blob(x: torch.Tensor, *, axis: int = 1, slice_points: tuple = (),
               num_tops: int = 1) -> tuple:
    """Caffe's Slice: cut at ``slice_points`` along ``axis``, or into ``num_tops`` equal parts."""
    size = x.shape[axis]
    if slice_points:
        bounds = [0, *slice_points, size]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    else:
        sizes = [size // num_tops] * num_tops
    return tuple(torch.split(x, sizes, dim=axis))


def crop(x: torch.Tensor, like: torch.Tensor, *, axis: int = 2, offset: tuple = ()
         ) -> torch.Tensor:
    """Caffe's Crop: x cut to like's sizes on axes ``axis`` and beyond, starting at ``offset``
    (none: 0; one value for every axis; or one per axis)."""
    for i in range(axis, x.dim()):
        start = 0
        if len(offset) == 1:
            start = offset[0]
        elif offset:
            start = offset[i - axis]
        x = x.narrow(i, start, like.shape[i])
    return x


def reshape(x: torch.Tensor, *, dims: tuple, axis: int = 0, num_axes: int = -1) -> torch.Tensor:
    """Caffe's Reshape: axes [axis, axis + num_axes) replaced by ``dims``, where 0 copies the
    bottom's dim at that position and -1 is inferred."""
    shape = list(x.shape)
    n = len(shape)
    start = axis if axis >= 0 else n + axis + 1
    end = n if num_axes == -1 else start + num_axes
    new = [shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(shape[:start] + new + shape[end:])


def flatten(x: torch.Tensor, *, axis: int = 1, end_axis: int = -1) -> torch.Tensor:
    """Caffe's Flatten: axes axis..end_axis (inclusive) merged into one."""
    n = x.dim()
    start, end = axis % n, end_axis % n
    flat = 1
    for d in x.shape[start:end + 1]:
        flat *= d
    return x.reshape(*x.shape[:start], flat, *x.shape[end + 1:])


def tile(x: torch.Tensor, *, axis: int = 1, tiles: int = 1) -> torch.Tensor:
    """Caffe's Tile: the block of axes from ``axis`` on repeated ``tiles`` times along it."""
    return x.repeat(*[tiles if i == axis else 1 for i in range(x.dim())])


def eltwise(*xs: torch.Tensor, operation: int = ELTWISE_SUM, coeff: tuple = ()) -> torch.Tensor:
    """Caffe's Eltwise: PROD, SUM with one coefficient per bottom, or MAX (the gradient goes
    to the winner: between the first two the second on ties, later bottoms only when strictly
    greater, as Caffe's mask)."""
    if operation == ELTWISE_PROD:
        y = xs[0] * xs[1]
        for x in xs[2:]:
            y = y * x
        return y
    if operation == ELTWISE_SUM:
        coeff = coeff or (1.0,) * len(xs)
        y = xs[0] * coeff[0] if coeff[0] != 1 else xs[0]
        for x, c in zip(xs[1:], coeff[1:]):
            y = y + (x * c if c != 1 else x)
        return y
    y = torch.where(xs[0] > xs[1], xs[0], xs[1])
    for x in xs[2:]:
        y = torch.where(x > y, x, y)
    return y


def softmax(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    """Caffe's Softmax over ``axis``."""
    return torch.softmax(x, dim=axis)


def top_k_ranked(t: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and int64 indices of the k largest along the last dim, the larger index first on
    ties (as C++'s sort of (value, index) pairs)."""
    values, order = torch.sort(t.flip(-1), dim=-1, descending=True, stable=True)
    return values[..., :top_k], (t.shape[-1] - 1) - order[..., :top_k]


def argmax(x: torch.Tensor, *, top_k: int = 1, out_max_val: bool = False,
           axis: int | None = None) -> torch.Tensor:
    """Caffe's ArgMax: the top_k indices (as floats) or values (``out_max_val`` with an axis),
    larger index first on ties; without an axis over count(1) values per item, shaped
    (N, 1 or 2, k, 1...)."""
    if axis is not None:
        values, indices = top_k_ranked(x.movedim(axis, -1), top_k)
        indices = indices.to(x.dtype)
        return (values if out_max_val else indices).movedim(-1, axis)
    values, indices = top_k_ranked(x.reshape(x.shape[0], -1), top_k)
    indices = indices.to(x.dtype)
    parts = [indices, values] if out_max_val else [indices]
    y = torch.stack(parts, dim=1)
    return y.reshape(x.shape[0], len(parts), top_k, *([1] * (x.dim() - 3)))


def reduction(x: torch.Tensor, *, operation: int = REDUCE_SUM, axis: int = 0,
              coeff: float = 1.0) -> torch.Tensor:
    """Caffe's Reduction over all axes from ``axis`` on: SUM, ASUM, SUMSQ or MEAN, times
    ``coeff``."""
    x2 = x.reshape(*x.shape[:axis], -1)
    if operation == REDUCE_ASUM:
        y = x2.abs().sum(-1)
    elif operation == REDUCE_SUMSQ:
        y = (x2 * x2).sum(-1)
    else:
        y = x2.sum(-1)
    if operation == REDUCE_MEAN and x2.shape[-1]:
        coeff = coeff / x2.shape[-1]
    return y * coeff if coeff != 1 else y


def embed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
          ) -> torch.Tensor:
    """Caffe's Embed: y[..., :] = W[int(x), :] + b (indices truncated as C++ casts them)."""
    y = F.embedding(x.to(torch.int64), weight)
    return y + bias if bias is not None else y


def constant(value: torch.Tensor) -> torch.Tensor:
    """A top that depends only on the bottoms' shapes (PriorBox), stored at export time."""
    return value


# --- recurrent -----------------------------------------------------------------------------------

def _recurrent_inputs(x, cont, rest, w_static, static_input, expose_hidden, states):
    """Caffe's recurrent bottoms: (T, N, D) inputs with their per-step gate contributions
    W x_t (+ W_static x_static) left to the caller, and the initial states: the exposed
    bottoms, else the carried ``states`` (zero when none, or for a new batch size)."""
    t, n = x.shape[0], x.shape[1]
    x_static = rest[0] if static_input else None
    rest = rest[1:] if static_input else rest
    hidden = states[0].shape[-1] if states[0] is not None else None
    if expose_hidden:
        initial = [r.reshape(n, -1).detach() for r in rest]  # Caffe: no gradient to them
    else:
        # A copy: the carried states are updated in place after this call.
        initial = [s.reshape(-1, s.shape[-1]).clone() if s is not None and s.shape[1] == n else
                   x.new_zeros(n, hidden) for s in states]
    extra = None
    if static_input:
        extra = F.linear(x_static.reshape(n, -1), w_static).unsqueeze(0)
    # Caffe sends no gradient to the sequence markers either.
    return x.reshape(t, n, -1), cont.detach().reshape(t, n, 1), extra, initial


def _carry_states(states, finals):
    """Keep the final states for the next call, as Caffe's unrolled net does."""
    with torch.no_grad():
        for state, final in zip(states, finals):
            if state is not None and state.shape[1] == final.shape[0]:
                state.copy_(final.reshape(state.shape))


def lstm(x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor, w_xc: torch.Tensor,
         b_c: torch.Tensor, w_hc: torch.Tensor, w_xc_static: torch.Tensor | None = None,
         state_h: torch.Tensor | None = None, state_c: torch.Tensor | None = None,
         static_input: bool = False, expose_hidden: bool = False):
    """Caffe's LSTM over x (T, N, ...) with sequence markers cont (T, N): per step the gates
    W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static], split [i, f, o, g];
    f is gated by cont_t; c_t = f c_{t-1} + i g, h_t = o tanh(c_t). Returns h (T, N, H), and
    with ``expose_hidden`` also h_T and c_T (1, N, H), which carry no gradient (as Caffe's)."""
    xs, conts, extra, (h, c) = _recurrent_inputs(x, cont, rest, w_xc_static, static_input,
                                                 expose_hidden, (state_h, state_c))
    gates_x = F.linear(xs, w_xc, b_c)
    if extra is not None:
        gates_x = gates_x + extra
    hidden = w_hc.shape[1]
    outputs = []
    for t in range(xs.shape[0]):
        gates = gates_x[t] + F.linear(h * conts[t], w_hc)
        i, f, o = torch.sigmoid(gates[:, :3 * hidden]).split(hidden, dim=1)
        g = torch.tanh(gates[:, 3 * hidden:])
        c = f * conts[t] * c + i * g
        h = o * torch.tanh(c)
        outputs.append(h)
    _carry_states((state_h, state_c), (h, c))
    y = torch.stack(outputs)
    if expose_hidden:
        return y, h.detach().unsqueeze(0), c.detach().unsqueeze(0)
    return y


def rnn(x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor, w_xh: torch.Tensor,
        b_h: torch.Tensor, w_hh: torch.Tensor, w_ho: torch.Tensor, b_o: torch.Tensor,
        w_xh_static: torch.Tensor | None = None, state_h: torch.Tensor | None = None,
        static_input: bool = False, expose_hidden: bool = False):
    """Caffe's RNN: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o). Returns o (T, N, H), and with ``expose_hidden`` also h_T."""
    xs, conts, extra, (h,) = _recurrent_inputs(x, cont, rest, w_xh_static, static_input,
                                               expose_hidden, (state_h,))
    pre = F.linear(xs, w_xh, b_h)
    if extra is not None:
        pre = pre + extra
    hidden_states = []
    for t in range(xs.shape[0]):
        h = torch.tanh(pre[t] + F.linear(h * conts[t], w_hh))
        hidden_states.append(h)
    _carry_states((state_h,), (h,))
    y = torch.tanh(F.linear(torch.stack(hidden_states), w_ho, b_o))
    if expose_hidden:
        return y, h.detach().unsqueeze(0)
    return y


# --- accuracy ---------------------------------------------------------------------------------

def accuracy_hits(scores: torch.Tensor, labels: torch.Tensor, *, top_k: int = 1,
                  ignore_label: int | None = None):
    """(hit, valid, safe) for scores (outer, C, inner) and int64 labels (outer, 1, inner): a
    label is hit when fewer than top_k classes rank ahead of it, ties ranking the larger class
    index first (C++'s sort of (score, index) pairs); ``valid`` masks ignored labels (None:
    all count) and ``safe`` is the labels with ignored ones set to 0."""
    valid = None if ignore_label is None else labels != ignore_label
    safe = labels if valid is None else labels.masked_fill(~valid, 0)
    true_score = scores.gather(1, safe)
    index = torch.arange(scores.shape[1], device=scores.device).view(1, -1, 1)
    ahead = (scores > true_score) | ((scores == true_score) & (index > safe))
    hit = ahead.sum(dim=1, keepdim=True) < top_k
    if valid is not None:
        hit = hit & valid
    return hit, valid, safe


def accuracy(x: torch.Tensor, label: torch.Tensor, *, top_k: int = 1, axis: int = 1,
             ignore_label: int | None = None) -> torch.Tensor:
    """Caffe's Accuracy (first top): the fraction of non-ignored labels that are hit."""
    outer = 1
    for d in x.shape[:axis]:
        outer *= d
    classes = x.shape[axis]
    inner = x.numel() // max(1, outer * classes)
    labels = label.reshape(outer, 1, inner).to(torch.int64)
    hit, valid, safe = accuracy_hits(x.reshape(outer, classes, inner), labels, top_k=top_k,
                                     ignore_label=ignore_label)
    count = safe.numel() if valid is None else valid.sum()
    return hit.sum().to(x.dtype) / torch.as_tensor(count).clamp_min(1)


# --- losses ----------------------------------------------------------------------------------

def softmax_with_loss(x: torch.Tensor, label: torch.Tensor, *, axis: int = 1,
                      ignore_label: int | None = None, normalization: int = NORM_VALID,
                      class_weighting: tuple | None = None, with_prob: bool = False):
    """Caffe's SoftmaxWithLoss: -sum log(max(p[label], FLT_MIN)) / normalizer over labels that
    are not ``ignore_label``; returns the loss (and the probabilities with ``with_prob``)."""
    outer = 1
    for d in x.shape[:axis]:
        outer *= d
    classes = x.shape[axis]
    inner = x.numel() // max(1, outer * classes)
    logp = torch.log_softmax(x, dim=axis).reshape(outer, classes, inner)
    labels = label.reshape(outer, 1, inner).to(torch.int64)
    valid = None
    if ignore_label is not None:
        valid = labels != ignore_label
        labels = labels.masked_fill(~valid, 0)
    picked = logp.gather(1, labels).clamp_min(math.log(FLT_MIN))
    if valid is not None:
        picked = picked * valid
    if class_weighting is not None:
        weights = torch.tensor(class_weighting, dtype=x.dtype, device=x.device)
        picked = picked * weights[labels]
    count = valid.sum() if valid is not None else None
    loss = -picked.sum() / get_normalizer(normalization, outer, inner, count)
    if with_prob:
        return loss, torch.softmax(x, dim=axis)
    return loss


def euclidean_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Caffe's EuclideanLoss: sum((a - b)^2) / N / 2."""
    d = (a - b.reshape(a.shape)).reshape(-1)
    return torch.dot(d, d) / a.shape[0] / 2


def sigmoid_cross_entropy_loss(x: torch.Tensor, target: torch.Tensor, *,
                               ignore_label: int | None = None,
                               normalization: int = NORM_BATCH_SIZE) -> torch.Tensor:
    """Caffe's SigmoidCrossEntropyLoss in its overflow-free form, over targets whose int
    value is not ``ignore_label``, divided by the normalizer (BATCH_SIZE by default)."""
    t = target.reshape(x.shape)
    positive = (x >= 0).to(x.dtype)
    terms = x * (t - positive) - torch.log1p(torch.exp(x - 2 * x * positive))
    count = None
    if ignore_label is not None:
        valid = t.to(torch.int64) != ignore_label
        terms = terms * valid
        count = valid.sum()
    outer = x.shape[0]
    return -terms.sum() / get_normalizer(normalization, outer, x.numel() // max(1, outer), count)
