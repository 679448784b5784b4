"""AdaDelta (Caffe's AdaDeltaSolver, type "AdaDelta").

Reads momentum (the decay of both running means) and delta. Two history sets: G (squared
gradients, ``history[i]``) and D (squared updates, ``history[n + i]``, n = number of
learnable parameters), in that order in snapshots:

    G  <- momentum * G + (1 - momentum) * dW^2
    dW <- dW * sqrt((D + delta) / (G + delta))
    D  <- momentum * D + (1 - momentum) * dW^2
    dW <- local_rate * dW
"""

from __future__ import annotations

import torch

from caffe.solver import register_solver
from caffe.solvers.sgd import SGDSolver


@register_solver("AdaDelta")
class AdaDeltaSolver(SGDSolver):
    """Rates from the ratio of running RMS of updates to running RMS of gradients."""

    def pre_solve(self) -> None:
        super().pre_solve()
        self.history += self._new_history_set()

    def compute_update_value(self, param_id: int, rate: float) -> None:
        blob = self.net.learnable_params[param_id]
        if not blob.count:
            return
        momentum = self.param.momentum
        delta = self.param.delta
        n = len(self.net.learnable_params)
        g = blob.mutable_device_diff()
        grad_sq = self.history[param_id].mutable_device_data()
        update_sq = self.history[n + param_id].mutable_device_data()
        u = self.update[param_id].mutable_device_data()
        t = self.temp[param_id].mutable_device_data()
        torch.square(g, out=u)
        grad_sq.mul_(momentum).add_(u, alpha=1.0 - momentum)
        torch.add(update_sq, delta, out=u)
        torch.add(grad_sq, delta, out=t)
        u.div_(t).sqrt_()
        g.mul_(u)
        torch.square(g, out=u)
        update_sq.mul_(momentum).add_(u, alpha=1.0 - momentum)
        g.mul_(self.local_rate(param_id, rate))
