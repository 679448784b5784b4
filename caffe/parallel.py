"""Multi-process data-parallel training: Caffe 1.0's multi-GPU training and pycaffe's ``NCCL``,
on ``torch.distributed`` (backend "nccl" for solvers on CUDA, "gloo" for solvers on the CPU).

Each solver runs in its own process, rank ``r`` of ``solver_count`` (``caffe.set_solver_count``,
``caffe.set_solver_rank``), with its own copy of the nets. Per iteration:

    every rank:  forward/backward on its own batch (the TRAIN Data layer keeps record i on rank
                 i % solver_count, so the ranks' batches are disjoint)
    NCCL:        diff <- (sum over ranks of diff) / solver_count     (one all_reduce)
    every rank:  the same update on the same weights, so the weights stay identical

Loss layers normalize by their own batch, so the averaged gradient of ``solver_count`` batches of
``b`` is the gradient of one batch of ``solver_count * b``: the effective batch size is
multiplied by the number of solvers. Only the root solver (rank 0) tests, displays and snapshots.

pycaffe's surface, as ``python/train.py`` uses it in each process::

    caffe.set_solver_count(n); caffe.set_solver_rank(r); caffe.set_multiprocess(True)
    solver = caffe.SGDSolver("solver.prototxt")
    nccl = caffe.NCCL(solver, uid)        # uid = caffe.NCCL.new_uid(), made once, shared
    nccl.bcast()                          # rank 0's weights to every rank
    solver.add_callback(nccl)             # all-reduce of the diffs after each backward
    solver.step(solver.param.max_iter)

``train_parallel`` does all of this for ``caffe train -gpu 0,1`` and ``-cpu_workers N``: one
process per device, started with torch.multiprocessing's spawn method.
"""

from __future__ import annotations

import contextlib
import datetime
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

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from caffe import common
from caffe.errors import CaffeError
from caffe.proto import caffe_pb2
from caffe.solver import Solver, SolverAction

log = logging.getLogger("caffe")

# Caffe's NCCL waits without limit. The root tests while the other ranks wait in the next
# all_reduce, so a test pass must fit in the timeout: keep it long.
DEFAULT_TIMEOUT_S = 24 * 3600.0

_ACTION_CODES = {SolverAction.NONE: 0, SolverAction.STOP: 1, SolverAction.SNAPSHOT: 2}
_CODE_ACTIONS = {code: action for action, code in _ACTION_CODES.items()}


class NCCL:
    """pycaffe's ``caffe.NCCL(solver, uid)``: joins this process's solver to the others'.

    ``uid`` is the rendezvous every rank passes unchanged: what ``NCCL.new_uid()`` returns (a
    ``file://`` path), or a ``tcp://127.0.0.1:PORT`` address. The group has
    ``caffe.solver_count()`` members and this process is ``caffe.solver_rank()``; the backend is
    "nccl" when Caffe is in GPU mode, else "gloo". A solver callback: ``on_start`` does nothing,
    ``on_gradients_ready`` sums every learnable parameter's diff over the ranks in one all_reduce
    of a flat buffer and scales it by 1 / solver_count, as Caffe's NCCL callback does.

    ``timeout_s`` bounds each collective (a caffepy keyword). ``share_action_function`` (also
    caffepy's) makes the root's SIGINT/SIGHUP effects apply to every rank.
    """

    def __init__(self, solver: Solver, uid: str | bytes, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if isinstance(uid, bytes):
            uid = uid.decode()
        self.solver = solver
        self.uid = uid
        self.count = common.solver_count()
        self.rank = common.solver_rank()
        # As Caffe's NCCL constructor: this process is one solver of several processes.
        common.set_multiprocess(True)
        self.backend = "nccl" if common.mode() == common.GPU else "gloo"
        self._join_group(timeout_s)
        self.params = list(solver.net.learnable_params)
        self._buffer: torch.Tensor | None = None
        self._root_action_function: Callable[[], SolverAction] | None = None
        self._agreed_action = SolverAction.NONE

    def _join_group(self, timeout_s: float) -> None:
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
            dist.init_process_group(self.backend, init_method=self.uid,
                                    world_size=self.count, rank=self.rank,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise CaffeError(f"NCCL: cannot join the {self.backend} group at {self.uid!r} as "
                             f"rank {self.rank} of {self.count}: {exc}") from exc

    @staticmethod
    def new_uid() -> str:
        """A fresh rendezvous (a ``file://`` path that does not exist yet) for one run."""
        path = os.path.join(tempfile.gettempdir(), f"caffe_nccl_{uuid.uuid4().hex}")
        return "file://" + path

    # --- the flat buffer -----------------------------------------------------------------------
    def _flat_buffer(self, like: Sequence[torch.Tensor]) -> torch.Tensor:
        """One buffer for every learnable parameter, plus a slot for the root's action;
        reallocated only when the sizes, dtype or device change."""
        size = sum(t.numel() for t in like) + 1
        ref = like[0] if like else torch.empty(0, device=common.device())
        buf = self._buffer
        if buf is None or buf.numel() != size or buf.dtype != ref.dtype \
                or buf.device != ref.device:
            buf = self._buffer = torch.empty(size, dtype=ref.dtype, device=ref.device)
        return buf

    def _gather(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        buf = self._flat_buffer(tensors)
        if tensors:
            torch.cat([t.reshape(-1) for t in tensors], out=buf[:-1])
        return buf

    def _scatter(self, buf: torch.Tensor, mutable: Callable) -> None:
        offset = 0
        for blob in self.params:
            count = blob.count
            mutable(blob).copy_(buf[offset:offset + count].view(blob.shape))
            offset += count

    # --- pycaffe's surface ---------------------------------------------------------------------
    def bcast(self) -> None:
        """Give every rank the root solver's weights (call once, before training)."""
        buf = self._gather([blob.device_data() for blob in self.params])
        dist.broadcast(buf, src=0)
        if self.rank != 0:
            self._scatter(buf, lambda blob: blob.mutable_device_data())

    def on_start(self) -> None:
        """Nothing to do: the weights stay in step through identical updates."""

    def on_gradients_ready(self) -> None:
        """diff <- sum over ranks of diff / solver_count, for every learnable parameter."""
        buf = self._gather([blob.device_diff() for blob in self.params])
        code = 0
        if self._root_action_function is not None:
            code = _ACTION_CODES[self._root_action_function()]
        buf[-1] = code
        dist.all_reduce(buf)
        buf[:-1].mul_(1.0 / self.count)
        self._agreed_action = _CODE_ACTIONS.get(int(round(float(buf[-1]))), SolverAction.NONE)
        self._scatter(buf, lambda blob: blob.mutable_device_diff())

    def share_action_function(self, func: Callable[[], SolverAction] | None) -> None:
        """Let the root's ``func`` (e.g. the SIGINT/SIGHUP handler) decide for every rank.

        The root asks ``func`` once per iteration, in ``on_gradients_ready``; its answer travels
        in the all_reduce, and every rank's solver then sees it as its requested action at the
        end of that iteration: all ranks stop together (a lone stop would leave the others
        waiting in the next all_reduce), and the root alone writes a requested snapshot. Other
        ranks' ``func`` is ignored. Requests made while the root tests wait for the next
        iteration.
        """
        self._root_action_function = func if self.rank == 0 else None
        self.solver.set_action_function(self._take_agreed_action)

    def _take_agreed_action(self) -> SolverAction:
        action, self._agreed_action = self._agreed_action, SolverAction.NONE
        return action


# --- the launcher ------------------------------------------------------------------------------
@dataclass
class _Job:
    """What every solver process needs (pickled to the spawned processes)."""

    solver_param: bytes  # a serialized SolverParameter (the message class does not pickle)
    source: str | None
    devices: list[int] | None  # CUDA device per rank, or None for CPU solvers
    count: int
    uid: str
    weights: str
    snapshot: str
    sigint_effect: SolverAction
    sighup_effect: SolverAction
    log_level: int
    progress: bool
    threads: int
    timeout_s: float
    parent_pid: int

    def where(self, rank: int) -> str:
        return f"GPU {self.devices[rank]}" if self.devices is not None else "CPU"


def train_parallel(solver: str | os.PathLike | caffe_pb2.SolverParameter,
                   devices: Sequence[int] | int, weights: str | None = None,
                   snapshot: str | None = None, *, source: str | None = None,
                   sigint_effect: SolverAction = SolverAction.STOP,
                   sighup_effect: SolverAction = SolverAction.SNAPSHOT,
                   progress: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Train with one solver process per device, as ``caffe train -gpu 0,1`` does.

    ``solver``: a solver file, or a SolverParameter (``source`` then names the file it came from,
    for its relative net paths). ``devices``: CUDA device ids (one process each, NCCL), or an
    int N for N solver processes on the CPU (gloo). ``snapshot``: a .solverstate every rank
    resumes from; ``weights``: comma-separated .caffemodel files the root copies before
    broadcasting. The root solver runs ``Solve`` (tests, displays, snapshots, the final snapshot);
    the others run ``Step`` to ``max_iter``. SIGINT / SIGHUP to this process go to the root,
    whose ``sigint_effect`` / ``sighup_effect`` all ranks then follow. A failing solver stops the
    others and is raised here as a CaffeError naming its rank.
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
    job = _Job(solver_param=param.SerializeToString(), source=source, devices=gpu_ids,
               count=count, uid=uid, weights=weights or "", snapshot=snapshot or "",
               sigint_effect=sigint_effect, sighup_effect=sighup_effect,
               log_level=logging.getLogger("caffe").getEffectiveLevel(), progress=progress,
               threads=max(1, torch.get_num_threads() // count), timeout_s=timeout_s,
               parent_pid=os.getpid())
    log.info("Starting %d solver processes (%s)", count,
             ", ".join(job.where(r) for r in range(count)))
    errors = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_solver_process, args=(job, errors), nprocs=count, join=False,
                                 start_method="spawn")
    try:
        with _forward_signals_to(context.processes[0]):
            while not context.join(timeout=1.0):
                pass
    except mp.ProcessRaisedException as exc:
        summary = _reported_error(errors, exc.error_index)
        error = CaffeError(f"solver rank {exc.error_index} ({job.where(exc.error_index)}) "
                           f"failed: {summary}")
        error.add_note(exc.msg)
        raise error from None
    except mp.ProcessExitedException as exc:
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


def _reported_error(errors, rank: int) -> str:
    """The failing rank's ``Type: message``, as the solver process put it on ``errors``."""
    found = "an exception (see the traceback)"
    while not errors.empty():
        r, text = errors.get()
        if r == rank:
            found = text
    return found


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


def _solver_process(rank: int, job: _Job, errors) -> None:
    """The body of one spawned solver process."""
    try:
        _run_solver(rank, job)
    except BaseException as exc:
        errors.put((rank, f"{type(exc).__name__}: {exc}"))
        raise


def _exit_with_parent(parent_pid: int) -> None:
    """Leave when the launcher is gone, instead of waiting in a collective forever."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="caffe-parent-watch", daemon=True).start()


def _run_solver(rank: int, job: _Job) -> None:
    from caffe.log import install_glog_handler
    from caffe.solver import create_solver
    from caffe.tools.train import SignalHandler, attach_progress, copy_layers

    if hasattr(os, "setpgrp"):
        os.setpgrp()
    _exit_with_parent(job.parent_pid)
    # Only the root logs below WARNING, as Caffe's LOG_IF(INFO, Caffe::root_solver()).
    install_glog_handler(level=job.log_level if rank == 0
                         else max(job.log_level, logging.WARNING))
    common.set_solver_count(job.count)
    common.set_solver_rank(rank)
    common.set_multiprocess(True)
    param = caffe_pb2.SolverParameter.FromString(job.solver_param)
    if job.devices is None:
        torch.set_num_threads(job.threads)
        common.set_mode_cpu()
        param.solver_mode = caffe_pb2.SolverParameter.CPU
    else:
        common.set_device(job.devices[rank])
        common.set_mode_gpu()
        param.solver_mode = caffe_pb2.SolverParameter.GPU
        param.device_id = job.devices[rank]
    handler = SignalHandler(job.sigint_effect, job.sighup_effect) if rank == 0 else None
    with handler if handler is not None else contextlib.nullcontext():
        solver = create_solver(param, source=job.source)
        if job.snapshot:
            # Every rank restores its solver state (history) from the file, as Caffe does.
            log.info("Resuming from %s", job.snapshot)
            solver.restore(job.snapshot)
        elif job.weights and rank == 0:
            copy_layers(solver, job.weights)
        nccl = NCCL(solver, job.uid, timeout_s=job.timeout_s)
        nccl.bcast()
        solver.add_callback(nccl)
        nccl.share_action_function(handler.check_for_signals if handler else None)
        if rank == 0:
            progress = attach_progress(solver) if job.progress else None
            try:
                solver.solve()
            finally:
                if progress is not None:
                    progress.clear()
        else:
            solver.step(solver.param.max_iter - solver.iter)
    # Only after a clean finish: after a failure, the launcher ends the other ranks.
    dist.destroy_process_group()
    sys.stdout.flush()
