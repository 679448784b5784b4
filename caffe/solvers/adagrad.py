"""AdaGrad (Caffe's AdaGradSolver, type "AdaGrad").

Reads delta (and everything SGD reads; momentum must be 0). With H the history blob of W:

    H  <- H + dW^2
    dW <- local_rate * dW / (sqrt(H) + delta)
"""

from __future__ import annotations

import torch

from caffe.errors import SolverError
from caffe.solver import register_solver
from caffe.solvers.sgd import SGDSolver


@register_solver("AdaGrad")
class AdaGradSolver(SGDSolver):
    """Per-element rates shrinking with the accumulated squared gradient."""

    def check_parameters(self) -> None:
        super().check_parameters()
        if self.param.momentum != 0:
            raise SolverError(f"Momentum cannot be used with AdaGrad (momentum: "
                              f"{self.param.momentum:g})")

    def compute_update_value(self, param_id: int, rate: float) -> None:
        blob = self.net.learnable_params[param_id]
        if not blob.count:
            return
        g = blob.mutable_device_diff()
        h = self.history[param_id].mutable_device_data()
        u = self.update[param_id].mutable_device_data()
        torch.square(g, out=u)
        h.add_(u)
        torch.sqrt(h, out=u)
        u.add_(self.param.delta)
        torch.div(g, u, out=u)
        torch.mul(u, self.local_rate(param_id, rate), out=g)
