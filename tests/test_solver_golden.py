"""Training trajectories against C++ Caffe: all six solvers, lr policies, iter_size, gradient
clipping, L1 regularization and shared parameters (tests/golden/solvers, README "solvers/")."""

import os
import re

import numpy as np
import pytest
import torch

import caffe
from caffe.solver import get_solver

from solver_case import write_solver_prototxt

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "solvers")
CASES = sorted(f[:-4] for f in os.listdir(GOLDEN) if f.endswith(".npz"))


def run_case(name, tmp_path):
    """The README's procedure: load init weights, then per iteration feed input/<it>/<blob>
    into the Input blobs and step(1), recording the loss blob."""
    z = np.load(os.path.join(GOLDEN, name + ".npz"))
    solver_text = f'{z["solver_prototxt"]}\nsnapshot_after_train: false\nsolver_mode: CPU\n'
    solver = get_solver(write_solver_prototxt(tmp_path, solver_text, str(z["net_prototxt"])))
    for key in z.files:
        if key.startswith("init/"):
            _, layer, j = key.split("/")
            solver.net.params[layer][int(j)].data[...] = z[key]
    iterations = len(z["losses"])
    losses = []
    for it in range(iterations):
        for key in z.files:
            if key.startswith(f"input/{it}/"):
                solver.net.blobs[key.split("/")[2]].data[...] = z[key]
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    return z, solver, np.array(losses)


@pytest.mark.parametrize("name", CASES)
def test_trajectory_matches_caffe(name, tmp_path):
    z, solver, losses = run_case(name, tmp_path)
    assert solver.iter == len(z["losses"])
    # The golden README's trajectory tolerance (layer_case.GRAD_TOL): every iteration's update
    # carries the gradients' sum-order differences (derived in layer_case) into the weights, and
    # the next iterations carry them on, over these cases' 12 iterations.
    np.testing.assert_allclose(losses, z["losses"], rtol=1e-3, atol=1e-4)
    finals = [k for k in z.files if k.startswith("final/")]
    assert finals
    for key in finals:
        _, layer, j = key.split("/")
        np.testing.assert_allclose(solver.net.params[layer][int(j)].data, z[key],
                                   rtol=1e-3, atol=1e-4, err_msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", CASES)
def test_trajectory_matches_caffe_on_gpu(name, tmp_path):
    caffe.set_mode_gpu()
    try:
        z, solver, losses = run_case(name, tmp_path)
    finally:
        caffe.set_mode_cpu()
    # The CPU test's tolerance: cuBLAS sums in yet another order, within the same bound.
    np.testing.assert_allclose(losses, z["losses"], rtol=1e-3, atol=1e-4)
    for key in (k for k in z.files if k.startswith("final/")):
        _, layer, j = key.split("/")
        np.testing.assert_allclose(solver.net.params[layer][int(j)].data, z[key],
                                   rtol=1e-3, atol=1e-4, err_msg=key)


def test_all_solver_types_are_covered():
    types = set()
    for name in CASES:
        text = str(np.load(os.path.join(GOLDEN, name + ".npz"))["solver_prototxt"])
        match = re.search(r"(?<!\w)type: '(\w+)'", text)
        types.add(match.group(1) if match else "SGD")
    assert types == {"SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"}
