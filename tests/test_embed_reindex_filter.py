"""Embed, BatchReindex and Filter: layers driven by an index or selector bottom
(caffe/layers/embed.py, batch_reindex.py, filter.py)."""

import numpy as np
import pytest
import torch

from caffe.blob import Blob
from caffe.errors import LayerError

from layer_case import gradient_check, make_layer, run_golden_case


@pytest.mark.parametrize("case", ["embed", "batch_reindex", "filter"])
def test_golden(case):
    run_golden_case(case)


def blob(values) -> Blob:
    values = np.asarray(values, dtype=np.float64)
    b = Blob(values.shape, dtype=torch.float64)
    b.data[...] = values
    return b


# --- Embed -------------------------------------------------------------------------------------
EMBED = ("type: 'Embed' embed_param {{ num_output: 3 input_dim: 5 bias_term: {bias} "
         "weight_filler {{ type: 'gaussian' }} bias_filler {{ type: 'gaussian' }} }}")


@pytest.mark.parametrize("bias", ["true", "false"])
def test_embed_forward_and_param_gradient(bias):
    indices = np.array([[4.0, 0.0, 4.0], [2.0, 2.0, 1.0]])  # repeats accumulate
    layer = make_layer(EMBED.format(bias=bias))
    bottom, top = blob(indices), Blob(dtype=torch.float64)
    layer.SetUp([bottom], [top])
    assert top.shape == (2, 3, 3)
    assert [b.shape for b in layer.blobs] == [(5, 3)] + ([(3,)] if bias == "true" else [])
    layer.Forward([bottom], [top])
    w = layer.blobs[0].data
    b = layer.blobs[1].data if bias == "true" else 0
    np.testing.assert_allclose(top.data, w[indices.astype(int)] + b, rtol=1e-12)
    gradient_check(EMBED.format(bias=bias), [indices.shape], check_bottom=-2,
                   bottom_values=[indices])


def test_embed_rejects_bad_indices():
    layer = make_layer("name: 'emb' " + EMBED.format(bias="true"))
    for bad, shown in [([0.0, 5.0], r"\[5.0\]"), ([-1.0, 2.0], r"\[-1.0\]"),
                       ([1.5, 2.0], r"\[1.5\]")]:
        bottom, top = blob(bad), Blob(dtype=torch.float64)
        layer.SetUp([bottom], [top])
        with pytest.raises(LayerError, match=r"Embed layer 'emb': Embed indices must be "
                                             rf"integers in \[0, 5\); got {shown}"):
            layer.Forward([bottom], [top])


def test_embed_no_gradient_to_indices():
    layer = make_layer(EMBED.format(bias="true"))
    bottom, top = blob([1.0, 2.0]), Blob(dtype=torch.float64)
    layer.SetUp([bottom], [top])
    layer.Forward([bottom], [top])
    assert not layer.allow_force_backward(0)
    with pytest.raises(LayerError, match="Can't backpropagate to EmbedLayer input"):
        layer.Backward([top], [True], [bottom])


@pytest.mark.parametrize("param, message", [
    ("embed_param { input_dim: 5 }", "num_output must be positive"),
    ("embed_param { num_output: 5 }", "input_dim must be positive"),
])
def test_embed_param_errors(param, message):
    layer = make_layer(f"type: 'Embed' {param}")
    with pytest.raises(LayerError, match=message):
        layer.SetUp([blob([1.0])], [Blob(dtype=torch.float64)])


# --- BatchReindex ------------------------------------------------------------------------------
def test_batch_reindex_forward_and_accumulating_backward():
    x = np.arange(12.0).reshape(4, 3)
    index = np.array([3.0, 0.0, 3.0, 3.0, 1.0])
    layer = make_layer("type: 'BatchReindex'")
    bottom, top = [blob(x), blob(index)], Blob(dtype=torch.float64)
    layer.SetUp(bottom, [top])
    layer.Forward(bottom, [top])
    np.testing.assert_array_equal(top.data, x[[3, 0, 3, 3, 1]])
    top.diff[...] = np.arange(1.0, 6.0)[:, None]
    layer.Backward([top], [True, False], bottom)
    # Item 3 was taken three times (diffs 1, 3, 4); item 2 never.
    np.testing.assert_array_equal(bottom[0].diff[:, 0], [2, 5, 0, 8])


@pytest.mark.parametrize("shape", [(4, 3), (5, 2, 3)])
def test_batch_reindex_gradient(shape):
    index = np.array([2.0, 0.0, 2.0, 3.0, 3.0, 1.0, 2.0])
    gradient_check("type: 'BatchReindex'", [shape, index.shape], check_bottom=0,
                   bottom_values=[None, index])


@pytest.mark.parametrize("index, shape, message", [
    ([0.0, 4.0], (4, 3), r"indices \(batch size 4\) must be values in \[0, 4\); got \[4.0\]"),
    ([-1.0], (4, 3), r"indices .*got \[-1.0\]"),
    ([[0.0]], (4, 3), r"the index bottom must be 1-D, got shape \[1, 1\]"),
])
def test_batch_reindex_errors(index, shape, message):
    layer = make_layer("name: 'br' type: 'BatchReindex'")
    bottom, top = [blob(np.zeros(shape)), blob(index)], Blob(dtype=torch.float64)
    with pytest.raises(LayerError, match=f"BatchReindex layer 'br': {message}"):
        layer.SetUp(bottom, [top])
        layer.Forward(bottom, [top])


def test_batch_reindex_no_gradient_to_indices():
    layer = make_layer("type: 'BatchReindex'")
    bottom, top = [blob(np.zeros((2, 2))), blob([1.0])], Blob(dtype=torch.float64)
    layer.SetUp(bottom, [top])
    layer.Forward(bottom, [top])
    assert not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match="Cannot backprop to index"):
        layer.Backward([top], [True, True], bottom)


# --- Filter ------------------------------------------------------------------------------------
def test_filter_two_bottoms_variable_size():
    a = np.arange(15.0).reshape(5, 3)
    b = np.arange(10.0).reshape(5, 2, 1) * -1
    selector = np.array([0.0, 1.0, 0.0, 2.5, 1.0])
    layer = make_layer("type: 'Filter'")
    bottom = [blob(a), blob(b), blob(selector)]
    top = [Blob(dtype=torch.float64), Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    assert top[0].shape == (5, 3)  # before any forward, as Caffe
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, a[[1, 3, 4]])
    np.testing.assert_array_equal(top[1].data, b[[1, 3, 4]])
    top[0].diff[...] = 1
    top[1].diff[...] = 2
    bottom[0].diff[...] = 9  # stale values must be cleared
    layer.Backward(top, [True, True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff[:, 0], [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(bottom[1].diff[:, 0, 0], [0, 2, 0, 2, 2])
    # The selection follows the selector on the next forward.
    bottom[2].data[...] = 0
    layer.Forward(bottom, top)
    assert top[0].shape == (0, 3)
    layer.Backward(top, [True, True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)


@pytest.mark.parametrize("shape", [(6, 3), (6, 2, 3)])
def test_filter_gradient(shape):
    selector = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    gradient_check("type: 'Filter'", [shape, selector.shape], check_bottom=0,
                   bottom_values=[None, selector])


@pytest.mark.parametrize("shapes, n_tops, message", [
    ([(4, 3), (4, 2)], 1, r"Selector blob dimensions must be singletons \(1\), except the "
                          r"first; got shape \[4, 2\]"),
    ([(4, 3), (5,)], 1, r"same 0th dimension as the selector blob: bottom\[0\] has shape "
                        r"\[4, 3\], the selector \[5\]"),
    ([(4, 3), (4,)], 2, "needs one top per filtered bottom"),
])
def test_filter_errors(shapes, n_tops, message):
    layer = make_layer("type: 'Filter'")
    with pytest.raises(LayerError, match=message):
        layer.SetUp([blob(np.ones(s)) for s in shapes], [Blob() for _ in range(n_tops)])


def test_filter_no_gradient_to_selector():
    layer = make_layer("type: 'Filter' bottom: 'a' bottom: 'sel'")
    bottom, top = [blob(np.ones((2, 2))), blob([1.0, 0.0])], [Blob(dtype=torch.float64)]
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match="cannot backpropagate to the selector"):
        layer.Backward(top, [True, True], bottom)
