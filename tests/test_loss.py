import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError
from caffe.proto import caffe_pb2

from layer_case import forward_layer, gradient_check, load_case, make_layer, run_golden_case

GOLDEN = ["softmax_loss", "softmax_loss_batchsize_norm", "softmax_loss_spatial_ignore",
          "euclidean_loss", "sigmoid_ce_loss", "hinge_l1", "hinge_l2", "multinomial_logistic",
          "infogain_1_0", "contrastive", "accuracy_top2", "loss_weight_2"]


@pytest.mark.parametrize("case", GOLDEN)
def test_golden(case):
    run_golden_case(case)


def _labels(shape, classes, seed=0):
    return np.random.default_rng(seed).integers(0, classes, size=shape).astype(float)


def _uniform(shape, low=-1.0, high=1.0, seed=0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


# --- SoftmaxWithLoss -----------------------------------------------------------------------------
def _softmax_loss_reference(x, labels, axis, ignore, mode):
    x = np.moveaxis(x, axis, -1)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    lab = labels.reshape(x.shape[:-1]).astype(int)
    valid = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    picked = np.take_along_axis(p, np.where(valid, lab, 0)[..., None], -1)[..., 0]
    total = -(np.log(picked) * valid).sum()
    outer = int(np.prod(x.shape[:axis]))
    normalizer = {"FULL": lab.size, "VALID": valid.sum(), "BATCH_SIZE": outer, "NONE": 1}[mode]
    return total / max(1, normalizer)


@pytest.mark.parametrize("loss_param, mode, ignore", [
    ("", "VALID", None),
    ("loss_param { ignore_label: 2 }", "VALID", 2),
    ("loss_param { ignore_label: 2 normalization: FULL }", "FULL", 2),
    ("loss_param { ignore_label: 2 normalization: BATCH_SIZE }", "BATCH_SIZE", 2),
    ("loss_param { ignore_label: 2 normalization: NONE }", "NONE", 2),
    ("loss_param { ignore_label: 2 normalize: true }", "VALID", 2),
    ("loss_param { ignore_label: 2 normalize: false }", "BATCH_SIZE", 2),
])
def test_softmax_loss_normalization(loss_param, mode, ignore):
    x, labels = _uniform((3, 4, 2, 3), -3, 3), _labels((3, 1, 2, 3), 4, seed=1)
    _, _, top, loss = forward_layer(f"type: 'SoftmaxWithLoss' {loss_param}", [x, labels])
    expected = _softmax_loss_reference(x, labels, 1, ignore, mode)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-12)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


@pytest.mark.parametrize("param, shape, label_shape, classes", [
    ("type: 'SoftmaxWithLoss'", (3, 5), (3,), 5),
    ("type: 'SoftmaxWithLoss' loss_param { ignore_label: 1 }", (2, 3, 3, 1), (2, 1, 3, 1), 3),
    ("type: 'SoftmaxWithLoss' loss_param { normalization: FULL ignore_label: 0 }", (3, 3, 2),
     (3, 2), 3),
    ("type: 'SoftmaxWithLoss' loss_param { normalization: NONE }", (3, 3, 2), (3, 2), 3),
    ("type: 'SoftmaxWithLoss' softmax_param { axis: 2 }", (2, 3, 5), (2, 3), 5),
    ("type: 'SoftmaxWithLoss' softmax_param { axis: -1 } loss_param { normalize: false }",
     (2, 3, 5), (2, 3), 5),
])
def test_softmax_loss_gradient(param, shape, label_shape, classes):
    gradient_check(param, [shape, label_shape], check_bottom=0,
                   bottom_values=[None, _labels(label_shape, classes, seed=2)])


def test_softmax_loss_probability_top():
    x, labels = _uniform((3, 4, 2)), _labels((3, 2), 4)
    layer, _, top, loss = forward_layer("type: 'SoftmaxWithLoss'", [x, labels], n_tops=2)
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(top[1].data, p, rtol=1e-12)
    assert layer.loss_weights == [1.0, 0.0]
    np.testing.assert_allclose(loss, _softmax_loss_reference(x, labels, 1, None, "VALID"))


def test_softmax_loss_all_ignored_is_zero():
    x, labels = _uniform((2, 3)), np.array([1.0, 1.0])
    layer, bottom, top, loss = forward_layer(
        "type: 'SoftmaxWithLoss' loss_param { ignore_label: 1 }", [x, labels])
    assert loss == 0
    layer.Backward(top, [True, False], bottom)
    assert not bottom[0].diff.any()


def test_softmax_loss_extreme_scores_are_finite():
    x, labels = np.array([[1000.0, -1000.0]]), np.array([1.0])
    layer, bottom, top, loss = forward_layer("type: 'SoftmaxWithLoss'", [x, labels])
    # p = exp(-2000) underflows to 0 and is clipped at FLT_MIN, as in Caffe.
    np.testing.assert_allclose(loss, -np.log(np.float32(1.1754944e-38)), rtol=1e-6)


def test_softmax_loss_label_out_of_range():
    x, labels = _uniform((3, 5)), np.array([0.0, 7.0, 2.0])
    with pytest.raises(LayerError, match=r"label value 7 .*\[0, 5\)"):
        forward_layer("type: 'SoftmaxWithLoss'", [x, labels])


def test_softmax_loss_negative_label_out_of_range():
    x, labels = _uniform((3, 5)), np.array([0.0, -1.0, 2.0])
    with pytest.raises(LayerError, match=r"label value -1 .*\[0, 5\)"):
        forward_layer("type: 'SoftmaxWithLoss'", [x, labels])


def test_softmax_loss_ignored_label_may_be_out_of_range():
    x, labels = _uniform((3, 5)), np.array([0.0, 255.0, 2.0])
    _, _, _, loss = forward_layer("type: 'SoftmaxWithLoss' loss_param { ignore_label: 255 }",
                                  [x, labels])
    assert np.isfinite(loss)


def test_softmax_loss_label_count_mismatch():
    with pytest.raises(LayerError, match="Number of labels must match number of predictions"):
        forward_layer("type: 'SoftmaxWithLoss'", [_uniform((2, 3, 4)), np.zeros((2, 3))])


@pytest.mark.parametrize("param, arrays", [
    ("type: 'SoftmaxWithLoss'", [_uniform((3, 5)), _labels((3,), 5)]),
    ("type: 'SigmoidCrossEntropyLoss'", [_uniform((3, 5)), _labels((3, 5), 2)]),
    ("type: 'HingeLoss'", [_uniform((3, 5)), _labels((3,), 5)]),
    ("type: 'MultinomialLogisticLoss'", [_uniform((3, 5), 0.1, 1), _labels((3,), 5)]),
    ("type: 'InfogainLoss'", [_uniform((3, 5), 0.1, 1), _labels((3,), 5),
                              _uniform((5, 5), 0, 1)]),
])
def test_no_gradient_to_labels(param, arrays):
    layer, bottom, top, _ = forward_layer(param, arrays)
    assert not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match="(?i)cannot backpropagate to label"):
        layer.Backward(top, [True, True] + [False] * (len(bottom) - 2), bottom)


# --- loss weights --------------------------------------------------------------------------------
LOSSES = [
    ("type: 'SoftmaxWithLoss'", [_uniform((3, 5)), _labels((3,), 5)]),
    ("type: 'EuclideanLoss'", [_uniform((3, 5)), _uniform((3, 5), seed=1)]),
    ("type: 'SigmoidCrossEntropyLoss'", [_uniform((3, 5)), _labels((3, 5), 2)]),
    ("type: 'HingeLoss' hinge_loss_param { norm: L2 }", [_uniform((3, 5)), _labels((3,), 5)]),
    ("type: 'MultinomialLogisticLoss'", [_uniform((3, 5), 0.1, 1), _labels((3,), 5)]),
    ("type: 'InfogainLoss'", [_uniform((3, 5), 0.1, 1), _labels((3,), 5),
                              _uniform((5, 5), 0, 1)]),
    ("type: 'ContrastiveLoss'", [_uniform((4, 3)), _uniform((4, 3), seed=1),
                                 np.array([0.0, 1.0, 0.0, 1.0])]),
]


@pytest.mark.parametrize("param, arrays", LOSSES)
def test_loss_weight_scales_loss_and_gradient(param, arrays):
    results = []
    for weight in ("", "loss_weight: 2"):
        layer, bottom, top, loss = forward_layer(f"{param} {weight}", arrays)
        layer.Backward(top, [True] + [False] * (len(bottom) - 1), bottom)
        results.append((loss, top[0].data.copy(), bottom[0].diff.copy()))
    (loss1, value1, diff1), (loss2, value2, diff2) = results
    assert loss1 != 0 and np.abs(diff1).sum() > 0
    np.testing.assert_allclose(value2, value1)  # the top holds the unweighted loss
    np.testing.assert_allclose(loss2, 2 * loss1, rtol=1e-12)
    np.testing.assert_allclose(diff2, 2 * diff1, rtol=1e-12)


# --- EuclideanLoss -------------------------------------------------------------------------------
def test_euclidean_gradient():
    gradient_check("type: 'EuclideanLoss'", [(3, 5), (3, 5)])


def test_euclidean_gradient_4d():
    gradient_check("type: 'EuclideanLoss'", [(3, 2, 1, 3), (3, 6)])


def test_euclidean_both_bottoms_accept_force_backward():
    layer = make_layer("type: 'EuclideanLoss'")
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)


def test_euclidean_dimension_mismatch():
    with pytest.raises(LayerError, match=r"same dimension.*\[3, 5\].*\[3, 4\]"):
        forward_layer("type: 'EuclideanLoss'", [_uniform((3, 5)), _uniform((3, 4))])


def test_euclidean_first_dimension_mismatch():
    with pytest.raises(LayerError, match="same first dimension"):
        forward_layer("type: 'EuclideanLoss'", [_uniform((3, 4)), _uniform((2, 6))])


# --- SigmoidCrossEntropyLoss ---------------------------------------------------------------------
def _sigmoid_ce_reference(x, t, ignore=None, mode="BATCH_SIZE"):
    p = 1 / (1 + np.exp(-x))
    terms = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    valid = np.ones(t.shape, bool) if ignore is None else t.astype(int) != ignore
    normalizer = {"FULL": t.size, "VALID": valid.sum(), "BATCH_SIZE": x.shape[0],
                  "NONE": 1}[mode]
    return (terms * valid).sum() / max(1, normalizer)


@pytest.mark.parametrize("loss_param, ignore, mode", [
    ("", None, "BATCH_SIZE"),
    ("loss_param { ignore_label: -1 }", -1, "BATCH_SIZE"),
    ("loss_param { ignore_label: -1 normalization: VALID }", -1, "VALID"),
    ("loss_param { normalization: FULL }", None, "FULL"),
    ("loss_param { ignore_label: -1 normalize: true }", -1, "VALID"),
])
def test_sigmoid_ce_values(loss_param, ignore, mode):
    x = _uniform((3, 4), -4, 4)
    t = np.array([[0.0, 1, -1, 0.25], [1, 1, 0, -1], [0.5, 0, 1, 1]])
    if ignore is None:
        t = np.abs(t)
    layer, bottom, top, loss = forward_layer(f"type: 'SigmoidCrossEntropyLoss' {loss_param}",
                                             [x, t])
    np.testing.assert_allclose(loss, _sigmoid_ce_reference(x, t, ignore, mode), rtol=1e-12)
    layer.Backward(top, [True, False], bottom)
    if ignore is not None:
        assert not bottom[0].diff[t == ignore].any()


@pytest.mark.parametrize("param", [
    "type: 'SigmoidCrossEntropyLoss'",
    "type: 'SigmoidCrossEntropyLoss' loss_param { ignore_label: 3 normalization: VALID }",
])
def test_sigmoid_ce_gradient(param):
    targets = np.random.default_rng(3).uniform(0, 1, size=(3, 5))
    targets[0, :2] = 3  # ignored where ignore_label is 3
    gradient_check(param, [(3, 5), (3, 5)], check_bottom=0, bottom_values=[None, targets])


def test_sigmoid_ce_is_stable_for_large_scores():
    x, t = np.array([[200.0, -200.0]]), np.array([[0.0, 1.0]])
    _, _, _, loss = forward_layer("type: 'SigmoidCrossEntropyLoss'", [x, t])
    np.testing.assert_allclose(loss, 400.0)


def test_sigmoid_ce_count_mismatch():
    with pytest.raises(LayerError, match="same count"):
        forward_layer("type: 'SigmoidCrossEntropyLoss'", [_uniform((3, 4)), _uniform((3, 5))])


# --- HingeLoss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradient(norm):
    x = _uniform((4, 5), -2, 2, seed=4)
    gradient_check(f"type: 'HingeLoss' hinge_loss_param {{ norm: {norm} }}", [(4, 5), (4,)],
                   check_bottom=0, kink=1.0, kink_range=0.01,
                   bottom_values=[x, _labels((4,), 5, seed=4)])


@pytest.mark.parametrize("norm, power", [("L1", 1), ("L2", 2)])
def test_hinge_values(norm, power):
    x, labels = _uniform((3, 4), -2, 2), _labels((3,), 4, seed=5)
    _, _, _, loss = forward_layer(f"type: 'HingeLoss' hinge_loss_param {{ norm: {norm} }}",
                                  [x, labels])
    sign = np.ones_like(x)
    sign[np.arange(3), labels.astype(int)] = -1
    expected = (np.maximum(0, 1 + sign * x) ** power).sum() / 3
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_hinge_label_out_of_range():
    with pytest.raises(LayerError, match=r"label value 4 .*\[0, 4\)"):
        forward_layer("type: 'HingeLoss'", [_uniform((2, 4)), np.array([4.0, 0.0])])


# --- MultinomialLogisticLoss ---------------------------------------------------------------------
def test_multinomial_gradient():
    gradient_check("type: 'MultinomialLogisticLoss'", [(3, 5), (3,)], check_bottom=0,
                   bottom_values=[_uniform((3, 5), 0.2, 1), _labels((3,), 5)])


def test_multinomial_clips_at_log_threshold():
    p, labels = np.array([[0.0, 1.0], [0.5, 0.5]]), np.array([0.0, 1.0])
    layer, bottom, top, loss = forward_layer("type: 'MultinomialLogisticLoss'", [p, labels])
    np.testing.assert_allclose(loss, (-np.log(1e-20) - np.log(0.5)) / 2)
    layer.Backward(top, [True, False], bottom)
    np.testing.assert_allclose(bottom[0].diff, [[-0.5e20, 0], [0, -1.0]])


def test_multinomial_label_out_of_range():
    with pytest.raises(LayerError, match=r"label value 3 .*\[0, 3\)"):
        forward_layer("type: 'MultinomialLogisticLoss'", [_uniform((2, 3), 0, 1),
                                                           np.array([3.0, 0.0])])


# --- InfogainLoss --------------------------------------------------------------------------------
def _infogain_reference(x, labels, h, axis=1, ignore=None, mode="VALID"):
    """Caffe 1.0: softmax of the scores over ``axis``, then the H-weighted log loss."""
    x = np.moveaxis(x, axis, -1)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    lab = labels.reshape(p.shape[:-1]).astype(int)
    valid = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    rows = h[np.where(valid, lab, 0)] * valid[..., None]
    outer = int(np.prod(x.shape[:axis]))
    normalizer = {"FULL": lab.size, "VALID": valid.sum(), "BATCH_SIZE": outer, "NONE": 1}[mode]
    return -(rows * np.log(np.maximum(p, 1e-20))).sum() / max(1, normalizer)


def test_infogain_golden_float64_gradient():
    """The 1.0 golden case's bottoms, gradient-checked in float64 w.r.t. the scores."""
    case = load_case("infogain_1_0")
    bottoms = [case[f"bottom_{i}"].astype(float) for i in range(3)]
    gradient_check("type: 'InfogainLoss'", [b.shape for b in bottoms], check_bottom=0,
                   bottom_values=bottoms)


def test_infogain_gradient_third_bottom():
    gradient_check("type: 'InfogainLoss'", [(3, 5), (3,), (1, 1, 5, 5)], check_bottom=0,
                   bottom_values=[_uniform((3, 5), -2, 2), _labels((3,), 5),
                                  _uniform((1, 1, 5, 5), 0, 2)])


def test_infogain_gradient_axis_and_ignore():
    param = "type: 'InfogainLoss' infogain_loss_param { axis: 2 } loss_param { ignore_label: 0 }"
    gradient_check(param, [(2, 3, 4), (2, 3), (4, 4)], check_bottom=0,
                   bottom_values=[_uniform((2, 3, 4), -2, 2), _labels((2, 3), 4, seed=3),
                                  _uniform((4, 4), 0, 2)])


# float64 throughout: numpy and torch differ only in summation order over <= 24 terms of
# magnitude <= ~10, so relative differences stay near 24 * 2.2e-16; rtol 1e-12 has margin.
def test_infogain_values_axis_and_ignore():
    x, labels, h = _uniform((2, 3, 4), -2, 2), _labels((2, 3), 4, seed=3), _uniform((4, 4), 0, 2)
    _, _, _, loss = forward_layer("type: 'InfogainLoss' infogain_loss_param { axis: 2 } "
                                  "loss_param { ignore_label: 0 }", [x, labels, h])
    np.testing.assert_allclose(loss, _infogain_reference(x, labels, h, 2, 0), rtol=1e-12)


def test_infogain_softmax_axis_is_infogain_axis():
    # 1.0 runs its internal softmax over infogain_loss_param.axis; softmax_param is not read.
    x, labels, h = _uniform((2, 3, 4), -2, 2), _labels((2, 3), 4, seed=3), _uniform((4, 4), 0, 2)
    _, _, _, loss = forward_layer("type: 'InfogainLoss' infogain_loss_param { axis: -1 } "
                                  "softmax_param { axis: 1 }", [x, labels, h])
    np.testing.assert_allclose(loss, _infogain_reference(x, labels, h, 2), rtol=1e-12)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_infogain_normalization(mode):
    x, labels, h = _uniform((2, 4, 3), -2, 2), _labels((2, 1, 3), 4, seed=1), _uniform((4, 4), 0, 2)
    param = f"type: 'InfogainLoss' loss_param {{ ignore_label: 2 normalization: {mode} }}"
    layer, bottom, top, loss = forward_layer(param, [x, labels, h])
    np.testing.assert_allclose(loss, _infogain_reference(x, labels, h, 1, 2, mode), rtol=1e-12)


def test_infogain_rejects_deprecated_normalize():
    with pytest.raises(LayerError, match='normalize is deprecated. use "normalization"'):
        forward_layer("type: 'InfogainLoss' loss_param { normalize: true }",
                      [_uniform((3, 4)), _labels((3,), 4), np.eye(4)])


def test_infogain_second_top_is_the_softmax():
    x, labels = _uniform((3, 4, 2), -2, 2), _labels((3, 2), 4)
    _, _, top, _ = forward_layer("type: 'InfogainLoss'", [x, labels, np.eye(4)], n_tops=2)
    p = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(top[1].data, p / p.sum(1, keepdims=True), rtol=1e-12)


def test_infogain_identity_matrix_is_softmax_with_loss():
    x, labels = _uniform((3, 4), -2, 2), _labels((3,), 4)
    _, _, _, infogain = forward_layer("type: 'InfogainLoss'", [x, labels, np.eye(4)])
    _, _, _, softmax = forward_layer("type: 'SoftmaxWithLoss'", [x, labels])
    np.testing.assert_allclose(infogain, softmax, rtol=1e-12)


def test_infogain_matrix_from_source(tmp_path):
    h = _uniform((4, 4), 0, 2, seed=6)
    proto = caffe_pb2.BlobProto()
    proto.num, proto.channels, proto.height, proto.width = 1, 1, 4, 4
    proto.data.extend(h.reshape(-1).tolist())
    source = tmp_path / "infogain.binaryproto"
    source.write_bytes(proto.SerializeToString())
    x, labels = _uniform((3, 4), -2, 2), _labels((3,), 4)
    _, _, _, loss = forward_layer(
        f"type: 'InfogainLoss' infogain_loss_param {{ source: '{source}' }}", [x, labels])
    expected = _infogain_reference(x, labels, h.astype(np.float32).astype(float))
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_infogain_needs_a_source():
    with pytest.raises(LayerError, match="Infogain matrix source must be specified"):
        forward_layer("type: 'InfogainLoss'", [_uniform((3, 4)), _labels((3,), 4)])


def test_infogain_missing_source_file(tmp_path):
    missing = tmp_path / "nope.binaryproto"
    with pytest.raises(LayerError, match="nope.binaryproto"):
        forward_layer(f"type: 'InfogainLoss' infogain_loss_param {{ source: '{missing}' }}",
                      [_uniform((3, 4)), _labels((3,), 4)])


def test_infogain_matrix_size():
    with pytest.raises(LayerError, match=r"4 x 4 values.*\[3, 3\]"):
        forward_layer("type: 'InfogainLoss'", [_uniform((3, 4)), _labels((3,), 4), np.eye(3)])


def test_infogain_no_gradient_to_matrix():
    layer, bottom, top, _ = forward_layer("type: 'InfogainLoss'",
                                          [_uniform((3, 4), 0.1, 1), _labels((3,), 4), np.eye(4)])
    assert not layer.allow_force_backward(2)
    with pytest.raises(LayerError, match="cannot backpropagate to infogain"):
        layer.Backward(top, [True, False, True], bottom)


def test_infogain_label_out_of_range():
    with pytest.raises(LayerError, match=r"label value 9 .*\[0, 4\)"):
        forward_layer("type: 'InfogainLoss'", [_uniform((2, 4), 0.1, 1), np.array([9.0, 0.0]),
                                               np.eye(4)])


# --- ContrastiveLoss -----------------------------------------------------------------------------
@pytest.mark.parametrize("param", [
    "type: 'ContrastiveLoss' contrastive_loss_param { margin: 1.5 }",
    "type: 'ContrastiveLoss' contrastive_loss_param { margin: 1.5 legacy_version: true }",
])
@pytest.mark.parametrize("check_bottom", [0, 1])
def test_contrastive_gradient(param, check_bottom):
    a, b = _uniform((5, 3), seed=1), _uniform((5, 3), seed=2)
    similar = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    # Keep every dissimilar pair away from the hinge's kink, and include an inactive one.
    a[4] = b[4] + 2.0
    for i in (1, 2):
        dist = np.linalg.norm(a[i] - b[i])
        assert abs(dist - 1.5) > 0.05 and abs(dist ** 2 - 1.5) > 0.05
    gradient_check(param, [(5, 3), (5, 3), (5,)], check_bottom=check_bottom,
                   bottom_values=[a, b, similar])


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_values(legacy):
    a, b = _uniform((6, 3), seed=1), _uniform((6, 3), seed=2)
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.6])  # 0.6 truncates to 0: dissimilar
    _, _, _, loss = forward_layer(f"type: 'ContrastiveLoss' contrastive_loss_param {{ margin: 1.2 "
                                  f"legacy_version: {'true' if legacy else 'false'} }}", [a, b, y])
    d2 = ((a - b) ** 2).sum(1)
    margin = float(np.float32(1.2))
    far = np.maximum(margin - d2, 0) if legacy else np.maximum(margin - np.sqrt(d2), 0) ** 2
    expected = np.where(y.astype(int) != 0, d2, far).sum() / 6 / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_contrastive_no_gradient_to_pair_labels():
    layer = make_layer("type: 'ContrastiveLoss'")
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)
    assert not layer.allow_force_backward(2)


def test_contrastive_shape_checks():
    with pytest.raises(LayerError, match="same channels"):
        forward_layer("type: 'ContrastiveLoss'", [_uniform((4, 3)), _uniform((4, 2)), np.ones(4)])


# --- Accuracy ------------------------------------------------------------------------------------
def test_accuracy_top1_and_per_class():
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1.0, 2.0, 2.0, 0.0])
    _, _, top, _ = forward_layer("type: 'Accuracy'", [scores, labels], n_tops=2)
    np.testing.assert_allclose(top[0].data, 0.75)
    np.testing.assert_allclose(top[1].data, [1.0, 1.0, 0.5])


def test_accuracy_ties_rank_larger_index_first():
    scores = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    _, _, top, _ = forward_layer("type: 'Accuracy'", [scores, np.array([0.0, 1.0])])
    np.testing.assert_allclose(top[0].data, 0.5)  # class 1 wins the tie


def test_accuracy_top_k_ignore_and_axis():
    scores = _uniform((2, 3, 5), seed=9)
    labels = _labels((2, 3), 5, seed=9)
    labels[0, 1] = -1
    _, _, top, _ = forward_layer("type: 'Accuracy' accuracy_param { top_k: 2 axis: -1 "
                                 "ignore_label: -1 }", [scores, labels], n_tops=2)
    rank = (scores > np.take_along_axis(scores, np.maximum(labels, 0).astype(int)[..., None],
                                        -1)).sum(-1)
    valid = labels != -1
    hit = (rank < 2) & valid
    np.testing.assert_allclose(top[0].data, hit.sum() / valid.sum())
    per_class = [hit[labels == c].mean() if (labels == c).any() else 0 for c in range(5)]
    np.testing.assert_allclose(top[1].data, per_class)


def test_accuracy_has_no_backward():
    layer, bottom, top, _ = forward_layer("type: 'Accuracy'", [_uniform((2, 3)), np.zeros(2)])
    layer.Backward(top, [False, False], bottom)
    with pytest.raises(LayerError, match="no backward"):
        layer.Backward(top, [True, False], bottom)


def test_accuracy_top_k_too_large():
    with pytest.raises(LayerError, match="top_k must be less than or equal"):
        forward_layer("type: 'Accuracy' accuracy_param { top_k: 4 }",
                      [_uniform((2, 3)), np.zeros(2)])


def test_accuracy_label_out_of_range():
    with pytest.raises(LayerError, match=r"label value 3 .*\[0, 3\)"):
        forward_layer("type: 'Accuracy'", [_uniform((2, 3)), np.array([0.0, 3.0])])


def test_softmax_loss_follows_bottom_reshape():
    # The layer keeps its geometry and label buffers between calls; new shapes must renew
    # them (batch and spatial size change here, and the label blob's layout).
    layer = make_layer("type: 'SoftmaxWithLoss' loss_param { ignore_label: 1 }")
    bottom = [Blob((2, 3), dtype=torch.float64), Blob((2,), dtype=torch.float64)]
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    for seed, (shape, label_shape) in enumerate([((2, 3), (2,)), ((4, 3, 2), (4, 2)),
                                                 ((5, 3), (5, 1, 1)), ((2, 3), (2,))]):
        x, labels = _uniform(shape, -3, 3, seed=seed), _labels(label_shape, 3, seed=seed)
        for blob, value in zip(bottom, (x, labels)):
            blob.reshape(value.shape)
            blob.data[...] = value
        loss = layer.Forward(bottom, top)
        expected = _softmax_loss_reference(x, labels, 1, 1, "VALID")
        np.testing.assert_allclose(loss, expected, rtol=1e-12)
        layer.Backward(top, [True, False], bottom)
        p = np.exp(x - x.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        lab = labels.reshape(shape[:1] + shape[2:]).astype(int)
        onehot = np.moveaxis(np.eye(3)[lab], -1, 1)
        valid = np.expand_dims(lab != 1, 1)
        expected_diff = (p - onehot) * valid / max(1, valid.sum())
        np.testing.assert_allclose(bottom[0].diff, expected_diff, rtol=1e-10, atol=1e-14)
