"""Segmentation, mobile and converted-model fork layers: SegNet's Upsample and BN, DeepLab's
Interp, ReLU6, ShuffleChannel, ConvolutionDepthwise / DepthwiseConvolution, and brocolli's
nearest Upsample, Pad, PixelShuffle, HardSwish, HardSigmoid, MaxUnPool, BilinearInterpolate.

Golden cases (tests/golden/fork/layers), plain-formula references (numpy, torch.nn.functional),
float64 gradient checks of every backward, in-place use, errors, and fork prototxt parsing.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

import caffe
from caffe.blob import Blob
from caffe.errors import LayerError
from caffe.net import Net
from caffe.proto import caffe_pb2

from in_place_case import check_in_place
from layer_case import (
    blobs_of,
    build_layer,
    forward_layer,
    forward_top,
    gradient_check,
    make_layer,
    run_golden_case,
)
from tolerance import EPS32

GOLDEN = ["segnet_upsample_scale2", "segnet_upsample_odd_hw", "segnet_upsample_pad_out",
          "upsample_nearest_s2", "upsample_nearest_s3", "upsample_nearest_dims3",
          "interp_zoom2", "interp_shrink2", "interp_height_width", "interp_zoom2_pad_beg",
          "interp_shrink_zoom_pad", "relu6", "relu6_negative_slope", "shuffle_channel_g3",
          "shuffle_channel_g2", "pad_constant", "pad_replicate", "pad_reflect",
          "pixelshuffle_2", "hardswish", "hardsigmoid", "maxunpool_2x2", "bilinear_dst_align",
          "bilinear_scale2_noalign"]


@pytest.mark.parametrize("case", GOLDEN)
def test_golden(case):
    run_golden_case(case, fork=True)


# --- helpers -----------------------------------------------------------------------------------

def away_from(values: np.ndarray, kinks, gap: float = 0.02) -> np.ndarray:
    """``values`` with every element within ``gap`` of a kink moved ``gap`` past it, so finite
    differences (step 1e-3) never straddle a kink."""
    out = values.copy()
    for k in kinks:
        near = np.abs(out - k) < gap
        out[near] = k + np.where(out[near] >= k, gap, -gap)
    return out


def pool_mask(x: np.ndarray, kernel: int = 2, ceil: bool = False):
    """MAX pooling of (N, C, H, W) with stride = kernel: (pooled, flat argmax index per plane),
    the index a Caffe Pooling layer's second top holds."""
    pooled, index = F.max_pool2d(torch.from_numpy(x), kernel, kernel, ceil_mode=ceil,
                                 return_indices=True)
    return pooled.numpy(), index.double().numpy()


# --- float64 gradient checks -------------------------------------------------------------------

def test_relu6_gradient():
    rng = np.random.default_rng(0)
    x = away_from(rng.uniform(-2, 8, size=(2, 3, 4, 5)), [0.0, 6.0])
    gradient_check("type: 'ReLU6'", [x.shape], bottom_values=[x])
    gradient_check("type: 'ReLU6' relu6_param { negative_slope: 0.3 threshold: 1.5 }",
                   [x.shape], bottom_values=[away_from(x / 3, [0.0, 1.5])])


def test_hard_activation_gradients():
    rng = np.random.default_rng(1)
    x = away_from(rng.uniform(-5, 5, size=(3, 4, 5)), [-3.0, 3.0])
    gradient_check("type: 'HardSwish'", [x.shape], bottom_values=[x])
    # HardSigmoid's kinks: alpha x + beta = 0 or 1.
    gradient_check("type: 'HardSigmoid'", [x.shape], bottom_values=[away_from(x, [-2.5, 2.5])])
    gradient_check("type: 'HardSigmoid' hardsigmoid_param { alpha: 0.5 beta: 0.25 }",
                   [x.shape], bottom_values=[away_from(x, [-0.5, 1.5])])


@pytest.mark.parametrize("param, shape", [
    ("type: 'ShuffleChannel' shuffle_channel_param { group: 3 }", (2, 6, 2, 3)),
    ("type: 'ShuffleChannel' shuffle_channel_param { group: 2 }", (3, 4)),
    ("type: 'PixelShuffle' pixelshuffle_param { upscale_factor: 2 }", (2, 8, 2, 3)),
    ("type: 'Pad' pad_param { pad_u: 1 pad_d: 2 pad_l: 0 pad_r: 3 pad_value: 1.5 }",
     (2, 2, 3, 4)),
    ("type: 'Pad' pad_param { pad_type: REPLICATE pad_u: 2 pad_d: 1 pad_l: 1 pad_r: 3 }",
     (1, 2, 3, 4)),
    ("type: 'Pad' pad_param { pad_type: REFLECT pad_u: 1 pad_d: 2 pad_l: 3 pad_r: 1 }",
     (1, 2, 4, 5)),
    ("type: 'Pad' pad_param { pad_type: REFLECT pad_u: -1 pad_d: -1 pad_l: -2 pad_r: -1 }",
     (2, 1, 4, 5)),
    ("type: 'Upsample' upsample_param { scale: 2 }", (2, 3, 3, 4)),
    ("type: 'Upsample' upsample_param { scale: 3 dims_num: 3 }", (2, 3, 4)),
    ("type: 'Interp' interp_param { zoom_factor: 3 }", (2, 2, 3, 4)),
    ("type: 'Interp' interp_param { shrink_factor: 3 zoom_factor: 2 pad_beg: -1 pad_end: -2 }",
     (1, 2, 9, 11)),
    ("type: 'Interp' interp_param { height: 5 width: 2 }", (1, 3, 4, 7)),
    ("type: 'BilinearInterpolate' bilinear_interpolate_param { dst_h: 7 dst_w: 5 }",
     (1, 2, 4, 3)),
    ("type: 'BilinearInterpolate' bilinear_interpolate_param { scale_factor: 1.5 "
     "align_corners: false }", (2, 2, 3, 4)),
])
def test_gradient(param, shape):
    # Linear layers (all of these are) have exact central differences up to rounding.
    gradient_check(param, [shape])


def test_interp_gradient_is_its_adjoint_exhaustively():
    gradient_check("type: 'Interp' interp_param { zoom_factor: 2 pad_beg: -1 }", [(1, 1, 4, 5)],
                   exhaustive=True)


@pytest.mark.parametrize("param, shape, ceil", [
    ("upsample_param { scale: 2 }", (2, 3, 6, 8), False),
    ("upsample_param { scale_h: 2 scale_w: 2 pad_out_h: true pad_out_w: true }", (1, 2, 7, 5),
     True),
    ("upsample_param { upsample_h: 7 upsample_w: 9 }", (1, 2, 7, 9), True),
])
def test_segnet_upsample_gradient(param, shape, ceil):
    x = np.random.default_rng(2).uniform(-1, 1, size=shape)
    pooled, mask = pool_mask(x, ceil=ceil)
    # Only the data gets a gradient: the mask is an index.
    gradient_check(f"type: 'Upsample' {param}", [pooled.shape, mask.shape],
                   bottom_values=[pooled, mask], check_bottom=0)


def test_max_unpool_gradient():
    x = np.random.default_rng(3).uniform(-1, 1, size=(2, 2, 6, 4))
    pooled, mask = pool_mask(x)
    gradient_check("type: 'MaxUnPool' max_unpool_param { dst_h: 6 dst_w: 4 }",
                   [pooled.shape, mask.shape], bottom_values=[pooled, mask], check_bottom=0)


@pytest.mark.parametrize("type_name", ["ConvolutionDepthwise", "DepthwiseConvolution"])
def test_depthwise_gradient(type_name):
    param = (f"type: '{type_name}' convolution_param {{ num_output: 3 kernel_size: 3 pad: 1 "
             f"stride: 2 weight_filler {{ type: 'gaussian' std: 0.5 }} bias_filler {{ "
             f"type: 'uniform' }} }}")
    gradient_check(param, [(2, 3, 5, 4)])


BN_FILLERS = ("scale_filler { type: 'uniform' min: 0.5 max: 1.5 } "
              "shift_filler { type: 'uniform' min: -1 max: 1 }")


@pytest.mark.parametrize("mode", ["LEARN", "INFERENCE"])
def test_segnet_bn_gradient(mode):
    gradient_check(f"type: 'BN' bn_param {{ bn_mode: {mode} {BN_FILLERS} }}", [(3, 2, 3, 2)])


# --- references: formulas and torch ------------------------------------------------------------

def test_relu6_formula():
    x = np.linspace(-8, 8, 41)
    y = forward_top("type: 'ReLU6' relu6_param { negative_slope: 0.1 }", x)
    slope = float(np.float32(0.1))  # a float field of the proto
    np.testing.assert_array_equal(y, np.minimum(np.maximum(x, 0) + slope * np.minimum(x, 0), 6))
    layer, bottom, top, _ = forward_layer("type: 'ReLU6'", [x])
    top[0].diff[...] = 1
    layer.Backward(top, [True], bottom)
    # brocolli's derivative: 1 on (0, 6), 0 at and above the threshold and at or below 0.
    np.testing.assert_array_equal(bottom[0].diff, ((x > 0) & (x < 6)).astype(float))


def test_hard_activation_formulas():
    x = np.linspace(-5, 5, 51)
    np.testing.assert_allclose(forward_top("type: 'HardSwish'", x),
                               F.hardswish(torch.from_numpy(x)).numpy(), rtol=1e-15)
    alpha = float(np.float32(0.2))  # the default of a float field
    np.testing.assert_allclose(forward_top("type: 'HardSigmoid'", x),
                               np.clip(alpha * x + 0.5, 0, 1), rtol=1e-15, atol=1e-16)


@pytest.mark.parametrize("param", [
    "type: 'ReLU6' relu6_param { negative_slope: -0.5 threshold: 1 }",
    "type: 'HardSwish'", "type: 'HardSigmoid'",
    "type: 'ShuffleChannel' shuffle_channel_param { group: 3 }",
    f"type: 'BN' bn_param {{ {BN_FILLERS} }}",
    f"type: 'BN' bn_param {{ bn_mode: INFERENCE {BN_FILLERS} }}",
])
def test_in_place_matches_separate_blobs(param):
    check_in_place(param, (2, 6, 3))


def test_shuffle_channel_is_torchs_channel_shuffle():
    x = np.random.default_rng(4).normal(size=(2, 12, 3, 2))
    for group in (1, 2, 3, 4, 6, 12):
        y = forward_top(f"type: 'ShuffleChannel' shuffle_channel_param {{ group: {group} }}", x)
        want = torch.nn.ChannelShuffle(group)(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("pad_type, mode", [("CONSTANT", "constant"),
                                            ("REPLICATE", "replicate"),
                                            ("REFLECT", "reflect")])
def test_pad_is_torchs_pad(pad_type, mode):
    x = np.random.default_rng(5).normal(size=(2, 3, 5, 6))
    y = forward_top(f"type: 'Pad' pad_param {{ pad_type: {pad_type} pad_u: 3 pad_d: 0 "
                    f"pad_l: 2 pad_r: 4 pad_value: -2 }}", x)
    extra = {"value": -2.0} if mode == "constant" else {}
    np.testing.assert_array_equal(y, F.pad(torch.from_numpy(x), (2, 4, 3, 0), mode=mode,
                                           **extra).numpy())


def test_pad_negative_crops():
    x = np.arange(2 * 5 * 6, dtype=float).reshape(1, 2, 5, 6)
    y = forward_top("type: 'Pad' pad_param { pad_u: -1 pad_d: -2 pad_l: -2 pad_r: -1 }", x)
    np.testing.assert_array_equal(y, x[:, :, 1:3, 2:5])


def test_pixel_shuffle_formula():
    r, x = 3, np.random.default_rng(6).normal(size=(2, 18, 2, 3))
    y = forward_top(f"type: 'PixelShuffle' pixelshuffle_param {{ upscale_factor: {r} }}", x)
    n, c, h, w = 2, 2, 2, 3
    for ci in range(c):
        for i in range(r):
            for j in range(r):
                np.testing.assert_array_equal(y[:, ci, i::r, j::r], x[:, ci * r * r + i * r + j])
    assert y.shape == (n, c, h * r, w * r)


@pytest.mark.parametrize("param, shape, kwargs", [
    ("scale: 2", (2, 3, 3, 4), dict(scale_factor=2)),
    ("scale: 4", (1, 2, 2, 3), dict(scale_factor=4)),
    ("scale: 3 dims_num: 3", (2, 3, 4), dict(scale_factor=3)),
    ("dims_num: 4", (1, 2, 2, 3), dict(scale_factor=1)),  # brocolli: an unset scale is 1
])
def test_nearest_upsample_is_torchs_nearest(param, shape, kwargs):
    x = np.random.default_rng(7).normal(size=shape)
    y = forward_top(f"type: 'Upsample' upsample_param {{ {param} }}", x)
    np.testing.assert_array_equal(y, F.interpolate(torch.from_numpy(x), mode="nearest",
                                                   **kwargs).numpy())


@pytest.mark.parametrize("type_param", ["type: 'Upsample' upsample_param { scale: 2 }",
                                        "type: 'MaxUnPool' max_unpool_param { dst_h: 8 "
                                        "dst_w: 6 }"])
def test_unpooling_is_torchs_max_unpool(type_param):
    x = np.random.default_rng(8).normal(size=(2, 3, 8, 6))
    pooled, mask = pool_mask(x)
    layer, bottom, top, _ = forward_layer(type_param, [pooled, mask])
    want = F.max_unpool2d(torch.from_numpy(pooled), torch.from_numpy(mask).long(), 2)
    np.testing.assert_array_equal(top[0].data, want.numpy())
    dy = np.random.default_rng(9).normal(size=top[0].shape)
    top[0].diff[...] = dy
    layer.Backward(top, [True, False], bottom)
    # The diff each pooled value gets is the top diff where it was placed.
    np.testing.assert_array_equal(
        bottom[0].diff, np.take_along_axis(dy.reshape(2, 3, -1), mask.reshape(2, 3, -1).astype(
            int), axis=2).reshape(pooled.shape))


def interp_reference(x: np.ndarray, h_out: int, w_out: int, pad_beg: int = 0,
                     pad_end: int = 0) -> np.ndarray:
    """DeepLab's Interp from its definition, one output pixel at a time: float32 ratio and
    positions, float32 weights (for float32 data)."""
    f32 = np.float32
    n, c, h, w = x.shape
    x = x[:, :, -pad_beg:h + pad_end, -pad_beg:w + pad_end]
    h_in, w_in = x.shape[2:]
    rh = f32(h_in - 1) / f32(h_out - 1) if h_out > 1 else f32(0)
    rw = f32(w_in - 1) / f32(w_out - 1) if w_out > 1 else f32(0)
    out = np.zeros((n, c, h_out, w_out), x.dtype)
    for i in range(h_out):
        hr = rh * f32(i)
        h0 = int(hr)
        h1 = h0 + (h0 < h_in - 1)
        lh = x.dtype.type(hr - f32(h0))
        for j in range(w_out):
            wr = rw * f32(j)
            w0 = int(wr)
            w1 = w0 + (w0 < w_in - 1)
            lw = x.dtype.type(wr - f32(w0))
            one = x.dtype.type(1)
            out[:, :, i, j] = ((one - lh) * ((one - lw) * x[:, :, h0, w0] + lw * x[:, :, h0, w1])
                               + lh * ((one - lw) * x[:, :, h1, w0] + lw * x[:, :, h1, w1]))
    return out


@pytest.mark.parametrize("param, size, pads", [
    ("zoom_factor: 8", None, (0, 0)),
    ("shrink_factor: 8", None, (0, 0)),
    ("height: 97 width: 33", (97, 33), (0, 0)),
    ("height: 1 width: 45", (1, 45), (0, 0)),
    ("zoom_factor: 4 pad_beg: -3 pad_end: -2", None, (-3, -2)),
])
def test_interp_matches_deeplab_float32_arithmetic(param, size, pads):
    x = np.random.default_rng(10).uniform(-1, 1, size=(1, 2, 41, 23)).astype(np.float32)
    layer, bottom, top = build_layer(f"type: 'Interp' interp_param {{ {param} }}", [x],
                                     dtype=torch.float32)
    layer.Forward(bottom, top)
    h_out, w_out = top[0].shape[2:]
    if size is not None:
        assert (h_out, w_out) == size
    want = interp_reference(x, h_out, w_out, *pads)
    # Same float32 positions and weights as DeepLab's; the two matrix products add the same
    # two-term sums (plus exact zeros) but may fuse a multiply-add the loop rounds twice: a
    # rounding or two of values below 1 in magnitude (measured: at most 1 ulp of 1).
    np.testing.assert_allclose(top[0].data, want, rtol=0, atol=4 * EPS32)


def test_interp_output_sizes_follow_deeplab():
    def size(param, shape=(1, 1, 9, 12)):
        layer, _, top = build_layer(f"type: 'Interp' interp_param {{ {param} }}",
                                    [np.zeros(shape)])
        return top[0].shape[2:]
    assert size("zoom_factor: 3") == (25, 34)
    assert size("shrink_factor: 4") == (3, 3)
    assert size("shrink_factor: 2 zoom_factor: 3") == (13, 16)
    assert size("height: 5 width: 6 zoom_factor: 2") == (17, 23)  # zoom wins, as in DeepLab
    assert size("height: 5 width: 6") == (5, 6)
    assert size("zoom_factor: 1 pad_beg: -2 pad_end: -1") == (6, 9)


def test_interp_takes_its_size_from_a_second_bottom():
    """Later DeepLab/PSPNet copies: two bottoms -> the top is bottom[1]'s H x W; the result is
    the same computation as giving height/width (bit-equal), crop pads still apply, and bottom[1]
    gets no gradient."""
    x = np.random.default_rng(12).normal(size=(2, 3, 9, 12))
    like = np.zeros((2, 5, 13, 7))
    layer, bottom, top = build_layer("type: 'Interp' interp_param { pad_beg: -1 }", [x, like])
    layer.Forward(bottom, top)
    ref, rbottom, rtop = build_layer(
        "type: 'Interp' interp_param { height: 13 width: 7 pad_beg: -1 }", [x])
    ref.Forward(rbottom, rtop)
    assert tuple(top[0].shape) == (2, 3, 13, 7)
    assert np.array_equal(top[0].data, rtop[0].data)
    top[0].diff[...] = np.random.default_rng(13).normal(size=top[0].shape)
    rtop[0].diff[...] = top[0].diff
    bottom[1].diff[...] = 7.0
    layer.Backward(top, [True, False], bottom)
    ref.Backward(rtop, [True], rbottom)
    assert np.array_equal(bottom[0].diff, rbottom[0].diff)
    assert (bottom[1].diff == 7.0).all()
    with pytest.raises(LayerError, match="ambiguous"):
        build_layer("type: 'Interp' interp_param { zoom_factor: 2 }", [x, like])


@pytest.mark.parametrize("param, kwargs", [
    ("dst_h: 9 dst_w: 4 align_corners: true", dict(size=(9, 4), align_corners=True)),
    ("dst_h: 9 dst_w: 4 align_corners: false", dict(size=(9, 4), align_corners=False)),
    ("dst_h: 3 align_corners: false", dict(size=(3, 7), align_corners=False)),
    ("scale_factor: 2.5 align_corners: false", dict(size=(12, 17), align_corners=False)),
    ("dst_h: 1 dst_w: 7 align_corners: true", dict(size=(1, 7), align_corners=True)),
])
def test_bilinear_interpolate_is_torchs_bilinear(param, kwargs):
    x = np.random.default_rng(11).normal(size=(2, 3, 5, 7))
    y = forward_top(f"type: 'BilinearInterpolate' bilinear_interpolate_param {{ {param} }}", x)
    want = F.interpolate(torch.from_numpy(x), mode="bilinear", **kwargs).numpy()
    # brocolli's ratio is float32: positions differ from torch's float64 ones by ~1e-7.
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-6)


def test_bilinear_interpolate_one_pixel_input_broadcasts():
    x = np.random.default_rng(12).normal(size=(1, 2, 1, 3))
    y = forward_top("type: 'BilinearInterpolate' bilinear_interpolate_param { dst_h: 4 "
                    "dst_w: 3 }", x)
    np.testing.assert_array_equal(y, np.repeat(x, 4, axis=2))


def test_depthwise_equals_grouped_convolution():
    x = np.random.default_rng(13).normal(size=(2, 4, 7, 6))
    body = ("kernel_size: 3 pad: 1 stride: 2 weight_filler { type: 'gaussian' } "
            "bias_filler { type: 'uniform' }")
    dw, b_dw, t_dw, _ = forward_layer(f"type: 'ConvolutionDepthwise' convolution_param {{ "
                                      f"{body} }}", [x])
    assert dw.type == "ConvolutionDepthwise"
    assert dw.blobs[0].shape == (4, 1, 3, 3) and dw.blobs[1].shape == (4,)
    # The layer's parameter message stays as written (no group or num_output added).
    assert not dw.layer_param.convolution_param.HasField("group")
    conv, b_c, t_c = build_layer(f"type: 'Convolution' convolution_param {{ num_output: 4 "
                                 f"group: 4 {body} }}", [x])
    for mine, theirs in zip(dw.blobs, conv.blobs):
        theirs.data[...] = mine.data
    conv.Forward(b_c, t_c)
    np.testing.assert_array_equal(t_dw[0].data, t_c[0].data)
    # A channel multiplier: two kernels per channel.
    mult, _, t_m, _ = forward_layer(f"type: 'DepthwiseConvolution' convolution_param {{ "
                                    f"num_output: 8 group: 4 {body} }}", [x])
    assert mult.blobs[0].shape == (8, 1, 3, 3) and t_m[0].shape == (2, 8, 4, 3)


def bn_reference(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, mode: str):
    """SegNet's BN from its definition (float64): (top, batch mean, batch variance)."""
    s, b = scale.reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1)
    if mode == "INFERENCE":
        return s * x + b, None, None
    mean = x.mean(axis=(0, 2, 3))
    var = (x * x).mean(axis=(0, 2, 3)) - mean ** 2
    x_norm = (x - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + 1e-9)
    return s * x_norm + b, mean, var


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("mode", ["LEARN", "INFERENCE"])
def test_segnet_bn_formula(mode, phase):
    rng = np.random.default_rng(14)
    x = rng.normal(1.0, 2.0, size=(3, 4, 2, 5))
    layer = make_layer(f"type: 'BN' bn_param {{ bn_mode: {mode} {BN_FILLERS} }}", phase)
    (bottom,) = blobs_of([x])
    top = [Blob(dtype=torch.float64) for _ in range(3)]
    layer.SetUp([bottom], top)
    assert [b.shape for b in layer.blobs] == [(1, 4, 1, 1)] * 2
    scale, shift = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
    layer.Forward([bottom], top)
    y, mean, var = bn_reference(x, scale, shift, mode)
    # float64 throughout: a few ulps of values of magnitude ~5.
    np.testing.assert_allclose(top[0].data, y, rtol=1e-12, atol=1e-12)
    if mean is not None:
        np.testing.assert_allclose(top[1].data.reshape(-1), mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(top[2].data.reshape(-1), var, rtol=1e-12, atol=1e-12)
    # Parameter gradients: d scale = sum(dy * x_norm or x), d shift = sum(dy), accumulated.
    dy = rng.normal(size=x.shape)
    top[0].diff[...] = dy
    for blob in layer.blobs:
        blob.diff[...] = 1.0
    layer.Backward(top, [True], [bottom])
    basis = x if mode == "INFERENCE" else (y - shift) / scale
    np.testing.assert_allclose(layer.blobs[0].diff.reshape(-1),
                               1 + (dy * basis).sum(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(layer.blobs[1].diff.reshape(-1), 1 + dy.sum(axis=(0, 2, 3)),
                               rtol=1e-10)


def test_segnet_bn_default_fillers_are_zero():
    layer, _, top = build_layer("type: 'BN'", [np.ones((2, 3, 2, 2))])
    assert not layer.blobs[0].data.any() and not layer.blobs[1].data.any()


# --- errors ------------------------------------------------------------------------------------

def error_of(param, arrays, n_tops=1):
    with pytest.raises(LayerError) as err:
        layer, bottom, top = build_layer(param, arrays, n_tops)
        layer.Forward(bottom, top)
    return str(err.value)


def test_mask_shape_must_match_data():
    data, mask = np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 3))
    msg = error_of("name: 'up' type: 'Upsample' upsample_param { scale: 2 }", [data, mask])
    assert "'up'" in msg and "[1, 2, 3, 4]" in msg and "[1, 2, 3, 3]" in msg
    msg = error_of("name: 'unpool' type: 'MaxUnPool' max_unpool_param { dst_h: 6 dst_w: 8 }",
                   [data, mask])
    assert "'unpool'" in msg and "[1, 2, 3, 3]" in msg


def test_mask_index_out_of_range():
    data, mask = np.zeros((1, 1, 2, 2)), np.array([[[[0, 1], [2, 16]]]], dtype=float)
    msg = error_of("type: 'Upsample' upsample_param { scale: 2 }", [data, mask])
    assert "16" in msg and "[0, 16)" in msg
    msg = error_of("type: 'MaxUnPool' max_unpool_param { dst_h: 4 dst_w: 3 }",
                   [data, mask - 17])
    assert "-17" in msg


@pytest.mark.parametrize("param, shape, words", [
    ("type: 'ShuffleChannel' shuffle_channel_param { group: 4 }", (2, 6, 3, 3),
     ["6 channels", "group 4", "[2, 6, 3, 3]"]),
    ("type: 'ShuffleChannel' shuffle_channel_param { group: 0 }", (2, 6), ["group"]),
    ("type: 'PixelShuffle' pixelshuffle_param { upscale_factor: 2 }", (1, 6, 2, 2),
     ["upscale_factor^2 (4)", "[1, 6, 2, 2]"]),
    ("type: 'PixelShuffle'", (1, 4, 2, 2), ["upscale_factor is required"]),
    ("type: 'Pad' pad_param { pad_u: 1 pad_d: -1 }", (1, 1, 3, 3), ["all be >= 0"]),
    ("type: 'Pad' pad_param { pad_type: REFLECT pad_l: 3 }", (1, 1, 3, 3), ["REFLECT"]),
    ("type: 'Pad' pad_param { pad_u: -2 pad_d: -2 }", (1, 1, 3, 3), ["-1 x 3"]),
    ("type: 'Interp' interp_param { zoom_factor: 2 pad_beg: 1 }", (1, 1, 3, 3),
     ["non-pos padding"]),
    ("type: 'Interp' interp_param { shrink_factor: 0 }", (1, 1, 3, 3),
     ["Shrink factor must be positive"]),
    ("type: 'Interp' interp_param { height: 4 }", (1, 1, 3, 3), ["interp_param needs"]),
    ("type: 'Interp' interp_param { zoom_factor: 2 }", (1, 3, 3), ["4 axes", "[1, 3, 3]"]),
    ("type: 'BilinearInterpolate' bilinear_interpolate_param { dst_h: 4 scale_factor: 2 }",
     (1, 1, 3, 3), ["one of the two"]),
    ("type: 'Upsample' upsample_param { scale: 2 dims_num: 5 }", (1, 1, 3, 3), ["dims_num"]),
    ("type: 'ConvolutionDepthwise' convolution_param { num_output: 4 group: 2 "
     "kernel_size: 1 }", (1, 4, 3, 3), ["ConvolutionDepthwise layer", "group = channels (4)"]),
    ("type: 'BN'", (2, 3, 2, 2, 2), ["2 to 4 axes"]),
])
def test_bad_parameters_and_shapes(param, shape, words):
    msg = error_of(param, [np.zeros(shape)])
    for word in words:
        assert word in msg, msg


def test_segnet_upsample_parameter_checks():
    data = [np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2))]
    assert "greater than 1" in error_of("type: 'Upsample' upsample_param { scale: 1 }", data)
    assert "scale_h == 2" in error_of(
        "type: 'Upsample' upsample_param { scale: 3 pad_out_h: true }", data)
    assert "are required" in error_of(
        "type: 'Upsample' upsample_param { scale: 2 scale_h: 2 scale_w: 2 }", data)


def test_upsample_takes_one_or_two_bottoms():
    msg = error_of("type: 'Upsample'", [np.zeros((1, 1, 2, 2))] * 3)
    assert "at most 2 bottom" in msg


# --- prototxts as the forks write them --------------------------------------------------------

SEGNET_TRAIN = """
name: 'segnet_like'
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 }
                      shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'conv1'
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: 'msra' } } }
layer { bottom: 'conv1' top: 'conv1' name: 'conv1_bn' type: 'BN'
        bn_param { scale_filler { type: 'constant' value: 1 }
                   shift_filler { type: 'constant' value: 0.001 } } }
layer { bottom: 'conv1' top: 'conv1' name: 'relu1' type: 'ReLU' }
layer { bottom: 'conv1' top: 'pool1' top: 'pool1_mask' name: 'pool1' type: 'Pooling'
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: 'upsample1' type: 'Upsample' bottom: 'pool1' top: 'up1' bottom: 'pool1_mask'
        upsample_param { scale: 2 } }
layer { name: 'dw' type: 'ConvolutionDepthwise' bottom: 'up1' top: 'dw'
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: 'msra' } } }
layer { name: 'relu6' type: 'ReLU6' bottom: 'dw' top: 'dw' }
layer { name: 'shuffle' type: 'ShuffleChannel' bottom: 'dw' top: 'shuffle'
        shuffle_channel_param { group: 2 } }
layer { name: 'score' type: 'Convolution' bottom: 'shuffle' top: 'score'
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: 'msra' } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'score' bottom: 'label' top: 'loss' }
"""


def test_segnet_style_net_trains_forward_and_backward(tmp_path):
    path = tmp_path / "segnet.prototxt"
    path.write_text(SEGNET_TRAIN)
    caffe.set_random_seed(3)
    net = Net(str(path), caffe.TRAIN)
    rng = np.random.default_rng(15)
    net.blobs["data"].data[...] = rng.normal(size=(2, 3, 8, 8))
    net.blobs["label"].data[...] = rng.integers(0, 3, size=(2, 1, 8, 8))
    loss = net.forward()["loss"]
    assert np.isfinite(loss) and net.blobs["up1"].data.shape == (2, 4, 8, 8)
    net.backward()
    for name in ("conv1", "conv1_bn", "dw"):
        assert np.abs(net.params[name][0].diff).sum() > 0, name


FORK_LAYERS = """
layer { name: 'up' type: 'Upsample' bottom: 'a' bottom: 'm' top: 'u'
        upsample_param { upsample_w: 60 upsample_h: 45 } }
layer { name: 'bn' type: 'BN' bottom: 'u' top: 'u' bn_param { bn_mode: INFERENCE } }
layer { name: 'interp' type: 'Interp' bottom: 'u' top: 'i'
        interp_param { zoom_factor: 8 shrink_factor: 1 pad_beg: 0 pad_end: 0 height: 0 width: 0 } }
layer { name: 'sh' type: 'ShuffleChannel' bottom: 'i' top: 's' shuffle_channel_param { group: 3 } }
layer { name: 'r6' type: 'ReLU6' bottom: 's' top: 's'
        relu6_param { negative_slope: 0 threshold: 6 } }
layer { name: 'pad' type: 'Pad' bottom: 's' top: 'p'
        pad_param { pad_type: REFLECT pad_u: 1 pad_d: 1 pad_l: 1 pad_r: 1 pad_value: 0 } }
layer { name: 'ps' type: 'PixelShuffle' bottom: 'p' top: 'q'
        pixelshuffle_param { upscale_factor: 2 } }
layer { name: 'hs' type: 'HardSigmoid' bottom: 'q' top: 'q'
        hardsigmoid_param { alpha: 0.2 beta: 0.5 } }
layer { name: 'un' type: 'MaxUnPool' bottom: 'q' bottom: 'k' top: 'v'
        max_unpool_param { dst_h: 4 dst_w: 4 } }
layer { name: 'bi' type: 'BilinearInterpolate' bottom: 'v' top: 'w'
        bilinear_interpolate_param { dst_h: 8 dst_w: 8 scale_factor: 1 align_corners: false } }
layer { name: 'near' type: 'Upsample' bottom: 'w' top: 'x' upsample_param { scale: 2 dims_num: 4 } }
"""


def test_fork_prototxt_fields_parse_by_name_and_round_trip():
    net = text_format.Parse(FORK_LAYERS, caffe_pb2.NetParameter())
    layers = {lp.name: lp for lp in net.layer}
    assert layers["up"].upsample_param.upsample_h == 45
    assert layers["bn"].bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE
    assert layers["interp"].interp_param.zoom_factor == 8
    assert layers["interp"].interp_param.HasField("height")
    assert layers["sh"].shuffle_channel_param.group == 3
    assert layers["pad"].pad_param.pad_type == caffe_pb2.PadParameter.REFLECT
    assert layers["ps"].pixelshuffle_param.upscale_factor == 2
    assert layers["un"].max_unpool_param.dst_w == 4
    assert not layers["bi"].bilinear_interpolate_param.align_corners
    assert layers["near"].upsample_param.dims_num == 4
    again = caffe_pb2.NetParameter.FromString(net.SerializeToString())
    assert again == net


def test_fork_field_numbers():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    numbers = {name: fields[name].number for name in (
        "bn_param", "interp_param", "shuffle_channel_param", "hardsigmoid_param",
        "relu6_param", "pad_param", "bilinear_interpolate_param", "max_unpool_param",
        "pixelshuffle_param", "upsample_param")}
    # The forks' numbers, except DeepLab's 143 (input_param in 1.0) and SegNet's 137
    # (embed_param in 1.0).
    assert numbers == {"bn_param": 45, "interp_param": 5143, "shuffle_channel_param": 164,
                       "hardsigmoid_param": 501, "relu6_param": 503, "pad_param": 504,
                       "bilinear_interpolate_param": 505, "max_unpool_param": 506,
                       "pixelshuffle_param": 507, "upsample_param": 5137}
    assert fields["input_param"].number == 143 and fields["embed_param"].number == 137
