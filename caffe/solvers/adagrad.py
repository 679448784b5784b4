"""AdaGrad (Caffe's AdaGradSolver, type "AdaGrad").

Reads delta (and everything SGD reads; momentum must be 0). With H the history blob of W:

    H  <- H + dW^2
    dW <- local_rate * dW / (sqrt(H) + delta)
"""

from __future__ import annotations

import torch

from caffe.proto.floats import float_field
from caffe.solver import register_solver
from caffe.solvers.sgd import SGDSolver, rms_scaled_update


@register_solver("AdaGrad")
class AdaGradSolver(SGDSolver):
    """Per-element rates shrinking with the accumulated squared gradient."""

    def check_parameters(self) -> None:
        super().check_parameters()
        self.check_no_momentum()

    def compute_update_value(self, param_id: int, rate: float) -> None:
        g = self.net.learnable_params[param_id].mutable_device_diff()
        h = self.history[param_id].mutable_device_data()
        u = self.update[param_id].mutable_device_data()
        torch.square(g, out=u)
        h.add_(u)
        rms_scaled_update(g, h, u, float_field(self.param, "delta"),
                          self.local_rate(param_id, rate), out=g)
