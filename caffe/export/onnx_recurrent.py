"""ONNX converters for Caffe's RNN and LSTM: the input transform for all timesteps at once,
then an ONNX ``Scan`` over time whose body is one step of Caffe's recurrence.

ONNX's own LSTM/RNN ops cannot take Caffe's continuation markers (cont_t = 0 restarts a
sequence mid-batch by zeroing h_{t-1} and the forget gate), so the step is written out:
LSTM h_c = cont_t h_{t-1}, [i, f, o, g] = x_t W_xc^T + b_c (+ x_static W_static^T) + h_c W_hc^T,
c_t = cont_t sigmoid(f) c_{t-1} + sigmoid(i) tanh(g), h_t = sigmoid(o) tanh(c_t);
RNN h_t = tanh(x_t W_xh^T + b_h + (cont_t h_{t-1}) W_hh^T), o_t = tanh(h_t W_ho^T + b_o).

The graph starts from zero states (or, with ``expose_hidden``, from the state bottoms), as a
freshly built net's first forward does; caffepy without ``expose_hidden`` carries the final
state into its next forward, which matters only where a later call's cont_0 is 1.
"""

from __future__ import annotations

from onnx import helper

from caffe.export.onnx_graph import LayerContext, OnnxGraph, converter

FLOAT = 1


def _input_transform(ctx: LayerContext) -> str:
    """(T, N, G) pre-activations x_t W_x^T + b (+ x_static W_static^T) for all steps."""
    g = ctx.g
    x = g.reshape(ctx.bottoms[0], [0, 0, -1])
    y = g.op("Add", [g.op("MatMul", [x, g.const(ctx.blobs[0].T.copy(), "w_x_t")]),
                     ctx.blob_const(1, "bias")])
    if ctx.layer.static_input:
        xs = g.reshape(ctx.bottoms[2], [0, -1])
        y = g.op("Add", [y, g.op("MatMul", [xs, g.const(ctx.blobs[2].T.copy(), "w_static_t")])])
    return y


def _initial_states(ctx: LayerContext, count: int, hidden: int) -> list[str]:
    """(N, H) start states: the exposed state bottoms, or zeros of the stream count."""
    g = ctx.g
    layer = ctx.layer
    if layer.expose_hidden:
        first = 3 if layer.static_input else 2
        return [g.op("Squeeze", [b, g.ints([0], "axes")])
                for b in ctx.bottoms[first:first + count]]
    streams = g.slice(g.op("Shape", [ctx.bottoms[1]]), [1], [2], [0])
    shape = g.op("Concat", [streams, g.ints([hidden], "hidden")], axis=0)
    zeros = g.op("ConstantOfShape", [shape])
    return [zeros] * count


def _scan(ctx: LayerContext, states: list[str], gates: str, step) -> list[str]:
    """Scan ``step(body, h_prev, [c_prev], gate_t, cont_t) -> new states`` over axis 0 of
    ``gates`` and cont; returns the final states and the stacked h sequence."""
    g = ctx.g
    cont = g.op("Unsqueeze", [ctx.bottoms[1], g.ints([2], "axes")])
    body = OnnxGraph(g.opset)
    body._used = g._used  # one namespace: body values may not shadow outer ones
    body._node_names = g._node_names
    body.scope = f"{g.scope}/step"
    hidden = ctx.tshape()[-1]
    names = [body.fresh(f"{body.scope}/{n}") for n in ("h_prev", "c_prev")[:len(states)]]
    gate_t, cont_t = body.fresh(f"{body.scope}/gate_t"), body.fresh(f"{body.scope}/cont_t")
    new_states = step(body, *names, gate_t, cont_t)
    h_out = body.op("Identity", [new_states[0]])
    width = ctx.blobs[1].shape[0]
    inputs = [helper.make_tensor_value_info(n, FLOAT, [None, hidden]) for n in names] + [
        helper.make_tensor_value_info(gate_t, FLOAT, [None, width]),
        helper.make_tensor_value_info(cont_t, FLOAT, [None, 1])]
    outputs = [helper.make_tensor_value_info(n, FLOAT, None) for n in new_states + [h_out]]
    graph = helper.make_graph(body.nodes, body.scope, inputs, outputs,
                              initializer=body.initializers)
    return g.op("Scan", states + [gates, cont], n_out=len(states) + 1, body=graph,
                num_scan_inputs=2)


def _final_state_tops(ctx: LayerContext, finals: list[str]) -> list[str]:
    if not ctx.layer.expose_hidden:
        return []
    return [ctx.g.op("Unsqueeze", [s, ctx.g.ints([0], "axes")]) for s in finals]


@converter("LSTM")
def convert_lstm(ctx: LayerContext) -> list[str]:
    """LSTM (Caffe's gate order [i, f, o, g]; cont gates h_{t-1} and the forget gate)."""
    layer = ctx.layer
    hidden = layer.num_output
    w_hc_t = ctx.g.const(ctx.blobs[layer.w_hc].T.copy(), "w_hc_t")

    def step(b: OnnxGraph, h_prev, c_prev, gate_t, cont_t):
        h_c = b.op("Mul", [h_prev, cont_t])
        gates = b.op("Add", [gate_t, b.op("MatMul", [h_c, w_hc_t])])
        i, f, o, cand = b.op("Split", [gates, b.ints([hidden] * 4, "split")], n_out=4, axis=1)
        f = b.op("Mul", [cont_t, b.op("Sigmoid", [f])])
        c = b.op("Add", [b.op("Mul", [f, c_prev]),
                         b.op("Mul", [b.op("Sigmoid", [i]), b.op("Tanh", [cand])])])
        h = b.op("Mul", [b.op("Sigmoid", [o]), b.op("Tanh", [c])])
        return [h, c]

    states = _initial_states(ctx, 2, hidden)
    h_final, c_final, hs = _scan(ctx, states, _input_transform(ctx), step)
    return [hs] + _final_state_tops(ctx, [h_final, c_final])


@converter("RNN")
def convert_rnn(ctx: LayerContext) -> list[str]:
    """RNN (Elman, tanh hidden units and tanh outputs)."""
    layer, g = ctx.layer, ctx.g
    w_hh_t = g.const(ctx.blobs[layer.w_hh].T.copy(), "w_hh_t")

    def step(b: OnnxGraph, h_prev, gate_t, cont_t):
        h_c = b.op("Mul", [h_prev, cont_t])
        return [b.op("Tanh", [b.op("Add", [gate_t, b.op("MatMul", [h_c, w_hh_t])])])]

    states = _initial_states(ctx, 1, layer.num_output)
    h_final, hs = _scan(ctx, states, _input_transform(ctx), step)
    w_ho_t = g.const(ctx.blobs[layer.w_hh + 1].T.copy(), "w_ho_t")
    out = g.op("Tanh", [g.op("Add", [g.op("MatMul", [hs, w_ho_t]),
                                     ctx.blob_const(layer.w_hh + 2, "b_o")])])
    return [out] + _final_state_tops(ctx, [h_final])
