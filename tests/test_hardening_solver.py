"""Hardening (issue 14, items 3 and 7): numbers from solver files and solver states that would
escape as Python exceptions (OverflowError, ValueError, TypeError) are computed as C++ Caffe's
float math computes them (inf / nan) or refused with a SolverError naming the file; a bad
CAFFE_DATA_THREADS does not break ``import caffe``; a net with no layers forwards as a no-op."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import caffe
from caffe.errors import CaffeError, SolverError
from caffe.proto import caffe_pb2
from caffe.solver import get_solver

from solver_case import write_solver_prototxt

# One learnable 1x3 blob w pulled towards the input t: loss = |w - t|^2 / 2.
QUAD = """
name: 'quad'
layer { name: 'target' type: 'Input' top: 't' input_param { shape { dim: 1 dim: 3 } } }
layer { name: 'p' type: 'Parameter' top: 'w' param { lr_mult: 2 }
        parameter_param { shape { dim: 1 dim: 3 } } }
layer { name: 'loss' type: 'EuclideanLoss' bottom: 'w' bottom: 't' top: 'loss' }
"""


def make_solver(tmp_path, solver_text, net_text=QUAD):
    solver_file = write_solver_prototxt(tmp_path, textwrap.dedent(solver_text), net_text)
    solver = get_solver(solver_file)
    solver.net.blobs["t"].data[...] = 1.0  # a nonzero gradient (w starts at 0)
    return solver


def weights(solver):
    return solver.net.params["p"][0].data


# --- learning rates and updates: C's float results, not Python exceptions -------------------
def test_exp_policy_beyond_float_range_gives_inf_not_a_torch_overflow(tmp_path):
    # gamma^2 = 1e60 is past float32's range: C++ Caffe's float rate is inf; torch refused the
    # double as an alpha ("value cannot be converted to type float without overflow").
    solver = make_solver(tmp_path, "base_lr: 1 lr_policy: 'exp' gamma: 1e30 max_iter: 3\n")
    solver.step(3)
    assert not np.isfinite(weights(solver)).any()


def test_exp_policy_power_overflow_gives_inf(tmp_path):
    # 2^5000 overflows a double: Python's ** raises OverflowError, C's pow gives inf.
    solver = make_solver(tmp_path, "base_lr: 1 lr_policy: 'exp' gamma: 2 max_iter: 10\n")
    solver.iter = 5000
    assert solver.get_learning_rate() == math.inf


def test_sigmoid_policy_exp_overflow_gives_zero_rate(tmp_path):
    # base_lr / (1 + exp(1000)): exp overflows to inf, so the rate is exactly 0 (as in C++).
    solver = make_solver(tmp_path, "base_lr: 1 lr_policy: 'sigmoid' gamma: -1 stepsize: 0 "
                                   "max_iter: 10\n")
    solver.iter = 1000
    assert solver.get_learning_rate() == 0.0


def test_adam_beta2_above_one_gives_nan_not_a_domain_error(tmp_path):
    # sqrt(1 - 1.5^1) is sqrt(-0.5): nan in C++ (math.sqrt raised ValueError).
    solver = make_solver(tmp_path, "type: 'Adam' base_lr: 0.1 lr_policy: 'fixed' momentum: 0.9 "
                                   "momentum2: 1.5 max_iter: 1\n")
    solver.step(1)
    assert np.isnan(weights(solver)).all()


def test_inv_policy_negative_gamma_under_rmsprop(tmp_path):
    # (1 - iter)^-0.5: at iter 1, 0^-0.5 = inf (Python raised ZeroDivisionError); at iter 2,
    # (-1)^-0.5 = nan (Python made a complex number that torch refused with TypeError).
    solver = make_solver(tmp_path, "type: 'RMSProp' base_lr: 0.1 lr_policy: 'inv' gamma: -1 "
                                   "power: 0.5 max_iter: 3\n")
    solver.step(3)
    assert not np.isfinite(weights(solver)).any()
    assert math.isnan(solver.get_learning_rate())


# --- restore: the numbers a solver state holds are checked ----------------------------------
def _binary_state(tmp_path):
    """A solver and the .solverstate it wrote after one iteration."""
    solver = make_solver(tmp_path, f"base_lr: 0.1 lr_policy: 'exp' gamma: 0.5 max_iter: 10 "
                                   f"snapshot_prefix: '{tmp_path}/snap'\n")
    solver.step(1)
    solver.snapshot()
    path = tmp_path / "snap_iter_1.solverstate"
    state = caffe_pb2.SolverState()
    state.ParseFromString(path.read_bytes())
    return solver, path, state


@pytest.mark.parametrize("field", ["iter", "current_step"])
def test_restore_refuses_negative_counters(tmp_path, field):
    # A negative iter made gamma ** iter overflow (0.5^-5000) later; refuse it at restore.
    solver, path, state = _binary_state(tmp_path)
    setattr(state, field, -5000)
    path.write_bytes(state.SerializeToString())
    with pytest.raises(SolverError, match=rf"{path}: solver state {field} is -5000"):
        solver.restore(str(path))
    assert solver.iter == 1  # nothing was restored


def test_hdf5_restore_refuses_negative_iter(tmp_path):
    h5py = pytest.importorskip("h5py")
    solver = make_solver(tmp_path, f"base_lr: 0.1 lr_policy: 'exp' gamma: 0.5 max_iter: 10 "
                                   f"snapshot_format: HDF5 snapshot_prefix: '{tmp_path}/snap'\n")
    solver.step(1)
    solver.snapshot()
    path = tmp_path / "snap_iter_1.solverstate.h5"
    with h5py.File(path, "r+") as f:
        f["iter"][...] = -5000
    with pytest.raises(SolverError, match=rf"{path}: solver state iter is -5000"):
        solver.restore(str(path))
    assert solver.iter == 1


def test_restore_refuses_learned_net_that_is_not_utf8(tmp_path):
    solver, path, state = _binary_state(tmp_path)
    state.ClearField("learned_net")
    # learned_net is field 2 (a string): append it with bytes that are not UTF-8.
    path.write_bytes(state.SerializeToString() + b"\x12\x03\xff\xfeA")
    # upb hands the bytes to the solver, which names the field; protobuf's pure-Python backend
    # refuses the string while parsing: either way a caffe error naming the file says UTF-8
    with pytest.raises(CaffeError, match=rf"{path}: .*(learned_net is not a UTF-8|not UTF-8)"):
        solver.restore(str(path))


# --- solver-level errors name the solver file ----------------------------------------------
def test_solver_field_errors_name_the_solver_file(tmp_path):
    with pytest.raises(SolverError) as info:
        make_solver(tmp_path, "base_lr: 0.1 iter_size: 0\n")
    assert str(info.value).startswith(f"{tmp_path / 'solver.prototxt'}: iter_size must be")


def test_unknown_solver_type_names_the_solver_file(tmp_path):
    with pytest.raises(SolverError) as info:
        make_solver(tmp_path, "type: 'NoSuchSolver' base_lr: 0.1\n")
    assert str(info.value).startswith(f"{tmp_path / 'solver.prototxt'}: Unknown solver type")


# --- CAFFE_DATA_THREADS ---------------------------------------------------------------------
def test_bad_data_threads_variable_does_not_break_import():
    env = dict(os.environ, CAFFE_DATA_THREADS="abc")
    code = "import caffe; from caffe.data import prefetch; print(prefetch.decode_threads())"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1"
    assert "CAFFE_DATA_THREADS='abc' is not an integer" in result.stderr


# --- a net whose layers are all filtered out -------------------------------------------------
def test_net_with_every_layer_filtered_out_runs_as_a_no_op(tmp_path):
    net_file = tmp_path / "empty.prototxt"
    net_file.write_text("name: 'empty'\nlayer { name: 'x' type: 'Input' top: 'x' "
                        "input_param { shape { dim: 1 } } include { phase: TEST } }\n")
    net = caffe.Net(str(net_file), caffe.TRAIN)
    assert len(net.layers) == 0
    assert net.forward() == {}
    assert net.backward() == {}
    assert net.forward_backward() == 0.0
