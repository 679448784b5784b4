"""ONNX converters for Caffe's windowed layers: Pooling, SPP and LRN.

Caffe's pooled size is ceil((in + 2 pad - kernel) / stride) + 1 (one less when the last window
would start in the padding), and AVE divides by the window clipped to the *padded* input. No
runtime's ceil-mode code is relied upon: the writer computes Caffe's pooled size itself and
encodes it in floor mode (``ceil_mode=0``) with explicit pads. The begin pad is Caffe's pad;
the end pad is whatever makes the last window end where Caffe's does,
``(pooled - 1) * stride + kernel - in - pad``. When that is negative (the last input rows are
read by no window), the input is sliced instead. MAX ignores pads in ONNX, as Caffe's windows
are clipped to the input. AVE runs with ``count_include_pad=1`` (every window then divides by
kernel_h * kernel_w, since all windows lie inside the explicitly padded input) followed, when
any window differs, by a Mul with the constant map kernel_h * kernel_w / Caffe's divisor.
A window wholly past the input (unpadded ceil mode) needs an end pad as wide as the kernel,
which runtimes refuse: that input is padded by an explicit Pad node instead.
"""

from __future__ import annotations

import numpy as np

from caffe.export.onnx_graph import LayerContext, NotExportable, OnnxGraph, converter
from caffe.layers._conv_util import pool_output_size
from caffe.proto import caffe_pb2

MAX = caffe_pb2.PoolingParameter.MAX
AVE = caffe_pb2.PoolingParameter.AVE
STOCHASTIC = caffe_pb2.PoolingParameter.STOCHASTIC


def caffe_pooled_size(in_hw, kernel, stride, pad) -> tuple[int, int]:
    """Caffe's pooled (height, width); the last-window correction applies when any pad is set."""
    padded = bool(pad[0] or pad[1])
    return tuple(pool_output_size(in_hw[i], kernel[i], stride[i], pad[i], padded)
                 for i in range(2))


def caffe_ave_divisor(in_hw, kernel, stride, pad, pooled) -> np.ndarray:
    """(PH, PW) float64: each window's extent clipped to the padded input, Caffe's divisor;
    0 marks a window that starts past the input (caffepy outputs 0 there)."""
    sizes, empty = [], []
    for i in range(2):
        start = np.arange(pooled[i]) * stride[i] - pad[i]
        end = np.minimum(start + kernel[i], in_hw[i] + pad[i])
        sizes.append((end - start).astype(np.float64))
        empty.append(start >= in_hw[i])
    divisor = sizes[0][:, None] * sizes[1][None, :]
    divisor[empty[0][:, None] | empty[1][None, :]] = 0
    return divisor


def caffe_pool(g: OnnxGraph, x: str, method: int, in_hw, kernel, stride, pad,
               with_index: bool = False):
    """Caffe-exact 2-D pooling of ``x`` (N, C, H, W); returns the pooled value (and, with
    ``with_index``, Caffe's float mask h * W + w of each MAX window's first maximum)."""
    pooled = caffe_pooled_size(in_hw, kernel, stride, pad)
    end_pad = [(pooled[i] - 1) * stride[i] + kernel[i] - in_hw[i] - pad[i] for i in range(2)]
    used = [in_hw[i] + min(end_pad[i], 0) for i in range(2)]
    if used != list(in_hw):
        x = g.slice(x, [0, 0], used, [2, 3])
    pads = [pad[0], pad[1], max(end_pad[0], 0), max(end_pad[1], 0)]
    if any(pads[j] >= kernel[j % 2] for j in range(4)):
        # A window wholly past the input (Caffe allows it when unpadded): runtimes refuse pads
        # as wide as the kernel, so pad explicitly, with Caffe's -FLT_MAX for MAX (an empty
        # window's value) and 0 for AVE (its divisor correction below is 0 there).
        if with_index:
            raise NotExportable("MAX pooling with a mask top and a window past the input")
        fill = -float(np.finfo(np.float32).max) if method == MAX else 0.0
        x = g.op("Pad", [x, g.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], "pads"),
                         g.const(fill, "fill")], mode="constant")
        pads = [0, 0, 0, 0]
    geometry = dict(kernel_shape=list(kernel), strides=list(stride), pads=pads, ceil_mode=0)
    if method == MAX:
        if not with_index:
            return g.op("MaxPool", [x], **geometry)
        y, index = g.op("MaxPool", [x], n_out=2, **geometry)
        return y, _plane_index(g, index, used, in_hw)
    if method == AVE:
        y = g.op("AveragePool", [x], count_include_pad=1, **geometry)
        divisor = caffe_ave_divisor(in_hw, kernel, stride, pad, pooled)
        correction = np.divide(kernel[0] * kernel[1], divisor, out=np.zeros_like(divisor),
                               where=divisor > 0)
        if np.any(correction != 1):
            y = g.op("Mul", [y, g.const(correction, "ave_divisor")])
        return y
    # STOCHASTIC at TEST time (no padding): sum x^2 / sum x over each window, as Caffe; the
    # two averages share their divisor, so it cancels.
    squares = g.op("AveragePool", [g.op("Mul", [x, x])], count_include_pad=1, **geometry)
    sums = g.op("AveragePool", [x], count_include_pad=1, **geometry)
    return g.op("Div", [squares, sums])


def _plane_index(g: OnnxGraph, index: str, used, in_hw) -> str:
    """ONNX MaxPool's index into the whole (sliced) tensor -> Caffe's h * W + w, as float."""
    plane = used[0] * used[1]
    flat = g.op("Mod", [index, g.const(plane, "plane", np.int64)])
    if used[1] != in_hw[1]:
        width = g.const(used[1], "width", np.int64)
        row = g.op("Div", [flat, width])
        col = g.op("Sub", [flat, g.op("Mul", [row, width])])
        flat = g.op("Add", [g.op("Mul", [row, g.const(in_hw[1], "width", np.int64)]), col])
    return g.op("Cast", [flat], to=1)


@converter("Pooling")
def convert_pooling(ctx: LayerContext) -> list[str]:
    """Pooling: MAX and AVE in Caffe's geometry (see the module), global pooling,
    STOCHASTIC in TEST phase; the optional MAX mask top as Caffe's float h * W + w."""
    layer, g, x = ctx.layer, ctx.g, ctx.bottoms[0]
    method = layer.method
    if method == STOCHASTIC and layer.phase == caffe_pb2.TRAIN:
        ctx.refuse("STOCHASTIC pooling in TRAIN phase samples at random")
    in_hw = tuple(ctx.bshape()[2:4])
    if layer.global_pooling and len(ctx.top_shapes) == 1 and method != STOCHASTIC:
        return [g.op("GlobalMaxPool" if method == MAX else "GlobalAveragePool", [x])]
    kernel = in_hw if layer.global_pooling else tuple(layer.kernel)
    if len(ctx.top_shapes) == 2:
        return list(caffe_pool(g, x, method, in_hw, kernel, layer.stride, layer.pad, True))
    return [caffe_pool(g, x, method, in_hw, kernel, layer.stride, layer.pad)]


@converter("SPP")
def convert_spp(ctx: LayerContext) -> list[str]:
    """SPP: one Caffe pooling per pyramid level, each flattened, concatenated along axis 1."""
    from caffe.layers.spp import spp_level_geometry

    layer, g, x = ctx.layer, ctx.g, ctx.bottoms[0]
    if layer.method == STOCHASTIC and layer.phase == caffe_pb2.TRAIN:
        ctx.refuse("STOCHASTIC pooling in TRAIN phase samples at random")
    h, w = ctx.bshape()[2:4]
    levels = []
    for level in range(layer.pyramid_height):
        kernel, stride, pad = spp_level_geometry(level, h, w)
        levels.append(caffe_pool(g, x, layer.method, (h, w), kernel, stride, pad))
    if len(levels) == 1:
        return levels
    return [g.op("Concat", [g.op("Flatten", [y], axis=1) for y in levels], axis=1)]


@converter("LRN")
def convert_lrn(ctx: LayerContext) -> list[str]:
    """LRN. ACROSS_CHANNELS is ONNX LRN exactly: both scale by k + alpha / size * (sum of
    squares over the size channels centred on c). WITHIN_CHANNEL is composed as Caffe composes
    it: AVE pooling of x^2 (size x size, stride 1, pad (size - 1) / 2, Caffe's divisor), then
    x * (1 + alpha * that)^-beta (``k`` unused, as in Caffe)."""
    layer, g, x = ctx.layer, ctx.g, ctx.bottoms[0]
    size, alpha, beta = layer.size, float(layer.alpha), float(layer.beta)
    if layer.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        return [g.op("LRN", [x], size=size, alpha=alpha, beta=beta, bias=float(layer.k))]
    pad = (size - 1) // 2
    in_hw = tuple(ctx.bshape()[2:4])
    mean_sq = caffe_pool(g, g.op("Mul", [x, x]), AVE, in_hw, (size, size), (1, 1), (pad, pad))
    base = g.shifted(g.scaled(mean_sq, alpha), 1.0)
    return [g.op("Mul", [x, g.op("Pow", [base, g.const(-beta, "power")])])]
