"""train or finetune a model

Usage: caffe train -solver solver.prototxt [-weights a.caffemodel[,b.caffemodel] |
-snapshot X.solverstate] [-gpu ids|all | -cpu_workers N] [-level N] [-stage s1,s2]
[-sigint_effect stop|snapshot|none] [-sighup_effect stop|snapshot|none].

As Caffe's ``caffe train``: reads the solver file, puts ``-level`` / ``-stage`` into its
train_state, picks CPU or GPU (``-gpu``, else the solver's ``solver_mode``), resumes from a
solver state or copies finetuning weights into the train and test nets, and runs ``Solve``.
With several devices (``-gpu 0,1``, ``-gpu all``) or ``-cpu_workers N`` (N > 1; caffepy's CPU
counterpart, not a Caffe flag), one solver process runs per device and their gradients are
averaged every iteration (:func:`caffe.parallel.train_parallel`); the effective batch size is
multiplied by the number of solvers, and only the root solver tests, displays and snapshots.
SIGINT and SIGHUP are turned into solver actions, checked once per iteration: ``snapshot``
(write a snapshot and go on), ``stop`` (stop training; the final snapshot is still written when
``snapshot_after_train`` is set) or ``none``. On a terminal, a progress line with an ETA is kept
under the log.

This module also holds what the other brew commands (test, time, device_query) share: their
flags, the parsing of ``-gpu``, ``-phase``, ``-stage`` and ``-iterations``, and building the
``-model`` net.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from caffe import common
from caffe.errors import CaffeError
from caffe.net import ALLOW_PYTHON_LAYERS_ENV, python_layers_allowed
from caffe.proto import caffe_pb2
from caffe.solver import Solver, SolverAction, create_solver
from caffe.tools.flags import FlagSet

if TYPE_CHECKING:
    from caffe.net import Net

COMMAND = "train"

log = logging.getLogger("caffe")


# --- shared by the brew commands --------------------------------------------------------------
# Each brew command's summary, usage and the flags it reads (its ``-help`` shows these).
BREW_COMMANDS = {
    "train": ("train or finetune a model",
              "caffe train -solver solver.prototxt [-weights w.caffemodel[,w2.caffemodel] | "
              "-snapshot s.solverstate] [flags]",
              ("solver", "snapshot", "weights", "gpu", "cpu_workers", "level", "stage",
               "sigint_effect", "sighup_effect", "allow_python_layers")),
    "test": ("score a model",
             "caffe test -model net.prototxt -weights w.caffemodel [-iterations N] [flags]",
             ("model", "weights", "gpu", "iterations", "phase", "level", "stage",
              "allow_python_layers")),
    "time": ("benchmark model execution time",
             "caffe time -model net.prototxt [-iterations N] [flags]",
             ("model", "gpu", "iterations", "phase", "level", "stage", "allow_python_layers")),
    "device_query": ("show GPU diagnostic information", "caffe device_query -gpu ID[,ID...]",
                     ("gpu",)),
}


def brew_flags(command: str) -> FlagSet:
    """The flags of Caffe's ``caffe`` tool. All are accepted by every command, as in Caffe (one
    gflags namespace); those ``command`` does not read are left out of its help and warned
    about when given."""
    summary, usage, own = BREW_COMMANDS[command]
    flags = FlagSet(f"caffe {command}", f"{summary}\nusage: {usage}")
    flags.define("gpu", "", "Optional; run in GPU mode on given device IDs separated by ','. "
                            "Use '-gpu all' to run on all available GPUs. With several "
                            "devices, the effective training batch size is the solver's "
                            "batch size times the number of devices.")
    flags.define("solver", "", "The solver definition protocol buffer text file.")
    flags.define("model", "", "The model definition protocol buffer text file.")
    flags.define("phase", "", "Optional; network phase (TRAIN or TEST). Only used for 'time' "
                              "and 'test'.")
    flags.define("level", 0, "Optional; network level.")
    flags.define("stage", "", "Optional; network stages (not to be confused with phase), "
                              "separated by ','.")
    flags.define("snapshot", "", "Optional; the snapshot solver state to resume training.")
    flags.define("weights", "", "Optional; the pretrained weights to initialize finetuning, "
                                "separated by ','. Cannot be set simultaneously with snapshot.")
    flags.define("iterations", 50, "The number of iterations to run.")
    flags.define("sigint_effect", "stop", "Optional; action to take when a SIGINT signal is "
                                          "received: snapshot, stop or none.")
    flags.define("sighup_effect", "snapshot", "Optional; action to take when a SIGHUP signal is "
                                              "received: snapshot, stop or none.")
    flags.define("allow_python_layers", python_layers_allowed(None),
                 "Optional (caffepy); load the net's Python layers, which imports and runs "
                 "the modules the prototxt names. Give -noallow_python_layers (or set "
                 f"{ALLOW_PYTHON_LAYERS_ENV}=0, which makes it the default) for models you "
                 "did not write.")
    if command == "train":
        flags.define("cpu_workers", 0, "Optional (caffepy; Caffe has no such flag); train with "
                                       "N solver processes on the CPU, each reading its own "
                                       "share of the data, their gradients averaged every "
                                       "iteration (gloo), as -gpu 0,1,... does on GPUs. The "
                                       "effective batch size is multiplied by N. Cannot be "
                                       "combined with -gpu.")
    for name, flag in flags.flags.items():
        flag.own = name in own
    return flags


def parse_flags(command: str, argv: list[str]) -> dict[str, object]:
    values, positional = brew_flags(command).parse(argv)
    if positional:
        raise CaffeError(f"unexpected arguments {positional}; flags are given as -name value")
    return values


def parse_gpus(spec: str) -> list[int]:
    """Device ids from ``-gpu``: '' (CPU), 'all', or '0,1'."""
    if not spec:
        return []
    if not torch.cuda.is_available():
        raise CaffeError(f"-gpu {spec}: no CUDA device is available (torch.cuda.is_available() "
                         f"is False); run without -gpu to use the CPU")
    count = torch.cuda.device_count()
    if spec == "all":
        return list(range(count))
    try:
        gpus = [int(s) for s in spec.split(",")]
    except ValueError:
        raise CaffeError(f"-gpu {spec!r}: expected device ids separated by ',' or 'all'") \
            from None
    for g in gpus:
        if not 0 <= g < count:
            raise CaffeError(f"-gpu {spec}: device {g} does not exist ({count} CUDA devices)")
    return gpus


def parse_phase(spec: str, default: int) -> int:
    if not spec:
        return default
    if spec not in ("TRAIN", "TEST"):
        raise CaffeError(f'phase must be "TRAIN" or "TEST", got {spec!r}')
    return caffe_pb2.TRAIN if spec == "TRAIN" else caffe_pb2.TEST


def parse_stages(spec: str) -> list[str]:
    return [s for s in spec.split(",") if s]


def parse_iterations(flags: dict[str, object]) -> int:
    iterations = flags["iterations"]
    if iterations < 1:
        raise CaffeError(f"-iterations must be at least 1, got {iterations}")
    return iterations


def net_from_flags(flags: dict[str, object], default_phase: int) -> Net:
    """The ``-model`` net in the ``-phase`` / ``-level`` / ``-stage`` state, on the ``-gpu``
    device (what ``caffe test`` and ``caffe time`` build)."""
    phase = parse_phase(flags["phase"], default_phase)
    stages = parse_stages(flags["stage"])
    use_devices(parse_gpus(flags["gpu"]))

    from caffe.net import Net

    return Net(flags["model"], phase, level=flags["level"], stages=stages,
               allow_python_layers=flags["allow_python_layers"])


def use_devices(gpus: list[int]) -> None:
    """CPU mode, or GPU mode on the first of ``gpus``."""
    if not gpus:
        log.info("Use CPU.")
        common.set_mode_cpu()
        return
    log.info("Use GPU with device ID %d", gpus[0])
    log.info("GPU device name: %s", torch.cuda.get_device_name(gpus[0]))
    common.set_device(gpus[0])
    common.set_mode_gpu()


# --- signals ----------------------------------------------------------------------------------
def requested_action(effect: str) -> SolverAction:
    """The solver action a ``-sigint_effect`` / ``-sighup_effect`` value names."""
    try:
        return SolverAction(effect)
    except ValueError:
        raise CaffeError(f'Invalid signal effect "{effect}" was specified (use snapshot, stop '
                         f"or none)") from None


class SignalHandler:
    """Records SIGINT / SIGHUP and hands the solver the configured action, once per signal
    (Caffe's SignalHandler). A context manager: the previous handlers come back on exit."""

    def __init__(self, sigint_action: SolverAction, sighup_action: SolverAction) -> None:
        self.sigint_action = sigint_action
        self.sighup_action = sighup_action
        self.got_sigint = False
        self.got_sighup = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.got_sigint = True
        else:
            self.got_sighup = True

    def __enter__(self) -> SignalHandler:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGINT/SIGHUP effects are not installed")
            return self
        for sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def check_for_signals(self) -> SolverAction:
        if self.got_sighup:
            self.got_sighup = False
            return self.sighup_action
        if self.got_sigint:
            self.got_sigint = False
            return self.sigint_action
        return SolverAction.NONE


# --- progress on a terminal -------------------------------------------------------------------
class TerminalProgress:
    """A solver callback that keeps ``[iter/max_iter pct] elapsed, ETA, iter/s`` on the
    terminal's last line; it is wiped before each log line (see :meth:`stream`) and redrawn each
    iteration. Only stderr gets it, and only when stderr is a terminal (:func:`attach_progress`):
    pipes and glog's log files never see it."""

    def __init__(self, solver: Solver, out) -> None:
        self.solver = solver
        self.out = out
        self.start_time: float | None = None
        self.start_iter = 0
        self.shown = False

    def on_start(self) -> None:
        if self.start_time is None:
            self.start_time = time.monotonic()
            self.start_iter = self.solver.iter

    def on_gradients_ready(self) -> None:
        total = self.solver.param.max_iter - self.start_iter
        done = self.solver.iter + 1 - self.start_iter
        if total <= 0 or self.start_time is None:
            return
        elapsed = time.monotonic() - self.start_time
        eta = elapsed / done * (total - done)
        rate = done / elapsed if elapsed > 0 else 0.0
        self.out.write(f"\r[{self.solver.iter + 1}/{self.solver.param.max_iter} "
                       f"{100.0 * (self.solver.iter + 1) / self.solver.param.max_iter:.0f}%] "
                       f"elapsed {_clock(elapsed)}, ETA {_clock(eta)}, {rate:.3g} iter/s\x1b[K")
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.out.write("\r\x1b[K")
            self.shown = False

    def stream(self):
        """A stream for the log handler that wipes the progress line before each record."""
        progress = self

        class _Stream:
            def write(self, text: str) -> int:
                progress.clear()
                return progress.out.write(text)

            def flush(self) -> None:
                progress.out.flush()

        return _Stream()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --- train ------------------------------------------------------------------------------------
def copy_layers(solver: Solver, model_list: str) -> None:
    """Load comma-separated weight files into the train net and every test net."""
    for model in (m for m in model_list.split(",") if m):
        log.info("Finetuning from %s", model)
        solver.net.copy_from(model)
        for test_net in solver.test_nets:
            test_net.copy_from(model)


def main(argv: list[str]) -> int:
    flags = parse_flags(COMMAND, argv)
    # The solver builds its nets (in worker processes too) from the environment's setting.
    with _environment(ALLOW_PYTHON_LAYERS_ENV, "1" if flags["allow_python_layers"] else "0"):
        return _train(flags)


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """Set the environment variable ``name`` inside the block only."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _train(flags: dict[str, object]) -> int:
    if not flags["solver"]:
        raise CaffeError("Need a solver definition to train (-solver solver.prototxt).")
    if flags["snapshot"] and flags["weights"]:
        raise CaffeError("Give a snapshot to resume training or weights to finetune but not "
                         "both.")
    sigint_action = requested_action(flags["sigint_effect"])
    sighup_action = requested_action(flags["sighup_effect"])
    from caffe.protoio import read_solver_param

    solver_param = read_solver_param(flags["solver"])
    solver_param.train_state.level = flags["level"]
    solver_param.train_state.stage.extend(parse_stages(flags["stage"]))

    gpu = flags["gpu"]
    # Without -gpu, the solver file's solver_mode / device_id choose.
    if (not gpu and solver_param.HasField("solver_mode")
            and solver_param.solver_mode == caffe_pb2.SolverParameter.GPU):
        if torch.cuda.is_available():
            gpu = str(solver_param.device_id)
        else:
            log.warning("The solver asks for solver_mode: GPU, but no CUDA device is available; "
                        "training on the CPU")
    cpu_workers = flags["cpu_workers"]
    if cpu_workers < 0:
        raise CaffeError(f"-cpu_workers must be at least 1, got {cpu_workers}")
    if cpu_workers and flags["gpu"]:
        raise CaffeError(f"-cpu_workers {cpu_workers} trains on the CPU; it cannot be combined "
                         f"with -gpu {flags['gpu']}")
    if cpu_workers:
        gpu = ""
    gpus = parse_gpus(gpu)
    if len(gpus) > 1 or cpu_workers > 1:
        return _train_parallel(flags, solver_param, gpus or cpu_workers, sigint_action,
                               sighup_action)
    if gpus:
        log.info("Using GPUs %s", ", ".join(map(str, gpus)))
        solver_param.device_id = gpus[0]
        for g in gpus:
            log.info("GPU %d: %s", g, torch.cuda.get_device_name(g))
        common.set_device(gpus[0])
        common.set_mode_gpu()
    else:
        log.info("Use CPU.")
        common.set_mode_cpu()

    with SignalHandler(sigint_action, sighup_action) as handler:
        solver = create_solver(solver_param, source=flags["solver"])
        solver.set_action_function(handler.check_for_signals)
        if flags["snapshot"]:
            log.info("Resuming from %s", flags["snapshot"])
            solver.restore(flags["snapshot"])
        elif flags["weights"]:
            copy_layers(solver, flags["weights"])
        log.info("Starting Optimization")
        progress = attach_progress(solver)
        try:
            solver.solve()
        finally:
            if progress is not None:
                progress.clear()
    log.info("Optimization Done.")
    return 0


def _train_parallel(flags: dict[str, object], solver_param: caffe_pb2.SolverParameter,
                    devices: list[int] | int, sigint_action: SolverAction,
                    sighup_action: SolverAction) -> int:
    """One solver process per GPU in ``devices`` (or ``devices`` CPU solver processes)."""
    from caffe.parallel import train_parallel

    if isinstance(devices, int):
        log.info("Use CPU: %d solver processes.", devices)
    else:
        log.info("Using GPUs %s", ", ".join(map(str, devices)))
        for g in devices:
            log.info("GPU %d: %s", g, torch.cuda.get_device_name(g))
    log.info("Starting Optimization")
    train_parallel(solver_param, devices, weights=flags["weights"] or None,
                   snapshot=flags["snapshot"] or None, source=flags["solver"],
                   sigint_effect=sigint_action, sighup_effect=sighup_action, progress=True)
    log.info("Optimization Done.")
    return 0


def attach_progress(solver: Solver) -> TerminalProgress | None:
    """On a terminal, show progress and route the glog handler through it."""
    if not sys.stderr.isatty():
        return None
    from caffe.log import install_glog_handler

    progress = TerminalProgress(solver, sys.stderr)
    install_glog_handler(progress.stream(), level=logging.getLogger("caffe").getEffectiveLevel())
    solver.add_callback(progress)
    return progress
