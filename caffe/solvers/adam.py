"""Adam (Caffe's AdamSolver, type "Adam").

Reads momentum (beta1), momentum2 (beta2) and delta (epsilon). Two history sets: m
(``history[i]``) and v (``history[n + i]``), in that order in snapshots. With t = iter + 1:

    m  <- beta1 * m + (1 - beta1) * dW
    v  <- beta2 * v + (1 - beta2) * dW^2
    dW <- local_rate * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + delta)
"""

from __future__ import annotations

import math

import torch

from caffe.solver import register_solver
from caffe.solvers.sgd import SGDSolver


@register_solver("Adam")
class AdamSolver(SGDSolver):
    """Bias-corrected running means of the gradient and its square (Kingma & Ba)."""

    def pre_solve(self) -> None:
        super().pre_solve()
        self.history += self._new_history_set()

    def compute_update_value(self, param_id: int, rate: float) -> None:
        blob = self.net.learnable_params[param_id]
        if not blob.count:
            return
        beta1 = self.param.momentum
        beta2 = self.param.momentum2
        n = len(self.net.learnable_params)
        t = self.iter + 1
        correction = math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
        g = blob.mutable_device_diff()
        m = self.history[param_id].mutable_device_data()
        v = self.history[n + param_id].mutable_device_data()
        tmp = self.temp[param_id].mutable_device_data()
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        torch.mul(g, g, out=tmp)
        v.mul_(beta2).add_(tmp, alpha=1.0 - beta2)
        torch.sqrt(v, out=tmp)
        tmp.add_(self.param.delta)
        torch.div(m, tmp, out=tmp)
        torch.mul(tmp, self.local_rate(param_id, rate) * correction, out=g)
