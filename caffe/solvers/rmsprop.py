"""RMSProp (Caffe's RMSPropSolver, type "RMSProp").

Reads rms_decay and delta (and everything SGD reads; momentum must be 0). With H the history
blob of W:

    H  <- rms_decay * H + (1 - rms_decay) * dW^2
    dW <- local_rate * dW / (sqrt(H) + delta)
"""

from __future__ import annotations

from caffe.errors import SolverError
from caffe.proto.floats import float_field
from caffe.solver import register_solver
from caffe.solvers.sgd import SGDSolver, rms_scaled_update, update_mean_square


@register_solver("RMSProp")
class RMSPropSolver(SGDSolver):
    """Per-element rates scaled by a running mean of squared gradients."""

    def check_parameters(self) -> None:
        super().check_parameters()
        self.check_no_momentum()
        rms_decay = float_field(self.param, "rms_decay")
        if not 0 <= rms_decay < 1:
            raise SolverError(f"rms_decay should lie between 0 and 1, got {rms_decay:g}")

    def compute_update_value(self, param_id: int, rate: float) -> None:
        g = self.net.learnable_params[param_id].mutable_device_diff()
        h = self.history[param_id].mutable_device_data()
        u = self.update[param_id].mutable_device_data()
        update_mean_square(h, g, u, float_field(self.param, "rms_decay"))
        rms_scaled_update(g, h, u, float_field(self.param, "delta"),
                          self.local_rate(param_id, rate), out=g)
