"""RNN and LSTM: recurrent layers over (T, N, ...) sequences, computed timestep by timestep.

C++ Caffe builds these as an unrolled inner net of InnerProduct, Eltwise, Scale, TanH and
LSTMUnit layers; here the same math runs directly on tensors. The parameter blobs, their order
and shapes, the role of the continuation markers and the hidden-state hand-over between calls
are Caffe's, so caffemodels and numbers carry over.
"""

from __future__ import annotations

import torch

from caffe import filler
from caffe.blob import Blob
from caffe.layer import Layer, register


class RecurrentLayer(Layer):
    """Shared base of RNN and LSTM; reads ``recurrent_param`` (``num_output`` H,
    ``weight_filler``, ``bias_filler``, ``expose_hidden``).

    Bottoms: x (T, N, ...) (D = count of the axes after the second), cont (T, N), an optional
    static input x_static (N, ...) (S values per stream) added to every timestep, and with
    expose_hidden the initial states (1, N, H) each. Tops: the output (T, N, H) and with
    expose_hidden the final states (1, N, H) each.

    cont_t multiplies the previous hidden state (and gates the LSTM's previous cell), so
    cont_t = 0 starts a new sequence. Without expose_hidden, each forward starts from the final
    states of the previous forward (zero at first), as Caffe's unrolled net does. As in Caffe,
    the exposed states carry no gradient: the diffs of the final-state tops are ignored and the
    initial-state bottoms receive zeros. Parameter diffs accumulate over time and calls.
    """

    num_states = 1  # recurrent state blobs: h (RNN), or h and c (LSTM)
    gate_multiple = 1  # rows of the input weights per hidden unit: 1 (RNN), 4 (LSTM)

    def __init__(self, param, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(param, dtype)
        self.expose_hidden = param.recurrent_param.expose_hidden
        exposed = self.num_states if self.expose_hidden else 0
        self.min_bottom = 2 + exposed
        self.max_bottom = 3 + exposed
        self.exact_num_top = 1 + exposed

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    # --- setup -------------------------------------------------------------------------------
    def param_shapes(self, input_dim: int, static_dim: int | None) -> list[tuple[list, bool]]:
        """(shape, is_bias) of each parameter blob, in Caffe's order."""
        raise NotImplementedError

    def setup(self, bottom, top):
        param = self.layer_param.recurrent_param
        self.num_output = param.num_output
        self.check(self.num_output > 0, f"num_output must be positive (got {self.num_output})")
        self._check_inputs(bottom)
        exposed = self.num_states if self.expose_hidden else 0
        self.static_input = len(bottom) > 2 + exposed
        input_dim = bottom[0].count_range(2)
        static_dim = bottom[2].count_range(1) if self.static_input else None
        shapes = self.param_shapes(input_dim, static_dim)
        if self.blobs:
            self.check([list(b.shape) for b in self.blobs] == [s for s, _ in shapes],
                       f"expects parameter blobs of shapes {[s for s, _ in shapes]}, got "
                       f"{[list(b.shape) for b in self.blobs]}")
        else:
            for shape, is_bias in shapes:
                blob = Blob(shape, dtype=self.dtype)
                filler.fill(blob, param.bias_filler if is_bias else param.weight_filler)
                self.blobs.append(blob)
        self.state = [Blob(dtype=self.dtype) for _ in range(self.num_states)]
        self.gates = Blob(dtype=self.dtype)  # pre-activations, then activations, per step
        self.dgates = Blob(dtype=self.dtype)
        self.h_conted = Blob(dtype=self.dtype)  # cont_t * h_{t-1}
        self.hidden = Blob(dtype=self.dtype)  # h_t for every step
        self.num = None
        self.reshaped_for: tuple | None = None  # (bottom shapes, top shapes) of last reshape

    def _check_inputs(self, bottom) -> None:
        x, cont = bottom[0], bottom[1]
        self.check(x.num_axes >= 2, f"bottom[0] must have at least 2 axes -- (#timesteps, "
                                    f"#streams, ...), got shape {list(x.shape)}")
        self.check(cont.num_axes == 2 and list(cont.shape) == list(x.shape[:2]),
                   f"bottom[1] (cont) must have exactly 2 axes -- (#timesteps, #streams) "
                   f"matching bottom[0]: got shape {list(cont.shape)} for bottom[0] shape "
                   f"{list(x.shape)}")

    def reshape(self, bottom, top):
        # Runs before every forward: with the bottom and top shapes as last time there is
        # nothing to check or resize.
        key = (tuple(b.shape for b in bottom), tuple(t.shape for t in top))
        if key == self.reshaped_for:
            return
        self._check_inputs(bottom)
        x = bottom[0]
        self.steps, num = x.shape[0], x.shape[1]
        hidden = self.num_output
        weight_x = self.blobs[0]
        self.check(x.count_range(2) == weight_x.shape[1],
                   f"Input size incompatible with inner product parameters: bottom[0] shape "
                   f"{list(x.shape)} gives {x.count_range(2)} inputs per step, the weights "
                   f"expect {weight_x.shape[1]}")
        if self.static_input:
            xs = bottom[2]
            self.check(xs.num_axes >= 1 and xs.shape[0] == num
                       and xs.count_range(1) == self.blobs[2].shape[1],
                       f"the static input must be (N, ...) with N = {num} and "
                       f"{self.blobs[2].shape[1]} values per stream, got shape {list(xs.shape)}")
        if self.expose_hidden:
            first = 3 if self.static_input else 2
            for j in range(self.num_states):
                b = bottom[first + j]
                self.check(list(b.shape) == [1, num, hidden],
                           f"bottom[{first + j}] shape must match hidden state input shape: "
                           f"[1, {num}, {hidden}], got {list(b.shape)}")
        if num != self.num:
            for blob in self.state:
                blob.reshape((1, num, hidden))
                blob.mutable_device_data().zero_()
            self.num = num
        width = self.gate_multiple * hidden
        self.gates.reshape((self.steps, num, width))
        self.dgates.reshape((self.steps, num, width))
        self.h_conted.reshape((self.steps, num, hidden))
        self.hidden.reshape((self.steps, num, hidden))
        top[0].reshape((self.steps, num, hidden))
        for j in range(1, len(top)):
            top[j].reshape((1, num, hidden))
        self.reshape_buffers()
        self.reshaped_for = (tuple(b.shape for b in bottom), tuple(t.shape for t in top))

    def reshape_buffers(self) -> None:
        """Shape the subclass's own work blobs (steps, num and num_output are set)."""

    # --- shared pieces of forward/backward ----------------------------------------------------
    def _initial_states(self, bottom) -> list[torch.Tensor]:
        if self.expose_hidden:
            first = 3 if self.static_input else 2
            blobs = bottom[first:first + self.num_states]
        else:
            blobs = self.state
        return [b.device_data().view(self.num, self.num_output) for b in blobs]

    def _input_transform(self, bottom) -> None:
        """gates[t] = W_x x_t + b (+ W_static x_static) for every step at once."""
        weight, bias = self.blobs[0].device_data(), self.blobs[1].device_data()
        gates = self.gates.mutable_device_data()
        x2 = bottom[0].device_data().view(self.steps * self.num, -1)
        torch.addmm(bias, x2, weight.t(), out=gates.view(self.steps * self.num, -1))
        if self.static_input:
            xs = bottom[2].device_data().view(self.num, -1)
            gates.add_((xs @ self.blobs[2].device_data().t()).unsqueeze(0))

    def _input_backward(self, propagate_down, bottom) -> None:
        """Gradients of the input transform from dgates (dE/d pre-activations)."""
        dgates = self.dgates.device_data().view(self.steps * self.num, -1)
        weight = self.blobs[0]
        if self.param_propagate_down[0]:
            x2 = bottom[0].device_data().view(self.steps * self.num, -1)
            weight.mutable_device_diff().addmm_(dgates.t(), x2)
        if self.param_propagate_down[1]:
            self.blobs[1].mutable_device_diff().add_(dgates.sum(dim=0))
        if propagate_down[0]:
            dx = bottom[0].mutable_device_diff().view(self.steps * self.num, -1)
            torch.mm(dgates, weight.device_data(), out=dx)
        if self.static_input:
            per_stream = self.dgates.device_data().sum(dim=0)  # (N, G): x_static feeds every t
            weight_static = self.blobs[2]
            if self.param_propagate_down[2]:
                xs = bottom[2].device_data().view(self.num, -1)
                weight_static.mutable_device_diff().addmm_(per_stream.t(), xs)
            if propagate_down[2]:
                dxs = bottom[2].mutable_device_diff().view(self.num, -1)
                torch.mm(per_stream, weight_static.device_data(), out=dxs)

    def _recurrent_weight_backward(self, index: int) -> None:
        if self.param_propagate_down[index]:
            dgates = self.dgates.device_data().view(self.steps * self.num, -1)
            h_conted = self.h_conted.device_data().view(self.steps * self.num, -1)
            self.blobs[index].mutable_device_diff().addmm_(dgates.t(), h_conted)

    def _finish_backward(self, propagate_down, bottom) -> None:
        self.check(not propagate_down[1], "Cannot backpropagate to sequence indicators.")
        if self.expose_hidden:
            first = 3 if self.static_input else 2
            for j in range(self.num_states):
                if propagate_down[first + j]:
                    bottom[first + j].mutable_device_diff().zero_()

    def _save_final_states(self, top, finals: list[torch.Tensor]) -> None:
        targets = top[1:] if self.expose_hidden else self.state
        for blob, value in zip(targets, finals):
            blob.mutable_device_data().view(value.shape).copy_(value)

    def reset(self) -> None:
        """Zero the hidden state carried from one forward to the next (Caffe's Reset)."""
        for blob in self.state:
            blob.mutable_device_data().zero_()


@register("RNN")
class RNNLayer(RecurrentLayer):
    """Caffe type ``RNN``: an Elman network with tanh hidden units and tanh outputs,
    h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o). Parameter blobs: W_xh (H, D), b_h (H), [W_xh_static (H, S)],
    W_hh (H, H), W_ho (H, H), b_o (H). Top: o (T, N, H) [and h_T]. See RecurrentLayer.
    """

    def param_shapes(self, input_dim, static_dim):
        h = self.num_output
        shapes = [([h, input_dim], False), ([h], True)]
        if static_dim is not None:
            shapes.append(([h, static_dim], False))
        return shapes + [([h, h], False), ([h, h], False), ([h], True)]

    def setup(self, bottom, top):
        super().setup(bottom, top)
        self.w_hh = 3 if self.static_input else 2
        self.output = Blob(dtype=self.dtype)  # o, kept apart from top for backward
        # Backward work: dE/d(W_ho h + b_o) and 1 - h^2 (T, N, H) each, and one (N, H) step.
        self.work = Blob(dtype=self.dtype)

    def reshape_buffers(self):
        self.output.reshape((self.steps, self.num, self.num_output))
        self.work.reshape((2 * self.steps + 1, self.num, self.num_output))

    def forward(self, bottom, top):
        self._input_transform(bottom)
        hidden = self.hidden.mutable_device_data()
        cont = bottom[1].device_data().unsqueeze(2).unbind(0)  # (N, 1) per step
        w_hh = self.blobs[self.w_hh].device_data().t()
        (h_prev,) = self._initial_states(bottom)
        steps = zip(self.gates.mutable_device_data().unbind(0), cont,
                    self.h_conted.mutable_device_data().unbind(0), hidden.unbind(0))
        for gate, cont_t, h_conted, h in steps:
            torch.mul(h_prev, cont_t, out=h_conted)
            torch.addmm(gate, h_conted, w_hh, out=h)
            h.tanh_()
            h_prev = h
        w_ho, b_o = self.blobs[self.w_hh + 1].device_data(), self.blobs[self.w_hh + 2].device_data()
        flat = (self.steps * self.num, self.num_output)
        output = self.output.mutable_device_data()
        torch.addmm(b_o, hidden.view(flat), w_ho.t(), out=output.view(flat))
        output.tanh_()
        top[0].mutable_device_data().copy_(output)
        self._save_final_states(top, [hidden[self.steps - 1]])

    def backward(self, top, propagate_down, bottom):
        self._finish_backward(propagate_down, bottom)
        steps = self.steps
        flat = (steps * self.num, self.num_output)
        work = self.work.mutable_device_data()
        d_out, deriv, recurrent = work[:steps], work[steps:2 * steps], work[2 * steps]
        output = self.output.device_data()
        torch.mul(output, output, out=d_out)
        d_out.sub_(1).neg_().mul_(top[0].device_diff())  # dE/do (1 - o^2)
        d_out = d_out.view(flat)
        hidden = self.hidden.device_data()
        w_ho, b_o = self.blobs[self.w_hh + 1], self.blobs[self.w_hh + 2]
        if self.param_propagate_down[self.w_hh + 1]:
            w_ho.mutable_device_diff().addmm_(d_out.t(), hidden.view(flat))
        if self.param_propagate_down[self.w_hh + 2]:
            b_o.mutable_device_diff().add_(d_out.sum(dim=0))
        dgates = self.dgates.mutable_device_data()
        torch.mm(d_out, w_ho.device_data(), out=dgates.view(flat))  # dE/dh_t from o_t
        torch.mul(hidden, hidden, out=deriv)
        deriv.sub_(1).neg_()  # tanh' = 1 - h^2
        dgates_t, deriv_t = dgates.unbind(0), deriv.unbind(0)
        cont = bottom[1].device_data().unsqueeze(2).unbind(0)
        w_hh = self.blobs[self.w_hh].device_data()
        for t in reversed(range(steps)):
            if t + 1 < steps:
                # dE/dh_t from step t + 1, through h_conted_{t+1} = cont_{t+1} h_t.
                torch.mm(dgates_t[t + 1], w_hh, out=recurrent)
                dgates_t[t].addcmul_(recurrent, cont[t + 1])
            dgates_t[t].mul_(deriv_t[t])
        self._recurrent_weight_backward(self.w_hh)
        self._input_backward(propagate_down, bottom)


@register("LSTM")
class LSTMLayer(RecurrentLayer):
    """Caffe type ``LSTM``: gate input g_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c
    [+ W_xc_static x_static], split [i, f, o, g] and fed to an LSTMUnit step (see
    ``lstm_unit``), which also zeroes the forget gate where cont_t = 0. Parameter blobs:
    W_xc (4H, D), b_c (4H), [W_xc_static (4H, S)], W_hc (4H, H). Top: h (T, N, H)
    [and h_T, c_T]. See RecurrentLayer.

    The step is LSTMUnit's math written against per-step views made once per pass (``unbind``),
    so a step costs its handful of kernels and no Python-side slicing. Backward first computes,
    for all steps at once, the factors that do not depend on the recurrence (the gate
    derivatives times their partner in the product), leaving six kernels per step.
    """

    num_states = 2
    gate_multiple = 4

    def param_shapes(self, input_dim, static_dim):
        g, h = 4 * self.num_output, self.num_output
        shapes = [([g, input_dim], False), ([g], True)]
        if static_dim is not None:
            shapes.append(([g, static_dim], False))
        return shapes + [([g, h], False)]

    def setup(self, bottom, top):
        super().setup(bottom, top)
        self.w_hc = 3 if self.static_input else 2
        self.cell = Blob(dtype=self.dtype)  # c_0 .. c_T
        self.tanh_cell = Blob(dtype=self.dtype)
        # Backward work: the per-element gate factors (T, N, 4H), o (1 - tanh(c)^2) (T, N, H),
        # and per step (N, H) each: the recurrent part of dE/dh, dE/dh, dE/dc, dE/dc_prev.
        self.gate_factor = Blob(dtype=self.dtype)
        self.out_factor = Blob(dtype=self.dtype)
        self.step_work = Blob(dtype=self.dtype)

    def reshape_buffers(self):
        state = (self.num, self.num_output)
        self.cell.reshape((self.steps + 1, *state))
        self.tanh_cell.reshape((self.steps, *state))
        self.gate_factor.reshape((self.steps, self.num, 4 * self.num_output))
        self.out_factor.reshape((self.steps, *state))
        self.step_work.reshape((4, *state))

    def _gate_views(self, gates: torch.Tensor):
        """(T, N, H) views of the i, f, o, g blocks of a (T, N, 4H) tensor."""
        return gates.split(self.num_output, dim=2)

    def forward(self, bottom, top):
        self._input_transform(bottom)
        hidden_size = self.num_output
        gates = self.gates.mutable_device_data()
        cell = self.cell.mutable_device_data()
        hidden = self.hidden.mutable_device_data()
        cont = bottom[1].device_data().unsqueeze(2).unbind(0)  # (N, 1) per step
        w_hc = self.blobs[self.w_hc].device_data().t()
        h_prev, c_0 = self._initial_states(bottom)
        cell[0].copy_(c_0)
        i, f, o, g = (v.unbind(0) for v in self._gate_views(gates))
        sigmoid_part = gates[:, :, :3 * hidden_size].unbind(0)
        steps = zip(gates.unbind(0), sigmoid_part, i, f, o, g, cont,
                    self.h_conted.mutable_device_data().unbind(0), cell[:-1].unbind(0),
                    cell[1:].unbind(0), self.tanh_cell.mutable_device_data().unbind(0),
                    hidden.unbind(0))
        for gate, ifo, i_t, f_t, o_t, g_t, cont_t, h_conted, c_prev, c, tanh_c, h in steps:
            torch.mul(h_prev, cont_t, out=h_conted)
            gate.addmm_(h_conted, w_hc)
            ifo.sigmoid_()
            g_t.tanh_()
            # cont_t = 0 starts a new sequence: the forget gate drops the previous cell.
            f_t.mul_(cont_t)
            torch.mul(f_t, c_prev, out=c)
            c.addcmul_(i_t, g_t)
            torch.tanh(c, out=tanh_c)
            torch.mul(o_t, tanh_c, out=h)
            h_prev = h
        top[0].mutable_device_data().copy_(hidden)
        self._save_final_states(top, [hidden[self.steps - 1], cell[self.steps]])

    def _step_factors(self) -> None:
        """gate_factor = [g i (1 - i), c_prev f (1 - f), tanh(c) o (1 - o), i (1 - g^2)] and
        out_factor = o (1 - tanh(c)^2), for every step. With c_term = dE/dh out_factor + dE/dc,
        the step gradient is dE/d[i, f, g] = c_term * factor, dE/do = dE/dh * factor (as
        LSTMUnit's backward; the forget-gate derivative is f (1 - f) with f gated by cont, as
        in Caffe: exact for the usual binary cont)."""
        acts = self.gates.device_data()
        factor = self.gate_factor.mutable_device_data()
        torch.mul(acts, acts, out=factor)
        torch.sub(acts, factor, out=factor)  # s (1 - s) for the sigmoid gates
        i, f, o, g = self._gate_views(acts)
        di, df, do, dg = self._gate_views(factor)
        torch.mul(g, g, out=dg)
        dg.sub_(1).neg_()
        dg.mul_(i)
        di.mul_(g)
        df.mul_(self.cell.device_data()[:-1])
        tanh_cell = self.tanh_cell.device_data()
        do.mul_(tanh_cell)
        out_factor = self.out_factor.mutable_device_data()
        torch.mul(tanh_cell, tanh_cell, out=out_factor)
        out_factor.sub_(1).neg_()
        out_factor.mul_(o)

    def backward(self, top, propagate_down, bottom):
        self._finish_backward(propagate_down, bottom)
        self._step_factors()
        hidden_size = self.num_output
        shape4 = (self.steps, self.num, 4, hidden_size)
        top_diff = top[0].device_diff().unbind(0)
        dgates = self.dgates.mutable_device_data()
        dgates_o = self._gate_views(dgates)[2].unbind(0)
        factor = self.gate_factor.device_data()
        factor_o = self._gate_views(factor)[2].unbind(0)
        out_factor = self.out_factor.device_data().unbind(0)
        f = self._gate_views(self.gates.device_data())[1].unbind(0)
        cont = bottom[1].device_data().unsqueeze(2).unbind(0)
        w_hc = self.blobs[self.w_hc].device_data()
        recurrent, dh, c_term, dc = self.step_work.mutable_device_data().unbind(0)
        dgates_t = dgates.unbind(0)
        dgates4, factor4 = dgates.view(shape4).unbind(0), factor.view(shape4).unbind(0)
        for t in reversed(range(self.steps)):
            if t + 1 < self.steps:
                # dE/dh_t from step t + 1, through h_conted_{t+1} = cont_{t+1} h_t.
                torch.mm(dgates_t[t + 1], w_hc, out=recurrent)
                torch.addcmul(top_diff[t], recurrent, cont[t + 1], out=dh)
                torch.addcmul(dc, dh, out_factor[t], out=c_term)
                dh_t = dh
            else:
                # The final cell state's diff is not propagated (Caffe: no backprop across
                # calls).
                dh_t = top_diff[t]
                torch.mul(dh_t, out_factor[t], out=c_term)
            torch.mul(factor4[t], c_term.unsqueeze(1), out=dgates4[t])
            torch.mul(factor_o[t], dh_t, out=dgates_o[t])
            if t:
                torch.mul(c_term, f[t], out=dc)
        self._recurrent_weight_backward(self.w_hc)
        self._input_backward(propagate_down, bottom)
