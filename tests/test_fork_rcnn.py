"""Faster R-CNN / R-FCN / SSD layers: ROIPooling, PSROIPooling, SmoothL1Loss.

Golden cases (tests/golden/fork/layers, numpy ports of the forks' kernels and SSD's C++),
loop-by-loop models of the fork kernels on wider inputs, float64 gradient checks, errors.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffe.errors import LayerError
from caffe.layers.roi_pooling import roi_pool, roi_pool_backward

from layer_case import build_layer, forward_layer, gradient_check, run_golden_case

GOLDEN = [
    "roipool_frcnn_scale16", "roipool_small_rois_7x7", "roipool_rect_2x4", "roipool_global_1x1",
    "psroipool_rfcn_scale8", "psroipool_scale1_g2", "psroipool_scale16_g3",
    "smoothl1_frcnn_sigma3_weights", "smoothl1_frcnn_2bottoms_default",
    "smoothl1_frcnn_sigma1_weights", "smoothl1_ssd_2bottoms", "smoothl1_ssd_pred_only",
]


@pytest.mark.parametrize("case", GOLDEN)
def test_golden(case):
    run_golden_case(case, fork=True)


# --- loop-by-loop models of the fork kernels (float64) ------------------------------------------
def c_round(x):
    """C round(): halves away from zero."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def frcnn_roi_pool(x, rois, ph_, pw_, scale, dy):
    """Faster R-CNN ROIPooling: Forward_cpu, and the CUDA backward (gathered per bottom cell)."""
    n, c, h, w = x.shape
    r = len(rois)
    top = np.zeros((r, c, ph_, pw_))
    arg = np.full((r, c, ph_, pw_), -1)
    boxes = []
    for i, roi in enumerate(rois):
        b = int(roi[0])
        sw, sh, ew, eh = (c_round(v * scale) for v in roi[1:])
        rh, rw = max(eh - sh + 1, 1), max(ew - sw + 1, 1)
        bh, bw = rh / ph_, rw / pw_
        boxes.append((b, sw, sh, ew, eh, bh, bw))
        for ch, p, q in np.ndindex(c, ph_, pw_):
            hs = min(max(math.floor(p * bh) + sh, 0), h)
            he = min(max(math.ceil((p + 1) * bh) + sh, 0), h)
            ws = min(max(math.floor(q * bw) + sw, 0), w)
            we = min(max(math.ceil((q + 1) * bw) + sw, 0), w)
            best = -np.inf
            for a in range(hs, he):
                for z in range(ws, we):
                    if x[b, ch, a, z] > best:
                        best, arg[i, ch, p, q] = x[b, ch, a, z], a * w + z
            top[i, ch, p, q] = best if best > -np.inf else 0.0
    dx = np.zeros_like(x)
    for b, ch, a, z in np.ndindex(*x.shape):
        for i, (rb, sw, sh, ew, eh, bh, bw) in enumerate(boxes):
            if rb != b or not (sw <= z <= ew and sh <= a <= eh):
                continue
            p0 = min(max(math.floor((a - sh) / bh), 0), ph_)
            p1 = min(max(math.ceil((a - sh + 1) / bh), 0), ph_)
            q0 = min(max(math.floor((z - sw) / bw), 0), pw_)
            q1 = min(max(math.ceil((z - sw + 1) / bw), 0), pw_)
            for p in range(p0, p1):
                for q in range(q0, q1):
                    if arg[i, ch, p, q] == a * w + z:
                        dx[b, ch, a, z] += dy[i, ch, p, q]
    return top, arg, dx


def rfcn_psroi_pool(x, rois, out_dim, g, scale, dy):
    """R-FCN PSROIPooling forward and backward (psroi_pooling_layer.cu), one output at a time."""
    n, c, h, w = x.shape
    top = np.zeros((len(rois), out_dim, g, g))
    dx = np.zeros_like(x)
    for i, roi in enumerate(rois):
        b = int(roi[0])
        sx, sy = c_round(roi[1]) * scale, c_round(roi[2]) * scale
        ex, ey = (c_round(roi[3]) + 1) * scale, (c_round(roi[4]) + 1) * scale
        bh, bw = max(ey - sy, 0.1) / g, max(ex - sx, 0.1) / g
        for ct, p, q in np.ndindex(out_dim, g, g):
            hs = min(max(math.floor(p * bh + sy), 0), h)
            he = min(max(math.ceil((p + 1) * bh + sy), 0), h)
            ws = min(max(math.floor(q * bw + sx), 0), w)
            we = min(max(math.ceil((q + 1) * bw + sx), 0), w)
            if he <= hs or we <= ws:
                continue
            ch = (ct * g + p) * g + q
            area = (he - hs) * (we - ws)
            top[i, ct, p, q] = x[b, ch, hs:he, ws:we].sum() / area
            dx[b, ch, hs:he, ws:we] += dy[i, ct, p, q] / area
    return top, dx


def distinct_values(shape, seed, spacing=0.01):
    """Values at least ``spacing`` apart (no ties, so every max is strict), shuffled."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    return (rng.permutation(count) - count / 2).reshape(shape) * spacing


# ROIs of every kind: inside, crossing the border, wholly outside, malformed (x2 < x1), 1-pixel,
# coordinates landing on .5 after scaling (C rounds them away from zero, torch.round to even).
ROIS = np.array([
    [0, 0, 0, 150, 110], [1, 16, 8, 60, 50], [0, -40, -20, 30, 40], [1, 60, 40, 300, 200],
    [0, 200, 150, 260, 190], [1, 33, 25, 35, 27], [0, 50, 40, 20, 30], [1, 8, 24, 88, 72],
    [0, 24, 40, 120, 56], [1, -24, -8, -8, 8], [0, 0, 0, 0, 0], [1, 72.5, 8, 136, 104.5],
])


@pytest.mark.parametrize("pooled, scale", [((3, 3), 1 / 16), ((7, 7), 1 / 8), ((1, 1), 1 / 16),
                                           ((2, 5), 1 / 8), ((6, 4), 1.0)])
def test_roi_pool_matches_loop_model(pooled, scale):
    x = distinct_values((2, 3, 9, 11), seed=1)
    rng = np.random.default_rng(2)
    dy = rng.uniform(-1, 1, (len(ROIS), 3, *pooled))
    top, arg, dx = frcnn_roi_pool(x, ROIS, *pooled, scale, dy)
    got, got_arg = roi_pool(torch.from_numpy(x), torch.from_numpy(ROIS), *pooled, scale)
    # Same float64 comparisons and copies: exact.
    np.testing.assert_array_equal(got.numpy(), top)
    np.testing.assert_array_equal(got_arg.numpy(), arg)
    got_dx = roi_pool_backward(torch.from_numpy(dy), got_arg, torch.from_numpy(ROIS), x.shape,
                               scale)
    # float64 sums of at most len(ROIS) * pooled diffs of magnitude <= 1 in another order.
    np.testing.assert_allclose(got_dx.numpy(), dx, rtol=0, atol=1e-12)


def test_roi_pool_first_maximum_on_ties():
    # A constant plane: every bin's argmax is its first cell in row-major order.
    x = torch.ones(1, 1, 4, 6, dtype=torch.float64)
    rois = torch.tensor([[0, 0, 0, 5, 3]], dtype=torch.float64)
    _, arg = roi_pool(x, rois, 2, 3, 1.0)
    assert arg[0, 0].tolist() == [[0, 2, 4], [12, 14, 16]]


def test_roi_pool_malformed_roi_pooled_but_gets_no_gradient():
    x = distinct_values((1, 2, 5, 6), seed=3)
    # x2 < x1 and y2 < y1: pooled as the 1x1 ROI at (h, w) = (round(2.5), round(3.125)).
    rois = np.array([[0, 50, 40, 20, 30]])
    layer, bottom, top, _ = forward_layer(
        "type: 'ROIPooling' roi_pooling_param { pooled_h: 1 pooled_w: 1 "
        "spatial_scale: 0.0625 }", [x, rois])
    assert top[0].data[0, :, 0, 0].tolist() == x[0, :, 3, 3].tolist()
    top[0].diff[...] = 1
    layer.Backward(top, [True, False], bottom)
    assert not bottom[0].diff.any()  # a plain argmax scatter puts 1 at (3, 3)


def test_roi_pool_no_rois():
    layer, bottom, top, _ = forward_layer(
        "type: 'ROIPooling' roi_pooling_param { pooled_h: 2 pooled_w: 2 }",
        [np.ones((1, 3, 4, 4)), np.zeros((0, 5))])
    assert top[0].shape == (0, 3, 2, 2)
    layer.Backward(top, [True, False], bottom)
    assert not bottom[0].diff.any()


def test_roi_pool_gradient():
    # Distinct values 0.01 apart, step 1e-3: no argmax changes under the finite difference;
    # the ROIs are well formed (a malformed one is excepted, as the fork's kernel gives it none).
    x = distinct_values((2, 2, 6, 7), seed=4)
    rois = np.array([[0, 0, 0, 90, 70], [1, 16, 8, 60, 50], [0, -20, -10, 40, 60],
                     [1, 32, 16, 48, 40]])
    gradient_check("type: 'ROIPooling' roi_pooling_param { pooled_h: 3 pooled_w: 2 "
                   "spatial_scale: 0.0625 }", [x.shape, rois.shape], check_bottom=0,
                   bottom_values=[x, rois], stepsize=1e-3, threshold=1e-3)


@pytest.mark.parametrize("out_dim, g, scale", [(2, 3, 1 / 16), (3, 2, 1 / 8), (1, 7, 1.0),
                                               (2, 1, 0.25)])
def test_psroi_pool_matches_loop_model(out_dim, g, scale):
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (2, out_dim * g * g, 9, 11))
    rois = np.vstack([ROIS, [[0, 4.5, 7.49, 70.2, 33.5], [1, 10, 10, 10.4, 10.6]]])
    dy = rng.uniform(-1, 1, (len(rois), out_dim, g, g))
    top, dx = rfcn_psroi_pool(x, rois, out_dim, g, scale, dy)
    param = (f"type: 'PSROIPooling' psroi_pooling_param {{ spatial_scale: {scale} "
             f"output_dim: {out_dim} group_size: {g} }}")
    layer, bottom, tops, _ = forward_layer(param, [x, rois])
    # Sums of <= 99 values of magnitude <= 1 by a float64 summed-area table vs a loop: the
    # four-corner difference of prefix sums (<= 99 in magnitude) loses ~4 * 99 * 2^-53.
    np.testing.assert_allclose(tops[0].data, top, rtol=0, atol=1e-12)
    tops[0].diff[...] = dy
    layer.Backward(tops, [True, False], bottom)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=0, atol=1e-12)


def test_psroi_pool_gradient():
    rois = np.array([[0, 0, 0, 90, 70], [1, 16, 8, 60, 50], [0, -20, -10, 40, 60]])
    gradient_check("type: 'PSROIPooling' psroi_pooling_param { spatial_scale: 0.0625 "
                   "output_dim: 2 group_size: 2 }", [(2, 8, 5, 6), rois.shape], check_bottom=0,
                   bottom_values=[None, rois], stepsize=1e-3, threshold=1e-3)


# --- SmoothL1Loss -----------------------------------------------------------------------------
def test_smooth_l1_two_bottoms_is_torch_smooth_l1_sum_over_n():
    rng = np.random.default_rng(6)
    a, b = rng.uniform(-3, 3, (2, 5, 3, 2))
    _, _, top, loss = forward_layer("type: 'SmoothL1Loss'", [a, b])
    want = F.smooth_l1_loss(torch.from_numpy(a), torch.from_numpy(b), reduction="sum") / 5
    assert math.isclose(loss, float(want), rel_tol=1e-12)


def test_smooth_l1_sigma_and_weights_formula():
    rng = np.random.default_rng(7)
    a, b, w_in, w_out = rng.uniform(-2, 2, (4, 3, 4))
    sigma = 2.5
    _, _, _, loss = forward_layer(
        f"type: 'SmoothL1Loss' smooth_l1_loss_param {{ sigma: {sigma} }} loss_weight: 3",
        [a, b, w_in, w_out])
    d = w_in * (a - b)
    s2 = sigma * sigma
    e = np.where(np.abs(d) < 1 / s2, 0.5 * s2 * d * d, np.abs(d) - 0.5 / s2)
    assert math.isclose(loss, 3 * (w_out * e).sum() / 3, rel_tol=1e-12)  # weight 3, N 3


def _away_from_kink(shape, seed, sigma, w_in=None):
    """(pred, target) whose weighted difference stays 0.01 away from +-1/sigma^2, where the
    second derivative jumps (the finite difference straddling it is off by ~sigma^2 * step)."""
    rng = np.random.default_rng(seed)
    while True:
        a, b = rng.uniform(-1, 1, (2, *shape))
        d = (a - b) * (1 if w_in is None else w_in)
        if np.all(np.abs(np.abs(d) - 1 / sigma ** 2) > 0.01):
            return a, b


@pytest.mark.parametrize("check_bottom", [0, 1])
def test_smooth_l1_gradient_two_bottoms(check_bottom):
    a, b = _away_from_kink((3, 4, 2), seed=8, sigma=1.0)
    gradient_check("type: 'SmoothL1Loss'", [a.shape, b.shape], bottom_values=[a, b],
                   check_bottom=check_bottom, stepsize=1e-3, threshold=1e-3)


@pytest.mark.parametrize("check_bottom", [0, 1])
def test_smooth_l1_gradient_weighted_sigma3(check_bottom):
    rng = np.random.default_rng(9)
    w_in, w_out = rng.uniform(0, 2, (2, 2, 3, 2, 2))
    a, b = _away_from_kink(w_in.shape, seed=10, sigma=3.0, w_in=w_in)
    gradient_check("type: 'SmoothL1Loss' smooth_l1_loss_param { sigma: 3 }", [a.shape] * 4,
                   bottom_values=[a, b, w_in, w_out], check_bottom=check_bottom,
                   stepsize=1e-3, threshold=1e-3)


def test_smooth_l1_weights_get_no_gradient_and_loss_weight_scales():
    rng = np.random.default_rng(11)
    arrays = list(rng.uniform(-2, 2, (4, 2, 6)))
    layer, bottom, top, _ = forward_layer("type: 'SmoothL1Loss' loss_weight: 2", arrays)
    for blob in bottom:
        blob.diff[...] = 7
    layer.Backward(top, [True, True, False, False], bottom)
    np.testing.assert_allclose(bottom[1].diff, -bottom[0].diff, rtol=0, atol=0)
    assert (bottom[2].diff == 7).all() and (bottom[3].diff == 7).all()
    assert [layer.allow_force_backward(i) for i in range(4)] == [True, True, False, False]
    d = arrays[2] * (arrays[0] - arrays[1])
    grad = np.where(np.abs(d) < 1, d, np.sign(d)) * arrays[2] * arrays[3] * 2 / 2  # weight / N
    np.testing.assert_allclose(bottom[0].diff, grad, rtol=1e-12, atol=0)


# --- errors ------------------------------------------------------------------------------------
def _error(prototxt, arrays, match):
    with pytest.raises(LayerError, match=match):
        build_layer(prototxt, arrays)


ROI_LAYER = "type: 'ROIPooling' roi_pooling_param { pooled_h: 2 pooled_w: 2 }"
PS_LAYER = ("type: 'PSROIPooling' psroi_pooling_param { spatial_scale: 1 output_dim: 2 "
            "group_size: 2 }")


@pytest.mark.parametrize("prototxt", [ROI_LAYER, PS_LAYER])
def test_roi_batch_index_out_of_range(prototxt):
    x = np.zeros((2, 8, 4, 4))
    _error(prototxt, [x, [[0, 0, 0, 1, 1], [2, 0, 0, 1, 1]]],
           r"ROI 1 has batch index 2, outside \[0, 2\) for features of shape \[2, 8, 4, 4\]")
    _error(prototxt, [x, [[-1, 0, 0, 1, 1]]], r"batch index -1")


@pytest.mark.parametrize("prototxt", [ROI_LAYER, PS_LAYER])
def test_rois_must_be_r_by_5(prototxt):
    _error(prototxt, [np.zeros((1, 8, 4, 4)), np.zeros((3, 4))],
           r"layer 'L'.*rois \(bottom 1\) must be \(R, 5\).*\[3, 4\]")


def test_roi_pooling_needs_pooled_size():
    _error("type: 'ROIPooling' roi_pooling_param { pooled_h: 2 }",
           [np.zeros((1, 1, 4, 4)), np.zeros((1, 5))], "pooled_w must be > 0")


def test_psroi_channels_must_be_output_dim_times_group_squared():
    _error(PS_LAYER, [np.zeros((1, 6, 4, 4)), np.zeros((1, 5))],
           r"PSROIPooling layer 'L': input channel number.*6 channels \(shape \[1, 6, 4, 4\]\)"
           r".*= 8")


def test_psroi_parameters_required():
    _error("type: 'PSROIPooling' psroi_pooling_param { output_dim: 2 group_size: 2 }",
           [np.zeros((1, 8, 4, 4)), np.zeros((1, 5))], "spatial_scale is required")


def test_smooth_l1_three_bottoms_is_an_error():
    # SSD's 'weights' bottom aborts in its fork (ExactNumBottomBlobs 2); Faster R-CNN CHECKs
    # that weights come as a pair.
    _error("type: 'SmoothL1Loss'", [np.zeros((2, 3))] * 3,
           "must specify both inside and outside weights")


def test_smooth_l1_more_than_4_axes_is_an_error():
    _error("type: 'SmoothL1Loss'", [np.zeros((2, 3, 1, 1, 2))] * 2,
           r"> 4 axes: bottom 0 has shape \[2, 3, 1, 1, 2\]")


def test_smooth_l1_shape_mismatch_is_an_error():
    _error("type: 'SmoothL1Loss'", [np.zeros((2, 3)), np.zeros((2, 4))],
           r"bottom 1 shape \[2, 4\] does not match bottom 0 shape \[2, 3\]")
    _error("type: 'SmoothL1Loss'", [np.zeros((2, 3))] * 3 + [np.zeros((2, 3, 2))],
           r"bottom 3 shape")


# --- in a net ----------------------------------------------------------------------------------
FAST_RCNN_HEAD = """
force_backward: true
layer { name: 'in' type: 'Input' top: 'conv' top: 'rois' top: 'targets' top: 'w_in' top: 'w_out'
  input_param { shape { dim: 2 dim: 4 dim: 8 dim: 8 } shape { dim: 3 dim: 5 }
                shape { dim: 3 dim: 8 } shape { dim: 3 dim: 8 } shape { dim: 3 dim: 8 } } }
layer { name: 'pool' type: 'ROIPooling' bottom: 'conv' bottom: 'rois' top: 'pool5'
  roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 0.0625 } }
layer { name: 'bbox' type: 'InnerProduct' bottom: 'pool5' top: 'bbox_pred'
  inner_product_param { num_output: 8 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'loss' type: 'SmoothL1Loss' bottom: 'bbox_pred' bottom: 'targets'
  bottom: 'w_in' bottom: 'w_out' top: 'loss_bbox' smooth_l1_loss_param { sigma: 3 } }
"""


def test_fast_rcnn_head_in_a_net(tmp_path):
    import caffe

    path = tmp_path / "head.prototxt"
    path.write_text(FAST_RCNN_HEAD)
    net = caffe.Net(str(path), caffe.TRAIN)
    rng = np.random.default_rng(12)
    net.blobs["conv"].data[...] = rng.uniform(-1, 1, (2, 4, 8, 8))
    net.blobs["rois"].data[...] = [[0, 0, 0, 64, 64], [1, 16, 16, 100, 90], [0, 50, 40, 20, 30]]
    net.blobs["targets"].data[...] = rng.uniform(-1, 1, (3, 8))
    net.blobs["w_in"].data[...] = 1
    net.blobs["w_out"].data[...] = 1
    loss = float(net.forward()["loss_bbox"])
    pred, targets = net.blobs["bbox_pred"].data, net.blobs["targets"].data
    d = pred - targets
    e = np.where(np.abs(d) < 1 / 9, 4.5 * d * d, np.abs(d) - 0.5 / 9)
    # float32 sums of 24 terms of magnitude <= ~2: rtol 1e-5 covers 24 * 2^-24 relative error.
    assert math.isclose(loss, e.sum() / 3, rel_tol=1e-5)
    net.backward()
    assert np.abs(net.blobs["conv"].diff).sum() > 0
    assert not net.blobs["rois"].diff.any()


# --- Proposal (py-faster-rcnn's rpn.proposal_layer) ---------------------------------------------
def test_generate_anchors_are_py_faster_rcnn_s():
    from caffe.layers.proposal import generate_anchors

    # py-faster-rcnn's generate_anchors() for base 16, ratios 0.5 1 2, scales 8 16 32.
    want = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
            [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
            [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]
    np.testing.assert_array_equal(generate_anchors(), want)


def greedy_nms(boxes, thresh):
    """Faster R-CNN's NMS, one kept box at a time (boxes sorted best first)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    alive = np.ones(len(boxes), bool)
    keep = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        keep.append(i)
        w = np.maximum(0, np.minimum(x2[i], x2) - np.maximum(x1[i], x1) + 1)
        h = np.maximum(0, np.minimum(y2[i], y2) - np.maximum(y1[i], y1) + 1)
        inter = w * h
        over = inter / (areas[i] + areas - inter)
        alive &= ~(over > thresh)
        alive[: i + 1] = False
    return keep


def test_nms_pixels_matches_greedy_loop():
    from caffe.bbox_util import nms_pixels

    rng = np.random.default_rng(13)
    xy = rng.uniform(0, 60, (300, 2)).astype(np.float32)
    wh = rng.uniform(4, 40, (300, 2)).astype(np.float32)
    boxes = np.hstack([xy, xy + wh])
    for thresh in (0.3, 0.5, 0.7):
        for block in (64, 1024):  # 5 blocks of candidates, or one
            got = nms_pixels(torch.from_numpy(boxes), thresh, block=block).tolist()
            assert got == greedy_nms(boxes, np.float32(thresh)), (thresh, block)


def py_faster_rcnn_proposals(cls_prob, bbox_pred, im_info, anchors, stride, pre, post, thresh,
                             min_size):
    """rpn.proposal_layer's steps in numpy (float32 like its blobs), NMS one box at a time."""
    a = len(anchors)
    h, w = cls_prob.shape[2:]
    sx, sy = np.meshgrid(np.arange(w) * stride, np.arange(h) * stride)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], 1)
    boxes = (anchors[None] + shifts[:, None]).reshape(-1, 4).astype(np.float32)
    d = bbox_pred.transpose(0, 2, 3, 1).reshape(-1, 4)
    scores = cls_prob[:, a:].transpose(0, 2, 3, 1).reshape(-1)
    bw, bh = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    cx, cy = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    px, py = d[:, 0] * bw + cx, d[:, 1] * bh + cy
    pw, ph = np.exp(d[:, 2]) * bw, np.exp(d[:, 3]) * bh
    out = np.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], 1)
    lim = np.array([im_info[1] - 1, im_info[0] - 1] * 2, np.float32)
    out = np.maximum(np.minimum(out, lim), 0)
    keep = ((out[:, 2] - out[:, 0] + 1 >= min_size * im_info[2])
            & (out[:, 3] - out[:, 1] + 1 >= min_size * im_info[2]))
    out, scores = out[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    if pre > 0:
        order = order[:pre]
    out, scores = out[order], scores[order]
    kept = greedy_nms(out, np.float32(thresh))
    if post > 0:
        kept = kept[:post]
    return out[kept], scores[kept]


@pytest.mark.parametrize("param, phase, pre, post, thresh, min_size", [
    ("pre_nms_topn: 200 post_nms_topn: 40 nms_thresh: 0.6 min_size: 8", "TEST", 200, 40, 0.6, 8),
    ("ratio: 1 ratio: 2 scale: 2 scale: 4 nms_thresh: 0.5", "TRAIN", 12000, 2000, 0.5, 16),
    ("pre_nms_topn: 0 post_nms_topn: 0", "TEST", 0, 0, 0.7, 16),
])
def test_proposal_matches_py_faster_rcnn(param, phase, pre, post, thresh, min_size):
    from caffe.layers.proposal import generate_anchors

    layer_text = f"type: 'Proposal' proposal_param {{ feat_stride: 16 {param} }}"
    rng = np.random.default_rng(14)
    ratios = [1, 2] if "ratio" in param else [0.5, 1, 2]
    scales = [2, 4] if "scale" in param else [8, 16, 32]
    anchors = generate_anchors(16, ratios, scales)
    a, h, w = len(anchors), 6, 8
    cls_prob = rng.uniform(0, 1, (1, 2 * a, h, w)).astype(np.float32)
    bbox_pred = rng.normal(0, 0.3, (1, 4 * a, h, w)).astype(np.float32)
    im_info = np.array([[90, 120, 0.8]], np.float32)
    layer, bottom, top, _ = forward_layer(layer_text, [cls_prob, bbox_pred, im_info], n_tops=2,
                                          phase=phase, dtype=torch.float32)
    boxes, scores = py_faster_rcnn_proposals(cls_prob, bbox_pred, im_info[0], anchors, 16, pre,
                                             post, thresh, min_size)
    assert (layer.pre_nms_top_n, layer.post_nms_top_n) == (pre, post)
    assert top[0].shape == (len(boxes), 5) and len(boxes) > 0
    assert not top[0].data[:, 0].any()
    # The same float32 operations in the same order: equal up to exp's last-bit differences.
    np.testing.assert_allclose(top[0].data[:, 1:], boxes, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(top[1].data[:, 0], scores)


def test_proposal_then_roi_pooling_in_a_net(tmp_path):
    import caffe

    path = tmp_path / "rpn.prototxt"
    path.write_text("""
layer { name: 'in' type: 'Input' top: 'rpn_cls_prob' top: 'rpn_bbox_pred' top: 'im_info'
  top: 'conv5' input_param { shape { dim: 1 dim: 18 dim: 4 dim: 5 }
  shape { dim: 1 dim: 36 dim: 4 dim: 5 } shape { dim: 1 dim: 3 }
  shape { dim: 1 dim: 8 dim: 4 dim: 5 } } }
layer { name: 'proposal' type: 'Proposal' bottom: 'rpn_cls_prob' bottom: 'rpn_bbox_pred'
  bottom: 'im_info' top: 'rois' proposal_param { feat_stride: 16 post_nms_topn: 10 } }
layer { name: 'roi_pool5' type: 'ROIPooling' bottom: 'conv5' bottom: 'rois' top: 'pool5'
  roi_pooling_param { pooled_w: 2 pooled_h: 2 spatial_scale: 0.0625 } }
""")
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(15)
    net.blobs["rpn_cls_prob"].data[...] = rng.uniform(0, 1, (1, 18, 4, 5))
    net.blobs["rpn_bbox_pred"].data[...] = rng.normal(0, 0.2, (1, 36, 4, 5))
    net.blobs["im_info"].data[...] = [[64, 80, 1.0]]
    net.blobs["conv5"].data[...] = rng.uniform(-1, 1, (1, 8, 4, 5))
    net.forward()
    r = net.blobs["rois"].shape[0]
    assert 0 < r <= 10
    assert net.blobs["pool5"].shape == (r, 8, 2, 2)


def test_proposal_errors():
    good = [np.zeros((1, 18, 2, 3)), np.zeros((1, 36, 2, 3)), [[32, 48, 1.0]]]
    _error("type: 'Proposal'", [np.zeros((2, 18, 2, 3)), np.zeros((2, 36, 2, 3)),
                                [[32, 48, 1.0]] * 2], "Only single item batches")
    _error("type: 'Proposal'", [np.zeros((1, 10, 2, 3))] + good[1:],
           r"2 \* 9 channels for 9 anchors.*\[1, 10, 2, 3\]")
    _error("type: 'Proposal'", [good[0], np.zeros((1, 36, 3, 3)), good[2]],
           r"box deltas \(bottom 1\) must be \[1, 36, 2, 3\].*\[1, 36, 3, 3\]")
    _error("type: 'Proposal' proposal_param { feat_stride: 0 }", good, "feat_stride must be > 0")
