"""SSD fork layers: Permute, Normalize, PriorBox, DetectionOutput, MultiBoxLoss, the box
utilities they share (caffe.bbox_util), and the whole SSD head net.

Golden cases (tests/golden/fork, made by the SSD fork's C++), loop-by-loop models of SSD's
bbox_util functions, float64 gradient checks, and the fork's errors.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import caffe
from caffe import bbox_util
from caffe.errors import LayerError

from layer_case import (
    FWD_TOL,
    build_case_layer,
    build_layer,
    forward_layer,
    gradient_check,
    load_case,
    run_golden_case,
)

NETS = Path(__file__).parent / "golden" / "fork" / "nets"

GOLDEN = [
    "permute_0231", "permute_0312", "permute_partial_order", "permute_identity",
    "normalize_across_shared", "normalize_spatial_false_channel", "normalize_across_channel",
    "normalize_spatial_false_shared",
    "priorbox_basic", "priorbox_clip_ar23_var1", "priorbox_two_min_noflip_step_offset",
    "priorbox_img_size_fractional_min", "priorbox_img_hw_no_step", "priorbox_rect_map",
    "mbox_default", "mbox_bipartite_ratio2", "mbox_no_mining", "mbox_l2_corner_ratio1",
    "mbox_no_share_location", "mbox_fractional_ratio_neg_overlap", "mbox_logistic",
]
DETOUT = ["detout_center_size", "detout_corner", "detout_no_share_location",
          "detout_no_background", "detout_nothing_found", "detout_pre_nms_top_k3"]


@pytest.mark.parametrize("case", GOLDEN)
def test_golden(case):
    run_golden_case(case, fork=True)


@pytest.mark.parametrize("case", DETOUT)
def test_detection_output_golden(case):
    """Same rows in the same order with the same image ids and labels (exact); scores and
    boxes at the forward tolerance (decoding is a few float32 operations per coordinate)."""
    golden = load_case(case, fork=True)
    layer, bottom, top = build_case_layer(golden)
    layer.Forward(bottom, top)
    got, want = top[0].data, golden["top_0"]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got[..., :2], want[..., :2])
    np.testing.assert_allclose(got, want, **FWD_TOL)


def test_ssd_head_net_reproduces_every_blob():
    golden = np.load(NETS / "ssd_head.npz")
    net = caffe.Net(str(NETS / "ssd_head.prototxt"), str(NETS / "ssd_head.caffemodel"),
                    caffe.TEST)
    inputs = {k.split("/", 1)[1]: golden[k] for k in golden.files if k.startswith("input/")}
    net.forward(**inputs)
    expected = {k.split("/", 1)[1]: golden[k] for k in golden.files if k.startswith("blob/")}
    assert sorted(expected) == sorted(net.blobs)
    for name, value in expected.items():
        np.testing.assert_allclose(net.blobs[name].data, value, **FWD_TOL, err_msg=name)
    detections = net.blobs["detection_out"].data
    assert detections.shape == (1, 1, 40, 7)
    np.testing.assert_array_equal(detections[..., :2], expected["detection_out"][..., :2])


# --- box utilities against loop-by-loop models of SSD's bbox_util (float64) -----------------
def ref_area(b):
    if b[2] < b[0] or b[3] < b[1]:
        return 0.0
    return (b[2] - b[0]) * (b[3] - b[1])


def ref_iou(a, b):
    """JaccardOverlap(NormalizedBBox): IntersectBBox, then positive width and height."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w > 0 and h > 0:
        inter = w * h
        return inter / (ref_area(a) + ref_area(b) - inter)
    return 0.0


def ref_nms(boxes, scores, threshold, top_k, eta, score_threshold):
    """ApplyNMSFast."""
    cand = sorted(((s, i) for i, s in enumerate(scores) if s > score_threshold),
                  key=lambda p: -p[0])  # sorted() is stable, as std::stable_sort
    if top_k > -1:
        cand = cand[:top_k]
    kept, t = [], threshold
    for _, i in cand:
        if all(ref_iou(boxes[i], boxes[k]) <= t for k in kept):
            kept.append(i)
            if eta < 1 and t > 0.5:
                t *= eta
    return kept


def ref_match(gt, preds, bipartite_only, threshold):
    """MatchBBox with label -1 (every ground truth)."""
    n = len(preds)
    idx, best = [-1] * n, [0.0] * n
    overlaps = {}
    for i in range(n):
        for j in range(len(gt)):
            o = ref_iou(preds[i], gt[j])
            if o > 1e-6:
                best[i] = max(best[i], o)
                overlaps.setdefault(i, {})[j] = o
    pool = list(range(len(gt)))
    while pool:
        mi, mj, mo = -1, -1, -1.0
        for i in sorted(overlaps):
            if idx[i] != -1:
                continue
            for j in pool:
                if j in overlaps[i] and overlaps[i][j] > mo:
                    mi, mj, mo = i, j, overlaps[i][j]
        if mi == -1:
            break
        idx[mi], best[mi] = mj, mo
        pool.remove(mj)
    if not bipartite_only:
        for i in sorted(overlaps):
            if idx[i] != -1:
                continue
            mj, mo = -1, -1.0
            for j in range(len(gt)):
                o = overlaps[i].get(j)
                if o is not None and o >= threshold and o > mo:
                    mj, mo = j, o
            if mj != -1:
                idx[i], best[i] = mj, mo
    return idx, best


def random_boxes(rng, n, low=0.0, high=1.0, size=0.4):
    xy = rng.uniform(low, high, size=(n, 2))
    wh = rng.uniform(0.02, size, size=(n, 2))
    return np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)


def test_iou_matches_loop_model_including_degenerate_boxes():
    rng = np.random.default_rng(0)
    a = random_boxes(rng, 30)
    b = np.concatenate([random_boxes(rng, 20), [[0.5, 0.5, 0.4, 0.6],  # inverted: area 0
                                               [a[0, 2], a[0, 1], a[0, 2] + 0.1, a[0, 3]]]])
    got = bbox_util.iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = np.array([[ref_iou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[0, -1] == 0.0  # touching boxes do not overlap


@pytest.mark.parametrize("code_type", [bbox_util.CORNER, bbox_util.CENTER_SIZE,
                                       bbox_util.CORNER_SIZE])
@pytest.mark.parametrize("in_target", [False, True])
def test_encode_decode_round_trip(code_type, in_target):
    rng = np.random.default_rng(1)
    priors = torch.from_numpy(random_boxes(rng, 16))
    gt = torch.from_numpy(random_boxes(rng, 16))
    var = torch.tensor([0.1, 0.1, 0.2, 0.2], dtype=torch.float64).expand(16, 4)
    code = bbox_util.encode(gt, priors, var, code_type, in_target)
    back = bbox_util.decode(code, priors, var, code_type, in_target)
    # float64 round trip of a handful of operations on values of size ~1.
    np.testing.assert_allclose(back.numpy(), gt.numpy(), rtol=0, atol=1e-12)


def test_encode_center_size_formula():
    prior = torch.tensor([[0.2, 0.2, 0.6, 0.4]], dtype=torch.float64)
    gt = torch.tensor([[0.3, 0.1, 0.5, 0.5]], dtype=torch.float64)
    var = torch.tensor([[0.1, 0.1, 0.2, 0.2]], dtype=torch.float64)
    got = bbox_util.encode(gt, prior, var, bbox_util.CENTER_SIZE, False)[0].numpy()
    want = [(0.4 - 0.4) / 0.4 / 0.1, (0.3 - 0.3) / 0.2 / 0.1, np.log(0.2 / 0.4) / 0.2,
            np.log(0.4 / 0.2) / 0.2]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threshold,top_k,eta,score_threshold", [
    (0.45, -1, 1.0, 0.0), (0.3, 10, 1.0, 0.2), (0.9, -1, 0.7, -1.0), (0.6, 25, 0.9, 0.1),
    (0.0, -1, 1.0, 0.5),
])
def test_nms_matches_loop_model(threshold, top_k, eta, score_threshold):
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 60, 0.3, 0.7)
    scores = rng.uniform(0, 1, 60)
    scores[5] = scores[6]  # a tie: the lower index first
    got = bbox_util.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold, top_k, eta,
                        score_threshold=score_threshold).tolist()
    assert got == ref_nms(boxes, scores, threshold, top_k, eta, score_threshold)
    assert 0 < len(got) < 60


def test_nms_one_row_at_a_time_equals_the_matrix_form():
    rng = np.random.default_rng(9)
    boxes, scores = torch.from_numpy(random_boxes(rng, 80, 0.3, 0.7)), torch.rand(80)
    matrix = bbox_util.nms(boxes, scores, 0.4, 50, score_threshold=0.1)
    rows = bbox_util.nms(boxes, scores, 0.4, 50, score_threshold=0.1, max_elements=1)
    assert matrix.tolist() == rows.tolist()
    assert matrix.tolist() == ref_nms(boxes.numpy(), scores.numpy(), 0.4, 50, 1.0, 0.1)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("max_elements", [1 << 24, 1])
def test_batched_nms_matches_nms_per_set(shared, max_elements):
    rng = np.random.default_rng(10)
    sets = 5
    boxes = torch.from_numpy(random_boxes(rng, 60 if shared else 60 * sets, 0.3, 0.7))
    if not shared:
        boxes = boxes.reshape(sets, 60, 4)
    scores = torch.rand(sets, 60, dtype=torch.float64)
    scores[2] = 0.0  # a set with no candidate
    got = bbox_util.batched_nms(boxes, scores, 0.45, 30, score_threshold=0.2,
                                max_elements=max_elements)
    for b in range(sets):
        want = bbox_util.nms(boxes if shared else boxes[b], scores[b], 0.45, 30,
                             score_threshold=0.2)
        assert got[b].tolist() == want.tolist()
    assert got[2].numel() == 0 and got[0].numel() > 0


@pytest.mark.parametrize("bipartite_only", [True, False])
@pytest.mark.parametrize("seed", [3, 4, 5])
def test_match_matches_loop_model(bipartite_only, seed):
    rng = np.random.default_rng(seed)
    gt = random_boxes(rng, 5, 0.2, 0.8, 0.5)
    preds = random_boxes(rng, 80, 0.0, 1.0, 0.5)
    preds[7] = preds[3]  # equal overlaps: the lower prediction wins
    idx, ov = bbox_util.match(torch.from_numpy(gt), torch.from_numpy(preds), bipartite_only,
                              0.3)
    want_idx, want_ov = ref_match(gt, preds, bipartite_only, 0.3)
    assert idx.tolist() == want_idx
    np.testing.assert_allclose(ov.numpy(), want_ov, rtol=1e-12, atol=0)
    # Bipartite matching pairs each of the 5 ground truths once; per prediction adds more.
    assert (idx > -1).sum() == 5 if bipartite_only else (idx > -1).sum() > 5


def test_hard_negatives_takes_largest_eligible():
    loss = torch.tensor([[0.5, 3.0, 2.0, 1.0], [4.0, 0.1, 0.2, 0.3]])
    eligible = torch.tensor([[True, False, True, True], [True, True, True, True]])
    chosen = bbox_util.hard_negatives(loss, eligible, torch.tensor([2, 0]))
    assert chosen.tolist() == [[False, False, True, True], [False] * 4]


# --- Permute, Normalize ---------------------------------------------------------------------
def test_permute_identity_shares_blobs():
    layer, bottom, top = build_layer("type: 'Permute' permute_param { order: 0 order: 1 }",
                                     [np.arange(6.0).reshape(1, 2, 3)])
    layer.Forward(bottom, top)
    bottom[0].data[0, 0, 0] = 42.0
    assert top[0].data[0, 0, 0] == 42.0


def test_permute_partial_order_appends_remaining_axes():
    x = np.arange(120.0).reshape(2, 3, 4, 5)
    top = forward_layer("type: 'Permute' permute_param { order: 1 order: 3 }", [x])[2][0]
    np.testing.assert_array_equal(top.data, x.transpose(1, 3, 0, 2))


@pytest.mark.parametrize("order", ["0 2 3 1", "3 1", "0 3 1 2"])
def test_permute_gradient(order):
    text = " ".join(f"order: {o}" for o in order.split())
    gradient_check(f"type: 'Permute' permute_param {{ {text} }}", [(2, 3, 4, 2)])


@pytest.mark.parametrize("across", ["true", "false"])
@pytest.mark.parametrize("shared", ["true", "false"])
def test_normalize_gradient(across, shared):
    # The fork's bottom gradient is exact when every channel has the same scale (it multiplies
    # the normalization's gradient by s_j where the sum needs s_c): constant scale here; the
    # golden normalize_across_channel case pins the fork's formula for unequal scales.
    gradient_check(f"type: 'Normalize' norm_param {{ across_spatial: {across} "
                   f"channel_shared: {shared} scale_filler {{ type: 'constant' value: 2.5 }} }}",
                   [(2, 3, 2, 3)])


def test_normalize_formula():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 2, 2))
    top = forward_layer("type: 'Normalize' norm_param { across_spatial: false "
                        "channel_shared: false scale_filler { type: 'constant' value: 3 } }",
                        [x])[2][0]
    want = 3 * x / np.sqrt((x ** 2).sum(axis=1, keepdims=True) + 1e-10)
    np.testing.assert_allclose(top.data, want, rtol=1e-12)


# --- PriorBox --------------------------------------------------------------------------------
def test_prior_box_layout_and_variances():
    layer, bottom, top, _ = forward_layer(
        "type: 'PriorBox' prior_box_param { min_size: 4 max_size: 9 aspect_ratio: 2 "
        "flip: true variance: 0.1 variance: 0.2 variance: 0.3 variance: 0.4 }",
        [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 8, 8))])
    boxes = top[0].data[0, 0].reshape(2, 2, 4, 4)  # (h, w, prior, coordinate)
    # Cell (0, 0) is centred at (2, 2) of an 8x8 image: 4x4, 6x6, 4*sqrt2 x 4/sqrt2, then flip.
    r = np.sqrt(2)
    want = np.array([[0, 0, 4, 4], [-1, -1, 5, 5], [2 - 2 * r, 2 - 2 / r, 2 + 2 * r, 2 + 2 / r],
                     [2 - 2 / r, 2 - 2 * r, 2 + 2 / r, 2 + 2 * r]]) / 8
    np.testing.assert_allclose(boxes[0, 0], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(boxes[1, 1], want + 0.5, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(top[0].data[0, 1].reshape(-1, 4), [[0.1, 0.2, 0.3, 0.4]] * 16,
                               rtol=1e-7)


def test_prior_box_needs_min_size():
    with pytest.raises(LayerError, match="must provide min_size"):
        build_layer("type: 'PriorBox' prior_box_param { aspect_ratio: 2 }",
                    [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 8, 8))])


def test_prior_box_rejects_max_not_above_min():
    with pytest.raises(LayerError, match="max_size must be greater than min_size"):
        build_layer("type: 'PriorBox' prior_box_param { min_size: 8 max_size: 8 }",
                    [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 8, 8))])


# --- DetectionOutput -------------------------------------------------------------------------
DETOUT_PARAM = ("type: 'DetectionOutput' detection_output_param {{ num_classes: 3 "
                "share_location: {share} background_label_id: {bg} nms_param {{ nms_threshold: "
                "0.45 }} code_type: CENTER_SIZE }}")


def test_detection_output_background_minus_one_with_shared_location_is_an_error():
    arrays = [np.zeros((1, 8)), np.zeros((1, 6)), np.zeros((1, 2, 8))]
    with pytest.raises(LayerError, match="background_label_id -1 needs share_location false"):
        build_layer(DETOUT_PARAM.format(share="true", bg=-1), arrays)


def test_detection_output_count_mismatch_names_shapes():
    arrays = [np.zeros((1, 12)), np.zeros((1, 6)), np.zeros((1, 2, 8))]
    with pytest.raises(LayerError, match=r"location predictions \(loc shape \[1, 12\]"):
        build_layer(DETOUT_PARAM.format(share="true", bg=0), arrays)
    arrays = [np.zeros((1, 8)), np.zeros((1, 7)), np.zeros((1, 2, 8))]
    with pytest.raises(LayerError, match=r"confidence predictions \(conf shape \[1, 7\]"):
        build_layer(DETOUT_PARAM.format(share="true", bg=0), arrays)


# --- MultiBoxLoss ----------------------------------------------------------------------------
def ssd_inputs(seed=7, num=2, classes=3, share=True):
    """Priors on a 4x4 grid (two sizes), 2 ground truths for image 0 and 1 for image 1."""
    rng = np.random.default_rng(seed)
    centres = (np.arange(4) + 0.5) / 4
    cx, cy = np.meshgrid(centres, centres)
    priors = []
    for half in (0.15, 0.25):
        priors.append(np.stack([cx - half, cy - half, cx + half, cy + half], -1).reshape(-1, 4))
    priors = np.stack(priors, 1).reshape(-1, 4)
    num_priors = len(priors)
    prior_blob = np.stack([priors.reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], num_priors)])[None]
    gt = np.array([[0, 1, 0, 0.1, 0.1, 0.45, 0.5, 0], [0, 2, 1, 0.5, 0.4, 0.95, 0.9, 0],
                   [1, 1, 0, 0.3, 0.2, 0.8, 0.7, 0], [-1, 0, 0, 0, 0, 0, 0, 0]])
    loc_classes = 1 if share else classes
    loc = rng.uniform(-0.4, 0.4, (num, num_priors * loc_classes * 4))
    conf = rng.normal(size=(num, num_priors * classes))
    return [loc, conf, prior_blob, gt[None, None]]


MBOX = ("type: 'MultiBoxLoss' multibox_loss_param {{ num_classes: 3 background_label_id: 0 "
        "code_type: CENTER_SIZE {extra} }}")


@pytest.mark.parametrize("extra", [
    "mining_type: NONE",
    "mining_type: NONE share_location: false conf_loss_type: LOGISTIC",
    "mining_type: NONE loc_loss_type: L2 match_type: BIPARTITE loc_weight: 2",
    # Every eligible negative is kept (ratio 100), so the selection cannot change under the
    # finite-difference steps.
    "mining_type: MAX_NEGATIVE neg_pos_ratio: 100",
    "mining_type: MAX_NEGATIVE neg_pos_ratio: 100 conf_loss_type: LOGISTIC",
])
def test_multibox_loss_gradient(extra):
    share = "share_location: false" not in extra
    arrays = ssd_inputs(share=share)
    text = MBOX.format(extra=extra)
    if "L2" not in extra:
        # SmoothL1 has a kink at |loc - target| = 1: move every matched prediction to
        # target + an offset of size 0.2..0.6. The targets come from an L2 run, whose
        # gradient is loc - target (matching uses the priors only, not loc).
        l2, _, _, _ = forward_layer(text.replace("code_type", "loc_loss_type: L2 code_type"),
                                    arrays)
        img, prior, slot = (t.numpy() for t in l2.loc_where)
        rng = np.random.default_rng(8)
        num = arrays[0].shape[0]
        loc = arrays[0].reshape(num, l2.num_priors, l2.loc_classes, 4).copy()
        offset = rng.uniform(0.2, 0.6, (len(img), 4)) * rng.choice([-1, 1], (len(img), 4))
        loc[img, prior, slot] += offset - l2.loc_grad.numpy()
        arrays[0] = loc.reshape(num, -1)
    layer, bottom, top, loss = forward_layer(text, arrays)
    assert layer.num_matches >= 3 and loss > 0
    for index in (0, 1):
        gradient_check(text, [a.shape for a in arrays], bottom_values=arrays, check_bottom=index,
                       stepsize=1e-4, threshold=1e-4)


def test_multibox_loss_formula_without_mining():
    """loss = (sum smoothL1(loc - encode(gt)) over matches + sum of softmax losses over every
    prior) / number of matches, checked against a direct float64 computation."""
    arrays = ssd_inputs()
    layer, bottom, top, loss = forward_layer(MBOX.format(extra="mining_type: NONE"), arrays)
    loc, conf, prior, gt = arrays
    priors, var = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)
    conf = conf.reshape(2, -1, 3)
    total_loc, total_conf, matches = 0.0, 0.0, 0
    for i in range(2):
        rows = gt[0, 0][gt[0, 0, :, 0] == i]
        idx, _ = ref_match(rows[:, 3:7], priors, False, 0.5)
        for p, j in enumerate(idx):
            label = 0
            if j >= 0:
                matches += 1
                label = int(rows[j, 1])
                enc = bbox_util.encode(torch.from_numpy(rows[j, 3:7]), torch.from_numpy(priors[p]),
                                       torch.from_numpy(var[p]), bbox_util.CENTER_SIZE,
                                       False).numpy()
                d = np.abs(loc[i].reshape(-1, 4)[p] - enc)
                total_loc += np.where(d < 1, 0.5 * d * d, d - 0.5).sum()
            z = conf[i, p] - conf[i, p].max()
            total_conf -= z[label] - np.log(np.exp(z).sum())
    assert matches == layer.num_matches
    assert loss == pytest.approx((total_loc + total_conf) / matches, rel=1e-12)


def test_multibox_loss_counts_mined_negatives():
    arrays = ssd_inputs()
    layer, bottom, top, loss = forward_layer(MBOX.format(extra="neg_pos_ratio: 1"), arrays)
    layer.Backward(top, [True, True, False, False], bottom)
    rows_with_gradient = (np.abs(bottom[1].diff.reshape(2, -1, 3)).sum(-1) > 0).sum()
    assert rows_with_gradient == 2 * layer.num_matches  # one negative per positive


@pytest.mark.parametrize("label,message", [(0, "Found background label"),
                                           (3, r"label 3 outside \[0, num_classes = 3\)")])
def test_multibox_loss_bad_labels(label, message):
    arrays = ssd_inputs()
    arrays[3] = arrays[3].copy()
    arrays[3][0, 0, 1, 1] = label
    with pytest.raises(LayerError, match=message):
        forward_layer(MBOX.format(extra=""), arrays)


def test_multibox_loss_count_mismatch_names_shapes():
    arrays = ssd_inputs()
    arrays[0] = arrays[0][:, :-4]
    with pytest.raises(LayerError, match=r"location predictions \(loc shape \[2, 124\]"):
        build_layer(MBOX.format(extra=""), arrays)
    arrays = ssd_inputs()
    arrays[1] = arrays[1][:, :-1]
    with pytest.raises(LayerError, match=r"confidence predictions \(conf shape \[2, 95\]"):
        build_layer(MBOX.format(extra=""), arrays)


def test_multibox_loss_mining_needs_shared_location():
    with pytest.raises(LayerError, match="only support negative mining if share_location"):
        build_layer(MBOX.format(extra="share_location: false"), ssd_inputs(share=False))


# --- mining against a loop-by-loop model of MultiBoxLoss (float64) ---------------------------
def ref_apply_nms(boxes, scores, threshold, top_k):
    """ApplyNMS (the mining one): top_k by score, boxes of area < 1e-5 erased, greedy."""
    cand = sorted(range(len(scores)), key=lambda k: -scores[k])
    if top_k > -1:
        cand = cand[:top_k]
    kept = []
    while cand:
        best = cand.pop(0)
        if ref_area(boxes[best]) < 1e-5:
            continue
        kept.append(best)
        if top_k > -1 and len(kept) >= top_k:
            break
        cand = [c for c in cand
                if ref_area(boxes[c]) >= 1e-5 and ref_iou(boxes[best], boxes[c]) <= threshold]
    return kept


def ref_multibox_loss(arrays, mining, ratio=3.0, sample_size=64, nms=None):
    """share_location, SOFTMAX, SMOOTH_L1, CENTER_SIZE, PER_PREDICTION 0.5, VALID: the loss,
    the number of matches and the (image, prior) pairs in the conf loss."""
    loc, conf, prior, gt = arrays
    num = loc.shape[0]
    priors, var = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)
    num_priors = len(priors)
    conf, loc = conf.reshape(num, num_priors, 3), loc.reshape(num, num_priors, 4)
    total, matches, in_conf = 0.0, 0, set()
    for i in range(num):
        rows = gt[0, 0][gt[0, 0, :, 0] == i]
        if not len(rows):
            continue
        idx, ov = ref_match(rows[:, 3:7], priors, False, 0.5)
        conf_loss, loc_loss = [], []
        for p in range(num_priors):
            z = conf[i, p] - conf[i, p].max()
            label = int(rows[idx[p], 1]) if idx[p] >= 0 else 0
            conf_loss.append(-(z[label] - np.log(np.exp(z).sum())))
            smooth_l1 = 0.0
            if idx[p] >= 0:
                enc = bbox_util.encode(torch.from_numpy(rows[idx[p], 3:7]),
                                       torch.from_numpy(priors[p]), torch.from_numpy(var[p]),
                                       bbox_util.CENTER_SIZE, False).numpy()
                d = np.abs(loc[i, p] - enc)
                smooth_l1 = np.where(d < 1, 0.5 * d * d, d - 0.5).sum()
            loc_loss.append(smooth_l1)
        hard = mining == "HARD_EXAMPLE"
        loss = [c + (g if hard else 0.0) for c, g in zip(conf_loss, loc_loss)]
        if hard:
            eligible = list(range(num_priors))
            num_sel = min(sample_size, num_priors)
        else:
            eligible = [p for p in range(num_priors) if idx[p] == -1 and ov[p] < 0.5]
            num_pos = sum(j >= 0 for j in idx)
            num_sel = min(int(np.float32(num_pos) * np.float32(ratio)), len(eligible))
        if nms:
            keep = ref_apply_nms([priors[p] for p in eligible], [loss[p] for p in eligible],
                                 *nms)
            selected = {eligible[k] for k in keep[:num_sel]}
        else:
            selected = set(sorted(eligible, key=lambda p: -loss[p])[:num_sel])
        pos = [p for p in range(num_priors) if idx[p] >= 0 and (not hard or p in selected)]
        neg = [p for p in range(num_priors) if idx[p] == -1 and p in selected]
        matches += len(pos)
        total += sum(loc_loss[p] for p in pos) + sum(conf_loss[p] for p in pos + neg)
        in_conf |= {(i, p) for p in pos + neg}
    return total / max(matches, 1), matches, in_conf


NMS = "nms_param {{ nms_threshold: 0.3 top_k: {} }} use_prior_for_nms: true"


@pytest.mark.parametrize("extra,mining,kwargs", [
    ("neg_pos_ratio: 3", "MAX_NEGATIVE", {}),
    ("neg_pos_ratio: 2 " + NMS.format(200), "MAX_NEGATIVE", {"ratio": 2, "nms": (0.3, 200)}),
    # sample_size 2 picks 1 of the 3 matches: the other two are dropped.
    ("mining_type: HARD_EXAMPLE sample_size: 2", "HARD_EXAMPLE", {"sample_size": 2}),
    # NMS changes which priors are picked; top_k 4 also drops a match.
    ("mining_type: HARD_EXAMPLE sample_size: 6 " + NMS.format(30), "HARD_EXAMPLE",
     {"sample_size": 6, "nms": (0.3, 30)}),
    ("mining_type: HARD_EXAMPLE sample_size: 6 " + NMS.format(4), "HARD_EXAMPLE",
     {"sample_size": 6, "nms": (0.3, 4)}),
])
def test_multibox_loss_mining_matches_loop_model(extra, mining, kwargs):
    arrays = ssd_inputs()
    layer, bottom, top, loss = forward_layer(MBOX.format(extra=extra), arrays)
    want, matches, in_conf = ref_multibox_loss(arrays, mining, **kwargs)
    assert layer.num_matches == matches
    assert loss == pytest.approx(want, rel=1e-12)
    layer.Backward(top, [True, True, False, False], bottom)
    rows = np.abs(bottom[1].diff.reshape(2, -1, 3)).sum(-1) > 0
    assert {(int(i), int(p)) for i, p in zip(*rows.nonzero())} == in_conf


def test_multibox_loss_refuses_gradient_to_priors():
    layer, bottom, top, _ = forward_layer(MBOX.format(extra=""), ssd_inputs())
    with pytest.raises(LayerError, match="cannot backpropagate to prior inputs.*propagate_down"):
        layer.Backward(top, [True, True, True, False], bottom)


@pytest.mark.parametrize("order,message", [("order: 4", "order should be less than"),
                                           ("order: 1 order: 1", "duplicate orders")])
def test_permute_bad_order(order, message):
    with pytest.raises(LayerError, match=message):
        build_layer(f"type: 'Permute' permute_param {{ {order} }}", [np.zeros((1, 2, 3, 4))])


# --- stable_top_k: the pre-NMS cut keeps the fork's tie order ---------------------------------
@pytest.mark.parametrize("k", [1, 3, 7, 40, 64])
def test_stable_top_k_equals_the_stable_full_sort(k):
    """Many ties (scores drawn from 5 values) on both the partial path (k < P/4) and the full
    sort path: the indices must equal the first k of a stable descending sort, exactly."""
    gen = torch.Generator().manual_seed(k)
    values = torch.randint(0, 5, (6, 64), generator=gen).float() / 4
    expected = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    assert torch.equal(bbox_util.stable_top_k(values, k), expected)
