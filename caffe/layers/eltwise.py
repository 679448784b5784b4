"""Eltwise: combine equally shaped bottoms elementwise by product, weighted sum or maximum."""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers._helpers import Workspace
from caffe.proto import caffe_pb2

PROD = caffe_pb2.EltwiseParameter.PROD
SUM = caffe_pb2.EltwiseParameter.SUM
MAX = caffe_pb2.EltwiseParameter.MAX


@register("Eltwise")
class EltwiseLayer(Layer):
    """Eltwise, reads ``eltwise_param``: ``operation`` (SUM default, PROD, MAX), ``coeff`` (SUM
    only: none, or one per bottom) and ``stable_prod_grad`` (default true).

    Two or more bottoms of one shape; one top of that shape.
    SUM:  y = sum_i c_i x_i;  dE/dx_i = c_i dE/dy.
    PROD: y = prod_i x_i;     dE/dx_i = dE/dy * prod_{j != i} x_j (stable_prod_grad), or
          dE/dy * y / x_i (faster, but undefined where x_i = 0).
    MAX:  y = max_i x_i, remembering which bottom won (ties between the first two go to the
          second, later ties keep the earlier winner, as Caffe); dE/dx_i = dE/dy where bottom i
          won, 0 elsewhere.
    The top may be one of the bottoms: that bottom's values are then kept for backward, so
    the numbers match separate blobs.
    """

    min_bottom = 2
    exact_num_top = 1

    def __init__(self, param, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(param, dtype)
        self.workspace = Workspace()

    def setup(self, bottom, top):
        param = self.layer_param.eltwise_param
        coeffs = list(param.coeff)
        self.check(not coeffs or len(coeffs) == len(bottom),
                   f"Eltwise Layer takes one coefficient per bottom blob: {len(coeffs)} coeff(s) "
                   f"for {len(bottom)} bottoms")
        self.op = param.operation
        self.check(not (self.op == PROD and coeffs),
                   "Eltwise layer only takes coefficients for summation (operation is PROD)")
        self.coeffs = [float(c) for c in coeffs] if coeffs else [1.0] * len(bottom)
        self.stable_prod_grad = bool(param.stable_prod_grad)

    def reshape(self, bottom, top):
        for i, blob in enumerate(bottom[1:], start=1):
            self.check(blob.shape == bottom[0].shape,
                       f"bottom[{i}] has shape {list(blob.shape)} but bottom[0] has shape "
                       f"{list(bottom[0].shape)}; all bottoms must have the same shape")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _inputs(self, bottom, top, save: bool) -> list[torch.Tensor]:
        """The bottom values; one that is also the top is overwritten by forward, so forward
        keeps a copy of it (``save``) and backward reads that copy."""
        xs = [blob.device_data() for blob in bottom]
        for k, blob in enumerate(bottom):
            if blob is top[0]:
                kept = self.workspace.like("in_place_bottom", xs[k])
                if save:
                    kept.copy_(xs[k])
                xs[k] = kept
        return xs

    def _winner_dtype(self, num_bottom: int) -> torch.dtype:
        return torch.uint8 if num_bottom < 256 else torch.int32

    def forward(self, bottom, top):
        xs = self._inputs(bottom, top, save=True)
        y = top[0].mutable_device_data()
        if self.op == PROD:
            torch.mul(xs[0], xs[1], out=y)
            for x in xs[2:]:
                y.mul_(x)
        elif self.op == SUM:
            torch.mul(xs[0], self.coeffs[0], out=y)
            for x, c in zip(xs[1:], self.coeffs[1:]):
                y.add_(x, alpha=c)
        else:
            winner = self.workspace.like("max_idx", y, self._winner_dtype(len(xs)))
            took = self.workspace.like("took", y, torch.bool)
            torch.gt(xs[0], xs[1], out=took)
            torch.where(took, xs[0], xs[1], out=y)
            winner.fill_(1).masked_fill_(took, 0)
            for i, x in enumerate(xs[2:], start=2):
                torch.gt(x, y, out=took)
                torch.where(took, x, y, out=y)
                winner.masked_fill_(took, i)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].device_diff()
        xs = self._inputs(bottom, top, save=False)
        # A bottom that is also the top has dy as its diff: write it last.
        order = sorted(range(len(bottom)), key=lambda i: bottom[i] is top[0])
        for i in order:
            if not propagate_down[i]:
                continue
            dx = bottom[i].mutable_device_diff()
            if self.op == PROD:
                if self.stable_prod_grad:
                    others = [x for j, x in enumerate(xs) if j != i]
                    product = others[0]
                    if len(others) > 1:
                        product = others[0] * others[1]
                        for x in others[2:]:
                            product.mul_(x)
                else:
                    product = top[0].device_data() / xs[i]
                torch.mul(dy, product, out=dx)
            elif self.op == SUM:
                torch.mul(dy, self.coeffs[i], out=dx)
            else:
                winner = self.workspace.like("max_idx", dy, self._winner_dtype(len(bottom)))
                torch.mul(dy, winner == i, out=dx)
