"""Scale-out (caffe.distributed, caffe.parallel): torchrun and Slurm launches, layer-wise
overlapped all-reduce, sharded data sources, lost workers, signals on any rank, resuming with
another number of workers, and the parallel test phase.

Every process these tests start runs under a deadline and is killed in a ``finally``."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import caffe
from caffe import common
from caffe.distributed import first_slurm_host, launch_environment
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2
from caffe.solver import get_solver

from tolerance import sum_order_atol

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
DEADLINE_S = 60.0

NET = """name: 'dist'
layer {{ name: 'data' type: 'Python' top: 'data' top: 'label' include {{ phase: TRAIN }}
  python_param {{ module: 'dist_pylayers' layer: 'ShardedData' param_str: '{batch}' }} }}
layer {{ name: 'data' type: 'Python' top: 'data' top: 'label' include {{ phase: TEST }}
  python_param {{ module: 'dist_pylayers' layer: 'ShardedData' param_str: '4' }} }}
layer {{ name: 'ip1' type: 'InnerProduct' bottom: 'data' top: 'ip1'
  inner_product_param {{ num_output: 8 weight_filler {{ type: 'gaussian' std: 0.3 }}
    bias_filler {{ type: 'constant' value: 0.1 }} }} }}
layer {{ name: 'relu' type: 'ReLU' bottom: 'ip1' top: 'ip1' }}
layer {{ name: 'ip2' type: 'InnerProduct' bottom: 'ip1' top: 'ip2'
  inner_product_param {{ num_output: 3 weight_filler {{ type: 'gaussian' std: 0.3 }} }} }}
layer {{ name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip2' bottom: 'label' top: 'loss' }}
layer {{ name: 'acc' type: 'Accuracy' bottom: 'ip2' bottom: 'label' top: 'acc'
  include {{ phase: TEST }} }}
"""

SOLVER = """net: "{name}_net.prototxt"
base_lr: 0.5 momentum: 0.9 weight_decay: 0.01 lr_policy: "fixed"
display: 1 max_iter: {max_iter} random_seed: 5 snapshot_prefix: "{name}"
{extra}
"""
TESTING = "test_iter: 3 test_interval: 2"


def write_case(folder: Path, name: str, batch: int, max_iter: int = 4,
               extra: str = TESTING) -> str:
    (folder / f"{name}_net.prototxt").write_text(NET.format(batch=batch))
    (folder / f"{name}.prototxt").write_text(SOLVER.format(name=name, max_iter=max_iter,
                                                           extra=extra))
    return f"{name}.prototxt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in (
               "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}", OMP_NUM_THREADS="1", **extra)
    return env


def finish(procs: list[subprocess.Popen], timeout: float = DEADLINE_S) -> list[str]:
    """Wait for every process (killing all past ``timeout``); their stderr texts."""
    deadline = time.monotonic() + timeout
    errs = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            errs.append(err)
    except subprocess.TimeoutExpired:
        pytest.fail("a training process did not finish in time")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return errs


def torchrun(folder: Path, solver: str, *args: str, nproc: int, port: int,
             nnodes: int = 1, node_rank: int = 0, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
         "--node_rank", str(node_rank), "--nproc_per_node", str(nproc), "--master_addr",
         "127.0.0.1", "--master_port", str(port), "-m", "caffe", "train", "-solver", solver,
         "-timeout", "30", *args], cwd=folder, env=env or child_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def weights(path: Path) -> list[np.ndarray]:
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    return [np.asarray(b.data, dtype=np.float32) for layer in net.layer for b in layer.blobs]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record) -> None:
        self.messages.append(record.getMessage())


def test_torchrun_two_processes_at_batch_b_match_one_at_2b(tmp_path, monkeypatch):
    b, iters = 3, 4
    # Run A: one node, two processes, one all_reduce after backward, the test phase split over
    # the ranks. Run B: two "nodes" (two torchrun agents rendezvousing on 127.0.0.1), one
    # process each, layer-wise reduce with a bucket per layer (the tiny net fits one default
    # bucket) launched during backward.
    write_case(tmp_path, "a", b, iters, extra=TESTING + " layer_wise_reduce: false")
    write_case(tmp_path, "b", b, iters)
    run_a = torchrun(tmp_path, "a.prototxt", "-parallel_test", nproc=2, port=free_port())
    err_a, = finish([run_a])
    assert run_a.returncode == 0, err_a[-3000:]
    port = free_port()
    env = child_env(CAFFE_REDUCE_BUCKET_BYTES="1")
    nodes = [torchrun(tmp_path, "b.prototxt", nproc=1, nnodes=2, node_rank=k, port=port,
                      env=env) for k in (0, 1)]
    errs = finish(nodes)
    assert [n.returncode for n in nodes] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    # Rank 0 alone snapshots and logs at INFO.
    assert sorted(p.name for p in tmp_path.glob("*_iter_*")) == [
        "a_iter_4.caffemodel", "a_iter_4.solverstate", "b_iter_4.caffemodel",
        "b_iter_4.solverstate"]
    assert sum("Solving dist" in line for line in err_a.splitlines()) == 1
    w_a, w_b = weights(tmp_path / "a_iter_4.caffemodel"), weights(tmp_path / "b_iter_4.caffemodel")
    # Two ranks: each element's all_reduce is one float32 addition (commutative, so the same
    # bits in any order) and the scaling by 1/2 is exact: bucketing cannot change a bit.
    for x, y in zip(w_a, w_b):
        np.testing.assert_array_equal(x, y)

    # One process at batch 2b over the same records.
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    records = Records()
    logger = logging.getLogger("caffe")
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        single = get_solver(write_case(tmp_path, "single", 2 * b, iters))
        start = [blob.data.copy() for blob in single.net.learnable_params]
        single.step(iters)
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    for w0, w, got in zip(start, (blob.data for blob in single.net.learnable_params), w_a):
        assert not np.allclose(w, w0, rtol=1e-3)  # training moved every parameter
        # The two runs sum the same 2b per-record gradient terms grouped differently ((b + b)
        # / 2 against 2b), so each update of a weight, at most max|w0| + max|w| in size, may
        # differ by 2b + 1 float32 roundings of that size (tolerance.py); `iters` updates add
        # up, and a weight near zero needs the absolute term.
        atol = iters * sum_order_atol(2 * b + 1, np.abs(w0).max() + np.abs(w).max())
        np.testing.assert_allclose(got, w.reshape(-1), rtol=1e-5, atol=atol)
    # The parallel test at iteration 0 (identical weights): rank 0 scored test batches 0 and 2,
    # rank 1 batch 1; the summed scores print as the single process's over batches 0, 1, 2.
    def first_test(lines):
        found = [m for m in lines if "Test net output" in m]
        return [re.sub(r"^.*\]\s*", "", m).strip() for m in found[:2]]

    assert first_test(err_a.splitlines()) == first_test(records.messages)
    assert len(first_test(records.messages)) == 2


class Pair:
    """Two ``caffe train`` processes started as srun / a plain env:// launch would start them,
    without torchrun (whose agent would end the survivor itself)."""

    def __init__(self, folder: Path, solver: str, *args: str, slurm: bool) -> None:
        port = free_port()
        self.procs = []
        for rank in (0, 1):
            if slurm:
                extra = dict(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                             SLURM_JOB_NODELIST="localhost", MASTER_PORT=str(port))
            else:
                extra = dict(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "caffe", "train", "-solver", solver, *args],
                cwd=folder, env=child_env(**extra), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.procs[0].stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.lines):
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                self.kill()
                pytest.fail(f"rank 0 never logged {pattern!r}:\n{''.join(self.lines)[-3000:]}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> tuple[int | None, float]:
        """Rank 0's exit status (None if it still ran after ``timeout``) and the seconds it
        took; then nothing of the pair is left."""
        start = time.monotonic()
        try:
            code = self.procs[0].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.monotonic() - start
        self.kill()
        self._reader.join(5.0)
        return code, elapsed

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_sighup_on_any_rank_snapshots_and_a_killed_worker_is_named(tmp_path):
    solver = write_case(tmp_path, "k", 2, max_iter=100000, extra="")
    pair = Pair(tmp_path, solver, "-timeout", "20", slurm=True)
    try:
        pair.wait_for(r"Iteration 3 ")
        # SIGHUP to rank 1: its request travels in the all_reduce; rank 0 snapshots.
        os.kill(pair.procs[1].pid, signal.SIGHUP)
        pair.wait_for(r"Snapshotting to binary proto file k_iter_\d+\.caffemodel")
        pair.procs[1].send_signal(signal.SIGKILL)
        code, elapsed = pair.wait(timeout=20.0)
    finally:
        pair.kill()
    text = "".join(pair.lines)
    # The collective fails at once (the peer's connection closed); three heartbeats (3 s)
    # tell which rank stopped.
    assert code not in (None, 0) and elapsed < 20.0, text[-3000:]
    assert re.search(r"caffe train: error: solver rank 1 of 2 was lost", text), text[-3000:]


def test_a_hung_worker_is_named_within_the_timeout(tmp_path):
    solver = write_case(tmp_path, "h", 2, max_iter=100000, extra="")
    pair = Pair(tmp_path, solver, "-timeout", "6", slurm=False)
    try:
        pair.wait_for(r"Iteration 3 ")
        os.kill(pair.procs[1].pid, signal.SIGSTOP)
        code, elapsed = pair.wait(timeout=20.0)
    finally:
        pair.kill()
    text = "".join(pair.lines)
    # Rank 0 watches rank 1's heartbeat once a second: stale for 6 s, it is declared lost.
    assert code not in (None, 0) and elapsed < 6.0 + 5.0, text[-3000:]
    assert "solver rank 1 of 2 was lost" in text, text[-3000:]


def test_requests_travel_in_the_all_reduce(tmp_path, monkeypatch):
    """One rank in a real gloo group: its snapshot, then stop, requests come back agreed."""
    import torch.distributed as dist

    from caffe.parallel import NCCL
    from caffe.solver import SolverAction

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setattr(common, "_solver", {"count": 1, "rank": 0, "multiprocess": False})
    solver = get_solver(write_case(tmp_path, "u", 2, max_iter=10, extra=""))
    nccl = NCCL(solver, "file://" + str(tmp_path / "rendezvous"), timeout_s=30)
    try:
        asks = iter([SolverAction.NONE, SolverAction.SNAPSHOT, SolverAction.STOP])
        solver.add_callback(nccl)
        nccl.share_action_function(lambda: next(asks))
        solver.step(10)
    finally:
        nccl.finish()
        dist.destroy_process_group()
    assert solver.iter == 3 and solver.requested_early_exit
    assert sorted(p.name for p in tmp_path.glob("u_iter_*")) == [
        "u_iter_2.caffemodel", "u_iter_2.solverstate"]


SHARED_NET = """name: 'shared'
layer { name: 'data' type: 'Python' top: 'data' top: 'label'
  python_param { module: 'dist_pylayers' layer: 'ShardedData' param_str: '4' } }
layer { name: 'ipa' type: 'InnerProduct' bottom: 'data' top: 'a' param { name: 'w' }
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.3 } } }
layer { name: 'ipb' type: 'InnerProduct' bottom: 'a' top: 'b' param { name: 'w' }
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.3 } } }
layer { name: 'ip2' type: 'InnerProduct' bottom: 'b' top: 'ip2'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.3 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip2' bottom: 'label' top: 'loss' }
"""


@pytest.mark.parametrize("layer_wise", [True, False])
def test_buckets_wait_for_the_last_pass_and_the_last_sharing_layer(tmp_path, monkeypatch,
                                                                    layer_wise):
    """One rank in a real gloo group, iter_size 2, a weight shared by two layers, a bucket per
    layer: the all_reduce (the identity for one rank) copies each bucket back into the diffs,
    so a bucket sent before the last backward pass, or before the lower of the two layers
    sharing 'w' added its part, would drop gradient. The weights must equal, bit for bit, those
    of the same solver without the callback."""
    import torch.distributed as dist

    from caffe.parallel import NCCL

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setattr(common, "_solver", {"count": 1, "rank": 0, "multiprocess": False})
    monkeypatch.setenv("CAFFE_REDUCE_BUCKET_BYTES", "1")
    param = caffe_pb2.SolverParameter()
    from google.protobuf import text_format

    text_format.Merge(SHARED_NET, param.net_param)
    param.base_lr, param.lr_policy, param.momentum, param.iter_size = 0.5, "fixed", 0.9, 2
    param.random_seed, param.layer_wise_reduce = 5, layer_wise
    plain = get_solver(param)
    plain.step(3)
    reduced = get_solver(param)
    nccl = NCCL(reduced, "file://" + str(tmp_path / "rendezvous"), timeout_s=30)
    try:
        # Buckets: ip2's weight and bias; ipb's bias; the shared w with ipa's bias.
        assert len(nccl.buckets) == (3 if layer_wise else 1)
        reduced.add_callback(nccl)
        reduced.step(3)
    finally:
        nccl.finish()
        dist.destroy_process_group()
    for x, y in zip(plain.net.learnable_params, reduced.net.learnable_params):
        np.testing.assert_array_equal(x.data, y.data)


def test_resume_with_another_worker_count(tmp_path, monkeypatch):
    from caffe.tools import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    solver = write_case(tmp_path, "r", 2, max_iter=2, extra=TESTING + " snapshot: 2")
    assert cli.main(["train", "-solver", solver]) == 0
    # Two workers resume the one-worker snapshot: the iteration and the momentum history
    # restore, and training goes on from iteration 2.
    write_case(tmp_path, "r", 2, max_iter=4, extra=TESTING + " snapshot: 2")
    proc = subprocess.run([sys.executable, "-m", "caffe", "train", "-solver", solver,
                           "-snapshot", "r_iter_2.solverstate", "-cpu_workers", "2"],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                          timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = [int(m) for m in re.findall(r"\] Iteration (\d+) \(", proc.stderr)]
    assert shown == [2, 3]
    state = caffe_pb2.SolverState.FromString((tmp_path / "r_iter_4.solverstate").read_bytes())
    assert state.iter == 4 and len(state.history) == 4
    # And back to one worker.
    write_case(tmp_path, "r", 2, max_iter=6, extra=TESTING + " snapshot: 2")
    assert cli.main(["train", "-solver", solver, "-snapshot", "r_iter_4.solverstate"]) == 0
    state = caffe_pb2.SolverState.FromString((tmp_path / "r_iter_6.solverstate").read_bytes())
    assert state.iter == 6


# --- in-process: launch variables and sharded sources -------------------------------------------
def test_launch_environment_from_torchrun_and_slurm():
    assert launch_environment({}) is None
    env = launch_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                              "MASTER_ADDR": "n1", "MASTER_PORT": "29500"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port,
            env.launcher) == (3, 8, 1, "n1", 29500, "torchrun")
    env = launch_environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2",
                              "SLURM_JOB_NODELIST": "gpu[07-09,12],cpu1", "SLURM_JOB_ID": "42"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port,
            env.launcher) == (5, 6, 2, "gpu07", 15042, "slurm")
    # torchrun under srun: torchrun's variables win; MASTER_ADDR given beats the node list.
    env = launch_environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "MASTER_ADDR": "h",
                              "MASTER_PORT": "7", "SLURM_JOB_NODELIST": "x"})
    assert (env.master_addr, env.master_port) == ("h", 7)
    assert first_slurm_host("node1") == "node1"
    with pytest.raises(CaffeError, match="MASTER_PORT is not"):
        launch_environment({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h"})
    with pytest.raises(CaffeError, match="SLURM_NTASKS='two' is not an integer"):
        launch_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "two",
                            "SLURM_JOB_NODELIST": "a"})


def test_image_data_shuffle_shards_are_disjoint_and_cover_each_epoch(tmp_path, monkeypatch):
    from caffe.data import image as cvimage

    from data_case import make_data_layer, random_images, run_batches, setup_layer

    n, batch = 7, 2
    for i, img in enumerate(random_images(n, shape=(3, 2, 2), seed=3)):
        (tmp_path / f"{i}.png").write_bytes(
            cvimage.imencode(np.ascontiguousarray(img.transpose(1, 2, 0)), "png"))
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{i}.png {i}\n" for i in range(n)))
    epochs = {}
    for rank in (0, 1):
        monkeypatch.setattr(common, "_solver", {"count": 2, "rank": rank, "multiprocess": True,
                                                "shared_seed": 11})
        common.set_random_seed(11 + rank)  # as the Solver seeds each rank
        layer = make_data_layer(f"type: 'ImageData' image_data_param {{ source: '{listing}' "
                                f"root_folder: '{tmp_path}/' batch_size: {batch} shuffle: true"
                                f" }}", phase="TRAIN")
        top = setup_layer(layer)
        size = len(range(rank, n, 2))  # rank 0 holds 4 entries, rank 1 holds 3
        # Two epochs of this rank's shard, read in batches.
        _, labels = run_batches(layer, top, -(-2 * size // batch))
        epochs[rank] = labels.astype(int)[:2 * size].reshape(2, size)
    for e in (0, 1):
        first, second = set(epochs[0][e]), set(epochs[1][e])
        assert len(first) == 4 and len(second) == 3
        assert not first & second and first | second == set(range(n))
    # The permutation changes between epochs (the same one on both ranks).
    assert list(epochs[0][0]) + list(epochs[1][0]) != list(epochs[0][1]) + list(epochs[1][1])


def test_memory_data_shards_batches_by_rank(monkeypatch):
    from data_case import make_data_layer, setup_layer

    data = np.arange(5 * 2, dtype=np.float32).reshape(5, 2, 1, 1)
    labels = np.arange(5, dtype=np.float32)
    seen = {}
    for rank in (0, 1):
        monkeypatch.setattr(common, "_solver", {"count": 2, "rank": rank, "multiprocess": True})
        layer = make_data_layer("type: 'MemoryData' memory_data_param { batch_size: 1 "
                                "channels: 2 height: 1 width: 1 }", phase="TRAIN")
        top = setup_layer(layer)
        layer.reset(data, labels)
        got = []
        for _ in range(5):
            layer.Forward([], top)
            got.append(int(top[1].data.reshape(-1)[0]))
        seen[rank] = got
    assert seen == {0: [0, 2, 4, 1, 3], 1: [1, 3, 0, 2, 4]}
    # At every step the two ranks read different batches.
    assert all(a != b for a, b in zip(seen[0], seen[1]))


def test_window_data_draws_from_its_own_windows(tmp_path, monkeypatch):
    from caffe.data import image as cvimage

    from data_case import make_data_layer, run_batches, setup_layer

    lines = []
    # Two images, each with one foreground window (class 1, then 2) and one background one.
    for i in range(2):
        img = np.full((10, 12, 3), 40 * i, dtype=np.uint8)
        (tmp_path / f"w{i}.png").write_bytes(cvimage.imencode(img, "png"))
        lines += [f"# {i}", f"w{i}.png", "3", "10", "12", "2",
                  f"{i + 1} 0.9 1 1 8 7", "0 0.1 0 0 11 9"]
    (tmp_path / "windows.txt").write_text("\n".join(lines) + "\n")
    labels = {}
    for rank in (0, 1):
        monkeypatch.setattr(common, "_solver", {"count": 2, "rank": rank, "multiprocess": True})
        layer = make_data_layer(
            f"type: 'WindowData' window_data_param {{ source: '{tmp_path / 'windows.txt'}' "
            f"root_folder: '{tmp_path}/' batch_size: 4 fg_threshold: 0.5 bg_threshold: 0.3 "
            f"fg_fraction: 0.5 }} transform_param {{ crop_size: 4 }}", phase="TRAIN")
        top = setup_layer(layer)
        data, got = run_batches(layer, top, 2)
        labels[rank] = set(got.astype(int).tolist())
        # Windows r, r + 2, ...: rank r sees only image r (pixel value 40 r, zero padding aside).
        assert set(np.unique(data).tolist()) <= {0.0, 40.0 * rank}
    assert labels == {0: {0, 1}, 1: {0, 2}}


def test_timeout_flag_is_checked(tmp_path, capsys):
    from caffe.tools import cli

    solver = write_case(tmp_path, "t", 2)
    assert cli.main(["train", "-solver", str(tmp_path / solver), "-timeout", "0"]) == 1
    assert "-timeout must be a positive number of seconds, got 0" in capsys.readouterr().err


def test_python_layers_see_the_solver_rank(monkeypatch):
    monkeypatch.setattr(common, "_solver", {"count": 3, "rank": 2, "multiprocess": True})
    assert (caffe.solver_count(), caffe.solver_rank()) == (3, 2)
    assert common.shard(caffe_pb2.TRAIN) == (3, 2) and common.shard(caffe_pb2.TEST) == (1, 0)
    common.set_parallel_test(True)
    try:
        assert common.shard(caffe_pb2.TEST) == (3, 2)
    finally:
        common.set_parallel_test(False)
