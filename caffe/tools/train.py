"""train or finetune a model

Usage: caffe train -solver solver.prototxt [-weights a.caffemodel[,b.caffemodel] |
-snapshot X.solverstate] [-gpu ids|all | -cpu_workers N] [-level N] [-stage s1,s2]
[-sigint_effect stop|snapshot|none] [-sighup_effect stop|snapshot|none] [-timeout S]
[-parallel_test].

As Caffe's ``caffe train``: reads the solver file, puts ``-level`` / ``-stage`` into its
train_state, picks CPU or GPU (``-gpu``, else the solver's ``solver_mode``), resumes from a
solver state or copies finetuning weights into the train and test nets, and runs ``Solve``.
With several devices (``-gpu 0,1``, ``-gpu all``) or ``-cpu_workers N`` (N > 1; caffepy's CPU
counterpart, not a Caffe flag), one solver process runs per device and their gradients are
averaged every iteration (:func:`caffe.parallel.train_parallel`); the effective batch size is
multiplied by the number of solvers, and only the root solver tests, displays and snapshots.
Started by torchrun or Slurm (RANK / WORLD_SIZE, or SLURM_PROCID / SLURM_NTASKS, in the
environment), this process is one of those solvers (:func:`caffe.parallel.train_launched`).
``-timeout`` bounds how long a dead or hung solver goes unnoticed; ``-parallel_test`` splits
the test batches over the solvers. SIGINT and SIGHUP (to any solver) are turned into solver
actions, checked once per iteration: ``snapshot`` (write a snapshot and go on), ``stop`` (stop
training; the final snapshot is still written when ``snapshot_after_train`` is set) or
``none``. On a terminal, a progress line with an ETA is kept under the log.

This module also holds what the other brew commands (test, time, device_query) share: their
flags, the parsing of ``-gpu``, ``-phase``, ``-stage`` and ``-iterations``, and building the
``-model`` net.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from caffe import common
from caffe.distributed import DEFAULT_TIMEOUT_S, launch_environment
from caffe.errors import CaffeError
from caffe.net import ALLOW_PYTHON_LAYERS_ENV, python_layers_allowed
from caffe.proto import caffe_pb2
from caffe.solver import SolverAction, create_solver
from caffe.tools.flags import FlagSet

# Shared with the launchers in caffe.parallel; kept importable from here for scripts.
from caffe.training import (  # noqa: F401
    SignalHandler,
    TerminalProgress,
    attach_progress,
    copy_layers,
    requested_action,
)

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
               "sigint_effect", "sighup_effect", "allow_python_layers", "timeout",
               "parallel_test")),
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
        flags.define("timeout", DEFAULT_TIMEOUT_S,
                     "Optional (caffepy); with several solver processes, the seconds after "
                     "which a solver that died or hangs makes every other one stop with an "
                     "error naming it (also the limit of each collective).")
        flags.define("parallel_test", False,
                     "Optional (caffepy); with several solver processes, every solver scores "
                     "its share of the test_iter batches (its test data layers read their "
                     "shard) and the scores are summed, instead of the root testing alone.")
    for name, flag in flags.flags.items():
        flag.own = name in own
    return flags


def parse_flags(command: str, argv: list[str]) -> dict[str, object]:
    """Parse the flags shared by ``train``, ``test``, ``time`` and ``device_query``; positional
    arguments are an error."""
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
    """``-phase`` as a Phase value (``default`` when empty); only TRAIN and TEST are accepted."""
    if not spec:
        return default
    if spec not in ("TRAIN", "TEST"):
        raise CaffeError(f'phase must be "TRAIN" or "TEST", got {spec!r}')
    return caffe_pb2.TRAIN if spec == "TRAIN" else caffe_pb2.TEST


def parse_stages(spec: str) -> list[str]:
    """``-stage s1,s2`` as a list of stage names."""
    return [s for s in spec.split(",") if s]


def parse_iterations(flags: dict[str, object]) -> int:
    """``-iterations``, checked to be at least 1."""
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


# --- train ------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    """Run ``caffe train`` on ``argv`` (its flags and positional arguments); returns the exit
    status."""
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
    if flags["timeout"] <= 0:
        raise CaffeError(f"-timeout must be a positive number of seconds, got "
                         f"{flags['timeout']:g}")
    gpus = parse_gpus(gpu)
    launched = launch_environment()
    if launched is not None and launched.world_size > 1:
        if cpu_workers > 1:
            raise CaffeError(f"-cpu_workers {cpu_workers}: this process is already one of "
                             f"{launched.world_size} started by {launched.launcher}")
        return _train_launched(flags, solver_param, launched, gpus, sigint_action,
                               sighup_action)
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
                   sigint_effect=sigint_action, sighup_effect=sighup_action, progress=True,
                   timeout_s=flags["timeout"], parallel_test=flags["parallel_test"])
    log.info("Optimization Done.")
    return 0


def _train_launched(flags: dict[str, object], solver_param: caffe_pb2.SolverParameter,
                    launched, gpus: list[int], sigint_action: SolverAction,
                    sighup_action: SolverAction) -> int:
    """This process is one solver of a job torchrun or Slurm started: join it and train. In
    GPU mode (``-gpu`` or the solver's solver_mode) the device is LOCAL_RANK, or the
    LOCAL_RANK-th of the ``-gpu`` list when it names several."""
    from caffe.parallel import SolverJob, train_launched

    if launched.rank == 0:
        log.info("Starting Optimization")
    job = SolverJob(solver_param=solver_param.SerializeToString(), source=flags["solver"],
                    count=launched.world_size, uid="env://", weights=flags["weights"],
                    snapshot=flags["snapshot"], devices=gpus if len(gpus) > 1 else None,
                    sigint_effect=sigint_action, sighup_effect=sighup_action,
                    log_level=logging.getLogger("caffe").getEffectiveLevel(),
                    progress=launched.rank == 0, timeout_s=flags["timeout"],
                    parallel_test=flags["parallel_test"])
    train_launched(launched, job, gpu=bool(gpus))
    if launched.rank == 0:
        log.info("Optimization Done.")
    return 0
