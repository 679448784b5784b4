"""RMSProp (Caffe's RMSPropSolver, type "RMSProp").

Reads rms_decay and delta (and everything SGD reads; momentum must be 0). With H the history
blob of W:

    H  <- rms_decay * H + (1 - rms_decay) * dW^2
    dW <- local_rate * dW / (sqrt(H) + delta)
"""

from __future__ import annotations

import torch

from caffe.errors import SolverError
from caffe.solver import register_solver
from caffe.solvers.sgd import SGDSolver


@register_solver("RMSProp")
class RMSPropSolver(SGDSolver):
    """Per-element rates scaled by a running mean of squared gradients."""

    def check_parameters(self) -> None:
        super().check_parameters()
        p = self.param
        if p.momentum != 0:
            raise SolverError(f"Momentum cannot be used with RMSProp (momentum: {p.momentum:g})")
        if not 0 <= p.rms_decay < 1:
            raise SolverError(f"rms_decay should lie between 0 and 1, got {p.rms_decay:g}")

    def compute_update_value(self, param_id: int, rate: float) -> None:
        blob = self.net.learnable_params[param_id]
        if not blob.count:
            return
        decay = self.param.rms_decay
        g = blob.mutable_device_diff()
        h = self.history[param_id].mutable_device_data()
        u = self.update[param_id].mutable_device_data()
        torch.square(g, out=u)
        h.mul_(decay).add_(u, alpha=1.0 - decay)
        torch.sqrt(h, out=u)
        u.add_(self.param.delta)
        torch.div(g, u, out=u)
        torch.mul(u, self.local_rate(param_id, rate), out=g)
