"""Multi-process data-parallel training: Caffe 1.0's multi-GPU training and pycaffe's ``NCCL``,
on ``torch.distributed`` (backend "nccl" for solvers on CUDA, "gloo" for solvers on the CPU).

Each solver runs in its own process, rank ``r`` of ``solver_count`` (``caffe.set_solver_count``,
``caffe.set_solver_rank``), with its own copy of the nets. Per iteration::

    every rank:  forward/backward on its own batch (the TRAIN data layers shard by rank, so the
                 ranks' batches are disjoint)
    all_reduce:  diff <- (sum over ranks of diff) / solver_count
    every rank:  the same update on the same weights, so the weights stay identical

With ``layer_wise_reduce`` (the SolverParameter field, default true as in Caffe 1.0) the
parameter diffs are all-reduced in buckets, asynchronously, as soon as backward has finished
the layers that own them, and waited for only before the update; with ``false``, in one
all_reduce after the whole backward. The sums are the same either way.

Loss layers normalize by their own batch, so the averaged gradient of ``solver_count`` batches of
``b`` is the gradient of one batch of ``solver_count * b``: the effective batch size is
multiplied by the number of solvers. Only the root solver (rank 0) displays and snapshots; it
also tests, unless the test phase runs in parallel (``parallel_test``: every rank scores its
share of the ``test_iter`` batches and the scores are summed).

pycaffe's surface, as ``python/train.py`` uses it in each process::

    caffe.set_solver_count(n); caffe.set_solver_rank(r); caffe.set_multiprocess(True)
    solver = caffe.SGDSolver("solver.prototxt")
    nccl = caffe.NCCL(solver, uid)        # uid = caffe.NCCL.new_uid(), made once, shared
    nccl.bcast()                          # rank 0's weights to every rank
    solver.add_callback(nccl)             # all-reduce of the diffs after each backward
    solver.step(solver.param.max_iter)

Launchers only start processes and join them into one group; every rank then runs
:func:`run_solver`. ``train_parallel`` spawns one process per device for ``caffe train -gpu
0,1`` and ``-cpu_workers N``; :func:`train_launched` is the body of each process torchrun or
Slurm started (``torchrun --nproc_per_node N -m caffe train -solver s.prototxt``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from caffe import common
from caffe.distributed import (
    DEFAULT_TIMEOUT_S,
    LaunchEnvironment,
    PeerLostError,
    Watchdog,
    default_store,
    init_process_group,
)
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2
from caffe.solver import Solver, SolverAction

log = logging.getLogger("caffe")

# Largest bucket of parameter diffs one asynchronous all_reduce carries (layer_wise_reduce); a
# bucket closes at the first layer boundary past it. CAFFE_REDUCE_BUCKET_BYTES overrides it.
BUCKET_BYTES = 25 * 2**20
BUCKET_BYTES_ENV = "CAFFE_REDUCE_BUCKET_BYTES"
# Two slots after the diffs of the last bucket: how many ranks ask to stop, and to snapshot.
_ACTION_SLOTS = 2


@dataclass
class _Bucket:
    """Learnable parameters reduced together, once layer ``ready_layer``'s backward is done."""

    params: list  # Blobs, in the order their diffs sit in ``buffer``
    ready_layer: int
    extra: int = 0  # trailing slots (the action slots, on the last bucket only)
    buffer: torch.Tensor | None = None
    work: object = None

    @property
    def size(self) -> int:
        return sum(blob.count for blob in self.params) + self.extra


def plan_buckets(net, layer_wise: bool, bucket_bytes: int) -> list[_Bucket]:
    """Group ``net``'s learnable parameters into all_reduce buckets, in the order backward
    finishes them. A parameter is final after the backward of the lowest layer using it (a
    shared parameter accumulates from every layer that names it). ``layer_wise`` False: one
    bucket of everything, reduced after the whole backward."""
    learnable = net.learnable_params
    ready = [len(net.layers)] * len(learnable)
    for layer_id, param_ids in enumerate(net.param_id_vecs):
        for param_id in param_ids:
            lid = net.learnable_param_ids[param_id]
            ready[lid] = min(ready[lid], layer_id)
    if not layer_wise:
        return [_Bucket(list(learnable), -1, _ACTION_SLOTS)]
    order = sorted(range(len(learnable)), key=lambda lid: (-ready[lid], lid))
    buckets: list[_Bucket] = []
    current: list[int] = []
    nbytes = 0
    for k, lid in enumerate(order):
        current.append(lid)
        nbytes += learnable[lid].count * 4
        boundary = k + 1 == len(order) or ready[order[k + 1]] != ready[lid]
        if boundary and nbytes >= bucket_bytes:
            buckets.append(_Bucket([learnable[i] for i in current], ready[lid]))
            current, nbytes = [], 0
    if current or not buckets:
        buckets.append(_Bucket([learnable[i] for i in current],
                               ready[current[-1]] if current else -1))
    buckets[-1].extra = _ACTION_SLOTS
    return buckets


def _bucket_bytes() -> int:
    value = os.environ.get(BUCKET_BYTES_ENV)
    if value is None:
        return BUCKET_BYTES
    try:
        return max(1, int(value))
    except ValueError:
        raise CaffeError(f"{BUCKET_BYTES_ENV}={value!r} is not a number of bytes") from None


class NCCL:
    """pycaffe's ``caffe.NCCL(solver, uid)``: joins this process's solver to the others'.

    ``uid`` is the rendezvous every rank passes unchanged: what ``NCCL.new_uid()`` returns (a
    ``file://`` path), a ``tcp://HOST:PORT`` address, or ``env://`` (MASTER_ADDR / MASTER_PORT,
    as torchrun sets them). The group has ``caffe.solver_count()`` members and this process is
    ``caffe.solver_rank()``; the backend is "nccl" when Caffe is in GPU mode, else "gloo". A
    solver callback: ``on_start`` resets the buckets; ``on_gradients_ready`` waits for (or,
    with ``layer_wise_reduce: false``, runs) the all_reduce of every learnable parameter's diff
    and scales it by 1 / solver_count, as Caffe's NCCL callback does.

    caffepy keywords: ``timeout_s`` bounds each collective, and a :class:`Watchdog` makes every
    rank leave, naming the lost one, when a rank dies or hangs that long; ``parallel_test``
    makes every rank score its share of the test batches (:meth:`reduce_test_scores`).
    ``share_action_function`` makes SIGINT/SIGHUP on any rank apply to every rank.
    """

    def __init__(self, solver: Solver, uid: str | bytes, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, parallel_test: bool = False) -> None:
        if isinstance(uid, bytes):
            uid = uid.decode()
        if parallel_test and solver.param.eval_type == "detection":
            raise CaffeError("NCCL(parallel_test=True): eval_type \"detection\" takes the mAP "
                             "over the whole test set and is not split over the ranks")
        self.solver = solver
        self.uid = uid
        self.count = common.solver_count()
        self.rank = common.solver_rank()
        self.timeout_s = float(timeout_s)
        # As Caffe's NCCL constructor: this process is one solver of several processes.
        common.set_multiprocess(True)
        self.backend = "nccl" if common.mode() == common.GPU else "gloo"
        self._join_group()
        store = default_store()
        self.watchdog = (Watchdog(store, self.rank, self.count, self.timeout_s).start()
                         if store is not None else None)
        if self.watchdog is not None:
            # A script that ends without finish() still tells the others it ended cleanly.
            atexit.register(self._finish_quietly)
        self.params = list(solver.net.learnable_params)
        self.layer_wise = bool(solver.param.layer_wise_reduce)
        self.buckets = plan_buckets(solver.net, self.layer_wise, _bucket_bytes())
        self._by_layer: dict[int, list[_Bucket]] = {}
        for bucket in self.buckets:
            self._by_layer.setdefault(bucket.ready_layer, []).append(bucket)
        self._armed = False
        self._pass = 0
        self._action_function: Callable[[], SolverAction] | None = None
        self._agreed_action = SolverAction.NONE
        self._last_agreed = SolverAction.NONE
        self._bcast_buffer: torch.Tensor | None = None
        if self.layer_wise:
            # Caffe's NCCL adds itself to the net's after-backward callbacks.
            solver.net.after_backward(self._after_backward)
        solver.test_reducer = self.reduce_test_scores if parallel_test else None
        if parallel_test and not common.parallel_test():
            log.warning("NCCL(parallel_test=True): the test nets were built before "
                        "caffe.common.set_parallel_test(True), so their Data / ImageData "
                        "layers do not read a shard of the test set")

    def _join_group(self) -> None:
        if not 0 <= self.rank < self.count:
            raise CaffeError(f"NCCL: solver rank {self.rank} is not in [0, {self.count}) "
                             f"(set caffe.set_solver_count and caffe.set_solver_rank first)")
        if dist.is_initialized():
            if dist.get_world_size() != self.count or dist.get_rank() != self.rank:
                raise CaffeError(f"NCCL: torch.distributed is already initialized as rank "
                                 f"{dist.get_rank()} of {dist.get_world_size()}, but this "
                                 f"solver is rank {self.rank} of {self.count}")
            return
        if self.backend == "nccl" and not dist.is_nccl_available():
            raise CaffeError("NCCL: this torch build has no NCCL backend; train on the CPU "
                             "(gloo) or install a CUDA build of torch")
        try:
            init_process_group(self.backend, self.rank, self.count, self.uid, self.timeout_s)
        except CaffeError as exc:
            raise CaffeError(f"NCCL: {exc}") from exc.__cause__

    @staticmethod
    def new_uid() -> str:
        """A fresh rendezvous (a ``file://`` path that does not exist yet) for one run."""
        path = os.path.join(tempfile.gettempdir(), f"caffe_nccl_{uuid.uuid4().hex}")
        return "file://" + path

    # --- failures ----------------------------------------------------------------------------
    def _collective(self, run: Callable[[], object]) -> object:
        """Run a collective; a failure (a peer gone, a timeout) becomes a CaffeError naming
        the lost rank."""
        try:
            return run()
        except RuntimeError as exc:
            if self.watchdog is None:
                raise CaffeError(f"solver rank {self.rank} of {self.count}: a collective "
                                 f"failed: {exc}") from exc
            raise self.watchdog.report_lost(exc) from exc

    def fail(self, message: str) -> None:
        """This rank is leaving on an error: the others will name it and why."""
        if self.watchdog is not None:
            self.watchdog.fail(f"solver rank {self.rank} of {self.count} failed: {message}")

    def finish(self) -> None:
        """A clean end of training on this rank (rank 0 stays until every rank is done)."""
        if self.watchdog is not None:
            self.watchdog.finish()

    def _finish_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.finish()

    # --- pycaffe's surface ---------------------------------------------------------------------
    def bcast(self) -> None:
        """Give every rank the root solver's weights (call once, before training)."""
        size = sum(blob.count for blob in self.params)
        ref = self.params[0].device_data() if self.params else torch.empty(0)
        buf = torch.empty(size, dtype=ref.dtype, device=ref.device)
        if self.params:
            torch.cat([blob.device_data().reshape(-1) for blob in self.params], out=buf)
        self._collective(lambda: dist.broadcast(buf, src=0))
        if self.rank != 0:
            offset = 0
            for blob in self.params:
                blob.mutable_device_data().copy_(buf[offset:offset + blob.count]
                                                 .view(blob.shape))
                offset += blob.count

    def on_start(self) -> None:
        """Arm the buckets for this iteration's backward passes; ranks other than the root
        wait here (without a collective timeout) while the root tests or snapshots."""
        self._wait_for_root()
        self._armed = True
        self._pass = 0
        for bucket in self.buckets:
            bucket.work = None

    def _after_backward(self, layer_id: int) -> None:
        """Net callback: launch the buckets layer ``layer_id`` completes, on the last of the
        iteration's ``iter_size`` backward passes."""
        if not self._armed:
            return
        if self._pass == self.solver.param.iter_size - 1:
            for bucket in self._by_layer.get(layer_id, ()):
                self._launch(bucket)
        if layer_id == 0:
            self._pass += 1

    def _launch(self, bucket: _Bucket) -> None:
        size = bucket.size
        tensors = [blob.device_diff().reshape(-1) for blob in bucket.params]
        # Every bucket lives where the diffs do (the action slots too, for a net without any).
        ref = self.params[0].device_diff() if self.params else torch.empty(
            0, device=common.device())
        buf = bucket.buffer
        if buf is None or buf.numel() != size or buf.dtype != ref.dtype \
                or buf.device != ref.device:
            buf = bucket.buffer = torch.empty(size, dtype=ref.dtype, device=ref.device)
        n = size - bucket.extra
        if tensors:
            torch.cat(tensors, out=buf[:n])
        if bucket.extra:
            action = (self._action_function() if self._action_function is not None
                      else SolverAction.NONE)
            buf[n] = float(action is SolverAction.STOP)
            buf[n + 1] = float(action is SolverAction.SNAPSHOT)
        bucket.work = self._collective(lambda: dist.all_reduce(buf, async_op=True))

    def on_gradients_ready(self) -> None:
        """diff <- sum over ranks of diff / solver_count, for every learnable parameter."""
        self._armed = False
        for bucket in self.buckets:
            if bucket.work is None:  # layer_wise_reduce false, or a layer that never called
                self._launch(bucket)
        scale = 1.0 / self.count
        for bucket in self.buckets:
            self._collective(bucket.work.wait)
            bucket.work = None
            buf = bucket.buffer
            n = bucket.size - bucket.extra
            if bucket.extra:
                stop, snapshot = (float(v) for v in buf[n:n + 2].cpu())
                self._agreed_action = (SolverAction.STOP if stop > 0 else
                                       SolverAction.SNAPSHOT if snapshot > 0
                                       else SolverAction.NONE)
            buf[:n].mul_(scale)
            offset = 0
            for blob in bucket.params:
                blob.mutable_device_diff().copy_(buf[offset:offset + blob.count]
                                                 .view(blob.shape))
                offset += blob.count

    def share_action_function(self, func: Callable[[], SolverAction] | None) -> None:
        """Let ``func`` (e.g. the SIGINT/SIGHUP handler) of any rank decide for every rank.

        Each rank asks its ``func`` once per iteration, as the last all_reduce bucket leaves;
        the requests travel in it, and every rank's solver then sees the same action at the end
        of that iteration: all ranks stop together if any rank asked to stop (a lone stop would
        leave the others waiting in the next all_reduce), else snapshot if any asked to (the
        root alone writes it). Requests made while the root tests wait for the next iteration.
        """
        self._action_function = func
        self.solver.set_action_function(self._take_agreed_action)

    def _take_agreed_action(self) -> SolverAction:
        action, self._agreed_action = self._agreed_action, SolverAction.NONE
        if action is not SolverAction.NONE:
            self._last_agreed = action
        return action

    # --- the root's extra work and the parallel test -------------------------------------------
    def _root_busy(self) -> bool:
        """Whether the root tested or snapshotted since the last all_reduce (the same answer
        on every rank: from the schedule and the agreed action)."""
        solver, p = self.solver, self.solver.param
        it = solver.iter
        tested = (solver.test_reducer is None and bool(solver.test_nets) and p.test_interval
                  and it % p.test_interval == 0 and (it > 0 or p.test_initialization))
        snapped = self._last_agreed is SolverAction.SNAPSHOT or (p.snapshot and it > 0
                                                                 and it % p.snapshot == 0)
        self._last_agreed = SolverAction.NONE
        return bool(tested or snapped)

    def _wait_for_root(self) -> None:
        if self.watchdog is None or not self._root_busy():
            return
        key = str(self.solver.iter)
        if self.rank == 0:
            self.watchdog.release(key)
        else:
            self.watchdog.wait_release(key)

    def reduce_test_scores(self, values: np.ndarray) -> np.ndarray:
        """The sum over ranks of a float64 vector (the parallel test's scores and counts)."""
        ref = self.params[0].device_data() if self.params else torch.empty(0)
        device = ref.device if self.backend == "nccl" else torch.device("cpu")
        buf = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(device)
        self._collective(lambda: dist.all_reduce(buf))
        return buf.cpu().numpy()


# --- the launchers -----------------------------------------------------------------------------
@dataclass
class SolverJob:
    """What every solver process of a run needs (pickled to spawned processes)."""

    solver_param: bytes  # a serialized SolverParameter (the message class does not pickle)
    source: str | None
    count: int
    uid: str
    weights: str = ""
    snapshot: str = ""
    devices: list[int] | None = None  # CUDA device per rank, or None for CPU solvers
    sigint_effect: SolverAction = SolverAction.STOP
    sighup_effect: SolverAction = SolverAction.SNAPSHOT
    log_level: int = logging.INFO
    progress: bool = False
    threads: int = 0  # torch threads per process (0: leave torch's choice)
    timeout_s: float = DEFAULT_TIMEOUT_S
    parallel_test: bool = False

    def where(self, rank: int) -> str:
        """Where rank ``rank`` runs: ``"GPU <id>"`` or ``"CPU"``, for log lines."""
        return f"GPU {self.devices[rank]}" if self.devices is not None else "CPU"


def run_solver(rank: int, job: SolverJob,
               report: Callable[[BaseException], None] | None = None) -> None:
    """One rank's training, whoever started the process: join the group, build the solver,
    resume or finetune, broadcast the root's weights, train. The root solver runs ``Solve``
    (tests, displays, snapshots, the final snapshot); the others run ``Step`` to ``max_iter``
    (and, with the parallel test, their share of the final test). ``report(exc)`` hears of a
    failure of this rank before the other ranks do."""
    from caffe.log import install_glog_handler
    from caffe.solver import create_solver
    from caffe.training import SignalHandler, attach_progress, copy_layers

    # Only the root logs below WARNING, as Caffe's LOG_IF(INFO, Caffe::root_solver()).
    install_glog_handler(level=job.log_level if rank == 0
                         else max(job.log_level, logging.WARNING))
    common.set_solver_count(job.count)
    common.set_solver_rank(rank)
    common.set_multiprocess(True)
    param = caffe_pb2.SolverParameter.FromString(job.solver_param)
    parallel_test = job.parallel_test and param.eval_type != "detection"
    if job.parallel_test and not parallel_test and rank == 0:
        log.warning("-parallel_test: eval_type \"detection\" (mAP over the whole test set) "
                    "is not split over the ranks; the root solver tests alone")
    common.set_parallel_test(parallel_test)
    if job.devices is None:
        if job.threads:
            torch.set_num_threads(job.threads)
        common.set_mode_cpu()
        param.solver_mode = caffe_pb2.SolverParameter.CPU
    else:
        common.set_device(job.devices[rank])
        common.set_mode_gpu()
        param.solver_mode = caffe_pb2.SolverParameter.GPU
        param.device_id = job.devices[rank]
    nccl = None
    with SignalHandler(job.sigint_effect, job.sighup_effect) as handler:
        try:
            solver = create_solver(param, source=job.source)
            if job.snapshot:
                # Every rank restores the iteration and the history from the file; the data
                # start again at each rank's own shard.
                log.info("Resuming from %s", job.snapshot)
                solver.restore(job.snapshot)
            elif job.weights and rank == 0:
                copy_layers(solver, job.weights)
            nccl = NCCL(solver, job.uid, timeout_s=job.timeout_s,
                        parallel_test=parallel_test)
            nccl.bcast()
            solver.add_callback(nccl)
            nccl.share_action_function(handler.check_for_signals)
            if rank == 0:
                progress = attach_progress(solver) if job.progress else None
                try:
                    solver.solve()
                finally:
                    if progress is not None:
                        progress.clear()
            else:
                solver.step(solver.param.max_iter - solver.iter)
                p = solver.param
                if (parallel_test and not solver.requested_early_exit and p.test_interval
                        and solver.iter % p.test_interval == 0):
                    solver.test_all()  # the root's Solve ends with this test
        except BaseException as exc:
            if report is not None:
                report(exc)
            if nccl is not None:
                nccl.fail(f"{type(exc).__name__}: {exc}")
            raise
    nccl.finish()
    # Only after a clean finish: after a failure the process leaves without waiting for peers.
    dist.destroy_process_group()
    sys.stdout.flush()


def train_launched(env: LaunchEnvironment, job: SolverJob, gpu: bool) -> None:
    """The body of one process started by torchrun or Slurm: ``env`` says its rank; the device
    is ``LOCAL_RANK`` in GPU mode (or ``job.devices[LOCAL_RANK]`` when devices are listed)."""
    if gpu:
        if not torch.cuda.is_available():
            raise CaffeError(f"{env.describe()}: GPU mode asked for, but no CUDA device is "
                             f"available")
        listed = job.devices
        if listed and env.local_rank >= len(listed):
            raise CaffeError(f"{env.describe()}: -gpu lists {len(listed)} devices, fewer than "
                             f"the processes on this node")
        device = listed[env.local_rank] if listed else env.local_rank
        devices = [device] * env.world_size  # only this rank's entry is read
    else:
        devices = None
    # Slurm does not set the variables env:// reads.
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    if env.rank == 0:
        log.info("Solver %s on %s", env.describe(),
                 f"GPU {devices[env.rank]}" if devices else "the CPU")
    job.devices = devices
    job.count = env.world_size
    job.uid = "env://"
    run_solver(env.rank, job)


def train_parallel(solver: str | os.PathLike | caffe_pb2.SolverParameter,
                   devices: Sequence[int] | int, weights: str | None = None,
                   snapshot: str | None = None, *, source: str | None = None,
                   sigint_effect: SolverAction = SolverAction.STOP,
                   sighup_effect: SolverAction = SolverAction.SNAPSHOT,
                   progress: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
                   parallel_test: bool = False) -> None:
    """Train with one solver process per device, as ``caffe train -gpu 0,1`` does.

    ``solver``: a solver file, or a SolverParameter (``source`` then names the file it came from,
    for its relative net paths). ``devices``: CUDA device ids (one process each, NCCL), or an
    int N for N solver processes on the CPU (gloo). ``snapshot``: a .solverstate every rank
    resumes from; ``weights``: comma-separated .caffemodel files the root copies before
    broadcasting. The root solver runs ``Solve`` (tests, displays, snapshots, the final snapshot);
    the others run ``Step`` to ``max_iter``. SIGINT / SIGHUP to this process go to the root;
    SIGINT / SIGHUP to any solver process make every rank follow ``sigint_effect`` /
    ``sighup_effect``. A failing solver stops the others and is raised here as a CaffeError
    naming its rank; ``timeout_s`` bounds how long a dead or hung solver goes unnoticed.
    ``parallel_test``: every rank scores its share of the test batches.
    """
    if isinstance(devices, int):
        gpu_ids, count = None, devices
    else:
        gpu_ids = [int(d) for d in devices]
        count = len(gpu_ids)
        _check_gpus(gpu_ids)
    if count < 1:
        raise CaffeError(f"train_parallel: need at least one solver process, got {count}")
    if weights and snapshot:
        raise CaffeError("Give a snapshot to resume training or weights to finetune but not "
                         "both.")
    if isinstance(solver, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(solver)
    else:
        from caffe.protoio import read_solver_param

        source = os.fspath(solver)
        param = read_solver_param(source)
    uid = NCCL.new_uid()
    job = SolverJob(solver_param=param.SerializeToString(), source=source, devices=gpu_ids,
                    count=count, uid=uid, weights=weights or "", snapshot=snapshot or "",
                    sigint_effect=sigint_effect, sighup_effect=sighup_effect,
                    log_level=logging.getLogger("caffe").getEffectiveLevel(),
                    progress=progress, threads=max(1, torch.get_num_threads() // count),
                    timeout_s=timeout_s, parallel_test=parallel_test)
    log.info("Starting %d solver processes (%s)", count,
             ", ".join(job.where(r) for r in range(count)))
    errors = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_solver_process, args=(job, errors, os.getpid()),
                                 nprocs=count, join=False, start_method="spawn")
    try:
        with _forward_signals_to(context.processes[0]):
            while not context.join(timeout=1.0):
                pass
    except mp.ProcessRaisedException as exc:
        rank, summary = _reported_error(errors, exc.error_index, context.processes)
        error = CaffeError(f"solver rank {rank} ({job.where(rank)}) failed: {summary}")
        error.add_note(exc.msg)
        raise error from None
    except mp.ProcessExitedException as exc:
        # A rank whose watchdog heard of another rank's failure leaves at once (os._exit):
        # report the failure itself when that rank tells it.
        rank, summary = _reported_error(errors, exc.error_index, context.processes, None)
        if summary is not None:
            raise CaffeError(f"solver rank {rank} ({job.where(rank)}) failed: {summary}") \
                from None
        raise CaffeError(f"solver rank {exc.error_index} ({job.where(exc.error_index)}, pid "
                         f"{exc.error_pid}) died: {exc.msg}") from None
    finally:
        # Also when this process is interrupted: no solver process outlives the launcher.
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5.0)
            if process.is_alive():
                process.kill()
        # The rendezvous file, and the traceback files torch leaves for failed processes.
        for path in [uid[len("file://"):], *context.error_files]:
            with contextlib.suppress(OSError):
                os.remove(path)


def _check_gpus(gpu_ids: list[int]) -> None:
    if not gpu_ids:
        raise CaffeError("train_parallel: no device ids given")
    if not torch.cuda.is_available():
        raise CaffeError(f"train_parallel: devices {gpu_ids} asked for, but no CUDA device is "
                         f"available (torch.cuda.is_available() is False); give a number of "
                         f"CPU solver processes instead")
    available = torch.cuda.device_count()
    for g in gpu_ids:
        if not 0 <= g < available:
            raise CaffeError(f"train_parallel: device {g} does not exist ({available} CUDA "
                             f"devices)")
    if len(set(gpu_ids)) != len(gpu_ids):
        raise CaffeError(f"train_parallel: device ids must be distinct, got {gpu_ids}")


def _reported_error(errors, rank: int, processes,
                    default: str | None = "an exception (see the traceback)",
                    ) -> tuple[int, str | None]:
    """The failure to report: the first rank's own error, rather than another rank's report
    that it lost that rank (those come in too, within seconds, and may come first)."""
    reports: dict[int, tuple[str, bool]] = {}
    deadline = time.monotonic() + 10.0
    while True:
        while not errors.empty():
            r, text, secondary = errors.get()
            reports[r] = (text, secondary)
        own = sorted(r for r, (_, secondary) in reports.items() if not secondary)
        if own or time.monotonic() > deadline or not any(p.is_alive() for p in processes):
            break
        time.sleep(0.05)
    if own:
        return own[0], reports[own[0]][0]
    return rank, reports.get(rank, (default, False))[0]


@contextlib.contextmanager
def _forward_signals_to(process):
    """While training, SIGINT / SIGHUP to this process go to the root solver's process (the
    solver processes have their own process group, so a terminal's Ctrl-C reaches them only
    this way, once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum, frame) -> None:
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)

    previous = {}
    for sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            previous[sig] = signal.signal(sig, forward)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _solver_process(rank: int, job: SolverJob, errors, parent_pid: int) -> None:
    """The body of one spawned solver process."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    _exit_with_parent(parent_pid)
    reported = []

    def report(exc: BaseException) -> None:
        reported.append(exc)
        errors.put((rank, f"{type(exc).__name__}: {exc}", isinstance(exc, PeerLostError)))

    try:
        run_solver(rank, job, report)
    except BaseException as exc:
        if not reported:
            report(exc)
        raise


def _exit_with_parent(parent_pid: int) -> None:
    """Leave when the launcher is gone, instead of waiting in a collective."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="caffe-parent-watch", daemon=True).start()
