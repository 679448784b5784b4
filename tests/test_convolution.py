"""Convolution and Deconvolution: golden cases from C++ Caffe, gradients, geometry, errors."""

import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from layer_case import build_layer, gradient_check, make_layer, run_golden_case
from tolerance import sum_order_atol

FILLERS = "weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'gaussian' std: 0.5 }"


def conv(params: str, layer_type: str = "Convolution") -> str:
    return f"type: '{layer_type}' convolution_param {{ {params} {FILLERS} }}"


def setup_layer(proto: str, *shapes, dtype=torch.float64, seed=0):
    rng = np.random.default_rng(seed)
    return build_layer(proto, [rng.standard_normal(shape) for shape in shapes], len(shapes),
                       dtype=dtype)


@pytest.mark.parametrize("case", ["conv_basic", "conv_pad_stride", "conv_group",
                                  "conv_rect_nobias", "conv_dilation", "conv_1x1", "conv_nd3d",
                                  "deconv_basic", "deconv_group"])
def test_golden(case):
    run_golden_case(case)


@pytest.mark.parametrize("params, shape", [
    ("num_output: 2 kernel_size: 3 stride: 2 pad: 1", (2, 3, 5, 4)),
    ("num_output: 4 kernel_size: 3 group: 2 pad: 1", (1, 4, 4, 5)),
    ("num_output: 2 kernel_size: 3 dilation: 2 pad: 1", (1, 2, 6, 5)),
    ("num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 2 pad_w: 1",
     (1, 2, 4, 5)),
    ("num_output: 3 kernel_size: 1", (2, 3, 3, 2)),
    ("num_output: 2 kernel_size: 3 stride: 2 pad: 1 bias_term: false", (2, 3, 7)),  # 1-D
    ("num_output: 2 kernel_size: 2 kernel_size: 3 kernel_size: 2 pad: 1 stride: 2",
     (1, 2, 3, 4, 3)),  # 3-D
    ("num_output: 2 kernel_size: 2 axis: 2", (2, 2, 2, 4, 3)),  # leading axes are samples
    ("num_output: 3 axis: 3", (2, 3, 2, 4)),  # 0-D: a per-position inner product
    ("num_output: 2 kernel_size: 2 pad: 1 group: 2", (1, 2, 2, 3, 2, 3)),  # 4-D: im2col path
])
def test_convolution_gradient(params, shape):
    gradient_check(conv(params), [shape])


@pytest.mark.parametrize("params, shape", [
    ("num_output: 3 kernel_size: 4 stride: 2 pad: 1", (2, 2, 3, 2)),
    ("num_output: 4 kernel_size: 3 group: 2 dilation: 2", (1, 4, 3, 3)),
    ("num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 bias_term: false",
     (1, 3, 2, 3)),
    ("num_output: 2 kernel_size: 3 stride: 2", (2, 2, 4)),  # 1-D
    ("num_output: 2 kernel_size: 2 stride: 2 pad: 1", (1, 2, 2, 3, 2)),  # 3-D
    ("num_output: 2 kernel_size: 2 stride: 2", (1, 2, 2, 1, 2, 2)),  # 4-D: im2col path
])
def test_deconvolution_gradient(params, shape):
    gradient_check(conv(params, "Deconvolution"), [shape])


def test_two_bottoms_share_filters():
    gradient_check(conv("num_output: 2 kernel_size: 2 stride: 1"), [(1, 2, 3, 4), (1, 2, 3, 4)],
                   n_tops=2)


@pytest.mark.parametrize("layer_type", ["Convolution", "Deconvolution"])
@pytest.mark.parametrize("path, params, shape", [
    ("im2col", "num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2", (2, 4, 5, 6)),
    ("im2col", "num_output: 4 kernel_size: 3 dilation: 2 pad: 1", (1, 2, 7)),
    ("im2col", "num_output: 4 kernel_size: 2 kernel_size: 3 kernel_size: 1 stride: 1 stride: 2 "
     "stride: 1 pad: 1", (2, 2, 4, 5, 3)),
    ("im2col", "num_output: 4 kernel_size: 3 group: 2 dilation: 2 pad: 2 stride: 3",
     (2, 6, 4, 4)),
    ("gemm", "num_output: 6 kernel_size: 1", (2, 4, 3, 5)),
    ("gemm", "num_output: 4 kernel_size: 1 group: 2 bias_term: false", (2, 6, 3, 2)),
    ("gemm", "num_output: 4 kernel_size: 1 group: 2", (3, 2, 2, 3, 2)),
    ("gemm", "num_output: 3 kernel_size: 1 dilation: 3", (2, 5, 4)),
])
def test_paths_match_torch_kernels(layer_type, path, params, shape):
    """The im2col + matmul path (used beyond 3 spatial axes) and the matmul path of 1x1
    kernels agree with torch's convolution kernels, forward and backward."""
    results = []
    for use_torch_kernel in (True, False):
        layer, bottom, top = setup_layer(conv(params, layer_type), shape)
        assert layer._gemm == (path == "gemm")
        if use_torch_kernel:
            layer._gemm, layer._native = False, True
        elif path == "im2col":
            layer._native = False
        for j, blob in enumerate(layer.blobs):
            blob.data[...] = np.cos(np.arange(blob.count) + j).reshape(blob.shape)
            blob.diff[...] = 1.0
        layer.Forward(bottom, top)
        top[0].diff[...] = np.sin(np.arange(top[0].count)).reshape(top[0].shape)
        layer.Backward(top, [True], bottom)
        results.append([top[0].data.copy(), bottom[0].diff.copy()] +
                       [blob.diff.copy() for blob in layer.blobs])
    for torch_value, own_value in zip(*results):
        np.testing.assert_allclose(own_value, torch_value, rtol=1e-10, atol=1e-10)


def test_simple_convolution_values():
    # Caffe's TestSimpleConvolution: constant input 1, constant weights 1, bias 0.1.
    layer, bottom, top = setup_layer(
        "type: 'Convolution' convolution_param { num_output: 4 kernel_size: 3 stride: 2 "
        "weight_filler { type: 'constant' value: 1 } bias_filler { type: 'constant' value: 0.1 } }",
        (2, 3, 6, 4))
    bottom[0].data[...] = 1.0
    layer.Forward(bottom, top)
    assert top[0].shape == (2, 4, 2, 1)
    np.testing.assert_allclose(top[0].data, 27.1)


def test_0d_convolution_is_inner_product():
    layer, bottom, top = setup_layer(conv("num_output: 3 axis: 3"), (2, 3, 2, 4))
    assert top[0].shape == (2, 3, 2, 3)
    layer.Forward(bottom, top)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    np.testing.assert_allclose(top[0].data, bottom[0].data @ w.T + b)


@pytest.mark.parametrize("layer_type, shape, expected_weight, expected_top", [
    ("Convolution", (2, 6, 7, 9), (4, 3, 3, 5), (2, 4, 3, 4)),
    ("Deconvolution", (2, 6, 7, 9), (6, 2, 3, 5), (2, 4, 15, 19)),
])
def test_blob_shapes(layer_type, shape, expected_weight, expected_top):
    params = "num_output: 4 kernel_h: 3 kernel_w: 5 stride: 2 pad_h: 0 pad_w: 1 group: 2"
    layer, bottom, top = setup_layer(conv(params, layer_type), shape)
    assert layer.blobs[0].shape == expected_weight
    assert layer.blobs[1].shape == (4,)
    assert top[0].shape == expected_top


def test_parameter_diffs_accumulate():
    layer, bottom, top = setup_layer(conv("num_output: 2 kernel_size: 2"), (1, 2, 3, 3))
    layer.Forward(bottom, top)
    top[0].diff[...] = 1.0
    for blob in layer.blobs:
        blob.diff[...] = 0.0
    layer.Backward(top, [True], bottom)
    once = [blob.diff.copy() for blob in layer.blobs]
    bottom_once = bottom[0].diff.copy()
    layer.Backward(top, [True], bottom)
    for blob, first in zip(layer.blobs, once):
        np.testing.assert_allclose(blob.diff, 2 * first)
    np.testing.assert_allclose(bottom[0].diff, bottom_once)  # bottom diff is overwritten
    np.testing.assert_allclose(layer.blobs[1].diff, 2 * np.full(2, 4.0))


def test_reshape_follows_bottom():
    layer, bottom, top = setup_layer(conv("num_output: 2 kernel_size: 3 pad: 1"), (1, 2, 4, 4))
    bottom[0].reshape((3, 2, 6, 5))
    layer.Forward(bottom, top)
    assert top[0].shape == (3, 2, 6, 5)


def test_float32_matches_float64():
    proto = conv("num_output: 3 kernel_size: 3 stride: 2 pad: 1 group: 1")
    l64, b64, t64 = setup_layer(proto, (2, 2, 5, 5), dtype=torch.float64)
    l32, b32, t32 = setup_layer(proto, (2, 2, 5, 5), dtype=torch.float32)
    for a, b in zip(l32.blobs, l64.blobs):
        a.data[...] = b.data
    l64.Forward(b64, t64)
    l32.Forward(b32, t32)
    # Each top is a sum of 2 * 3 * 3 products and the bias; in float32, with inputs and weights
    # rounded to float32 (one eps more per product): tolerance.py's bound with n = 18 + 3 and
    # sum|x| from the convolution of |bottom| with |weights|.
    w, bias = (torch.from_numpy(np.abs(blob.data)) for blob in l64.blobs)
    abs_sum = torch.nn.functional.conv2d(torch.from_numpy(np.abs(b64[0].data)), w, bias,
                                         stride=2, padding=1)
    np.testing.assert_allclose(t32[0].data, t64[0].data, rtol=1e-5,
                               atol=sum_order_atol(18 + 3, abs_sum.numpy()))


@pytest.mark.parametrize("layer_type, params, shape, message", [
    ("Convolution", "num_output: 2 kernel_size: 5", (1, 1, 3, 8), "larger than the padded input"),
    ("Convolution", "num_output: 2 kernel_size: 3 dilation: 3", (1, 1, 6, 8),
     "kernel extent 7"),
    ("Convolution", "num_output: 2 kernel_size: 1 group: 2", (1, 3, 3, 3),
     r"input channels \(3\) must be divisible by group \(2\)"),
    ("Convolution", "num_output: 3 kernel_size: 1 group: 2", (1, 4, 3, 3),
     "multiples of group"),
    ("Convolution", "num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 1, 5, 5),
     "Either kernel_size or kernel_h/w"),
    ("Convolution", "num_output: 2 kernel_h: 3 kernel_w: 3", (1, 1, 5, 5, 5),
     "kernel_h & kernel_w can only be used for 2D"),
    ("Convolution", "num_output: 2 kernel_size: 3 stride: 1 stride_h: 1 stride_w: 1",
     (1, 1, 5, 5), "Either stride or stride_h/w"),
    ("Convolution", "num_output: 2 kernel_size: 3 pad: 1 pad_h: 1", (1, 1, 5, 5),
     "Either pad or pad_h/w"),
    ("Convolution", "num_output: 2", (1, 1, 5, 5), r"kernel_size specified 0 times"),
    ("Convolution", "num_output: 2 kernel_size: 1 kernel_size: 2 kernel_size: 3", (1, 1, 5, 5),
     r"kernel_size specified 3 times; 2 spatial dims"),
    ("Convolution", "num_output: 2 kernel_size: 2 stride: 0", (1, 1, 5, 5),
     "Stride dimensions must be nonzero"),
    ("Convolution", "num_output: 2 kernel_h: 3", (1, 1, 5, 5), "Filter dimensions must be "
     "nonzero"),
    ("Convolution", "num_output: 0 kernel_size: 1", (1, 1, 5, 5), "num_output must be positive"),
    ("Convolution", "num_output: 2 kernel_size: 1 axis: 4", (1, 1, 5, 5), "axis 4 out of range"),
    ("Deconvolution", "num_output: 2 kernel_size: 2 pad: 1", (1, 1, 1, 4),
     "output size 0 on spatial axis 0 is not positive"),
])
def test_errors(layer_type, params, shape, message):
    with pytest.raises(LayerError, match=message):
        setup_layer(conv(params, layer_type), shape)


def test_reshape_errors():
    layer, bottom, top = setup_layer(conv("num_output: 2 kernel_size: 1"), (1, 3, 4, 4))
    bottom[0].reshape((1, 2, 4, 4))
    with pytest.raises(LayerError, match="Input size incompatible with convolution kernel"):
        layer.Forward(bottom, top)
    bottom[0].reshape((1, 3, 4))
    with pytest.raises(LayerError, match="num_axes may not change"):
        layer.Forward(bottom, top)
    with pytest.raises(LayerError, match="All inputs must have the same shape"):
        setup_layer(conv("num_output: 2 kernel_size: 1"), (1, 3, 4, 4), (1, 3, 4, 5))


def test_preloaded_blob_shape_is_checked():
    layer = make_layer(conv("num_output: 2 kernel_size: 3"))
    bottom, top = [Blob((1, 3, 5, 5), dtype=torch.float64)], [Blob(dtype=torch.float64)]
    layer.blobs = [Blob((2, 3, 2, 2), dtype=torch.float64), Blob((2,), dtype=torch.float64)]
    with pytest.raises(LayerError, match=r"Incorrect weight shape: expected shape \[2, 3, 3, 3\]"):
        layer.SetUp(bottom, top)
    layer.blobs = [Blob((2, 3, 3, 3), dtype=torch.float64)]
    with pytest.raises(LayerError, match="Incorrect number of weight blobs"):
        layer.SetUp(bottom, top)
