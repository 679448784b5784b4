"""Snapshots: Caffe's file names and SolverState layouts (binary proto and HDF5), exact resume in
a fresh process, atomic writes under failure, and restoring into the wrong net or solver."""

import importlib.util
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from caffe.errors import ProtoError, SolverError
from caffe.proto import caffe_pb2
from caffe.protoio import read_binary_proto
from caffe.solver import get_solver

from solver_case import write_solver_prototxt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NET = """
name: 'mlp'
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: 'ip1' type: 'InnerProduct' bottom: 'data' top: 'ip1'
        inner_product_param { num_output: %d weight_filler { type: 'gaussian' std: 0.5 }
                              bias_filler { type: 'constant' value: 0.1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'ip1' top: 'ip1' }
layer { name: 'ip2' type: 'InnerProduct' bottom: 'ip1' top: 'ip2'
        inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip2' bottom: 'label' top: 'loss' }
"""

# Feeds a batch that depends only on the iteration, so a resumed run sees the same data.
RUNNER = """
import sys

import numpy as np

sys.path.insert(0, {repo!r})
from caffe.solver import get_solver


def feed(net, it):
    rng = np.random.default_rng(100 + it)
    net.blobs["data"].data[...] = rng.normal(size=(4, 3))
    net.blobs["label"].data[...] = rng.integers(0, 3, size=4)


def run(solver, max_iter):
    while solver.iter < max_iter:
        feed(solver.net, solver.iter)
        solver.step(1)
    return {{str(j): b.data.copy() for j, b in enumerate(solver.net.learnable_params)}}


if __name__ == "__main__":
    max_iter, out = int(sys.argv[1]), sys.argv[2]
    results = {{}}
    # argv: pairs of (solver file, state file), each restored in a solver of its own
    pairs = sys.argv[3:]
    for i in range(0, len(pairs), 2):
        solver = get_solver(pairs[i])
        solver.restore(pairs[i + 1])
        start = solver.iter
        for key, value in run(solver, max_iter).items():
            results[f"{{i // 2}}/{{key}}"] = value
        results[f"{{i // 2}}/start"] = np.array(start)
    np.savez(out, **results)
"""

SOLVER = """
type: 'Adam' base_lr: 0.05 momentum: 0.9 momentum2: 0.99 weight_decay: 0.01
lr_policy: 'multistep' gamma: 0.5 stepvalue: 2 stepvalue: 5 iter_size: 2
max_iter: 8 snapshot: 3 snapshot_prefix: '{prefix}' snapshot_format: {fmt}
random_seed: 5 snapshot_after_train: false
"""


def write_solver(tmp_path, fmt="BINARYPROTO", num_output=4, name="solver", solver_text=SOLVER,
                 net_text=NET):
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    path = write_solver_prototxt(tmp_path, solver_text.format(prefix=folder / "snap", fmt=fmt),
                                 net_text % num_output, name)
    return path, folder


def load_runner(tmp_path):
    path = tmp_path / "runner.py"
    path.write_text(RUNNER.format(repo=REPO))
    spec = importlib.util.spec_from_file_location("snapshot_runner", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(path), module


def test_exact_resume_in_a_fresh_process(tmp_path):
    """Train 8 iterations with snapshots every 3; a new process restoring iteration 3 (binary
    proto) and iteration 6 (HDF5) reaches bitwise the same weights at 8."""
    runner_path, runner = load_runner(tmp_path)
    finals = {}
    states = []
    for fmt, ext, k in (("BINARYPROTO", ".solverstate", 3), ("HDF5", ".solverstate.h5", 6)):
        solver_file, folder = write_solver(tmp_path, fmt, name=fmt.lower())
        solver = get_solver(solver_file)
        finals[fmt] = runner.run(solver, 8)
        assert sorted(os.listdir(folder)) == sorted(
            f"snap_iter_{i}{e}" for i in (3, 6)
            for e in ((".caffemodel", ".solverstate") if fmt == "BINARYPROTO"
                      else (".caffemodel.h5", ".solverstate.h5")))
        states += [solver_file, str(folder / f"snap_iter_{k}{ext}")]
    out = tmp_path / "resumed.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # as conftest.py sets this process
    proc = subprocess.run([sys.executable, runner_path, "8", str(out), *states],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = np.load(out)
    assert int(resumed["0/start"]) == 3 and int(resumed["1/start"]) == 6
    for i, fmt in enumerate(("BINARYPROTO", "HDF5")):
        assert len(finals[fmt]) == 4
        for key, value in finals[fmt].items():
            np.testing.assert_array_equal(resumed[f"{i}/{key}"], value, err_msg=f"{fmt} {key}")
    # the two formats trained the same net from the same seed: same trajectory
    for key in finals["HDF5"]:
        np.testing.assert_array_equal(finals["HDF5"][key], finals["BINARYPROTO"][key])


def test_binary_solverstate_contents(tmp_path):
    solver_file, folder = write_solver(tmp_path)
    solver = get_solver(solver_file)
    _, runner = load_runner(tmp_path)
    runner.run(solver, 3)
    state = read_binary_proto(folder / "snap_iter_3.solverstate", caffe_pb2.SolverState())
    assert state.iter == 3
    assert state.learned_net == str(folder / "snap_iter_3.caffemodel")
    assert state.current_step == 1  # multistep passed stepvalue 2
    assert len(state.history) == 2 * 4  # Adam: m and v for 4 learnable params
    for proto, blob in zip(state.history, solver.history):
        assert list(proto.shape.dim) == list(blob.shape)
        np.testing.assert_array_equal(np.asarray(proto.data).reshape(blob.shape), blob.data)
    model = read_binary_proto(folder / "snap_iter_3.caffemodel", caffe_pb2.NetParameter())
    ip1 = [layer for layer in model.layer if layer.name == "ip1"][0]
    np.testing.assert_array_equal(np.asarray(ip1.blobs[0].data).reshape(4, 3),
                                  solver.net.params["ip1"][0].data)
    assert not len(ip1.blobs[0].diff)


def test_binary_solverstate_with_legacy_history_dims_restores(tmp_path):
    """Old solverstates store history blobs with legacy num/channels/height/width (an
    InnerProduct weight's as 1 x 1 x M x N): they restore into today's 2-D and 1-D history
    blobs, as Caffe's padded ShapeEquals lets them, with the values unchanged."""
    solver_file, folder = write_solver(tmp_path)
    solver = get_solver(solver_file)
    _, runner = load_runner(tmp_path)
    runner.run(solver, 3)
    path = folder / "snap_iter_3.solverstate"
    state = read_binary_proto(path, caffe_pb2.SolverState())
    for proto in state.history:
        dims = [1] * (4 - len(proto.shape.dim)) + list(proto.shape.dim)
        proto.ClearField("shape")
        proto.num, proto.channels, proto.height, proto.width = dims
    path.write_bytes(state.SerializeToString())
    fresh = get_solver(solver_file)
    fresh.restore(str(path))
    assert fresh.iter == 3
    for got, want in zip(fresh.history, solver.history):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.data, want.data)


def test_hdf5_solverstate_layout_and_snapshot_diff(tmp_path):
    solver_file, folder = write_solver(
        tmp_path, "HDF5", solver_text=SOLVER.replace("type: 'Adam'", "type: 'Nesterov'")
        + "snapshot_diff: true")
    solver = get_solver(solver_file)
    _, runner = load_runner(tmp_path)
    runner.run(solver, 3)
    with h5py.File(folder / "snap_iter_3.solverstate.h5", "r") as f:
        assert set(f) == {"iter", "learned_net", "current_step", "history"}
        assert int(np.asarray(f["iter"]).reshape(-1)[0]) == 3
        assert int(np.asarray(f["current_step"]).reshape(-1)[0]) == 1
        learned = f["learned_net"][()]
        assert (learned.decode() if isinstance(learned, bytes) else learned) == \
            str(folder / "snap_iter_3.caffemodel.h5")
        assert sorted(f["history"]) == ["0", "1", "2", "3"]  # Nesterov: one set
        np.testing.assert_array_equal(f["history/0"][...], solver.history[0].data)
    with h5py.File(folder / "snap_iter_3.caffemodel.h5", "r") as f:
        np.testing.assert_array_equal(f["data/ip1/0"][...], solver.net.params["ip1"][0].data)
        np.testing.assert_array_equal(f["diff/ip1/0"][...], solver.net.params["ip1"][0].diff)


def test_restore_finds_weights_beside_the_state_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    solver_file, folder = write_solver(tmp_path, solver_text=SOLVER.replace(
        "snapshot_prefix: '{prefix}'", "snapshot_prefix: 'rel/snap'"))
    solver = get_solver(solver_file)
    _, runner = load_runner(tmp_path)
    runner.run(solver, 3)
    state = read_binary_proto(tmp_path / "rel" / "snap_iter_3.solverstate",
                              caffe_pb2.SolverState())
    assert state.learned_net == "rel/snap_iter_3.caffemodel"  # as Caffe writes it
    (folder / "rel").mkdir()  # the snapshot prefix must be writable there too
    monkeypatch.chdir(folder)
    other = get_solver(solver_file)
    other.restore(tmp_path / "rel" / "snap_iter_3.solverstate")
    assert other.iter == 3 and other.current_step == 1
    np.testing.assert_array_equal(other.net.params["ip2"][0].data,
                                  solver.net.params["ip2"][0].data)


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_failed_snapshot_write_leaves_no_truncated_file(tmp_path, monkeypatch, fmt):
    solver_file, folder = write_solver(tmp_path, fmt)
    solver = get_solver(solver_file)
    _, runner = load_runner(tmp_path)
    runner.run(solver, 3)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    assert len(before) == 2

    if fmt == "BINARYPROTO":
        import caffe.protoio

        def fail(fd):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(caffe.protoio.os, "fsync", fail)
    else:
        calls = []
        original = h5py.Group.create_dataset

        def fail(self, *args, **kwargs):
            calls.append(args[0])
            if len(calls) > 2:
                raise OSError(28, "No space left on device")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    # a failure on a new snapshot, and on rewriting an existing one
    for it in (4, 3):
        solver.iter = it
        with pytest.raises(SolverError, match=f"Snapshot at iteration {it} failed.*No space"):
            solver.snapshot()
        after = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
        assert after == before


def test_restore_errors(tmp_path):
    solver_file, folder = write_solver(tmp_path)
    solver = get_solver(solver_file)
    _, runner = load_runner(tmp_path)
    runner.run(solver, 3)
    state = folder / "snap_iter_3.solverstate"
    # a different net: ip1 has 5 outputs instead of 4; the error names the parameter
    other_file, _ = write_solver(tmp_path, num_output=5, name="other")
    with pytest.raises(SolverError, match=r"history blob 0 \(layer 'ip1', param 0\) has shape "
                                          r"\[4, 3\] but the net's parameter has shape \[5, 3\]"):
        get_solver(other_file).restore(state)
    # same parameter shapes, but the names hold other shapes: the weights copy names the layer
    swapped_net = NET.replace("'ip1'", "'tmp'").replace("'ip2'", "'ip1'").replace("'tmp'", "'ip2'")
    swapped, _ = write_solver(tmp_path, name="swapped", net_text=swapped_net)
    with pytest.raises(SolverError, match=r"Cannot copy param 0 weights from layer 'ip1'.*"
                                          r"shape mismatch"):
        get_solver(swapped).restore(state)
    # the same net under other layer names: the history names the parameter
    renamed, _ = write_solver(tmp_path, num_output=5, name="renamed",
                              net_text=NET.replace("'ip1'", "'fc1'"))
    with pytest.raises(SolverError, match=r"history blob 0 \(layer 'fc1', param 0\) has shape "
                                          r"\[4, 3\] but the net's parameter has shape \[5, 3\]"):
        get_solver(renamed).restore(state)
    # another solver type: history sets differ
    sgd_file, _ = write_solver(tmp_path, name="sgd",
                               solver_text=SOLVER.replace("type: 'Adam'", "type: 'SGD'"))
    sgd = get_solver(sgd_file)
    with pytest.raises(SolverError, match=r"Incorrect length of history blobs: the state holds "
                                          r"8, this SGD solver's net needs 4"):
        sgd.restore(state)
    assert sgd.iter == 0  # nothing was changed by the failed restore
    with pytest.raises(SolverError, match=r"solver state file not found: .*nope.solverstate"):
        sgd.restore(folder / "nope.solverstate")
    garbage = tmp_path / "garbage.solverstate"
    garbage.write_bytes(b"\xff\xff\xff\xff not a proto")
    with pytest.raises(ProtoError, match=r"garbage.solverstate: cannot parse SolverState"):
        sgd.restore(garbage)
    (folder / "snap_iter_3.caffemodel").unlink()
    with pytest.raises(SolverError, match=r"the weights file it names, .*snap_iter_3.caffemodel"
                                          r"', was not found"):
        get_solver(solver_file).restore(state)
    bad_h5 = tmp_path / "bad.solverstate.h5"
    with h5py.File(bad_h5, "w") as f:
        f.create_dataset("iter", data=np.array([1], dtype=np.int32))
    with pytest.raises(SolverError, match=r"not a solver state: no 'current_step'"):
        get_solver(solver_file).restore(bad_h5)


def test_solve_with_resume_file(tmp_path):
    solver_file, folder = write_solver(tmp_path)
    _, runner = load_runner(tmp_path)
    runner.run(get_solver(solver_file), 3)
    solver = get_solver(solver_file)
    runner.feed(solver.net, 0)
    solver.solve(str(folder / "snap_iter_3.solverstate"))
    assert solver.iter == 8

