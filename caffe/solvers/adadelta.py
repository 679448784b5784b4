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

from caffe.proto.floats import float_field
from caffe.solver import register_solver
from caffe.solvers.sgd import SGDSolver, update_mean_square


@register_solver("AdaDelta")
class AdaDeltaSolver(SGDSolver):
    """Rates from the ratio of running RMS of updates to running RMS of gradients."""

    history_sets = 2

    def compute_update_value(self, param_id: int, rate: float) -> None:
        momentum = self.param.momentum
        delta = float_field(self.param, "delta")
        n = len(self.net.learnable_params)
        g = self.net.learnable_params[param_id].mutable_device_diff()
        grad_sq = self.history[param_id].mutable_device_data()
        update_sq = self.history[n + param_id].mutable_device_data()
        u = self.update[param_id].mutable_device_data()
        t = self.temp[param_id].mutable_device_data()
        update_mean_square(grad_sq, g, u, momentum)
        torch.add(update_sq, delta, out=u)
        torch.add(grad_sq, delta, out=t)
        u.div_(t).sqrt_()
        g.mul_(u)
        update_mean_square(update_sq, g, u, momentum)
        g.mul_(self.local_rate(param_id, rate))
