import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from layer_case import blobs_of, gradient_check, make_layer, random_blobs, run_golden_case


@pytest.mark.parametrize("case", ["scale_bias", "scale_two_bottoms", "bias"])
def test_golden(case):
    run_golden_case(case)


GAUSS = "filler { type: 'gaussian' std: 1 }"


@pytest.mark.parametrize("param, shapes", [
    (f"type: 'Scale' scale_param {{ {GAUSS} }}", [(2, 3, 5)]),
    (f"type: 'Scale' scale_param {{ bias_term: true {GAUSS} "
     f"bias_filler {{ type: 'gaussian' std: 1 }} }}", [(3, 5, 2, 3)]),
    (f"type: 'Scale' scale_param {{ axis: 1 num_axes: -1 {GAUSS} }}", [(2, 3, 5)]),
    (f"type: 'Scale' scale_param {{ axis: 0 num_axes: 2 {GAUSS} }}", [(3, 5, 2)]),
    (f"type: 'Scale' scale_param {{ num_axes: 0 bias_term: true {GAUSS} }}", [(3, 5)]),
    (f"type: 'Scale' scale_param {{ axis: -1 {GAUSS} }}", [(3, 2, 5)]),
    ("type: 'Scale' scale_param { axis: 0 }", [(3, 5, 2), (3, 5)]),
    ("type: 'Scale' scale_param { axis: 1 bias_term: true }", [(3, 5, 2), (5, 2)]),
    ("type: 'Scale'", [(3, 5, 2), (1,)]),
    ("type: 'Scale' scale_param { axis: 0 }", [(3, 5), (3, 5)]),
    (f"type: 'Bias' bias_param {{ {GAUSS} }}", [(2, 3, 5)]),
    (f"type: 'Bias' bias_param {{ axis: 0 num_axes: -1 {GAUSS} }}", [(3, 5)]),
    ("type: 'Bias' bias_param { axis: 1 }", [(3, 5, 2), (5, 2)]),
    ("type: 'Bias'", [(3, 5, 2), (1,)]),
])
def test_gradient(param, shapes):
    # A (1,) shape stands for a scalar second bottom (0 axes), given as a value.
    values = [np.array(0.7) if s == (1,) else None for s in shapes]
    gradient_check(param, shapes, bottom_values=values)


def test_default_fillers_give_identity():
    layer = make_layer("type: 'Scale' scale_param { bias_term: true }")
    bottom = random_blobs([(2, 3, 4)])
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, bottom[0].data)


def test_scale_and_bias_values():
    layer = make_layer("type: 'Scale' scale_param { axis: 1 num_axes: 2 bias_term: true }")
    bottom = random_blobs([(2, 3, 4, 5)])
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    scale = np.arange(12.0).reshape(3, 4)
    bias = -np.arange(12.0).reshape(3, 4) / 7
    layer.blobs[0].data[...] = scale
    layer.blobs[1].data[...] = bias
    layer.Forward(bottom, top)
    expected = bottom[0].data * scale[None, :, :, None] + bias[None, :, :, None]
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-14)


def _run(prototxt, bottoms, dy, in_place, params):
    layer = make_layer(prototxt)
    bottom = blobs_of(bottoms)
    top = [bottom[0]] if in_place else [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    for blob, values in zip(layer.blobs, params):
        blob.data[...] = values
    layer.Forward(bottom, top)
    y = top[0].data.copy()
    top[0].diff[...] = dy
    layer.Backward(top, [True] * len(bottom), bottom)
    return y, [b.diff.copy() for b in bottom], [b.diff.copy() for b in layer.blobs]


@pytest.mark.parametrize("prototxt, extra", [
    ("type: 'Scale' scale_param { bias_term: true }", []),
    ("type: 'Scale' scale_param { axis: 0 num_axes: -1 }", []),
    ("type: 'Scale' scale_param { axis: 1 bias_term: true }", [(3, 4)]),
    ("type: 'Bias'", []),
    ("type: 'Bias' bias_param { axis: 1 }", [(3, 4)]),
])
def test_in_place_matches_out_of_place(prototxt, extra):
    rng = np.random.default_rng(4)
    x, dy = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    bottoms = [x] + [rng.normal(size=s) for s in extra]
    probe = make_layer(prototxt)
    probe.SetUp(blobs_of(bottoms), [Blob(dtype=torch.float64)])
    params = [rng.normal(size=b.shape) for b in probe.blobs]
    ref = _run(prototxt, bottoms, dy, False, params)
    got = _run(prototxt, bottoms, dy, True, params)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-13)
    for a, b in zip(got[1] + got[2], ref[1] + ref[2]):
        np.testing.assert_allclose(a, b, rtol=1e-13)
        assert np.abs(b).sum() > 0


def test_param_diffs_accumulate_and_bottom_diffs_overwrite():
    layer = make_layer("type: 'Scale' scale_param { bias_term: true "
                       "filler { type: 'constant' value: 2 } }")
    bottom = random_blobs([(2, 3, 4)])
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    top[0].diff[...] = 1
    layer.Backward(top, [True], bottom)
    first = [b.diff.copy() for b in layer.blobs]
    layer.Backward(top, [True], bottom)
    for blob, once in zip(layer.blobs, first):
        np.testing.assert_allclose(blob.diff, 2 * once)
    np.testing.assert_allclose(bottom[0].diff, 2.0)


def test_two_bottom_scale_diff_is_overwritten():
    layer = make_layer("type: 'Scale' scale_param { axis: 0 }")
    bottom = random_blobs([(2, 3), (2,)])
    top = [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    top[0].diff[...] = 1
    bottom[1].diff[...] = 100
    layer.Backward(top, [False, True], bottom)
    np.testing.assert_allclose(bottom[1].diff, bottom[0].data.sum(axis=1))


def test_shape_mismatch_names_both_shapes():
    layer = make_layer("type: 'Scale' scale_param { axis: 1 }")
    with pytest.raises(LayerError, match=r"scale shape \[4\] does not match bottom\[0\] shape "
                                         r"\[2, 3, 5\]"):
        layer.SetUp(random_blobs([(2, 3, 5), (4,)]), [Blob(dtype=torch.float64)])


def test_bias_shape_mismatch_names_both_shapes():
    layer = make_layer("type: 'Bias' bias_param { axis: 0 }")
    with pytest.raises(LayerError, match=r"bias shape \[3, 3\] does not match bottom\[0\] "
                                         r"shape \[2, 3\]"):
        layer.SetUp(random_blobs([(2, 3), (3, 3)]), [Blob(dtype=torch.float64)])


def test_operand_past_the_end():
    layer = make_layer("type: 'Scale' scale_param { axis: 1 num_axes: 3 }")
    with pytest.raises(LayerError, match="extends past bottom"):
        layer.SetUp(random_blobs([(2, 3, 4)]), [Blob(dtype=torch.float64)])


def test_bad_num_axes():
    layer = make_layer("type: 'Bias' bias_param { num_axes: -2 }")
    with pytest.raises(LayerError, match="num_axes must be non-negative"):
        layer.SetUp(random_blobs([(2, 3, 4)]), [Blob(dtype=torch.float64)])


def test_bad_axis():
    layer = make_layer("type: 'Scale' scale_param { axis: 3 }")
    with pytest.raises(LayerError, match="axis"):
        layer.SetUp(random_blobs([(2, 3, 4)]), [Blob(dtype=torch.float64)])
