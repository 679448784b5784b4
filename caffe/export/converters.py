"""Per-layer converters for the torch exporters, registered by Caffe type as layers are.

A converter reads a set-up Layer (its parsed options and blobs) and returns a ``Call``: which
``caffe.functional`` function computes the layer, with which literal options, and what each of
the layer's parameter blobs is called (``weight``, ``bias``, ...) and whether it is a learned
parameter or a buffer. ``caffe.export.torch_module`` turns the calls into an ``nn.Module`` and
``caffe.export.codegen`` into Python source, so both run the same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from caffe import functional as CF
from caffe.proto import caffe_pb2


@dataclass
class Call:
    """How one layer is exported: ``func(*bottoms, **tensors, **kwargs)``.

    ``blobs`` names the layer's parameter blobs in order (None: not exported); names listed in
    ``buffers`` become module buffers, the others ``nn.Parameter``s. ``extra`` holds tensors
    computed at export time (interpolation matrices, PriorBox's boxes), stored as buffers.
    ``training`` passes the module's train/eval mode; ``per_bottom`` applies ``func`` to each
    bottom separately (one top each); ``use_bottoms`` False calls ``func`` without them;
    ``alias`` makes every top the (single) bottom itself (Split).
    """

    func: Callable | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    blobs: tuple = ()
    buffers: tuple = ()
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    training: bool = False
    per_bottom: bool = False
    use_bottoms: bool = True
    alias: bool = False


_CONVERTERS: dict[str, Callable] = {}


def converter(*type_names: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(layer, bottom, top) -> Call`` for Caffe type(s); ``bottom`` and
    ``top`` are the layer's set-up Blobs in the net."""

    def wrap(fn: Callable) -> Callable:
        for name in type_names:
            _CONVERTERS[name] = fn
        return fn

    return wrap


def get_converter(type_name: str) -> Callable | None:
    """The export converter registered for a Caffe type, or None."""
    return _CONVERTERS.get(type_name)


def exportable_types() -> list[str]:
    """Every Caffe type the torch exporters convert, sorted."""
    return sorted(_CONVERTERS)


# --- vision ----------------------------------------------------------------------------------

@converter("Convolution", "ConvolutionDepthwise", "DepthwiseConvolution", "Deconvolution")
def _convolution(layer, bottom, top):
    g = layer.geom
    nsp = layer.num_spatial_axes
    if getattr(layer, "transposed", False) and nsp > 3:
        raise NotImplementedError("Deconvolution over more than 3 spatial axes")
    func = CF.deconvolution if getattr(layer, "transposed", False) else CF.convolution
    return Call(func, dict(stride=tuple(g.stride), pad=tuple(g.pad), dilation=tuple(g.dilation),
                           group=layer.group, axis=layer.channel_axis),
                blobs=("weight", "bias") if layer.bias_term else ("weight",), per_bottom=True)


@converter("InnerProduct")
def _inner_product(layer, bottom, top):
    return Call(CF.inner_product, dict(axis=layer.axis, transpose=bool(layer.transpose)),
                blobs=("weight", "bias") if layer.bias_term else ("weight",))


@converter("Pooling")
def _pooling(layer, bottom, top):
    if layer.method == CF.POOL_STOCHASTIC and layer.phase == caffe_pb2.TRAIN:
        raise NotImplementedError("STOCHASTIC pooling in the TRAIN phase (random sampling)")
    if len(top) > 1:
        raise NotImplementedError("MAX pooling's second (argmax index) top")
    return Call(CF.pooling, dict(method=int(layer.method), kernel=tuple(layer.kernel),
                                 stride=tuple(layer.stride), pad=tuple(layer.pad),
                                 global_pooling=bool(layer.global_pooling)))


@converter("LRN")
def _lrn(layer, bottom, top):
    return Call(CF.lrn, dict(local_size=layer.size, alpha=float(layer.alpha),
                             beta=float(layer.beta), k=float(layer.k),
                             norm_region=int(layer.norm_region)))


@converter("Normalize")
def _normalize(layer, bottom, top):
    return Call(CF.normalize, dict(across_spatial=bool(layer.across_spatial),
                                   eps=float(layer.eps)), blobs=("weight",))


@converter("Interp", "BilinearInterpolate")
def _resize(layer, bottom, top):
    a_h, a_w = layer.matrices.get(layer.geometry, layer.dtype, torch.device("cpu"))
    return Call(CF.resize_planes, extra={"a_h": a_h.clone(), "a_w": a_w.clone()})


@converter("Upsample")
def _upsample(layer, bottom, top):
    if layer.segnet:
        return Call(CF.max_unpool_by_mask, dict(out_hw=tuple(layer.top_hw)))
    return Call(CF.upsample, dict(scale=layer.scale, axes=layer.axes))


@converter("MaxUnPool")
def _max_unpool(layer, bottom, top):
    return Call(CF.max_unpool_by_mask, dict(out_hw=tuple(layer.out_hw)))


@converter("Permute")
def _permute(layer, bottom, top):
    return Call(CF.permute, dict(order=tuple(int(a) for a in layer.order)))


@converter("Pad")
def _pad(layer, bottom, top):
    return Call(CF.pad_blob, dict(pads=tuple(layer.pads), mode=layer.mode,
                                  value=float(layer.value)))


@converter("PixelShuffle")
def _pixel_shuffle(layer, bottom, top):
    return Call(CF.pixel_shuffle, dict(factor=int(layer.r)))


@converter("PriorBox")
def _prior_box(layer, bottom, top):
    # The boxes depend only on the bottoms' shapes: compute them once and store them.
    layer.Forward(bottom, top)
    value = top[0].device_data().detach().cpu().clone()
    return Call(CF.constant, extra={"value": value}, use_bottoms=False)


@converter("ShuffleChannel")
def _shuffle_channel(layer, bottom, top):
    return Call(CF.shuffle_channel, dict(group=int(layer.group)))


@converter("DetectionOutput")
def _detection_output(layer, bottom, top):
    from caffe.export import modules

    return Call(modules.DetectionOutput(layer))


@converter("LSTM", "RNN")
def _recurrent(layer, bottom, top):
    lstm = layer.type == "LSTM"
    prefix = "xc" if lstm else "xh"
    names = [f"w_{prefix}", "b_c" if lstm else "b_h"]
    if layer.static_input:
        names.append(f"w_{prefix}_static")
    names += ["w_hc"] if lstm else ["w_hh", "w_ho", "b_o"]
    extra = {}
    if not layer.expose_hidden:  # the states carried from call to call, as buffers
        states = ("state_h", "state_c") if lstm else ("state_h",)
        for name, blob in zip(states, layer.state):
            extra[name] = blob.device_data().detach().clone()
    return Call(CF.lstm if lstm else CF.rnn, dict(static_input=bool(layer.static_input),
                                                  expose_hidden=bool(layer.expose_hidden)),
                blobs=tuple(names), extra=extra)


# --- neurons ---------------------------------------------------------------------------------

@converter("ReLU")
def _relu(layer, bottom, top):
    return Call(CF.relu, dict(negative_slope=float(layer.negative_slope)))


@converter("ReLU6")
def _relu6(layer, bottom, top):
    return Call(CF.relu6, dict(negative_slope=float(layer.negative_slope),
                               threshold=float(layer.threshold)))


@converter("PReLU")
def _prelu(layer, bottom, top):
    return Call(CF.prelu, blobs=("weight",))


@converter("Sigmoid")
def _sigmoid(layer, bottom, top):
    return Call(CF.sigmoid)


@converter("TanH")
def _tanh(layer, bottom, top):
    return Call(CF.tanh)


@converter("AbsVal")
def _absval(layer, bottom, top):
    return Call(CF.absval)


@converter("BNLL")
def _bnll(layer, bottom, top):
    return Call(CF.bnll)


@converter("ELU")
def _elu(layer, bottom, top):
    return Call(CF.elu, dict(alpha=float(layer.alpha)))


@converter("Swish")
def _swish(layer, bottom, top):
    return Call(CF.swish, dict(beta=float(layer.beta)))


@converter("Clip")
def _clip(layer, bottom, top):
    return Call(CF.clip, {"min": float(layer.min), "max": float(layer.max)})


@converter("Threshold")
def _threshold(layer, bottom, top):
    return Call(CF.threshold, dict(threshold=float(layer.threshold)))


@converter("HardSwish")
def _hard_swish(layer, bottom, top):
    return Call(CF.hard_swish)


@converter("HardSigmoid")
def _hard_sigmoid(layer, bottom, top):
    return Call(CF.hard_sigmoid, dict(alpha=float(layer.alpha), beta=float(layer.beta)))


@converter("Power")
def _power(layer, bottom, top):
    return Call(CF.power, dict(power=layer.power, scale=layer.scale, shift=layer.shift))


@converter("Exp")
def _exp(layer, bottom, top):
    return Call(CF.exp, dict(inner_scale=layer.inner_scale, outer_scale=layer.outer_scale))


@converter("Log")
def _log(layer, bottom, top):
    return Call(CF.log, dict(base_scale=layer.base_scale, input_scale=layer.input_scale,
                             input_shift=layer.input_shift))


@converter("Dropout")
def _dropout(layer, bottom, top):
    return Call(CF.dropout, dict(ratio=layer.ratio, scale_train=layer.scale_train),
                training=True)


# --- normalization ---------------------------------------------------------------------------

@converter("BatchNorm")
def _batch_norm(layer, bottom, top):
    param = layer.layer_param.batch_norm_param
    use_global = bool(param.use_global_stats) if param.HasField("use_global_stats") else None
    return Call(CF.batch_norm, dict(eps=float(layer.eps),
                                    moving_average_fraction=float(layer.moving_average_fraction),
                                    use_global_stats=use_global),
                blobs=("mean", "variance", "scale_factor"),
                buffers=("mean", "variance", "scale_factor"), training=True)


def _operand_axis(axis: int, operand_shape, ndim: int) -> int:
    return 0 if len(operand_shape) == 0 else axis % ndim


@converter("Scale")
def _scale(layer, bottom, top):
    axis = layer.layer_param.scale_param.axis
    operand = (bottom[1] if len(bottom) > 1 else layer.blobs[0]).shape
    kwargs = dict(axis=_operand_axis(axis, operand, bottom[0].num_axes))
    if layer.bias_term and len(layer.blobs[-1].shape) == 0 and len(operand) != 0:
        raise NotImplementedError("a scalar bias with a non-scalar scale")
    if len(bottom) > 1:
        return Call(CF.scale, kwargs, blobs=("bias",) if layer.bias_term else ())
    return Call(CF.scale, kwargs, blobs=("weight", "bias") if layer.bias_term else ("weight",))


@converter("Bias")
def _bias(layer, bottom, top):
    operand = (bottom[1] if len(bottom) > 1 else layer.blobs[0]).shape
    axis = _operand_axis(layer.layer_param.bias_param.axis, operand, bottom[0].num_axes)
    return Call(CF.bias, dict(axis=axis), blobs=() if len(bottom) > 1 else ("bias",))


@converter("MVN")
def _mvn(layer, bottom, top):
    return Call(CF.mvn, dict(normalize_variance=bool(layer.normalize_variance),
                             across_channels=bool(layer.across_channels), eps=float(layer.eps)))


# --- blob plumbing ---------------------------------------------------------------------------

@converter("Split")
def _split(layer, bottom, top):
    return Call(None, alias=True)


@converter("Concat")
def _concat(layer, bottom, top):
    return Call(CF.concat, dict(axis=layer.axis))


@converter("Slice")
def _slice(layer, bottom, top):
    return Call(CF.slice_blob, dict(axis=layer.axis, slice_points=tuple(layer.slice_points),
                                    num_tops=len(layer.layer_param.top)))


@converter("Crop")
def _crop(layer, bottom, top):
    return Call(CF.crop, dict(axis=layer.start_axis, offset=tuple(layer.offset_param)))


@converter("Reshape")
def _reshape(layer, bottom, top):
    p = layer.layer_param.reshape_param
    return Call(CF.reshape, dict(dims=tuple(layer.new_dims), axis=int(p.axis),
                                 num_axes=int(p.num_axes)))


@converter("Flatten")
def _flatten(layer, bottom, top):
    p = layer.layer_param.flatten_param
    return Call(CF.flatten, dict(axis=int(p.axis), end_axis=int(p.end_axis)))


@converter("Tile")
def _tile(layer, bottom, top):
    return Call(CF.tile, dict(axis=layer.axis, tiles=layer.tiles))


@converter("Eltwise")
def _eltwise(layer, bottom, top):
    coeff = tuple(layer.coeffs) if any(c != 1 for c in layer.coeffs) else ()
    return Call(CF.eltwise, dict(operation=int(layer.op), coeff=coeff))


@converter("Softmax")
def _softmax(layer, bottom, top):
    return Call(CF.softmax, dict(axis=layer.axis))


@converter("ArgMax")
def _argmax(layer, bottom, top):
    return Call(CF.argmax, dict(top_k=layer.top_k, out_max_val=layer.out_max_val,
                                axis=layer.axis if layer.has_axis else None))


@converter("Reduction")
def _reduction(layer, bottom, top):
    p = layer.layer_param.reduction_param
    return Call(CF.reduction, dict(operation=int(layer.op), axis=layer.axis,
                                   coeff=float(p.coeff)))


@converter("Embed")
def _embed(layer, bottom, top):
    return Call(CF.embed, blobs=("weight", "bias") if layer.bias_term else ("weight",))


@converter("Accuracy")
def _accuracy(layer, bottom, top):
    if len(top) > 1:
        raise NotImplementedError("Accuracy's per-class second top")
    return Call(CF.accuracy, dict(top_k=int(layer.top_k), axis=int(layer.axis),
                                  ignore_label=layer.ignore_label))


# --- losses ----------------------------------------------------------------------------------

@converter("SoftmaxWithLoss")
def _softmax_loss(layer, bottom, top):
    weights = tuple(layer.class_weighting) if layer.class_weighting is not None else None
    return Call(CF.softmax_with_loss, dict(
        axis=layer.axis, ignore_label=layer.ignore_label, normalization=int(layer.normalization),
        class_weighting=weights, with_prob=len(layer.layer_param.top) > 1))


@converter("EuclideanLoss")
def _euclidean_loss(layer, bottom, top):
    return Call(CF.euclidean_loss)


@converter("SigmoidCrossEntropyLoss")
def _sigmoid_ce_loss(layer, bottom, top):
    return Call(CF.sigmoid_cross_entropy_loss, dict(ignore_label=layer.ignore_label,
                                                    normalization=int(layer.normalization)))
