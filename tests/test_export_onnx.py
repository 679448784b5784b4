"""ONNX export (caffe.export.to_onnx): every exportable layer type, on odd shapes, run in
onnxruntime against caffepy's forward; the pooling geometries where a naive export differs;
onnx.checker (full) and strict shape inference on every graph; dynamic batch; the listing
error for layers ONNX cannot express; partial export with inputs=/outputs=."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from caffe.export import to_onnx  # noqa: E402
from caffe.export.onnx_graph import ExportError, exportable_types  # noqa: E402

# Tolerance: the issue's bar, rtol 1e-4 / atol 1e-5. Each case's outputs are float32 sums of
# at most ~100 terms of magnitude <= ~5 (the largest: a 3x3x4 convolution, 5x5 windows, LRN
# over 5 channels, a 60-term InnerProduct). onnxruntime and torch sum in other orders; an
# n-term float32 sum differs by at most (n - 1) * 2^-24 * sum|terms| ~ 100 * 6e-8 * 5 = 3e-5
# in the worst case and ~sqrt(n) * 6e-8 * 5 ~ 3e-6 typically, so atol 1e-5 holds the typical
# case with margin and rtol 1e-4 covers the larger outputs; the transcendental layers (exp,
# log, pow, tanh) add a few ulp (~1e-7 relative). The wrong semantics these tests guard against
# (a ceil-mode extra row, a divisor counting pads, LRN's alpha not divided by size, a dropped
# coeff) move outputs by 1e-2 or more.
RTOL, ATOL = 1e-4, 1e-5


def make_net(layers: str, inputs: dict[str, tuple], phase=caffe.TEST) -> caffe.Net:
    text = "name: 'case'\n"
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += (f"layer {{ name: '{name}' type: 'Input' top: '{name}' "
                 f"input_param {{ shape {{ {dims} }} }} }}\n")
    param = text_format.Parse(text + layers, caffe_pb2.NetParameter())
    net = caffe.Net(param, phase)
    rng = np.random.default_rng(7)
    for layer in net.layers:
        for blob in layer.blobs:
            blob.data[...] = rng.normal(0, 0.5, blob.shape)
        if layer.layer_param.type == "BatchNorm":
            layer.blobs[0].data[...] *= 2.5
            layer.blobs[1].data[...] = rng.uniform(0.5, 2, layer.blobs[1].shape) * 2.5
            layer.blobs[2].data[...] = 2.5
    return net


def feed_for(net, gen=None, batch: int | None = None, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for name in net.inputs:
        shape = list(net.blobs[name].shape)
        if batch is not None:
            shape[0] = batch
        feed[name] = (gen(rng, shape, name) if gen else rng.normal(0, 1, shape)) \
            .astype(np.float32)
    return feed


def run_caffe(net, feed) -> dict[str, np.ndarray]:
    for name, x in feed.items():
        net.blobs[name].reshape(*x.shape)
    net.reshape()
    out = net.forward(**feed)
    return {k: np.array(v) for k, v in out.items()}


def run_onnx(model, feed, outputs=None) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in model.graph.output]
    return dict(zip(names, session.run(names, feed)))


def check_graph(model) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def check_case(layers, inputs, gen=None, batches=(None,), opset=None, phase=caffe.TEST):
    net = make_net(layers, inputs, phase)
    model = to_onnx(net, None, opset=opset)
    check_graph(model)
    assert [i.name for i in model.graph.input] == net.inputs
    assert [o.name for o in model.graph.output] == net.outputs
    for batch in batches:
        feed = feed_for(net, gen, batch)
        want = run_caffe(net, feed)
        got = run_onnx(model, feed)
        for name in net.outputs:
            assert got[name].shape == want[name].shape, name
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL,
                                       err_msg=f"output {name!r}, batch {batch}")
    return net, model


def positive(rng, shape, name):
    return rng.uniform(0.1, 1.5, shape)


def ties(rng, shape, name):
    return rng.integers(0, 3, shape).astype(np.float64)


def indices(n):
    return lambda rng, shape, name: rng.integers(0, n, shape).astype(np.float64) \
        if name == "idx" else rng.normal(0, 1, shape)


def rois(rng, shape):
    """ROIs [batch, x1, y1, x2, y2] in image coordinates (twice the 8x9 map), some with
    corners on .5 after scaling (C's round goes away from zero) and one malformed."""
    boxes = rng.uniform(0, 17, (shape[0], 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    boxes[0] = [1.0, 3.0, 5.0, 9.0]  # 0.5, 1.5, 2.5, 4.5 after scaling
    boxes[1] = [9.0, 8.0, 3.0, 2.0]  # x2 < x1: pooled as 1x1 at its start
    batch = rng.integers(0, 2, (shape[0], 1))
    return np.concatenate([batch, boxes], axis=1)


def sequences(rng, shape, name):
    """Continuation markers with restarts mid-batch (cont 0 at t = 0 and here and there)."""
    if name != "cont":
        return rng.normal(0, 1, shape)
    cont = (rng.uniform(size=shape) > 0.3).astype(np.float64)
    cont[0] = 0
    return cont


def pool(name, bottom, spec, tops=None):
    tops = tops or [name]
    top_lines = " ".join(f"top: '{t}'" for t in tops)
    return (f"layer {{ name: '{name}' type: 'Pooling' bottom: '{bottom}' {top_lines} "
            f"pooling_param {{ {spec} }} }}\n")


def one(type_, spec="", bottoms=("data",), top="y", extra=""):
    bottom_lines = " ".join(f"bottom: '{b}'" for b in bottoms)
    return f"layer {{ name: 'l' type: '{type_}' {bottom_lines} top: '{top}' {spec} }}\n{extra}"


D = {"data": (2, 3, 5, 7)}
CONV_FILL = "weight_filler { type: 'gaussian' std: 0.3 } bias_filler { type: 'gaussian' }"

CASES = {
    # Pooling: Caffe's ceil-mode size, pad clipping and AVE divisor. The issue's H=5, k=3,
    # s=3, p=1: Caffe gives 2x2 (the 3rd window would start in the padding); ONNX's ceil_mode=1
    # there is 3x3 by onnx shape inference but 2x2 in onnxruntime 1.32 (checked), and
    # count_include_pad=0 divides the first window by 4 where Caffe divides by 9.
    "pool_max_h5k3s3p1": (pool("y", "data", "pool: MAX kernel_size: 3 stride: 3 pad: 1"),
                          {"data": (2, 3, 5, 5)}),
    "pool_ave_h5k3s3p1": (pool("y", "data", "pool: AVE kernel_size: 3 stride: 3 pad: 1"),
                          {"data": (2, 3, 5, 5)}),
    "pool_ave_pad": (pool("y", "data", "pool: AVE kernel_size: 3 stride: 2 pad: 1"),
                     {"data": (2, 3, 6, 7)}),
    "pool_ave_pad_rect": (pool("y", "data", "pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 "
                                            "stride_w: 1 pad_h: 1 pad_w: 1"),
                          {"data": (1, 2, 7, 6)}),
    "pool_max_ceil": (pool("y", "data", "pool: MAX kernel_size: 3 stride: 2"),
                      {"data": (1, 2, 6, 8)}),
    "pool_ave_ceil": (pool("y", "data", "pool: AVE kernel_size: 3 stride: 2"),
                      {"data": (1, 2, 6, 8)}),
    # The last window ends before the input does (rows read by no window): sliced off.
    "pool_max_unread_rows": (pool("y", "data", "pool: MAX kernel_size: 2 stride: 5 pad: 1"),
                             {"data": (1, 2, 7, 7)}),
    "pool_ave_unread_rows": (pool("y", "data", "pool: AVE kernel_size: 2 stride: 5 pad: 1"),
                             {"data": (1, 2, 7, 7)}),
    # Unpadded ceil mode with a window wholly past the input (in 5, k 1, s 5): Caffe gives
    # -FLT_MAX (MAX), caffepy 0 (AVE, where Caffe divides 0 by 0).
    "pool_max_empty_window": (pool("y", "data", "pool: MAX kernel_size: 1 stride: 5"),
                              {"data": (1, 2, 5, 6)}),
    "pool_ave_empty_window": (pool("y", "data", "pool: AVE kernel_size: 1 stride: 5"),
                              {"data": (1, 2, 5, 6)}),
    "pool_global_max": (pool("y", "data", "pool: MAX global_pooling: true"), D),
    "pool_global_ave": (pool("y", "data", "pool: AVE global_pooling: true"), D),
    "pool_max_mask": (pool("y", "data", "pool: MAX kernel_size: 3 stride: 2", ["y", "mask"]),
                      {"data": (2, 3, 7, 7)}),
    "pool_max_mask_sliced": (pool("y", "data", "pool: MAX kernel_size: 2 stride: 5 pad: 1",
                                  ["y", "mask"]), {"data": (1, 2, 7, 7)}),
    "pool_stochastic_test": (pool("y", "data", "pool: STOCHASTIC kernel_size: 3 stride: 2"),
                             {"data": (1, 2, 6, 7)}, positive),
    "spp_max": (one("SPP", "spp_param { pyramid_height: 3 pool: MAX }"), {"data": (1, 2, 7, 9)}),
    "spp_ave": (one("SPP", "spp_param { pyramid_height: 2 pool: AVE }"), {"data": (2, 2, 5, 6)}),
    "lrn_across": (one("LRN", "lrn_param { local_size: 5 alpha: 0.6 beta: 0.75 k: 2 }"),
                   {"data": (2, 7, 3, 4)}),
    "lrn_within": (one("LRN", "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 "
                              "alpha: 0.8 beta: 0.75 }"), D),
    "lrn_within5": (one("LRN", "lrn_param { norm_region: WITHIN_CHANNEL local_size: 5 "
                               "alpha: 0.8 beta: 0.6 }"), {"data": (1, 2, 6, 4)}),
    # Vision.
    "conv_group_dilation": (one("Convolution", "convolution_param { num_output: 6 "
                                "kernel_size: 3 group: 2 dilation: 2 pad: 2 stride: 2 "
                                f"{CONV_FILL} }}"), {"data": (2, 4, 7, 9)}),
    "conv_rect": (one("Convolution", "convolution_param { num_output: 3 kernel_h: 2 "
                      "kernel_w: 3 stride_h: 2 stride_w: 1 pad_w: 1 bias_term: false "
                      f"{CONV_FILL} }}"), D),
    "conv_3d": (one("Convolution", "convolution_param { num_output: 2 kernel_size: 3 pad: 1 "
                    f"stride: 2 {CONV_FILL} }}"), {"data": (1, 2, 4, 5, 6)}),
    "conv_1d": (one("Convolution", f"convolution_param {{ num_output: 2 kernel_size: 3 "
                                   f"{CONV_FILL} }}"), {"data": (2, 3, 7)}),
    "deconv_group_dilation": (one("Deconvolution", "convolution_param { num_output: 4 "
                                  "kernel_size: 3 group: 2 dilation: 2 stride: 2 pad: 1 "
                                  f"{CONV_FILL} }}"), {"data": (2, 4, 5, 6)}),
    "depthwise": (one("DepthwiseConvolution", f"convolution_param {{ num_output: 6 "
                  f"kernel_size: 3 pad: 1 {CONV_FILL} }}"), D),
    "conv_depthwise": (one("ConvolutionDepthwise", f"convolution_param {{ kernel_size: 3 "
                       f"stride: 2 {CONV_FILL} }}"), D),
    "ip": (one("InnerProduct", f"inner_product_param {{ num_output: 4 {CONV_FILL} }}"), D),
    "ip_transpose": (one("InnerProduct", "inner_product_param { num_output: 4 transpose: true "
                         f"{CONV_FILL} }}"), D),
    "ip_axis2": (one("InnerProduct", "inner_product_param { num_output: 3 axis: 2 "
                     f"{CONV_FILL} }}"), D),
    # Neurons.
    "relu": (one("ReLU"), D),
    "relu_leaky": (one("ReLU", "relu_param { negative_slope: 0.1 }"), D),
    "sigmoid": (one("Sigmoid"), D),
    "tanh": (one("TanH"), D),
    "absval": (one("AbsVal"), D),
    "bnll": (one("BNLL"), D, lambda rng, s, n: rng.normal(0, 40, s)),
    "elu": (one("ELU", "elu_param { alpha: 0.7 }"), D),
    "swish": (one("Swish", "swish_param { beta: 1.5 }"), D),
    "clip": (one("Clip", "clip_param { min: -0.5 max: 0.7 }"), D),
    "threshold": (one("Threshold", "threshold_param { threshold: 0.2 }"), D),
    "power": (one("Power", "power_param { power: 2 scale: 0.5 shift: 1 }"), D),
    "power_sqrt": (one("Power", "power_param { power: 0.5 scale: 0.5 shift: 3 }"), D),
    "power_zero": (one("Power", "power_param { power: 0 }"), D),
    "power_scale_zero": (one("Power", "power_param { power: 3 scale: 0 shift: 1.5 }"), D),
    "exp": (one("Exp"), D),
    "exp_base": (one("Exp", "exp_param { base: 2 scale: 0.5 shift: 0.3 }"), D),
    "log": (one("Log"), D, positive),
    "log_base": (one("Log", "log_param { base: 10 scale: 0.5 shift: 3 }"), D),
    "prelu": (one("PReLU"), D),
    "prelu_shared": (one("PReLU", "prelu_param { channel_shared: true }"), D),
    "dropout": (one("Dropout", "dropout_param { dropout_ratio: 0.3 }"), D),
    "relu6": (one("ReLU6", "relu6_param { threshold: 0.8 }"), D),
    "relu6_leaky": (one("ReLU6", "relu6_param { negative_slope: 0.2 }"),
                    D, lambda rng, s, n: rng.normal(0, 5, s)),
    "hardswish": (one("HardSwish"), D, lambda rng, s, n: rng.normal(0, 4, s)),
    "hardsigmoid": (one("HardSigmoid", "hardsigmoid_param { alpha: 0.3 beta: 0.4 }"), D),
    # Normalisation.
    "batchnorm": (one("BatchNorm", "batch_norm_param { eps: 0.001 }"), D),
    "batchnorm_batch_stats": (one("BatchNorm", "batch_norm_param { use_global_stats: false }"),
                              {"data": (3, 2, 4, 5)}),
    "batchnorm_2d": (one("BatchNorm"), {"data": (3, 5)}),
    "scale_bias": (one("Scale", "scale_param { bias_term: true }"), D),
    "scale_axes": (one("Scale", "scale_param { axis: 1 num_axes: 2 }"), D),
    "scale_scalar": (one("Scale", "scale_param { num_axes: 0 }"), D),
    "scale_two_bottoms": (one("Scale", "scale_param { axis: 1 }", ("data", "s")),
                          {"data": (2, 3, 5, 4), "s": (3, 5)}),
    "bias": (one("Bias", "bias_param { axis: 2 num_axes: 2 }"), D),
    "bias_two_bottoms": (one("Bias", "", ("data", "b")), {"data": (2, 3, 5, 4), "b": (3,)}),
    "mvn": (one("MVN"), D),
    "mvn_across": (one("MVN", "mvn_param { across_channels: true eps: 0.01 }"), D),
    "mvn_mean_only": (one("MVN", "mvn_param { normalize_variance: false }"), {"data": (2, 3, 5)}),
    "softmax": (one("Softmax"), D),
    "softmax_axis": (one("Softmax", "softmax_param { axis: -2 }"), D),
    "normalize": (one("Normalize", "norm_param { across_spatial: false channel_shared: false }"),
                  D),
    "normalize_spatial": (one("Normalize"), D),
    "segnet_bn_inference": (one("BN", "bn_param { bn_mode: INFERENCE }"), D),
    "segnet_bn_learn": (one("BN", "bn_param { bn_mode: LEARN }"), D),
    # Blob plumbing.
    "concat": (one("Concat", "concat_param { axis: 2 }", ("data", "b")),
               {"data": (2, 3, 5, 7), "b": (2, 3, 2, 7)}),
    "slice": ("layer { name: 'l' type: 'Slice' bottom: 'data' top: 'a' top: 'b' top: 'c' "
              "slice_param { axis: 3 slice_point: 1 slice_point: 4 } }\n", D),
    "slice_equal": ("layer { name: 'l' type: 'Slice' bottom: 'data' top: 'a' top: 'b' "
                    "slice_param { axis: 0 } }\n", {"data": (4, 3, 2)}),
    "split": ("layer { name: 'a' type: 'AbsVal' bottom: 'data' top: 'a' }\n"
              "layer { name: 'b' type: 'TanH' bottom: 'data' top: 'b' }\n", D),
    "crop_offsets": (one("Crop", "crop_param { axis: 2 offset: 1 offset: 2 }", ("data", "ref")),
                     {"data": (2, 3, 7, 8), "ref": (2, 3, 4, 5)}),
    "crop_one_offset": (one("Crop", "crop_param { axis: 1 offset: 1 }", ("data", "ref")),
                        {"data": (2, 4, 7, 8), "ref": (2, 2, 4, 5)}),
    "reshape_0_m1": (one("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 5 } }"),
                     {"data": (2, 3, 4, 5)}),
    "reshape_axis": (one("Reshape", "reshape_param { shape { dim: -1 } axis: 1 num_axes: 2 }"),
                     {"data": (2, 3, 4, 5)}),
    "reshape_copy": (one("Reshape", "reshape_param { shape { dim: 0 dim: 0 dim: 2 dim: -1 } }"),
                     {"data": (2, 3, 4, 5)}),
    "flatten": (one("Flatten"), D),
    "flatten_axes": (one("Flatten", "flatten_param { axis: 2 end_axis: 3 }"),
                     {"data": (2, 3, 4, 5, 2)}),
    "tile": (one("Tile", "tile_param { axis: 1 tiles: 3 }"), D),
    "eltwise_coeff": (one("Eltwise", "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 "
                                     "coeff: 1.5 }", ("data", "b", "c")),
                      {"data": (2, 3, 5), "b": (2, 3, 5), "c": (2, 3, 5)}),
    "eltwise_sum": (one("Eltwise", "", ("data", "b")), {"data": (2, 3, 5), "b": (2, 3, 5)}),
    "eltwise_prod": (one("Eltwise", "eltwise_param { operation: PROD }", ("data", "b", "c")),
                     {"data": (2, 3, 5), "b": (2, 3, 5), "c": (2, 3, 5)}),
    "eltwise_max": (one("Eltwise", "eltwise_param { operation: MAX }", ("data", "b", "c")),
                    {"data": (2, 3, 5), "b": (2, 3, 5), "c": (2, 3, 5)}),
    "reduction_sum": (one("Reduction", "reduction_param { axis: 1 }"), D),
    "reduction_asum": (one("Reduction", "reduction_param { operation: ASUM axis: 2 coeff: 0.5 }"),
                       D),
    "reduction_sumsq": (one("Reduction", "reduction_param { operation: SUMSQ axis: -1 }"), D),
    "reduction_mean_all": (one("Reduction", "reduction_param { operation: MEAN axis: 0 }"), D),
    "argmax": (one("ArgMax"), D),
    "argmax_topk_val": (one("ArgMax", "argmax_param { top_k: 3 out_max_val: true }"), D),
    "argmax_axis": (one("ArgMax", "argmax_param { top_k: 2 axis: 1 }"), D),
    "argmax_axis_val": (one("ArgMax", "argmax_param { top_k: 2 axis: -1 out_max_val: true }"), D),
    "argmax_ties": (one("ArgMax", "argmax_param { top_k: 4 out_max_val: true }"), D, ties),
    "argmax_axis_ties": (one("ArgMax", "argmax_param { top_k: 2 axis: 1 }"), D, ties),
    "embed": (one("Embed", "embed_param { num_output: 4 input_dim: 6 }", ("idx",)),
              {"idx": (2, 3)}, indices(6)),
    "batch_reindex": (one("BatchReindex", "", ("data", "idx")), {"data": (4, 3, 2), "idx": (5,)},
                      indices(4)),
    "parameter": ("layer { name: 'p' type: 'Parameter' top: 'p' parameter_param { shape { dim: 2 "
                  "dim: 3 } } }\nlayer { name: 'l' type: 'Eltwise' bottom: 'data' bottom: 'p' "
                  "top: 'y' }\n", {"data": (2, 3)}),
    "silence": ("layer { name: 's' type: 'Silence' bottom: 'b' }\n" + one("AbsVal"),
                {"data": (2, 3), "b": (2,)}),
    "im2col": (one("Im2col", "convolution_param { kernel_h: 2 kernel_w: 3 stride: 2 pad: 1 "
                             "dilation: 1 }"), D),
    "lstm_unit": ("layer { name: 'l' type: 'LSTMUnit' bottom: 'c' bottom: 'gates' "
                  "bottom: 'cont' top: 'c1' top: 'h1' }\n",
                  {"c": (1, 3, 4), "gates": (1, 3, 16), "cont": (1, 3)},
                  lambda rng, s, n: rng.integers(0, 2, s).astype(np.float64) if n == "cont"
                  else rng.normal(0, 1, s)),
    "filter": ("layer { name: 'l' type: 'Filter' bottom: 'data' bottom: 'b' bottom: 'sel' "
               "top: 'x' top: 'y' }\n", {"data": (5, 3, 2), "b": (5, 2), "sel": (5, 1)},
               lambda rng, s, n: np.array([[1], [0], [0.5], [0], [-2]]) if n == "sel"
               else rng.normal(0, 1, s)),
    "lstm": (one("LSTM", "recurrent_param { num_output: 4 }", ("x", "cont")),
             {"x": (5, 3, 2, 3), "cont": (5, 3)}, sequences),
    "lstm_static_exposed": ("layer { name: 'l' type: 'LSTM' bottom: 'x' bottom: 'cont' "
                            "bottom: 'xs' bottom: 'h0' bottom: 'c0' top: 'y' top: 'hT' top: 'cT' "
                            "recurrent_param { num_output: 4 expose_hidden: true } }\n",
                            {"x": (4, 3, 5), "cont": (4, 3), "xs": (3, 2), "h0": (1, 3, 4),
                             "c0": (1, 3, 4)}, sequences),
    "rnn": (one("RNN", "recurrent_param { num_output: 3 }", ("x", "cont")),
            {"x": (5, 2, 4), "cont": (5, 2)}, sequences),
    "rnn_static_exposed": ("layer { name: 'l' type: 'RNN' bottom: 'x' bottom: 'cont' "
                           "bottom: 'xs' bottom: 'h0' top: 'y' top: 'hT' "
                           "recurrent_param { num_output: 3 expose_hidden: true } }\n",
                           {"x": (4, 2, 3), "cont": (4, 2), "xs": (2, 5), "h0": (1, 2, 3)},
                           sequences),
    # Fork layers.
    "roi_pooling": (one("ROIPooling", "roi_pooling_param { pooled_h: 3 pooled_w: 2 "
                                      "spatial_scale: 0.5 }", ("data", "rois")),
                    {"data": (2, 3, 8, 9), "rois": (6, 5)}, lambda rng, s, n: rois(rng, s)
                    if n == "rois" else rng.normal(0, 1, s)),
    "permute": (one("Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }"), D),
    "prior_box": (one("PriorBox", "prior_box_param { min_size: 4 max_size: 9 aspect_ratio: 2 "
                                  "flip: true clip: true variance: 0.1 variance: 0.2 "
                                  "variance: 0.2 variance: 0.1 }", ("data", "img")),
                  {"data": (2, 3, 3, 4), "img": (2, 3, 13, 17)}),
    "interp_zoom": (one("Interp", "interp_param { zoom_factor: 2 }"), D),
    "interp_size_pad": (one("Interp", "interp_param { height: 4 width: 9 pad_beg: 0 "
                                      "pad_end: -1 }"), D),
    "bilinear": (one("BilinearInterpolate", "bilinear_interpolate_param { dst_h: 8 dst_w: 4 "
                                            "align_corners: false }"), D),
    "upsample_nearest": (one("Upsample", "upsample_param { scale: 2 }"), D),
    "upsample_segnet": (pool("p", "data", "pool: MAX kernel_size: 2 stride: 2", ["p", "mask"]) +
                        one("Upsample", "upsample_param { upsample_h: 6 upsample_w: 7 }",
                            ("p", "mask")), {"data": (2, 3, 6, 7)}),
    "max_unpool": (pool("p", "data", "pool: MAX kernel_size: 3 stride: 2", ["p", "mask"]) +
                   one("MaxUnPool", "max_unpool_param { dst_h: 7 dst_w: 7 }", ("p", "mask")),
                   {"data": (2, 3, 7, 7)}),
    "shuffle_channel": (one("ShuffleChannel", "shuffle_channel_param { group: 3 }"),
                        {"data": (2, 6, 3, 5)}),
    "pad_constant": (one("Pad", "pad_param { pad_u: 1 pad_d: 2 pad_l: 0 pad_r: 3 "
                                "pad_value: 0.5 }"), D),
    "pad_reflect": (one("Pad", "pad_param { pad_type: REFLECT pad_u: 2 pad_d: 1 pad_l: 3 "
                               "pad_r: 1 }"), D),
    "pad_replicate": (one("Pad", "pad_param { pad_type: REPLICATE pad_u: 2 pad_d: 1 pad_l: 3 "
                                 "pad_r: 1 }"), D),
    "pad_crop": (one("Pad", "pad_param { pad_u: -1 pad_d: 0 pad_l: -2 pad_r: -1 }"), D),
    "pixel_shuffle": (one("PixelShuffle", "pixelshuffle_param { upscale_factor: 2 }"),
                      {"data": (2, 8, 3, 5)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_caffepy(case):
    layers, inputs, *gen = CASES[case]
    check_case(layers, inputs, gen[0] if gen else None)


def test_every_exportable_type_has_a_case():
    """A converter without a per-layer case here would go untested."""
    covered = set()
    for layers, *_ in CASES.values():
        param = text_format.Parse(layers, caffe_pb2.NetParameter())
        covered |= {lp.type for lp in param.layer}
    missing = set(exportable_types()) - covered - {"Split"}  # Split: the "split" case
    assert not missing


def test_every_layer_type_exports_or_says_why():
    """Each registered Caffe type has a converter, or the listing error gives a reason."""
    from caffe.export.onnx_writer import _why_not

    exportable = set(exportable_types())
    silent = [t for t in caffe.layer_type_list() if t not in exportable and t != "Input"
              and _why_not(t) == "no ONNX converter"]
    assert not silent


def test_pool_sizes_and_divisor_by_hand():
    """H = W = 5, k = 3, s = 3, p = 1: Caffe gives 2x2 (ceil((5 + 2 - 3) / 3) + 1 = 3, less
    the window starting in the padding); windows cover padded rows -1..1 and 2..4, each
    dividing by 9. H = W = 6, k = 3, s = 2, p = 1: 4x4; the last window covers rows 5..7,
    clipped to the padded input's end 7, so its divisor is 2 * 2 and it holds one input cell."""
    _, model = check_case(pool("y", "data", "pool: AVE kernel_size: 3 stride: 3 pad: 1"),
                          {"data": (1, 1, 5, 5)})
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    y = run_onnx(model, {"data": x})["y"]
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 0, 0] == pytest.approx(x[0, 0, :2, :2].sum() / 9)
    assert y[0, 0, 1, 1] == pytest.approx(x[0, 0, 2:5, 2:5].sum() / 9)
    _, model = check_case(pool("y", "data", "pool: AVE kernel_size: 3 stride: 2 pad: 1"),
                          {"data": (1, 1, 6, 6)})
    y = run_onnx(model, {"data": np.ones((1, 1, 6, 6), dtype=np.float32)})["y"]
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9)
    assert y[0, 0, 3, 3] == pytest.approx(1 / 4)
    assert y[0, 0, 1, 3] == pytest.approx(3 / 6)


def test_lrn_within_channel_by_hand():
    """WITHIN_CHANNEL on one 1x1 plane of value v: y = v * (1 + alpha * v^2 / 9)^-beta
    (Caffe's AVE divisor counts the 3x3 window's padding)."""
    _, model = check_case(one("LRN", "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 "
                                     "alpha: 0.9 beta: 0.75 }"), {"data": (1, 1, 1, 1)})
    y = run_onnx(model, {"data": np.full((1, 1, 1, 1), 2.0, np.float32)})["y"]
    assert y.item() == pytest.approx(2 * (1 + 0.9 * 4 / 9) ** -0.75, rel=1e-6)


DYNAMIC = ("lstm", "reshape_0_m1", "reshape_axis", "flatten", "ip_axis2", "crop_offsets",
           "shuffle_channel", "max_unpool", "argmax_topk_val", "pool_max_mask_sliced",
           "batchnorm_batch_stats", "mvn", "normalize_spatial", "prior_box")


@pytest.mark.parametrize("case", DYNAMIC)
def test_dynamic_batch(case):
    """Axis 0 of every graph input is the symbolic 'batch'; batches 1 and 3 both match."""
    layers, inputs, *gen = CASES[case]
    _, model = check_case(layers, inputs, gen[0] if gen else None, batches=(1, 3))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"


def test_static_batch():
    net = make_net(one("ReLU"), D)
    model = to_onnx(net, None, dynamic_batch=False)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 5, 7]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [2, 3, 5, 7]


@pytest.mark.parametrize("opset", [14, 18, 21])
def test_other_opsets(opset):
    """Reduce ops take axes as an input from opset 18; the graph stays valid either side."""
    layers = (one("MVN", top="m") + one("Normalize", bottoms=("m",), top="n") +
              one("ArgMax", "argmax_param { top_k: 2 axis: 1 }", ("n",)))
    _, model = check_case(layers.replace("name: 'l'", "name: 'l1'", 1)
                          .replace("name: 'l'", "name: 'l2'", 1), D, opset=opset)
    assert model.opset_import[0].version == opset


def test_unsupported_opset():
    with pytest.raises(ExportError, match="opset 11"):
        to_onnx(make_net(one("ReLU"), D), None, opset=11)


IN_PLACE = (
    f"layer {{ name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv' convolution_param "
    f"{{ num_output: 4 kernel_size: 3 {CONV_FILL} }} }}\n"
    "layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' }\n"
    "layer { name: 'bn' type: 'BatchNorm' bottom: 'conv' top: 'conv' }\n"
    "layer { name: 'pool' type: 'Pooling' bottom: 'conv' top: 'pool' "
    "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n"
    f"layer {{ name: 'fc' type: 'InnerProduct' bottom: 'pool' top: 'fc' inner_product_param "
    f"{{ num_output: 3 {CONV_FILL} }} }}\n"
    "layer { name: 'prob' type: 'Softmax' bottom: 'fc' top: 'prob' }\n")


def test_in_place_blobs_keep_their_names(tmp_path):
    """conv is written by three layers in place: one graph output named 'conv' holding its
    final value; the file is written and loads."""
    net = make_net(IN_PLACE, D)
    path = tmp_path / "net.onnx"
    model = to_onnx(net, path, outputs=["conv", "prob"])
    assert path.exists() and not list(tmp_path.glob(".onnx-*"))
    loaded = onnx.load(str(path))
    check_graph(loaded)
    names = [v for node in loaded.graph.node for v in node.output]
    assert len(names) == len(set(names))
    feed = feed_for(net)
    want = run_caffe(net, feed)
    got = run_onnx(model, feed)
    np.testing.assert_allclose(got["prob"], want["prob"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["conv"], net.blobs["conv"].data, rtol=RTOL, atol=ATOL)


PY_NET = (
    "layer { name: 'abs' type: 'AbsVal' bottom: 'data' top: 'a' }\n"
    "layer { name: 'py' type: 'Python' bottom: 'a' top: 'p' "
    "python_param { module: 'pylayers' layer: 'TimesTwo' } }\n"
    "layer { name: 'tanh' type: 'TanH' bottom: 'p' top: 't' }\n"
    "layer { name: 'loss' type: 'EuclideanLoss' bottom: 't' bottom: 'data' top: 'loss' }\n"
    "layer { name: 'norm' type: 'LRN' bottom: 'a' top: 'n' lrn_param { local_size: 2 } }\n")


def test_listing_error_names_every_layer():
    net = make_net(PY_NET.replace("local_size: 2", "local_size: 3"), {"data": (2, 3, 2, 2)})
    with pytest.raises(ExportError) as info:
        to_onnx(net, None)
    message = str(info.value)
    assert "2 layer(s)" in message
    assert "'py' (Python: a Python layer runs user code)" in message
    assert "'loss' (EuclideanLoss: a loss or metric layer" in message
    assert "outputs=" in message
    assert isinstance(info.value, CaffeError)


def test_partial_export_stops_before_python_layer():
    net = make_net(PY_NET.replace("local_size: 2", "local_size: 3"), {"data": (2, 3, 2, 2)})
    model = to_onnx(net, None, outputs=["a", "n"])
    check_graph(model)
    assert sorted(n.op_type for n in model.graph.node) == ["Abs", "Identity", "LRN"]
    feed = feed_for(net)
    run_caffe(net, feed)
    got = run_onnx(model, feed)
    np.testing.assert_allclose(got["n"], net.blobs["n"].data, rtol=RTOL, atol=ATOL)


def test_partial_export_after_python_layer():
    """inputs= starts the graph at a blob: here the Python layer's top."""
    net = make_net(PY_NET.replace("local_size: 2", "local_size: 3"), {"data": (2, 3, 2, 2)})
    model = to_onnx(net, None, inputs=["p"], outputs=["t"])
    assert [i.name for i in model.graph.input] == ["p"]
    assert [n.op_type for n in model.graph.node] == ["Tanh"]
    feed = feed_for(net)
    run_caffe(net, feed)
    got = run_onnx(model, {"p": np.array(net.blobs["p"].data)})
    np.testing.assert_allclose(got["t"], net.blobs["t"].data, rtol=RTOL, atol=ATOL)


def test_input_after_in_place_writers():
    """An input blob enters after the last layer that writes it (conv after ReLU and BN)."""
    net = make_net(IN_PLACE, D)
    model = to_onnx(net, None, inputs=["conv"])
    assert [n.op_type for n in model.graph.node][:1] == ["MaxPool"]
    run_caffe(net, feed_for(net))
    got = run_onnx(model, {"conv": np.array(net.blobs["conv"].data)})
    np.testing.assert_allclose(got["prob"], net.blobs["prob"].data, rtol=RTOL, atol=ATOL)


def test_bad_names():
    net = make_net(one("ReLU"), D)
    with pytest.raises(ExportError, match="unknown output"):
        to_onnx(net, None, outputs=["nope"])
    with pytest.raises(ExportError, match="both an input and an output"):
        to_onnx(net, None, inputs=["data"], outputs=["data"])


FOLDABLE = (
    f"layer {{ name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv' convolution_param "
    f"{{ num_output: 4 kernel_size: 3 {CONV_FILL} }} }}\n"
    "layer { name: 'bn' type: 'BatchNorm' bottom: 'conv' top: 'conv' }\n"
    "layer { name: 'sc' type: 'Scale' bottom: 'conv' top: 'conv' "
    "scale_param { bias_term: true } }\n"
    "layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' }\n"
    "layer { name: 'drop' type: 'Dropout' bottom: 'conv' top: 'conv' }\n"
    "layer { name: 'pool' type: 'Pooling' bottom: 'conv' top: 'pool' "
    "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n")


def test_fold_matches_unfolded():
    """fold=True: BatchNorm + Scale folded into the convolution (no Sub/Div nodes left), the
    same numbers as caffepy's unfolded net (folding reorders float32 products: ~1 ulp)."""
    net = make_net(FOLDABLE, D)
    model = to_onnx(net, None, fold=True)
    check_graph(model)
    ops = [n.op_type for n in model.graph.node]
    assert "Div" not in ops and "Sub" not in ops and ops.count("Conv") == 1
    feed = feed_for(net)
    want = run_caffe(net, feed)
    np.testing.assert_allclose(run_onnx(model, feed)["pool"], want["pool"], rtol=RTOL, atol=ATOL)


def test_missing_onnx_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(CaffeError, match=r"caffepy\[export\]"):
        to_onnx(make_net(one("ReLU"), D), None)
