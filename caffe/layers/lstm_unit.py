"""LSTMUnit: one LSTM timestep from the previous cell state and the gate pre-activations."""

from __future__ import annotations

import torch

from caffe.blob import Blob
from caffe.layer import Layer, register


def lstm_unit_forward(c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor,
                      c: torch.Tensor, h: torch.Tensor, tanh_c: torch.Tensor) -> None:
    """One LSTM step over (N, H) states; ``gates`` (N, 4H) holds the pre-activations in
    Caffe's order [i, f, o, g] and is overwritten with the activations
    i = sigmoid, f = cont * sigmoid, o = sigmoid, g = tanh (f already gated by ``cont`` (N)).
    Writes c = f * c_prev + i * g, tanh_c = tanh(c) and h = o * tanh_c."""
    hidden = c_prev.shape[-1]
    gates[:, :3 * hidden].sigmoid_()
    gates[:, 3 * hidden:].tanh_()
    i, f, o, g = gates.split(hidden, dim=1)
    # cont_t = 0 starts a new sequence: the forget gate drops the previous cell entirely.
    f.mul_(cont.unsqueeze(1))
    torch.mul(f, c_prev, out=c)
    c.addcmul_(i, g)
    torch.tanh(c, out=tanh_c)
    torch.mul(o, tanh_c, out=h)


def lstm_unit_backward(c_prev: torch.Tensor, acts: torch.Tensor, tanh_c: torch.Tensor,
                       dc: torch.Tensor | None, dh: torch.Tensor, dgates: torch.Tensor,
                       dc_prev: torch.Tensor | None) -> None:
    """Gradients of one step (``acts``: the activations ``lstm_unit_forward`` left in
    ``gates``). ``dc``/``dh``: dE/dc and dE/dh (``dc`` None means 0). Writes dE/d(pre-activation)
    into ``dgates`` (N, 4H) and, when given, dE/dc_prev = (dc + dh o (1 - tanh_c^2)) f.

    As in Caffe, the forget-gate derivative is f (1 - f) with f = cont * sigmoid: exact for the
    usual binary cont."""
    hidden = c_prev.shape[-1]
    i, f, o, g = acts.split(hidden, dim=1)
    di, df, do, dg = dgates.split(hidden, dim=1)
    c_term = dh * o * (1 - tanh_c * tanh_c)
    if dc is not None:
        c_term += dc
    torch.mul(c_term * g, i * (1 - i), out=di)
    torch.mul(c_term * c_prev, f * (1 - f), out=df)
    torch.mul(dh * tanh_c, o * (1 - o), out=do)
    torch.mul(c_term * i, 1 - g * g, out=dg)
    if dc_prev is not None:
        torch.mul(c_term, f, out=dc_prev)


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """Caffe type ``LSTMUnit``; reads no parameter message.

    Bottoms: c_prev (1, N, H), gate pre-activations (1, N, 4H) ordered [i, f, o, g], and the
    continuation markers cont (1, N). Tops: c (1, N, H) and h (1, N, H) with
    i, o = sigmoid, f = cont * sigmoid, g = tanh, c = f * c_prev + i * g, h = o * tanh(c).
    No gradient reaches cont.
    """

    exact_num_bottom = 3
    exact_num_top = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def setup(self, bottom, top):
        self.acts = Blob(dtype=self.dtype)
        self.tanh_c = Blob(dtype=self.dtype)

    def reshape(self, bottom, top):
        shapes = [list(b.shape) for b in bottom]
        num = bottom[0].shape[1] if bottom[0].num_axes > 1 else -1
        for i, b in enumerate(bottom):
            axes = 2 if i == 2 else 3
            self.check(b.num_axes == axes and b.shape[0] == 1 and b.shape[1] == num,
                       f"expects c_prev (1, N, H), gates (1, N, 4H) and cont (1, N); got "
                       f"bottom shapes {shapes}")
        self.hidden = bottom[0].shape[2]
        self.num = num
        self.check(bottom[1].shape[2] == 4 * self.hidden,
                   f"the gate input must have 4 * H = {4 * self.hidden} channels, got "
                   f"bottom shapes {shapes}")
        top[0].reshape_like(bottom[0])
        top[1].reshape_like(bottom[0])
        self.acts.reshape((self.num, 4 * self.hidden))
        self.tanh_c.reshape((self.num, self.hidden))

    def forward(self, bottom, top):
        shape = (self.num, self.hidden)
        acts = self.acts.mutable_device_data()
        acts.copy_(bottom[1].device_data().view(acts.shape))
        lstm_unit_forward(bottom[0].device_data().view(shape), acts,
                          bottom[2].device_data().view(self.num),
                          top[0].mutable_device_data().view(shape),
                          top[1].mutable_device_data().view(shape),
                          self.tanh_c.mutable_device_data())

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[2], "Cannot backpropagate to sequence indicators.")
        if not (propagate_down[0] or propagate_down[1]):
            return
        shape = (self.num, self.hidden)
        dgates = bottom[1].mutable_device_diff().view(self.num, 4 * self.hidden)
        if not propagate_down[1]:
            dgates = torch.empty_like(dgates)
        dc_prev = bottom[0].mutable_device_diff().view(shape) if propagate_down[0] else None
        lstm_unit_backward(bottom[0].device_data().view(shape), self.acts.device_data(),
                           self.tanh_c.device_data(), top[0].device_diff().view(shape),
                           top[1].device_diff().view(shape), dgates, dc_prev)
