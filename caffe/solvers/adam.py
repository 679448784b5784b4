"""Adam (Caffe's AdamSolver, type "Adam").

Reads momentum (beta1), momentum2 (beta2) and delta (epsilon). Two history sets: m
(``history[i]``) and v (``history[n + i]``), in that order in snapshots. With t = iter + 1:

    m  <- beta1 * m + (1 - beta1) * dW
    v  <- beta2 * v + (1 - beta2) * dW^2
    dW <- local_rate * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + delta)
"""

from __future__ import annotations

from caffe.proto.floats import float_field
from caffe.solver import register_solver
from caffe.solvers.sgd import (
    SGDSolver,
    c_div,
    c_pow,
    c_sqrt,
    rms_scaled_update,
    torch_scalar,
    update_mean_square,
)


@register_solver("Adam")
class AdamSolver(SGDSolver):
    """Bias-corrected running means of the gradient and its square (Kingma & Ba)."""

    history_sets = 2

    def compute_update_value(self, param_id: int, rate: float) -> None:
        beta1 = self.param.momentum
        beta2 = float_field(self.param, "momentum2")
        n = len(self.net.learnable_params)
        t = self.iter + 1
        # C's float math: beta2 > 1 gives nan, beta1 == 1 inf or nan (Python would raise).
        correction = c_div(c_sqrt(1.0 - c_pow(beta2, t)), 1.0 - c_pow(beta1, t))
        g = self.net.learnable_params[param_id].mutable_device_diff()
        m = self.history[param_id].mutable_device_data()
        v = self.history[n + param_id].mutable_device_data()
        tmp = self.temp[param_id].mutable_device_data()
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        update_mean_square(v, g, tmp, beta2)
        step_rate = torch_scalar(self.local_rate(param_id, rate) * correction, g.dtype)
        rms_scaled_update(m, v, tmp, float_field(self.param, "delta"), step_rate, out=g)
