"""ONNX converters for the fork inference layers caffepy runs (SSD, DeepLab, SegNet, ShuffleNet,
brocolli/inisis).

Resizing layers (Interp, BilinearInterpolate) are written as two MatMuls with the very weight
matrices caffepy's layer builds from its fork's coordinate arithmetic (Y = A_h X A_w^T), so no
runtime's Resize rounding is relied upon; PriorBox depends only on the input sizes, so its top
is a constant computed by caffepy for the exported (fixed) feature-map and image sizes.
"""

from __future__ import annotations

import numpy as np
import torch

from caffe.export.onnx_graph import LayerContext, broadcast_shape, converter

INT64 = 7


@converter("Normalize")
def convert_normalize(ctx: LayerContext) -> list[str]:
    """Normalize (SSD): x / sqrt(sum x^2 + eps) * scale, the sum over C and the spatial axes
    (across_spatial) or over C per position; scale one value or one per channel."""
    layer, g, x = ctx.layer, ctx.g, ctx.bottoms[0]
    ndim = len(ctx.bshape())
    axes = list(range(1, ndim)) if layer.across_spatial else [1]
    sums = g.reduce("ReduceSum", g.op("Mul", [x, x]), axes)
    norm = g.op("Sqrt", [g.op("Add", [sums, g.const(layer.eps, "eps")])])
    scale = ctx.blobs[0].reshape(-1)
    shape = [1] if scale.size == 1 else broadcast_shape([scale.size], 1, ndim)
    return [g.op("Mul", [g.op("Div", [x, norm]), g.const(scale.reshape(shape), "scale")])]


@converter("Permute")
def convert_permute(ctx: LayerContext) -> list[str]:
    """Permute (SSD): ONNX Transpose with ``permute_param.order``; the identity order passes
    through."""
    if not ctx.layer.need_permute:
        return list(ctx.bottoms)
    return [ctx.g.op("Transpose", ctx.bottoms, perm=list(ctx.layer.order))]


@converter("PriorBox")
def convert_prior_box(ctx: LayerContext) -> list[str]:
    """PriorBox: (1, 2, H * W * priors * 4) boxes and variances, a constant for the exported
    feature-map and image sizes (computed by caffepy's layer; a new input size needs a new
    export)."""
    from caffe.blob import Blob

    top = Blob(dtype=torch.float32)
    top.reshape(ctx.tshape())
    ctx.layer.forward(ctx.bottom_blobs, [top])
    return [ctx.g.const(np.array(top.data), "priors")]


def _resize(ctx: LayerContext) -> list[str]:
    """Y = A_h X A_w^T with the layer's own (H_out, H) and (W_out, W) weight matrices."""
    layer, g = ctx.layer, ctx.g
    a_h, a_w = layer.matrices.get(layer.geometry, torch.float32, torch.device("cpu"))
    a_h = a_h.to_dense() if a_h.is_sparse else a_h
    a_w = a_w.to_dense() if a_w.is_sparse else a_w
    rows = g.op("MatMul", [ctx.bottoms[0], g.const(a_w.numpy().T.copy(), "a_w_t")])
    return [g.op("MatMul", [g.const(a_h.numpy(), "a_h"), rows])]


@converter("Interp")
def convert_interp(ctx: LayerContext) -> list[str]:
    """Interp (DeepLab): bilinear on DeepLab's align-corners grid, crops by pad_beg/pad_end
    folded into the matrices; with a second bottom only its (exported) size is used."""
    return _resize(ctx)


@converter("BilinearInterpolate")
def convert_bilinear_interpolate(ctx: LayerContext) -> list[str]:
    """BilinearInterpolate (brocolli): two MatMuls with the layer's own interpolation matrices."""
    return _resize(ctx)


@converter("Upsample")
def convert_upsample(ctx: LayerContext) -> list[str]:
    """Upsample: brocolli's nearest (one bottom) as Resize(nearest, asymmetric, floor) by the
    integer scale, which picks input index floor(i / scale), Caffe's; SegNet's mask
    unpooling (two bottoms) as ScatterElements, see ``convert_max_unpool``."""
    layer, g = ctx.layer, ctx.g
    if layer.segnet:
        return convert_max_unpool(ctx)
    ndim = len(ctx.bshape())
    scales = [1.0] * (ndim - layer.axes) + [float(layer.scale)] * layer.axes
    return [g.op("Resize", [ctx.bottoms[0], "", g.const(scales, "scales")], mode="nearest",
                 coordinate_transformation_mode="asymmetric", nearest_mode="floor")]


@converter("MaxUnPool")
def convert_max_unpool(ctx: LayerContext) -> list[str]:
    """Mask unpooling: top = 0, then top[n, c].flat[mask[i]] = data[n, c].flat[i]."""
    g = ctx.g
    data, mask = ctx.bottoms[:2]
    h_out, w_out = ctx.tshape()[2:]
    flat_data = g.reshape(data, [0, 0, -1])
    index = g.op("Cast", [g.reshape(mask, [0, 0, -1])], to=INT64)
    lead = g.slice(g.op("Shape", [data]), [0], [2], [0])
    plane = g.op("Concat", [lead, g.ints([h_out * w_out], "plane")], axis=0)
    zeros = g.op("ConstantOfShape", [plane])
    top = g.op("ScatterElements", [zeros, index, flat_data], axis=2)
    return [g.reshape(top, [0, 0, h_out, w_out])]


@converter("ShuffleChannel")
def convert_shuffle_channel(ctx: LayerContext) -> list[str]:
    """ShuffleChannel: channels viewed as (group, C / group), transposed, flattened back."""
    g, group = ctx.g, ctx.layer.group
    shape = ctx.bshape()
    split = g.reshape(ctx.bottoms[0], [0, group, shape[1] // group, *shape[2:]])
    perm = [0, 2, 1] + list(range(3, len(shape) + 1))
    return [g.reshape(g.op("Transpose", [split], perm=perm), [0, *shape[1:]])]


@converter("ReLU6")
def convert_relu6(ctx: LayerContext) -> list[str]:
    """ReLU6: min(max(x, 0) + negative_slope * min(x, 0), threshold)."""
    layer, g, x = ctx.layer, ctx.g, ctx.bottoms[0]
    leaky = g.op("Relu", [x]) if layer.negative_slope == 0 else \
        g.op("LeakyRelu", [x], alpha=layer.negative_slope)
    return [g.op("Min", [leaky, g.const(layer.threshold, "threshold")])]


@converter("HardSwish")
def convert_hard_swish(ctx: LayerContext) -> list[str]:
    """HardSwish: x * clip(x / 6 + 0.5, 0, 1), ONNX HardSwish (opset 14)."""
    return [ctx.g.op("HardSwish", ctx.bottoms)]


@converter("HardSigmoid")
def convert_hard_sigmoid(ctx: LayerContext) -> list[str]:
    """HardSigmoid (brocolli): ONNX HardSigmoid with the layer's alpha and beta."""
    layer = ctx.layer
    return [ctx.g.op("HardSigmoid", ctx.bottoms, alpha=layer.alpha, beta=layer.beta)]


@converter("BN")
def convert_segnet_bn(ctx: LayerContext) -> list[str]:
    """SegNet's BN in INFERENCE mode: scale * x + shift (LEARN mode normalises with each
    batch's statistics, with eps 1e-9)."""
    from caffe.layers.segnet_bn import VAR_EPS
    from caffe.proto import caffe_pb2

    layer, g, x = ctx.layer, ctx.g, ctx.bottoms[0]
    if len(ctx.top_shapes) > 1:
        ctx.refuse("BN with its batch mean and variance tops")
    ndim = len(ctx.bshape())
    shape = broadcast_shape([ctx.bshape()[1]], 1, ndim)
    scale = ctx.blob_const(0, "scale", shape)
    shift = ctx.blob_const(1, "shift", shape)
    if layer.mode == caffe_pb2.BNParameter.INFERENCE:
        return [g.op("Add", [g.op("Mul", [x, scale]), shift])]
    # SegNet's statistics: mean = E[x], var = E[x^2] - E[x]^2 over N and the spatial axes.
    axes = [0] + list(range(2, ndim))
    mean = g.reduce("ReduceMean", x, axes)
    var = g.op("Sub", [g.reduce("ReduceMean", g.op("Mul", [x, x]), axes),
                       g.op("Mul", [mean, mean])])
    std = g.op("Sqrt", [g.op("Add", [var, g.const(VAR_EPS, "eps")])])
    x_norm = g.op("Div", [g.op("Sub", [x, mean]), std])
    return [g.op("Add", [g.op("Mul", [x_norm, scale]), shift])]


@converter("Pad")
def convert_pad(ctx: LayerContext) -> list[str]:
    """Pad (brocolli) of the last two axes: ONNX Pad (constant / edge / reflect), or a Slice
    when the pads crop."""
    layer, g = ctx.layer, ctx.g
    up, down, left, right = layer.pads
    shape = ctx.bshape()
    ndim = len(shape)
    if max(layer.pads) <= 0:
        h, w = shape[-2:]
        return [g.slice(ctx.bottoms[0], [-up, -left], [h + down, w + right],
                        [ndim - 2, ndim - 1])]
    pads = [0] * (ndim - 2) + [up, left] + [0] * (ndim - 2) + [down, right]
    mode = {"constant": "constant", "replicate": "edge", "reflect": "reflect"}[layer.mode]
    inputs = [ctx.bottoms[0], g.ints(pads, "pads")]
    if mode == "constant":
        inputs.append(g.const(layer.value, "value"))
    return [g.op("Pad", inputs, mode=mode)]


@converter("PixelShuffle")
def convert_pixel_shuffle(ctx: LayerContext) -> list[str]:
    """PixelShuffle: top[n, c, h r + i, w r + j] = bottom[n, c r^2 + i r + j, h, w], ONNX
    DepthToSpace in CRD mode."""
    if len(ctx.bshape()) != 4:
        ctx.refuse(f"PixelShuffle of a {len(ctx.bshape())}-axis bottom (ONNX: 4 axes)")
    return [ctx.g.op("DepthToSpace", ctx.bottoms, blocksize=ctx.layer.r, mode="CRD")]


@converter("ROIPooling")
def convert_roi_pooling(ctx: LayerContext) -> list[str]:
    """ROIPooling (Fast/Faster R-CNN): ONNX MaxRoiPool, which is defined after that layer
    (rois [batch, x1, y1, x2, y2], C round of the scaled corners, floor/ceil bin edges)."""
    layer = ctx.layer
    return [ctx.g.op("MaxRoiPool", ctx.bottoms[:2], pooled_shape=[layer.pooled_h,
                                                                  layer.pooled_w],
                     spatial_scale=layer.spatial_scale)]
