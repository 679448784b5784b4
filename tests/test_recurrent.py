import numpy as np
import pytest
import torch

from caffe.errors import LayerError
from caffe.testing import GradientChecker

from layer_case import build_layer, gradient_check, run_golden_case


@pytest.mark.parametrize("case", ["rnn", "lstm"])
def test_golden(case):
    run_golden_case(case)


FILLERS = ("weight_filler { type: 'gaussian' std: 0.5 } "
           "bias_filler { type: 'gaussian' std: 0.5 }")


def _param(kind, extra=""):
    return f"type: '{kind}' recurrent_param {{ num_output: 3 {FILLERS} {extra} }}"


# cont_1 = 0 everywhere, so the state carried in from a previous forward never matters.
CONT = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])


def _setup(prototxt, arrays, n_tops=1, seed=0):
    torch.manual_seed(seed)
    return build_layer(prototxt, arrays, n_tops)


def _x(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("x_shape", [(4, 2, 3), (4, 2, 2, 1)])
def test_gradient(kind, x_shape):
    gradient_check(_param(kind), [x_shape, CONT.shape], check_bottom=0,
                   bottom_values=[None, CONT])


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("check_bottom", [0, 2])
def test_gradient_static_input(kind, check_bottom):
    gradient_check(_param(kind), [(4, 2, 3), CONT.shape, (2, 2)], check_bottom=check_bottom,
                   bottom_values=[None, CONT, None])


@pytest.mark.parametrize("kind, shapes", [
    ("RNN", [(3, 4), (3,), (3, 3), (3, 3), (3,)]),
    ("LSTM", [(12, 4), (12,), (12, 3)]),
])
def test_parameter_blobs(kind, shapes):
    layer, _, _ = _setup(_param(kind), [_x((2, 2, 4)), CONT[:2]])
    assert [b.shape for b in layer.blobs] == shapes
    assert layer.param_propagate_down == [True] * len(shapes)


@pytest.mark.parametrize("kind, shapes", [
    ("RNN", [(3, 4), (3,), (3, 5), (3, 3), (3, 3), (3,)]),
    ("LSTM", [(12, 4), (12,), (12, 5), (12, 3)]),
])
def test_parameter_blobs_with_static_input(kind, shapes):
    layer, _, _ = _setup(_param(kind), [_x((2, 2, 4)), CONT[:2], _x((2, 5))])
    assert [b.shape for b in layer.blobs] == shapes


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _lstm_reference(x, cont, static, params, h0, c0):
    w_xc, b_c, w_static, w_hc = params
    h, c, out = h0, c0, []
    for t in range(x.shape[0]):
        hc = cont[t][:, None] * h
        gates = x[t] @ w_xc.T + b_c + static @ w_static.T + hc @ w_hc.T
        i, f, o, g = np.split(gates, 4, axis=1)
        i, f, o, g = _sigmoid(i), cont[t][:, None] * _sigmoid(f), _sigmoid(o), np.tanh(g)
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def test_lstm_static_input_and_exposed_state_against_reference():
    x, static = _x((3, 2, 4), 1), _x((2, 5), 2)
    cont = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    h0, c0 = _x((1, 2, 3), 3), _x((1, 2, 3), 4)
    layer, bottom, top = _setup(_param("LSTM", "expose_hidden: true"),
                                [x, cont, static, h0, c0], n_tops=3)
    layer.Forward(bottom, top)
    params = [b.data for b in layer.blobs]
    out, h_last, c_last = _lstm_reference(x, cont, static, params, h0[0], c0[0])
    np.testing.assert_allclose(top[0].data, out, rtol=1e-12)
    np.testing.assert_allclose(top[1].data[0], h_last, rtol=1e-12)
    np.testing.assert_allclose(top[2].data[0], c_last, rtol=1e-12)


def test_rnn_static_input_and_exposed_state_against_reference():
    x, static = _x((3, 2, 4), 1), _x((2, 5), 2)
    cont = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    h0 = _x((1, 2, 3), 3)
    layer, bottom, top = _setup(_param("RNN", "expose_hidden: true"),
                                [x, cont, static, h0], n_tops=2)
    layer.Forward(bottom, top)
    w_xh, b_h, w_static, w_hh, w_ho, b_o = [b.data for b in layer.blobs]
    h, outs = h0[0], []
    for t in range(3):
        h = np.tanh(x[t] @ w_xh.T + b_h + static @ w_static.T + (cont[t][:, None] * h) @ w_hh.T)
        outs.append(np.tanh(h @ w_ho.T + b_o))
    np.testing.assert_allclose(top[0].data, np.stack(outs), rtol=1e-12)
    np.testing.assert_allclose(top[1].data[0], h, rtol=1e-12)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_exposed_state_splits_a_sequence(kind):
    n_states = 2 if kind == "LSTM" else 1
    x = _x((4, 2, 3), 5)
    cont = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    zeros = [np.zeros((1, 2, 3))] * n_states
    param = _param(kind, "expose_hidden: true")
    whole, wb, wt = _setup(param, [x, cont] + zeros, n_tops=1 + n_states)
    whole.Forward(wb, wt)
    first, fb, ft = _setup(param, [x[:2], cont[:2]] + zeros, n_tops=1 + n_states)
    for blob, ref in zip(first.blobs, whole.blobs):
        blob.data[...] = ref.data
    first.Forward(fb, ft)
    states = [t.data.copy() for t in ft[1:]]
    second, sb, st = _setup(param, [x[2:], cont[2:]] + states, n_tops=1 + n_states)
    for blob, ref in zip(second.blobs, whole.blobs):
        blob.data[...] = ref.data
    second.Forward(sb, st)
    np.testing.assert_allclose(np.concatenate([ft[0].data, st[0].data]), wt[0].data,
                               rtol=1e-12)
    for got, want in zip(st[1:], wt[1:]):
        np.testing.assert_allclose(got.data, want.data, rtol=1e-12)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_exposed_state_has_no_gradient(kind):
    # Caffe 1.0 shares only the data of the exposed states: h_0/c_0 get no gradient and the
    # diffs of h_T/c_T are ignored. The gradient through the output still checks out.
    n_states = 2 if kind == "LSTM" else 1
    x = _x((3, 2, 3), 6)
    cont = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    states = [_x((1, 2, 3), 7 + j) for j in range(n_states)]
    layer, bottom, top = _setup(_param(kind, "expose_hidden: true"), [x, cont] + states,
                                n_tops=1 + n_states)
    checker = GradientChecker(1e-3, 1e-3)
    for j in (0, 4, 11, 17):
        checker.check_gradient_single(layer, bottom, top, 0, 0, j)
    layer.Forward(bottom, top)
    top[0].diff[...] = 1
    for blob in top[1:]:
        blob.diff[...] = 5
    for blob in bottom[2:]:
        blob.diff[...] = 9
    layer.Backward(top, [True, False] + [True] * n_states, bottom)
    for blob in bottom[2:]:
        assert not blob.diff.any()
    without = bottom[0].diff.copy()
    for blob in top[1:]:
        blob.diff[...] = 0
    layer.Backward(top, [True, False] + [True] * n_states, bottom)
    np.testing.assert_array_equal(bottom[0].diff, without)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_state_carries_over_between_forwards(kind):
    x = _x((4, 2, 3), 8)
    whole, wb, wt = _setup(_param(kind), [x, CONT])
    whole.Forward(wb, wt)
    layer, bottom, top = _setup(_param(kind), [x[:2], CONT[:2]])
    for blob, ref in zip(layer.blobs, whole.blobs):
        blob.data[...] = ref.data
    layer.Forward(bottom, top)
    first = top[0].data.copy()
    bottom[0].data[...] = x[2:]
    bottom[1].data[...] = CONT[2:]
    layer.Forward(bottom, top)
    np.testing.assert_allclose(np.concatenate([first, top[0].data]), wt[0].data, rtol=1e-12)
    # cont = 0 starts afresh; reset() forgets the carried state.
    bottom[1].data[...] = 0
    layer.Forward(bottom, top)
    restarted = top[0].data.copy()
    layer.reset()
    bottom[1].data[...] = 1
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data[0], restarted[0], rtol=1e-12)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_param_diffs_accumulate(kind):
    layer, bottom, top = _setup(_param(kind), [_x((4, 2, 3)), CONT])
    layer.Forward(bottom, top)
    top[0].diff[...] = _x(top[0].shape, 3)
    layer.Backward(top, [True, False], bottom)
    once = [b.diff.copy() for b in layer.blobs]
    dx = bottom[0].diff.copy()
    layer.Backward(top, [True, False], bottom)
    for blob, ref in zip(layer.blobs, once):
        assert np.abs(ref).sum() > 0
        np.testing.assert_allclose(blob.diff, 2 * ref, rtol=1e-12)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-12)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_no_gradient_to_cont(kind):
    layer, bottom, top = _setup(_param(kind), [_x((4, 2, 3)), CONT])
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    layer.Forward(bottom, top)
    with pytest.raises(LayerError, match="Cannot backpropagate to sequence indicators"):
        layer.Backward(top, [True, True], bottom)


def test_num_output_must_be_positive():
    with pytest.raises(LayerError, match="num_output must be positive"):
        _setup("type: 'LSTM' recurrent_param { num_output: 0 }", [_x((2, 2, 3)), CONT[:2]])


def test_cont_shape_must_match():
    with pytest.raises(LayerError, match=r"bottom\[1\] \(cont\).*\[2, 3\].*\[2, 2, 3\]"):
        _setup(_param("RNN"), [_x((2, 2, 3)), np.ones((2, 3))])


def test_input_size_change_is_refused():
    layer, bottom, top = _setup(_param("LSTM"), [_x((2, 2, 3)), CONT[:2]])
    bottom[0].reshape((2, 2, 4))
    with pytest.raises(LayerError, match="Input size incompatible"):
        layer.Forward(bottom, top)


def test_exposed_state_shape():
    with pytest.raises(LayerError, match=r"hidden state input shape: \[1, 2, 3\], got \[1, 2, 4\]"):
        _setup(_param("RNN", "expose_hidden: true"),
               [_x((2, 2, 3)), CONT[:2], np.zeros((1, 2, 4))], n_tops=2)


def test_blob_counts_follow_expose_hidden():
    with pytest.raises(LayerError, match="produces 3 top blob"):
        _setup(_param("LSTM", "expose_hidden: true"),
               [_x((2, 2, 3)), CONT[:2], np.zeros((1, 2, 3)), np.zeros((1, 2, 3))])


# --- LSTMUnit ------------------------------------------------------------------------------------
UNIT_SHAPES = [(1, 3, 4), (1, 3, 16), (1, 3)]
UNIT_CONT = np.array([[1.0, 0.0, 1.0]])


@pytest.mark.parametrize("check_bottom", [0, 1])
def test_lstm_unit_gradient(check_bottom):
    gradient_check("type: 'LSTMUnit'", UNIT_SHAPES, check_bottom=check_bottom, n_tops=2,
                   bottom_values=[None, None, UNIT_CONT])


def test_lstm_unit_forward():
    c_prev, gates = _x((1, 3, 4), 1), _x((1, 3, 16), 2)
    layer, bottom, top = _setup("type: 'LSTMUnit'", [c_prev, gates, UNIT_CONT], n_tops=2)
    layer.Forward(bottom, top)
    i, f, o, g = np.split(gates[0], 4, axis=1)
    c = UNIT_CONT[0][:, None] * _sigmoid(f) * c_prev[0] + _sigmoid(i) * np.tanh(g)
    np.testing.assert_allclose(top[0].data[0], c, rtol=1e-12)
    np.testing.assert_allclose(top[1].data[0], _sigmoid(o) * np.tanh(c), rtol=1e-12)


def test_lstm_unit_errors():
    layer, bottom, top = _setup("type: 'LSTMUnit'", [_x(s) for s in UNIT_SHAPES[:2]]
                                + [UNIT_CONT], n_tops=2)
    layer.Forward(bottom, top)
    assert not layer.allow_force_backward(2)
    with pytest.raises(LayerError, match="Cannot backpropagate to sequence indicators"):
        layer.Backward(top, [True, True, True], bottom)
    with pytest.raises(LayerError, match=r"4 \* H = 16"):
        _setup("type: 'LSTMUnit'", [_x((1, 3, 4)), _x((1, 3, 12)), UNIT_CONT], n_tops=2)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_bottom_reshape_between_passes(kind):
    # The layer skips its checks and buffer reshapes while the bottom shapes stay the same;
    # new step counts and stream counts must still give a fresh layer's numbers.
    layer, bottom, top = _setup(_param(kind), [_x((4, 2, 3)), CONT])
    layer.Forward(bottom, top)
    rng = np.random.default_rng(11)
    for steps, num in [(3, 2), (5, 3), (4, 2)]:
        x = _x((steps, num, 3), steps + num)
        cont = (rng.uniform(size=(steps, num)) > 0.3).astype(float)
        cont[0] = 0  # the state carried over from the previous call must not matter
        for blob, value in zip(bottom, (x, cont)):
            blob.reshape(value.shape)
            blob.data[...] = value
        fresh, fb, ft = _setup(_param(kind), [x, cont])
        for blob, ref in zip(fresh.blobs, layer.blobs):
            blob.data[...] = ref.data
        dy = _x((steps, num, 3), 7)
        for lay, b, t in ((layer, bottom, top), (fresh, fb, ft)):
            for blob in lay.blobs:
                blob.diff[...] = 0
            lay.Forward(b, t)
            t[0].diff[...] = dy
            lay.Backward(t, [True, False], b)
        np.testing.assert_allclose(top[0].data, ft[0].data, rtol=1e-12)
        np.testing.assert_allclose(bottom[0].diff, fb[0].diff, rtol=1e-12)
        for blob, ref in zip(layer.blobs, fresh.blobs):
            np.testing.assert_allclose(blob.diff, ref.diff, rtol=1e-12)
