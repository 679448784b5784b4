"""SGD's fused update (torch._foreach_* per parameter group) gives the per-blob path's numbers."""

from __future__ import annotations

import numpy as np
import pytest

import caffe
from caffe.solvers.sgd import SGDSolver

NET = """
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 6 dim: 5 } shape { dim: 6 dim: 3 }
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 0.5 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "target" top: "loss" }
"""


def _solver(tmp_path, solver_type="SGD", extra=""):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}"\ntype: "{solver_type}"\nbase_lr: 0.1\n'
        f'momentum: 0.9\nweight_decay: 0.01\nlr_policy: "step"\ngamma: 0.5\nstepsize: 2\n'
        f'display: 0\nmax_iter: 100\nrandom_seed: 7\nsnapshot_prefix: "{tmp_path / "s"}"\n'
        f'{extra}')
    return caffe.get_solver(str(tmp_path / "solver.prototxt"))


def _run(tmp_path, monkeypatch, fused: bool):
    if not fused:
        monkeypatch.setattr(SGDSolver, "_plain_sgd", lambda self: False)
    solver = _solver(tmp_path)
    assert solver._plain_sgd() is fused
    solver.step(6)  # crosses two learning-rate steps
    monkeypatch.undo()
    return ([b.data.copy() for b in solver.net.learnable_params],
            [h.data.copy() for h in solver.history])


def test_fused_update_is_bit_identical(tmp_path, monkeypatch):
    # Same elementwise ops in the same order on each tensor: equality, not a tolerance.
    params, history = _run(tmp_path, monkeypatch, fused=False)
    fused_params, fused_history = _run(tmp_path, monkeypatch, fused=True)
    for a, b in zip(params + history, fused_params + fused_history):
        assert a.tobytes() == b.tobytes()
    assert any(np.abs(h).max() > 0 for h in history)  # the update did something


@pytest.mark.parametrize("solver_type,extra", [
    ("Nesterov", ""), ("SGD", "iter_size: 2\n"), ("SGD", 'regularization_type: "L1"\n')])
def test_other_updates_keep_the_per_blob_path(tmp_path, solver_type, extra):
    assert not _solver(tmp_path, solver_type, extra)._plain_sgd()
