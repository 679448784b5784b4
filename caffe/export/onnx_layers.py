"""ONNX converters for the BVLC Caffe 1.0 catalogue (Pooling and LRN: ``onnx_pooling``).

Each converter encodes Caffe's own formula, reading the layer's parameter message and the static
shapes caffepy computed; parameter blobs become initializers. Shapes a dynamic batch may change
are written with ONNX Reshape's 0 (copy) and -1 (infer) at axis 0 (see ``reshape_to``).
"""

from __future__ import annotations

import math

import numpy as np

from caffe.export.onnx_graph import LayerContext, broadcast_shape, converter
from caffe.proto import caffe_pb2

FLOAT = 1  # onnx.TensorProto.FLOAT
INT64 = 7  # onnx.TensorProto.INT64


def reshape_to(ctx: LayerContext, x: str, shape, bottom_shape) -> str:
    """Reshape ``x`` to Caffe's static ``shape``; axis 0 is written as 0 (copy) when it keeps
    the bottom's axis 0 and as -1 otherwise, so a dynamic batch flows through."""
    shape = list(shape)
    if shape and bottom_shape:
        shape[0] = 0 if shape[0] == bottom_shape[0] else -1
    return ctx.g.reshape(x, shape)


def _operand(ctx: LayerContext, j_blob: int | None, bottom: int | None, axis: int) -> str:
    """Scale/Bias operand (a parameter blob or a second bottom) shaped to broadcast against
    bottom[0] at ``axis`` (a scalar operand ignores the axis, as Caffe's)."""
    ndim = len(ctx.bshape())
    if bottom is not None:
        shape = ctx.bshape(bottom)
        value = ctx.bottoms[bottom]
        if not shape:
            return value
        target = broadcast_shape(shape, axis, ndim)
        return value if target == shape else ctx.g.reshape(value, target)
    blob = ctx.blobs[j_blob]
    if blob.ndim == 0:
        return ctx.g.const(blob, "operand")
    return ctx.blob_const(j_blob, "operand", broadcast_shape(blob.shape, axis, ndim))


# --- vision ------------------------------------------------------------------------------------
@converter("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise")
def convert_convolution(ctx: LayerContext) -> list[str]:
    """Convolution (N-d, group, dilation): ONNX Conv has Caffe's floor output size."""
    layer = ctx.layer
    if layer.channel_axis != 1:
        ctx.refuse(f"convolution over channel axis {layer.channel_axis} (ONNX Conv: axis 1)")
    if layer.num_spatial_axes == 0:
        ctx.refuse("convolution with no spatial axes")
    geom = layer.geom
    weight = ctx.blobs[0]
    group = ctx.bshape()[1] // weight.shape[1]
    inputs = [ctx.bottoms[0], ctx.blob_const(0, "weight")]
    if layer.bias_term:
        inputs.append(ctx.blob_const(1, "bias"))
    return [ctx.g.op("Conv", inputs, kernel_shape=list(geom.kernel), strides=list(geom.stride),
                     pads=list(geom.pad) * 2, dilations=list(geom.dilation), group=group)]


@converter("Deconvolution")
def convert_deconvolution(ctx: LayerContext) -> list[str]:
    """Deconvolution: ONNX ConvTranspose; both give stride * (in - 1) + extent - 2 pad, and
    both lay weights out ``(C_in, num_output / group, *kernel)``."""
    layer = ctx.layer
    if layer.channel_axis != 1:
        ctx.refuse(f"deconvolution over channel axis {layer.channel_axis}")
    geom = layer.geom
    inputs = [ctx.bottoms[0], ctx.blob_const(0, "weight")]
    if layer.bias_term:
        inputs.append(ctx.blob_const(1, "bias"))
    return [ctx.g.op("ConvTranspose", inputs, kernel_shape=list(geom.kernel),
                     strides=list(geom.stride), pads=list(geom.pad) * 2,
                     dilations=list(geom.dilation), group=layer.group)]


@converter("InnerProduct")
def convert_inner_product(ctx: LayerContext) -> list[str]:
    """InnerProduct: bottom viewed as (outer, K) from ``axis``; weights (N, K), or (K, N) with
    ``transpose``. Axis 1 is Flatten + Gemm; other axes Reshape + MatMul (+ Add)."""
    g, p = ctx.g, ctx.param.inner_product_param
    axis = ctx.axis(p.axis)
    shape = ctx.bshape()
    k = int(np.prod(shape[axis:], dtype=np.int64))
    bias = ctx.blob_const(1, "bias") if p.bias_term else None
    if axis == 1:
        x = g.op("Flatten", [ctx.bottoms[0]], axis=1)
        inputs = [x, ctx.blob_const(0, "weight")] + ([bias] if bias else [])
        return [g.op("Gemm", inputs, transB=0 if p.transpose else 1)]
    weight = ctx.blobs[0] if p.transpose else ctx.blobs[0].T
    x = reshape_to(ctx, ctx.bottoms[0], shape[:axis] + [k], shape)
    y = g.op("MatMul", [x, g.const(np.ascontiguousarray(weight), "weight")])
    return [g.op("Add", [y, bias]) if bias else y]


# --- neurons -----------------------------------------------------------------------------------
@converter("ReLU")
def convert_relu(ctx: LayerContext) -> list[str]:
    """ReLU: max(x, 0) + negative_slope * min(x, 0) (LeakyRelu when the slope is set)."""
    slope = float(ctx.param.relu_param.negative_slope)
    if slope == 0:
        return [ctx.g.op("Relu", ctx.bottoms)]
    return [ctx.g.op("LeakyRelu", ctx.bottoms, alpha=slope)]


@converter("Sigmoid")
def convert_sigmoid(ctx: LayerContext) -> list[str]:
    """Sigmoid: ONNX Sigmoid."""
    return [ctx.g.op("Sigmoid", ctx.bottoms)]


@converter("TanH")
def convert_tanh(ctx: LayerContext) -> list[str]:
    """TanH: ONNX Tanh."""
    return [ctx.g.op("Tanh", ctx.bottoms)]


@converter("AbsVal")
def convert_absval(ctx: LayerContext) -> list[str]:
    """AbsVal: ONNX Abs."""
    return [ctx.g.op("Abs", ctx.bottoms)]


@converter("BNLL")
def convert_bnll(ctx: LayerContext) -> list[str]:
    """BNLL in Caffe's overflow-free form: ``max(x, 0) + log(1 + exp(-|x|))``."""
    g, x = ctx.g, ctx.bottoms[0]
    tail = g.op("Log", [g.op("Add", [g.const(1.0, "one"),
                                     g.op("Exp", [g.op("Neg", [g.op("Abs", [x])])])])])
    return [g.op("Add", [g.op("Relu", [x]), tail])]


@converter("ELU")
def convert_elu(ctx: LayerContext) -> list[str]:
    """ELU: ONNX Elu with ``elu_param.alpha``."""
    return [ctx.g.op("Elu", ctx.bottoms, alpha=float(ctx.param.elu_param.alpha))]


@converter("Swish")
def convert_swish(ctx: LayerContext) -> list[str]:
    """Swish: x * sigmoid(beta * x)."""
    g, x = ctx.g, ctx.bottoms[0]
    return [g.op("Mul", [x, g.op("Sigmoid", [g.scaled(x, float(ctx.param.swish_param.beta))])])]


@converter("Clip")
def convert_clip(ctx: LayerContext) -> list[str]:
    """Clip: ONNX Clip between ``clip_param.min`` and ``clip_param.max``."""
    p, g = ctx.param.clip_param, ctx.g
    return [g.op("Clip", [ctx.bottoms[0], g.const(p.min, "min"), g.const(p.max, "max")])]


@converter("Threshold")
def convert_threshold(ctx: LayerContext) -> list[str]:
    """Threshold: 1 where x > threshold, else 0."""
    g = ctx.g
    t = g.const(ctx.param.threshold_param.threshold, "threshold")
    return [g.op("Cast", [g.op("Greater", [ctx.bottoms[0], t])], to=FLOAT)]


@converter("Power")
def convert_power(ctx: LayerContext) -> list[str]:
    """Power: (shift + scale * x)^power; a constant when power or scale is 0, as in Caffe."""
    p, g, x = ctx.param.power_param, ctx.g, ctx.bottoms[0]
    power, scale, shift = float(p.power), float(p.scale), float(p.shift)
    if power == 0 or scale == 0:
        value = 1.0 if power == 0 else float(np.float32(shift) ** np.float32(power))
        return [g.op("Expand", [g.const(value, "value"), g.op("Shape", [x])])]
    y = g.shifted(g.scaled(x, scale), shift)
    return [y if power == 1 else g.op("Pow", [y, g.const(power, "power")])]


@converter("Exp")
def convert_exp(ctx: LayerContext) -> list[str]:
    """Exp: base^(shift + scale * x) = outer * exp(ln(base) * scale * x), outer = base^shift
    (base -1 means e), Caffe's factoring."""
    p, g = ctx.param.exp_param, ctx.g
    log_base = 1.0 if p.base == -1 else math.log(p.base)
    inner = float(np.float32(log_base) * np.float32(p.scale))
    outer = 1.0 if p.shift == 0 else (math.exp(p.shift) if p.base == -1 else p.base ** p.shift)
    return [g.scaled(g.op("Exp", [g.scaled(ctx.bottoms[0], inner)]), outer)]


@converter("Log")
def convert_log(ctx: LayerContext) -> list[str]:
    """Log: log_base(shift + scale * x) = ln(shift + scale * x) / ln(base) (base -1: e)."""
    p, g = ctx.param.log_param, ctx.g
    base_scale = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
    y = g.op("Log", [g.shifted(g.scaled(ctx.bottoms[0], float(p.scale)), float(p.shift))])
    return [g.scaled(y, base_scale)]


@converter("PReLU")
def convert_prelu(ctx: LayerContext) -> list[str]:
    """PReLU: one slope per channel (axis 1), or one shared (channel_shared)."""
    ndim = len(ctx.bshape())
    slope = ctx.blobs[0].reshape(-1)
    shape = [1] if slope.size == 1 else broadcast_shape([slope.size], 1, ndim)
    return [ctx.g.op("PRelu", [ctx.bottoms[0], ctx.g.const(slope.reshape(shape), "slope")])]


@converter("Dropout")
def convert_dropout(ctx: LayerContext) -> list[str]:
    """Dropout: the identity at TEST time (Caffe scales at TRAIN time)."""
    if ctx.layer.phase == caffe_pb2.TRAIN:
        ctx.refuse("Dropout in TRAIN phase drops at random; export the TEST net")
    return list(ctx.bottoms)


# --- normalisation -----------------------------------------------------------------------------
@converter("BatchNorm")
def convert_batch_norm(ctx: LayerContext) -> list[str]:
    """BatchNorm. Global statistics: mean and variance blobs times 1 / scale-factor blob (0 when
    it is 0), y = (x - mean) / sqrt(var + eps), the constants rounded in float32 as Caffe.
    Batch statistics (use_global_stats false): per-channel mean and biased variance over
    every axis but 1."""
    layer, g, x = ctx.layer, ctx.g, ctx.bottoms[0]
    ndim = len(ctx.bshape())
    shape = broadcast_shape([ctx.bshape()[1]], 1, ndim)
    eps = np.float32(layer.eps)
    if layer.use_global_stats:
        factor = np.float32(ctx.blobs[2].reshape(-1)[0])
        scale = np.float32(0) if factor == 0 else np.float32(1) / factor
        mean = (ctx.blobs[0] * scale).astype(np.float32)
        std = np.sqrt((ctx.blobs[1] * scale).astype(np.float32) + eps).astype(np.float32)
        y = g.op("Sub", [x, g.const(mean.reshape(shape), "mean")])
        return [g.op("Div", [y, g.const(std.reshape(shape), "std")])]
    axes = [0] + list(range(2, ndim))
    y = g.op("Sub", [x, g.reduce("ReduceMean", x, axes)])
    var = g.reduce("ReduceMean", g.op("Mul", [y, y]), axes)
    return [g.op("Div", [y, g.op("Sqrt", [g.op("Add", [var, g.const(eps, "eps")])])])]


@converter("Scale")
def convert_scale(ctx: LayerContext) -> list[str]:
    """Scale: x * s (+ b), s a blob or bottom[1], over axes [axis, axis + s's axes)."""
    p = ctx.param.scale_param
    axis = ctx.axis(p.axis)
    two = len(ctx.bottoms) == 2
    s = _operand(ctx, None if two else 0, 1 if two else None, axis)
    y = ctx.g.op("Mul", [ctx.bottoms[0], s])
    if p.bias_term:
        b = _operand(ctx, len(ctx.blobs) - 1, None, axis)
        y = ctx.g.op("Add", [y, b])
    return [y]


@converter("Bias")
def convert_bias(ctx: LayerContext) -> list[str]:
    """Bias: x + b, b a blob or bottom[1], over axes [axis, axis + b's axes)."""
    axis = ctx.axis(ctx.param.bias_param.axis)
    two = len(ctx.bottoms) == 2
    b = _operand(ctx, None if two else 0, 1 if two else None, axis)
    return [ctx.g.op("Add", [ctx.bottoms[0], b])]


@converter("MVN")
def convert_mvn(ctx: LayerContext) -> list[str]:
    """MVN over each (n, c) plane or each item: y = x - mean, then / (std + eps) with
    std = sqrt(mean(y^2)) (eps on the standard deviation, as Caffe)."""
    layer, g = ctx.layer, ctx.g
    top = ctx.tshape()
    x = ctx.bottoms[0]
    if top != ctx.bshape():
        x = reshape_to(ctx, x, top, ctx.bshape())
    axes = list(range(1 if layer.across_channels else 2, len(top)))
    y = g.op("Sub", [x, g.reduce("ReduceMean", x, axes)])
    if not layer.normalize_variance:
        return [y]
    std = g.op("Sqrt", [g.reduce("ReduceMean", g.op("Mul", [y, y]), axes)])
    return [g.op("Div", [y, g.op("Add", [std, g.const(layer.eps, "eps")])])]


@converter("Softmax")
def convert_softmax(ctx: LayerContext) -> list[str]:
    """Softmax along ``axis`` (ONNX Softmax from opset 13 normalises one axis, as Caffe)."""
    return [ctx.g.op("Softmax", ctx.bottoms, axis=ctx.axis(ctx.param.softmax_param.axis))]


# --- blob plumbing -----------------------------------------------------------------------------
@converter("Split")
def convert_split(ctx: LayerContext) -> list[str]:
    """Split: every top is the bottom's value (no node)."""
    return [ctx.bottoms[0]] * len(ctx.top_shapes)


@converter("Silence")
def convert_silence(ctx: LayerContext) -> list[str]:
    """Silence: no ONNX node (its bottoms only end there)."""
    return []


@converter("Concat")
def convert_concat(ctx: LayerContext) -> list[str]:
    """Concat: ONNX Concat on ``axis`` (or legacy ``concat_dim``); one bottom passes through."""
    p = ctx.param.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") else ctx.axis(p.axis)
    if len(ctx.bottoms) == 1:
        return list(ctx.bottoms)
    return [ctx.g.op("Concat", ctx.bottoms, axis=axis)]


@converter("Slice")
def convert_slice(ctx: LayerContext) -> list[str]:
    """Slice into the tops' extents along ``axis`` (from slice_point or equal parts)."""
    p = ctx.param.slice_param
    axis = p.slice_dim if p.HasField("slice_dim") else ctx.axis(p.axis)
    sizes = [shape[axis] for shape in ctx.top_shapes]
    if len(sizes) == 1:
        return list(ctx.bottoms)
    g = ctx.g
    return g.op("Split", [ctx.bottoms[0], g.ints(sizes, "split")], n_out=len(sizes), axis=axis)


@converter("Crop")
def convert_crop(ctx: LayerContext) -> list[str]:
    """Crop bottom[0] to bottom[1]'s extent on every axis from ``axis``, starting at the
    offsets (one for all axes, or one per axis)."""
    p = ctx.param.crop_param
    axis = ctx.axis(p.axis)
    ndim = len(ctx.bshape())
    axes = list(range(axis, ndim))
    offsets = [p.offset[0] if len(p.offset) == 1 else (p.offset[i - axis] if p.offset else 0)
               for i in axes]
    ends = [o + ctx.bshape(1)[i] for o, i in zip(offsets, axes)]
    return [ctx.g.slice(ctx.bottoms[0], offsets, ends, axes)]


@converter("Reshape", "Flatten")
def convert_reshape(ctx: LayerContext) -> list[str]:
    """Reshape (0 copies, -1 infers; axis/num_axes) and Flatten (axis..end_axis): Caffe's
    top shape, with the batch axis left to the runtime."""
    return [reshape_to(ctx, ctx.bottoms[0], ctx.tshape(), ctx.bshape())]


@converter("Tile")
def convert_tile(ctx: LayerContext) -> list[str]:
    """Tile: ONNX Tile with ``tiles`` repeats on ``axis``."""
    p = ctx.param.tile_param
    repeats = [1] * len(ctx.bshape())
    repeats[ctx.axis(p.axis)] = p.tiles
    return [ctx.g.op("Tile", [ctx.bottoms[0], ctx.g.ints(repeats, "repeats")])]


@converter("Eltwise")
def convert_eltwise(ctx: LayerContext) -> list[str]:
    """Eltwise PROD, MAX, or SUM: coeff[0] * b0 + coeff[1] * b1 + ... in bottom order."""
    p, g = ctx.param.eltwise_param, ctx.g
    op = p.operation
    if op == caffe_pb2.EltwiseParameter.PROD:
        y = ctx.bottoms[0]
        for b in ctx.bottoms[1:]:
            y = g.op("Mul", [y, b])
        return [y]
    if op == caffe_pb2.EltwiseParameter.MAX:
        return [g.op("Max", ctx.bottoms)]
    coeffs = list(p.coeff) or [1.0] * len(ctx.bottoms)
    y = g.scaled(ctx.bottoms[0], float(coeffs[0]))
    for b, c in zip(ctx.bottoms[1:], coeffs[1:]):
        y = g.op("Add", [y, g.scaled(b, float(c))])
    return [y]


@converter("Reduction")
def convert_reduction(ctx: LayerContext) -> list[str]:
    """Reduction SUM / ASUM / SUMSQ / MEAN over all axes from ``axis``, times coeff."""
    p, g = ctx.param.reduction_param, ctx.g
    axis = ctx.axis(p.axis)
    ops = {caffe_pb2.ReductionParameter.SUM: "ReduceSum",
           caffe_pb2.ReductionParameter.ASUM: "ReduceL1",
           caffe_pb2.ReductionParameter.SUMSQ: "ReduceSumSquare",
           caffe_pb2.ReductionParameter.MEAN: "ReduceMean"}
    axes = list(range(axis, len(ctx.bshape())))
    y = g.reduce(ops[p.operation], ctx.bottoms[0], axes, keepdims=False) if axes else \
        ctx.bottoms[0]
    return [g.scaled(y, float(p.coeff))]


@converter("ArgMax")
def convert_argmax(ctx: LayerContext) -> list[str]:
    """ArgMax: TopK over ``axis`` (or each item's flattened values). Caffe ranks equal values
    with the larger index first; ONNX TopK ranks the smaller first, so TopK runs on the
    reversed axis and maps indices back (size - 1 - i). Indices are floats."""
    layer, g = ctx.layer, ctx.g
    shape = ctx.bshape()
    x = ctx.bottoms[0]
    if layer.has_axis:
        axis = layer.axis
    else:
        x, axis = g.op("Flatten", [x], axis=1), 1
    size = shape[axis] if layer.has_axis else int(np.prod(shape[1:], dtype=np.int64))
    reversed_x = g.slice(x, [-1], [-(2 ** 62)], [axis], [-1])
    values, index = g.op("TopK", [reversed_x, g.ints([layer.top_k], "k")], n_out=2, axis=axis,
                         largest=1, sorted=1)
    index = g.op("Cast", [g.op("Sub", [g.const(size - 1, "last", np.int64), index])], to=FLOAT)
    if layer.has_axis:
        return [values if layer.out_max_val else index]
    k = layer.top_k
    rows = [g.reshape(index, [0, 1, k])]
    if layer.out_max_val:
        rows.append(g.reshape(values, [0, 1, k]))
    y = rows[0] if len(rows) == 1 else g.op("Concat", rows, axis=1)
    if len(ctx.tshape()) > 3:
        y = g.reshape(y, [0] + ctx.tshape()[1:])
    return [y]


@converter("Embed")
def convert_embed(ctx: LayerContext) -> list[str]:
    """Embed: rows of the weight (input_dim, num_output) picked by the (float) indices,
    truncated to integers as Caffe's static_cast; plus the bias."""
    g = ctx.g
    index = g.op("Cast", [ctx.bottoms[0]], to=INT64)
    y = g.op("Gather", [ctx.blob_const(0, "weight"), index], axis=0)
    if ctx.param.embed_param.bias_term:
        y = g.op("Add", [y, ctx.blob_const(1, "bias")])
    return [y]


@converter("BatchReindex")
def convert_batch_reindex(ctx: LayerContext) -> list[str]:
    """BatchReindex: items of bottom[0] picked along axis 0 by bottom[1]'s (float) indices."""
    g = ctx.g
    index = g.op("Cast", [ctx.bottoms[1]], to=INT64)
    return [g.op("Gather", [ctx.bottoms[0], index], axis=0)]


@converter("Parameter")
def convert_parameter(ctx: LayerContext) -> list[str]:
    """Parameter: its one blob, a constant of the graph."""
    return [ctx.blob_const(0, "parameter")]


@converter("Im2col")
def convert_im2col(ctx: LayerContext) -> list[str]:
    """Im2col as a convolution with one-hot weights: output channel c * K + k copies input
    channel c at kernel offset k (each output is one input value times 1, so it is exact)."""
    layer = ctx.layer
    if layer.channel_axis != 1:
        ctx.refuse(f"im2col over channel axis {layer.channel_axis} (ONNX Conv: axis 1)")
    geom = layer.geom
    c = ctx.bshape()[1]
    k = int(np.prod(geom.kernel))
    weight = np.zeros((c, k, c, k), np.float32)
    weight[np.arange(c)[:, None], np.arange(k)[None, :], np.arange(c)[:, None],
           np.arange(k)[None, :]] = 1
    weight = weight.reshape(c * k, c, *geom.kernel)
    return [ctx.g.op("Conv", [ctx.bottoms[0], ctx.g.const(weight, "one_hot")],
                     kernel_shape=list(geom.kernel), strides=list(geom.stride),
                     pads=list(geom.pad) * 2, dilations=list(geom.dilation))]


@converter("LSTMUnit")
def convert_lstm_unit(ctx: LayerContext) -> list[str]:
    """LSTMUnit: gates [i, f, o, g] of (1, N, 4H); i, o = sigmoid, f = cont * sigmoid,
    g = tanh; c = f * c_prev + i * g, h = o * tanh(c)."""
    g = ctx.g
    c_prev, gates, cont = ctx.bottoms
    hidden = ctx.bshape(0)[-1]
    i, f, o, cand = g.op("Split", [gates, g.ints([hidden] * 4, "split")], n_out=4, axis=2)
    cont = g.op("Unsqueeze", [cont, g.ints([2], "axes")])
    f = g.op("Mul", [cont, g.op("Sigmoid", [f])])
    c = g.op("Add", [g.op("Mul", [f, c_prev]),
                     g.op("Mul", [g.op("Sigmoid", [i]), g.op("Tanh", [cand])])])
    return [c, g.op("Mul", [g.op("Sigmoid", [o]), g.op("Tanh", [c])])]


@converter("Filter")
def convert_filter(ctx: LayerContext) -> list[str]:
    """Filter: the items of each bottom whose selector is nonzero (ONNX Compress on axis 0;
    the tops' first axis is data-dependent)."""
    g = ctx.g
    selector = g.reshape(ctx.bottoms[-1], [-1])
    keep = g.op("Not", [g.op("Equal", [selector, g.const(0.0, "zero")])])
    return [g.op("Compress", [b, keep], axis=0) for b in ctx.bottoms[:-1]]
