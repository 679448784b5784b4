"""Nesterov's accelerated gradient (Caffe's NesterovSolver, type "Nesterov").

Reads momentum (plus everything SGD reads). With V the history blob of W:

    V' <- momentum * V + local_rate * dW
    W  <- W - ((1 + momentum) * V' - momentum * V)

i.e. step back the previous momentum step and take an over-step along the new one.
"""

from __future__ import annotations

from caffe.solver import register_solver
from caffe.solvers.sgd import SGDSolver


@register_solver("Nesterov")
class NesterovSolver(SGDSolver):
    """SGD with Nesterov momentum; one history blob per parameter."""

    def compute_update_value(self, param_id: int, rate: float) -> None:
        momentum = self.param.momentum
        g = self.net.learnable_params[param_id].mutable_device_diff()
        h = self.history[param_id].mutable_device_data()
        previous = self.update[param_id].mutable_device_data()
        previous.copy_(h)
        h.mul_(momentum).add_(g, alpha=self.local_rate(param_id, rate))
        previous.mul_(-momentum).add_(h, alpha=1.0 + momentum)
        g.copy_(previous)
