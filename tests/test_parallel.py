"""Multi-process data-parallel training (caffe.parallel): pycaffe's NCCL surface on gloo, the
``caffe train -cpu_workers N`` launcher, failures in a solver process, and root-only testing,
display and snapshots."""

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import caffe
from caffe import common
from caffe.data import db as dbmod
from caffe.errors import CaffeError
from caffe.parallel import NCCL
from caffe.solver import get_solver

from data_case import random_images, write_db
from tolerance import sum_order_atol

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = 10  # not a multiple of the batch: the readers wrap around mid-run
TIMEOUT_S = 60.0

# Record i has label i, so the labels a solver saw say which records it read.
NET = """
name: 'par'
layer {{ name: 'data' type: 'Data' top: 'data' top: 'label'
  transform_param {{ scale: 0.00390625 }}
  data_param {{ source: '{db}' backend: LMDB batch_size: {batch} }} }}
layer {{ name: 'ip1' type: 'InnerProduct' bottom: 'data' top: 'ip1'
  inner_product_param {{ num_output: 6 weight_filler {{ type: 'gaussian' std: 0.3 }}
    bias_filler {{ type: 'constant' value: 0.1 }} }} }}
layer {{ name: 'relu' type: 'ReLU' bottom: 'ip1' top: 'ip1' }}
layer {{ name: 'ip2' type: 'InnerProduct' bottom: 'ip1' top: 'ip2'
  inner_product_param {{ num_output: {RECORDS} weight_filler {{ type: 'gaussian' std: 0.3 }} }} }}
layer {{ name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip2' bottom: 'label' top: 'loss' }}
layer {{ name: 'acc' type: 'Accuracy' bottom: 'ip2' bottom: 'label' top: 'acc'
  include {{ phase: TEST }} }}
"""

SOLVER = """net: "{net}"
base_lr: 0.5 momentum: 0.9 weight_decay: 0.01 lr_policy: "fixed"
display: 1 max_iter: {max_iter} random_seed: 5 {extra}
"""


def write_case(folder: Path, batch: int, max_iter: int = 4, extra: str = "",
               name: str = "solver", db: Path | None = None) -> str:
    db = db or folder / "db"
    if not db.exists():
        write_db(db, random_images(RECORDS, shape=(2, 3, 3), seed=1), range(RECORDS))
    (folder / f"{name}_net.prototxt").write_text(NET.format(db=db, batch=batch, RECORDS=RECORDS))
    solver = folder / f"{name}.prototxt"
    solver.write_text(SOLVER.format(net=folder / f"{name}_net.prototxt", max_iter=max_iter,
                                    extra=extra))
    return str(solver)


def params(net) -> list[np.ndarray]:
    return [blob.data.copy() for blob in net.learnable_params]


class LabelRecorder:
    """A solver callback that keeps the labels of each iteration's batch."""

    def __init__(self, solver) -> None:
        self.solver = solver
        self.seen: list[list[int]] = []

    def on_start(self) -> None:
        pass

    def on_gradients_ready(self) -> None:
        self.seen.append(self.solver.net.blobs["label"].data.astype(int).tolist())


def _rank_main(rank: int, solver_file: str, uid: str, out: str) -> None:
    """One process of a pycaffe-style run (python/train.py's ``solve``), on the CPU."""
    torch.set_num_threads(1)
    caffe.set_mode_cpu()
    caffe.set_solver_count(2)
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)
    solver = get_solver(solver_file)
    before = params(solver.net)
    nccl = NCCL(solver, uid)
    nccl.bcast()
    recorder = LabelRecorder(solver)
    solver.add_callback(recorder)
    solver.add_callback(nccl)
    solver.step(solver.param.max_iter)
    np.savez(os.path.join(out, f"rank{rank}.npz"), labels=np.array(recorder.seen),
             **{f"before{i}": p for i, p in enumerate(before)},
             **{f"after{i}": p for i, p in enumerate(params(solver.net))})


def run_ranks(fn, args, nprocs: int = 2) -> None:
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1.0):
            assert time.monotonic() < deadline, "the solver processes hang"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def test_two_solvers_with_batch_b_match_one_solver_with_batch_2b(tmp_path):
    b, iters = 3, 4
    run_ranks(_rank_main, (write_case(tmp_path, b, iters), NCCL.new_uid(), str(tmp_path)))
    rank0, rank1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    n = len([k for k in rank0.files if k.startswith("after")])
    # Caffe 1.0's sharding: record i on rank i % 2; the readers wrap past record 9.
    offsets = np.arange(2 * b * iters).reshape(iters, 2 * b) % RECORDS
    np.testing.assert_array_equal(rank0["labels"], offsets[:, 0::2])
    np.testing.assert_array_equal(rank1["labels"], offsets[:, 1::2])
    # Each rank seeds with random_seed + rank: only bcast gave rank 1 rank 0's weights.
    assert not np.array_equal(rank0["before0"], rank1["before0"])
    for i in range(n):
        np.testing.assert_array_equal(rank0[f"after{i}"], rank1[f"after{i}"])

    # One solver over the same records with batch 2b: the same batch union per iteration,
    # and the averaged gradient of two mean-normalized half batches is the full-batch one.
    single = get_solver(write_case(tmp_path, 2 * b, iters, name="single"))
    start = params(single.net)
    recorder = LabelRecorder(single)
    single.add_callback(recorder)
    single.step(iters)
    np.testing.assert_array_equal(recorder.seen, offsets)
    for i, (w0, w) in enumerate(zip(start, params(single.net))):
        np.testing.assert_array_equal(w0, rank0[f"before{i}"])
        assert not np.allclose(w, w0, rtol=1e-3)  # training moved every parameter
        # The two runs sum the same 2b per-record gradient terms grouped differently ((b + b) / 2
        # against 2b, in other threads), so each iteration's update of a weight, at most
        # max|w0| + max|w| in size, may differ by 2b float32 roundings of that size
        # (tolerance.py); `iters` updates add up. A weight near zero needs this absolute term.
        atol = iters * sum_order_atol(2 * b + 1, np.abs(w0).max() + np.abs(w).max())
        np.testing.assert_allclose(rank0[f"after{i}"], w, rtol=1e-5, atol=atol)


# glog: I1122 00:19:10.123456 12345 solver.py:42] message
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +(?P<pid>\d+) [\w.]+:\d+\] (?P<msg>.*)$")
# Step's display line (Caffe 1.0's, with the speed) or Solve's closing "Iteration N, loss = X"
LOSS_LINE = re.compile(r"Iteration (\d+)(?: \(\S+ iter/s, \S+s/\d+ iters\))?, loss = ")


def caffe_train(*args, cwd, timeout=TIMEOUT_S) -> tuple[subprocess.CompletedProcess, int]:
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "caffe.tools.cli", "train", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"caffe train did not finish within {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def test_cli_cpu_workers_trains_and_only_the_root_logs_and_snapshots(tmp_path):
    (tmp_path / "snaps").mkdir()
    write_case(tmp_path, 2, max_iter=4,
               extra='test_iter: 1 test_interval: 2 snapshot_prefix: "snaps/par"')
    proc, parent_pid = caffe_train("-solver", "solver.prototxt", "-cpu_workers", "2",
                                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [m for m in map(GLOG.match, proc.stderr.splitlines()) if m]
    msgs = [m["msg"] for m in lines]
    assert "Use CPU: 2 solver processes." in msgs
    # One snapshot, at the end, written once.
    assert sorted(os.listdir(tmp_path / "snaps")) == ["par_iter_4.caffemodel",
                                                       "par_iter_4.solverstate"]
    assert sum(m.startswith("Snapshotting to binary proto file") for m in msgs) == 1
    # The launcher and one solver process (the root) log; the other solver is silent.
    pids = {int(m["pid"]) for m in lines}
    root_pids = {int(m["pid"]) for m in lines if m["msg"] == "Solving par"}
    assert len(root_pids) == 1 and pids == {parent_pid} | root_pids, pids
    iterations = [int(m[1]) for m in map(LOSS_LINE.match, msgs)
                  if m]
    assert iterations == [0, 1, 2, 3, 4]
    assert [m for m in msgs if "Testing net" in m] == [
        f"Iteration {i}, Testing net (#0)" for i in (0, 2, 4)]
    assert sum(m.startswith("Initializing solver") for m in msgs) == 1
    net = caffe.Net(str(tmp_path / "solver_net.prototxt"), caffe.TEST,
                    weights=str(tmp_path / "snaps" / "par_iter_4.caffemodel"))
    assert net.params["ip1"][0].data.shape == (6, 18)

    # Every rank resumes from the solver state; training goes on to the new max_iter.
    write_case(tmp_path, 2, max_iter=6,
               extra='test_iter: 1 test_interval: 2 snapshot_prefix: "snaps/par"')
    proc, _ = caffe_train("-solver", "solver.prototxt", "-cpu_workers", "2", "-snapshot",
                          "snaps/par_iter_4.solverstate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    msgs = [m["msg"] for m in map(GLOG.match, proc.stderr.splitlines()) if m]
    assert msgs.count("Resuming from snaps/par_iter_4.solverstate") == 1
    iterations = [int(m[1]) for m in map(LOSS_LINE.match, msgs)
                  if m]
    assert iterations == [4, 5, 6]
    assert "par_iter_6.caffemodel" in os.listdir(tmp_path / "snaps")


def test_cli_reports_a_failing_solver_process_by_rank(tmp_path):
    write_case(tmp_path, 2, max_iter=50)
    # Record 3 is no Datum: rank 1 (records 1, 3, ...) fails on its first batch, while rank 0
    # waits for it in the all_reduce.
    with dbmod.open_db(tmp_path / "db", dbmod.WRITE, "lmdb") as db:
        txn = db.new_transaction()
        txn.put(dbmod.format_key(3, "img3.png"), b"\xff\xfe not a datum")
        txn.commit()
    started = time.monotonic()
    proc, _ = caffe_train("-solver", "solver.prototxt", "-cpu_workers", "2", cwd=tmp_path)
    assert proc.returncode == 1
    assert re.search(r"caffe train: error: solver rank 1 \(CPU\) failed: DataError: Data layer "
                     r"'data' .*record '00000003_img3.png'", proc.stderr), proc.stderr[-3000:]
    assert time.monotonic() - started < TIMEOUT_S


def test_only_the_root_solver_tests_displays_and_snapshots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    solver_file = write_case(tmp_path, 2, max_iter=2, extra=(
        'test_iter: 1 test_interval: 1 snapshot: 1 snapshot_prefix: "snaps/par"'))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("caffe")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    monkeypatch.setattr(common, "_solver", {"count": 2, "rank": 1, "multiprocess": True})
    worker = get_solver(solver_file)
    worker.step(2)
    msgs = [r.getMessage() for r in records]
    assert not os.listdir(tmp_path / "snaps")
    assert not [m for m in msgs if "Testing net" in m or "loss = " in m], msgs
    monkeypatch.setattr(common, "_solver", {"count": 2, "rank": 0, "multiprocess": True})
    root = get_solver(solver_file)
    # random_seed + rank: the two solvers drew different initial weights.
    assert not np.array_equal(params(root.net)[0], params(worker.net)[0])
    root.step(2)
    logger.removeHandler(handler)
    msgs = [r.getMessage() for r in records]
    assert sorted(os.listdir(tmp_path / "snaps")) == [
        f"par_iter_{i}.{ext}" for i in (1, 2) for ext in ("caffemodel", "solverstate")]
    assert [m for m in msgs if "Testing net" in m] == [
        "Iteration 0, Testing net (#0)", "Iteration 1, Testing net (#0)"]
    assert sum(bool(re.match(r"Iteration 0 \(\S+ iter/s, \S+s/\d+ iters\), loss = ", m))
               for m in msgs) == 1


def test_parallel_argument_errors(tmp_path, capsys, monkeypatch):
    from caffe.parallel import train_parallel
    from caffe.tools import cli

    solver_file = write_case(tmp_path, 2)
    assert cli.main(["train", "-solver", solver_file, "-cpu_workers", "2", "-gpu", "0"]) == 1
    assert "-cpu_workers 2 trains on the CPU; it cannot be combined with -gpu 0" in \
        capsys.readouterr().err
    assert cli.main(["train", "-solver", solver_file, "-cpu_workers", "-1"]) == 1
    assert "-cpu_workers must be at least 1, got -1" in capsys.readouterr().err
    with pytest.raises(CaffeError, match="at least one solver process, got 0"):
        train_parallel(solver_file, 0)
    with pytest.raises(CaffeError, match="snapshot to resume training or weights"):
        train_parallel(solver_file, 2, weights="a.caffemodel", snapshot="a.solverstate")
    if not torch.cuda.is_available():
        with pytest.raises(CaffeError, match=r"devices \[0, 1\] asked for, but no CUDA device"):
            train_parallel(solver_file, [0, 1])
        assert cli.main(["train", "-solver", solver_file, "-gpu", "0,1"]) == 1
        assert "-gpu 0,1: no CUDA device is available" in capsys.readouterr().err
    solver = get_solver(solver_file)
    monkeypatch.setattr(common, "_solver", {"count": 2, "rank": 2, "multiprocess": False})
    with pytest.raises(CaffeError, match=r"solver rank 2 is not in \[0, 2\)"):
        NCCL(solver, NCCL.new_uid())
