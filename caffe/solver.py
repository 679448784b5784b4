"""Solver: owns the train net and the test nets and runs Caffe's training iteration.

Reads a ``SolverParameter`` (a solver prototxt, upgraded from the legacy ``solver_type`` enum).
The base class here is Caffe's ``Solver``: it builds the nets, runs ``Step`` in Caffe's exact
order, tests on schedule, smooths and displays the loss, writes snapshots and dispatches
restores. How gradients become updates (learning rate policy, clipping, regularization, the
update rule and its history blobs) belongs to the subclasses in :mod:`caffe.solvers`, which
register themselves by Caffe's type string ("SGD", "Nesterov", "AdaGrad", "RMSProp",
"AdaDelta", "Adam").

One iteration of ``step``:

1. clear parameter diffs;
2. test, when ``test_interval`` divides ``iter`` (and ``iter > 0`` or ``test_initialization``);
3. callbacks' ``on_start``;
4. ``iter_size`` forward/backward passes (parameter diffs accumulate), loss averaged;
5. smoothed loss over the last ``average_loss`` iterations; display;
6. callbacks' ``on_gradients_ready`` (in multi-process training, the all-reduce of the diffs);
7. ``apply_update`` (the subclass's learning rate, clipping, normalize, regularize, update);
8. ``iter += 1``; snapshot on schedule or on request; stop on request.

In multi-process training (:mod:`caffe.parallel`) only the root solver (rank 0) tests,
displays and snapshots, as in Caffe (with caffepy's parallel test, ``test_reducer``, every rank
scores its share of the test batches); each rank seeds with ``random_seed + rank``.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable

import numpy as np
from google.protobuf import text_format

from caffe.common import root_solver, threads_summary
from caffe.errors import CaffeError, SolverError
from caffe.proto import caffe_pb2
from caffe.timer import Timer

log = logging.getLogger("caffe")

_SOLVERS: dict[str, type[Solver]] = {}


def register_solver(type_name: str) -> Callable[[type[Solver]], type[Solver]]:
    """Class decorator: make a solver class available under a Caffe solver type string."""

    def wrap(cls: type[Solver]) -> type[Solver]:
        _SOLVERS[type_name] = cls
        cls.type_name = type_name
        return cls

    return wrap


def solver_type_list() -> list[str]:
    """Every registered solver type (Caffe's SolverRegistry::SolverTypeList)."""
    import caffe.solvers  # noqa: F401  (registers the built-in solvers on import)

    return sorted(_SOLVERS)


def create_solver(param: caffe_pb2.SolverParameter, source: str | None = None) -> Solver:
    """Instantiate the solver class that ``param.type`` names (Caffe's CreateSolver)."""
    known = solver_type_list()
    cls = _SOLVERS.get(param.type)
    if cls is None:
        where = f"{source}: " if source else ""
        raise SolverError(f"{where}Unknown solver type: {param.type!r} (known types: "
                          f"{', '.join(known)})")
    return cls(param, source=source)


def get_solver(solver_file: str | os.PathLike | caffe_pb2.SolverParameter) -> Solver:
    """pycaffe's ``caffe.get_solver(file)``: the solver of the type the file names."""
    if isinstance(solver_file, caffe_pb2.SolverParameter):
        from caffe.upgrade import upgrade_solver_as_needed

        return create_solver(upgrade_solver_as_needed(solver_file))
    from caffe.protoio import read_solver_param

    return create_solver(read_solver_param(solver_file), source=os.fspath(solver_file))


class SolverAction(enum.Enum):
    """What an action function (e.g. the CLI's signal handler) asks the solver to do."""

    NONE = "none"
    STOP = "stop"
    SNAPSHOT = "snapshot"


class _PythonCallback:
    """pycaffe's callback pair: plain callables for on_start and on_gradients_ready."""

    def __init__(self, on_start, on_gradients_ready) -> None:
        self._on_start = on_start
        self._on_gradients_ready = on_gradients_ready

    def on_start(self) -> None:
        if self._on_start is not None:
            self._on_start()

    def on_gradients_ready(self) -> None:
        if self._on_gradients_ready is not None:
            self._on_gradients_ready()


class Solver:
    """Caffe's Solver with pycaffe's interface.

    ``Solver(solver_file)`` (or a ``SolverParameter``). Attributes: ``net``, ``test_nets``,
    ``iter``, ``param``; methods ``step(n)``, ``solve(resume_file=None)``, ``restore(file)``,
    ``snapshot()``, ``apply_update()``, ``add_callback(...)``, ``share_weights(net)``.
    Subclasses implement ``apply_update``, ``snapshot_solver_state`` and the two
    ``restore_solver_state_from_*`` methods.
    """

    type_name = ""

    def __init__(self, param: str | os.PathLike | caffe_pb2.SolverParameter,
                 source: str | None = None) -> None:
        if isinstance(param, caffe_pb2.SolverParameter):
            from caffe.upgrade import upgrade_solver_as_needed

            param = upgrade_solver_as_needed(param)
        else:
            from caffe.protoio import read_solver_param

            source = os.fspath(param)
            param = read_solver_param(param)
        # Relative net paths are taken from the working directory, as Caffe does; failing
        # that, from the solver file's folder.
        self._source_dir = os.path.dirname(os.path.abspath(source)) if source else None
        self.callbacks: list = []
        self.action_function: Callable[[], SolverAction] | None = None
        # Multi-process parallel test (caffepy): sums a float64 vector over the ranks; set by
        # caffe.parallel.NCCL(parallel_test=True). None: the root tests alone, as in Caffe.
        self.test_reducer: Callable[[np.ndarray], np.ndarray] | None = None
        self.requested_early_exit = False
        self.losses: list[float] = []
        self.smoothed_loss = 0.0
        # The speed on the display lines: time and iteration of the previous display (Caffe's
        # iteration_timer_ / iterations_last_, which start at 0 and persist across steps).
        self.iteration_timer = Timer()
        self.iterations_last = 0
        try:
            self.init(param)
        except SolverError as exc:
            # Errors in the solver's own fields name the solver file they came from.
            if not source or source in str(exc):
                raise
            raise SolverError(f"{source}: {exc}") from None

    # --- construction ------------------------------------------------------------------------
    def init(self, param: caffe_pb2.SolverParameter) -> None:
        """Caffe's Solver::Init: check the parameters, seed, build the nets."""
        log.info("Initializing solver from parameters: \n%s",
                 text_format.MessageToString(param))
        log.info("%s", threads_summary())
        self.param = param
        self.iter = 0
        self.current_step = 0
        if param.average_loss < 1:
            raise SolverError(f"average_loss should be non-negative (at least 1), got "
                              f"{param.average_loss}")
        if param.iter_size < 1:
            raise SolverError(f"iter_size must be at least 1, got {param.iter_size}")
        if param.eval_type not in ("classification", "detection"):
            raise SolverError(f"Unknown evaluation type: {param.eval_type!r} ('classification' "
                              f"averages the test net outputs, 'detection' (SSD) takes their "
                              f"mAP)")
        self.check_parameters()
        self.check_snapshot_write_permissions()
        if param.random_seed >= 0:
            from caffe.common import set_random_seed, set_shared_seed, solver_rank

            # Each solver of a multi-process run draws its own stream (dropout masks, crops);
            # list permutations that the ranks slice come from the seed all of them share.
            set_random_seed(param.random_seed + solver_rank())
            set_shared_seed(param.random_seed)
        self.init_train_net()
        self.init_test_nets()
        log.info("Solver scaffolding done.")

    def check_parameters(self) -> None:
        """Subclass checks of the update rule's parameters (lr policy, momentum...)."""

    def _resolve(self, path: str) -> str:
        if os.path.exists(path) or self._source_dir is None or os.path.isabs(path):
            return path
        beside = os.path.join(self._source_dir, path)
        return beside if os.path.exists(beside) else path

    def _read_net(self, path: str) -> caffe_pb2.NetParameter:
        from caffe.protoio import read_net_param

        return read_net_param(self._resolve(path))

    def _build_net(self, source: str | caffe_pb2.NetParameter, state: caffe_pb2.NetState):
        """A Net in ``state``; file sources go to Net by name so its errors name the file."""
        from caffe.net import Net

        if isinstance(source, str):
            source = self._resolve(source)
        return Net(source, state.phase, level=state.level, stages=list(state.stage))

    @staticmethod
    def _merged_state(phase: int, net_state: caffe_pb2.NetState,
                      override: caffe_pb2.NetState | None) -> caffe_pb2.NetState:
        """Solver default phase, then the net's own state, then the solver's state for it."""
        state = caffe_pb2.NetState()
        state.phase = phase
        state.MergeFrom(net_state)
        if override is not None:
            state.MergeFrom(override)
        return state

    def init_train_net(self) -> None:
        """Build the TRAIN net from exactly one of ``net``, ``net_param``, ``train_net``,
        ``train_net_param``, with the solver's train_state."""
        p = self.param
        fields = ("net", "net_param", "train_net", "train_net_param")
        given = [f for f in fields if p.HasField(f)]
        if not given:
            raise SolverError(f"SolverParameter must specify a train net using one of these "
                              f"fields: {', '.join(fields)}")
        if len(given) > 1:
            raise SolverError(f"SolverParameter must not contain more than one of these fields "
                              f"specifying a train_net: {', '.join(fields)} (got "
                              f"{', '.join(given)})")
        source: str | caffe_pb2.NetParameter
        if p.HasField("train_net_param"):
            log.info("Creating training net specified in train_net_param.")
            source = p.train_net_param
            net_state = source.state
        elif p.HasField("train_net"):
            log.info("Creating training net from train_net file: %s", p.train_net)
            source = p.train_net
            net_state = self._read_net(source).state
        elif p.HasField("net_param"):
            log.info("Creating training net specified in net_param.")
            source = p.net_param
            net_state = source.state
        else:
            log.info("Creating training net from net file: %s", p.net)
            source = p.net
            net_state = self._read_net(source).state
        state = self._merged_state(caffe_pb2.TRAIN, net_state, p.train_state)
        self.net = self._build_net(source, state)

    def init_test_nets(self) -> None:
        """Build one TEST net per ``test_net``/``test_net_param`` (or test_iter entry when a generic
        net is given), with Caffe's checks on their counts."""
        p = self.param
        if p.HasField("net") and p.HasField("net_param"):
            raise SolverError("Both net_param and net_file may not be specified.")
        num_generic = int(p.HasField("net")) + int(p.HasField("net_param"))
        num_test_nets = len(p.test_net_param) + len(p.test_net)
        if num_generic:
            if len(p.test_iter) < num_test_nets:
                raise SolverError(f"test_iter must be specified for each test network "
                                  f"({len(p.test_iter)} test_iter for {num_test_nets} test nets)")
        elif len(p.test_iter) != num_test_nets:
            raise SolverError(f"test_iter must be specified for each test network "
                              f"({len(p.test_iter)} test_iter for {num_test_nets} test nets)")
        num_instances = len(p.test_iter) if num_generic else num_test_nets
        if len(p.test_state) and len(p.test_state) != num_instances:
            raise SolverError(f"test_state must be unspecified or specified once per test net "
                              f"({len(p.test_state)} test_state for {num_instances} test nets)")
        if num_instances and p.test_interval <= 0:
            raise SolverError(f"test_interval must be positive when test nets are given "
                              f"(test_interval: {p.test_interval}, {num_instances} test nets)")
        sources: list[tuple[str, str | caffe_pb2.NetParameter]] = []
        for net_param in p.test_net_param:
            sources.append(("test_net_param", net_param))
        for path in p.test_net:
            sources.append((f"test_net file: {path}", path))
        remaining = len(p.test_iter) - len(sources)
        for _ in range(remaining if num_generic else 0):
            if p.HasField("net_param"):
                sources.append(("net_param", p.net_param))
            else:
                sources.append((f"net file: {p.net}", p.net))
        self.test_nets = []
        for i, (what, source) in enumerate(sources):
            net_state = (source.state if isinstance(source, caffe_pb2.NetParameter)
                         else self._read_net(source).state)
            override = p.test_state[i] if len(p.test_state) else None
            state = self._merged_state(caffe_pb2.TEST, net_state, override)
            log.info("Creating test net (#%d) specified by %s", i, what)
            net = self._build_net(source, state)
            net.debug_info = p.debug_info
            self.test_nets.append(net)

    # --- pycaffe surface ---------------------------------------------------------------------
    def add_callback(self, on_start=None, on_gradients_ready=None) -> None:
        """Register a callback: two callables (pycaffe), or one object with ``on_start`` and
        ``on_gradients_ready`` methods (Caffe's Solver::Callback, e.g. an NCCL helper)."""
        if on_gradients_ready is None and hasattr(on_start, "on_gradients_ready"):
            self.callbacks.append(on_start)
        else:
            self.callbacks.append(_PythonCallback(on_start, on_gradients_ready))

    def set_action_function(self, func: Callable[[], SolverAction] | None) -> None:
        """Ask ``func`` once per iteration (and per test batch) whether to snapshot or stop."""
        self.action_function = func

    def get_requested_action(self) -> SolverAction:
        """What the action callback (signal handlers in ``caffe train``) asks for: NONE, STOP or
        SNAPSHOT."""
        if self.action_function is None:
            return SolverAction.NONE
        return self.action_function()

    def serve_test_requests(self) -> bool:
        """Before a test batch: take every pending request (snapshot now, or stop); True when
        testing must stop early (Caffe's Test loop)."""
        request = self.get_requested_action()
        while request is not SolverAction.NONE:
            if request is SolverAction.SNAPSHOT:
                self.snapshot()
            elif request is SolverAction.STOP:
                self.requested_early_exit = True
            request = self.get_requested_action()
        return self.requested_early_exit

    def share_weights(self, net) -> None:
        """Let ``net`` use this solver's train net weights (pycaffe's share_weights)."""
        net.share_with(self.net)

    @property
    def type(self) -> str:
        """The solver's type string, e.g. ``"SGD"``."""
        return self.type_name

    # --- training ------------------------------------------------------------------------------
    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Caffe's Step)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self.losses = []
        self.smoothed_loss = 0.0
        # The schedule's fields, read once per step call rather than once per iteration (each
        # protobuf field read is a C call; a small net's iteration is ~200 us of such calls).
        test_interval, test_initialization = p.test_interval, p.test_initialization
        display_every, debug_info, snapshot_every = p.display, p.debug_info, p.snapshot
        iter_size, average_loss = p.iter_size, p.average_loss
        net = self.net
        # Already running (from the last display) when step is called again: keeps counting.
        self.iteration_timer.start()
        while self.iter < stop_iter:
            net.clear_param_diffs()
            if (test_interval and self.iter % test_interval == 0
                    and (self.iter > 0 or test_initialization)):
                if root_solver() or self.test_reducer is not None:
                    self.test_all()
                if self.requested_early_exit:
                    break
            callbacks = self.callbacks
            for callback in callbacks:
                callback.on_start()
            display = bool(display_every) and self.iter % display_every == 0
            net.debug_info = display and debug_info
            if iter_size == 1:
                loss = 0.0 + net.forward_backward()  # as Caffe sums from 0: -0 shows as 0
            else:
                loss = 0.0
                for _ in range(iter_size):
                    loss += net.forward_backward()
                loss /= iter_size
            self.update_smoothed_loss(loss, start_iter, average_loss)
            if display:
                self.display_iteration()
            for callback in callbacks:
                callback.on_gradients_ready()
            self.apply_update()
            # iter counts the updates applied so far.
            self.iter += 1
            request = self.get_requested_action()
            # Only the root solver writes snapshots; the others hold the same weights.
            if (snapshot_every and self.iter % snapshot_every == 0
                    or request is SolverAction.SNAPSHOT) and root_solver():
                self.snapshot()
            if request is SolverAction.STOP:
                self.requested_early_exit = True
                break

    def solve(self, resume_file: str | os.PathLike | None = None) -> None:
        """Train to ``max_iter`` (optionally resuming from a .solverstate), snapshot at the end,
        and show the final train loss and test scores (Caffe's Solve)."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", os.fspath(resume_file))
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        # One more forward of the train net shows the loss after the last update.
        if p.display and self.iter % p.display == 0:
            loss = self.net.forward_prefilled()
            self.update_smoothed_loss(loss, start_iter, p.average_loss)
            log.info("Iteration %d, loss = %s", self.iter, _g(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def display_iteration(self) -> None:
        """Caffe 1.0's display: ``Iteration 100 (2.34 iter/s, 42.7s/100 iters), loss = 0.23``
        (iterations since the previous display over the seconds since then; as in Caffe the
        count starts at iteration 0, so a new solver's first display shows 0 iter/s), then the
        train net outputs. Only the root solver logs."""
        lapse = np.float32(self.iteration_timer.seconds())
        per_s = np.float32(self.iter - self.iterations_last) / (lapse if lapse else 1)
        if root_solver():
            log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter, _g(per_s),
                     _g(lapse), self.param.display, _g(self.smoothed_loss))
            for line in output_lines(self.net, "Train"):
                log.info("%s", line)
        self.iteration_timer.start()
        self.iterations_last = self.iter

    def update_smoothed_loss(self, loss: float, start_iter: int, average_loss: int) -> None:
        """Mean of the last ``average_loss`` iteration losses, kept in a ring buffer."""
        if len(self.losses) < average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss += (loss - self.losses[idx]) / average_loss
            self.losses[idx] = loss

    def apply_update(self) -> None:
        """Turn the accumulated diffs into the update and apply it (each solver type's rule)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement apply_update")

    # --- testing -------------------------------------------------------------------------------
    def test_all(self) -> None:
        """Run every TEST net for its test_iter batches and log the scores, unless an early exit was
        requested."""
        for test_net_id in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(test_net_id)

    def test(self, test_net_id: int = 0) -> None:
        """Average every test net output over ``test_iter`` batches and log them (with
        ``eval_type: "detection"``, their mAP: ``caffe.detection.test_detection``)."""
        p = self.param
        if p.eval_type == "detection":  # the SSD fork's TestDetection: mAP of the outputs
            from caffe.detection import test_detection

            return test_detection(self, test_net_id)
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        test_net = self.test_nets[test_net_id]
        test_net.share_with(self.net)
        test_iter = p.test_iter[test_net_id]
        scores: np.ndarray | None = None
        loss = 0.0
        for _ in self._test_batches(test_iter):
            if self.serve_test_requests():
                break
            iter_loss = test_net.forward_prefilled()
            if p.test_compute_loss:
                loss += iter_loss
            result = _output_values(test_net)
            scores = result if scores is None else scores + result
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return
        if self.test_reducer is not None:
            loss, scores = self._reduce_test(test_net, loss, scores)
        if p.test_compute_loss:
            log.info("Test loss: %s", _g(loss / test_iter if test_iter else float("nan")))
        if scores is None:
            return
        for line in output_lines(test_net, "Test", scores / test_iter):
            log.info("%s", line)

    def _test_batches(self, test_iter: int) -> range:
        """The test batches this solver scores: all of them, or with the parallel test every
        solver_count-th from its rank (its test data layers read their shard)."""
        if self.test_reducer is None:
            return range(test_iter)
        from caffe.common import solver_count, solver_rank

        return range(solver_rank(), test_iter, solver_count())

    def _reduce_test(self, test_net, loss: float, scores: np.ndarray | None):
        """The parallel test's loss and score sums over every rank's batches."""
        if scores is None:  # this rank had no batch: its share of the sums is zero
            scores = np.zeros(sum(test_net.blobs[name].count for name in test_net.outputs))
        total = self.test_reducer(np.concatenate([[loss], scores]))
        return float(total[0]), total[1:]

    # --- snapshots -----------------------------------------------------------------------------
    def snapshot_filename(self, extension: str) -> str:
        """``<snapshot_prefix>_iter_<iter><extension>``, Caffe's snapshot file name."""
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def check_snapshot_write_permissions(self) -> None:
        """Fail early, before training, when snapshots are asked for but the prefix is unset or its
        directory is not writable."""
        p = self.param
        if not p.snapshot or not root_solver():
            return
        if not p.HasField("snapshot_prefix"):
            raise SolverError("In solver params, snapshot is specified but snapshot_prefix is "
                              "not")
        probe = self.snapshot_filename(".tempfile")
        try:
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as exc:
            raise SolverError(f"Cannot write to snapshot prefix '{p.snapshot_prefix}'. Make "
                              f"sure that the directory exists and is writeable ({exc})") from None

    def snapshot(self) -> None:
        """Write ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate`` (``.h5`` for HDF5)."""
        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        model_filename = self.snapshot_filename(".caffemodel.h5" if hdf5 else ".caffemodel")
        # Every file is written to a temporary name and renamed, so a failure leaves no
        # truncated snapshot behind.
        try:
            if hdf5:
                log.info("Snapshotting to HDF5 file %s", model_filename)
                self.net.save_hdf5(model_filename, self.param.snapshot_diff)
            else:
                log.info("Snapshotting to binary proto file %s", model_filename)
                self.net.save(model_filename, self.param.snapshot_diff)
            self.snapshot_solver_state(model_filename)
        except CaffeError:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            # h5py reports write failures (a full disk) as RuntimeError as well as OSError.
            raise SolverError(f"Snapshot at iteration {self.iter} failed (prefix "
                              f"'{self.param.snapshot_prefix}'): {exc}") from exc

    def snapshot_solver_state(self, model_filename: str) -> None:
        """Write the solver state (iteration, history blobs) next to the model file."""
        raise NotImplementedError

    def restore(self, state_file: str | os.PathLike) -> None:
        """Resume from a .solverstate (binary proto) or .solverstate.h5 (HDF5)."""
        state_file = os.fspath(state_file)
        if not os.path.isfile(state_file):
            raise SolverError(f"solver state file not found: {state_file!r} (working directory "
                              f"{os.getcwd()!r})")
        if state_file.endswith(".h5"):
            self.restore_solver_state_from_hdf5(state_file)
        else:
            self.restore_solver_state_from_binary_proto(state_file)

    def restore_solver_state_from_binary_proto(self, state_file: str) -> None:
        """Load the iteration and history blobs from a binary ``.solverstate``."""
        raise NotImplementedError

    def restore_solver_state_from_hdf5(self, state_file: str) -> None:
        """Load the iteration and history blobs from an HDF5 ``.solverstate.h5``."""
        raise NotImplementedError

    def _learned_net_path(self, learned_net: str, state_file: str) -> str:
        """The weights file a solver state names: as written (relative to the working directory,
        as Caffe reads it), else beside the state file."""
        if os.path.exists(learned_net):
            return learned_net
        beside = os.path.join(os.path.dirname(state_file), os.path.basename(learned_net))
        if os.path.exists(beside):
            return beside
        raise SolverError(f"{state_file}: the weights file it names, {learned_net!r}, was not "
                          f"found (working directory {os.getcwd()!r})")

    def __repr__(self) -> str:
        return f"<caffe.{type(self).__name__} iter={self.iter} net={self.net.name!r}>"


# --- output formatting, as Caffe prints blobs -------------------------------------------------
def _g(value: float) -> str:
    """A float the way C++ streams print it by default (six significant digits)."""
    return f"{float(np.float32(value)):g}"


def _output_values(net) -> np.ndarray:
    """Every element of every output blob, in order, as one float64 vector."""
    parts = [net.blobs[name].cpu_data().reshape(-1) for name in net.outputs]
    if not parts:
        return np.zeros(0)
    return np.concatenate(parts).astype(np.float64)


def output_lines(net, what: str, values: np.ndarray | None = None,
                 numbered: bool = True) -> list[str]:
    """Caffe's per-element output lines: ``    <what> net output #k: name = v (* w = x loss)``
    (``numbered=False``: ``name = v (* w = x loss)``, as ``caffe test`` prints its means)."""
    if values is None:
        values = _output_values(net)
    weights = net.blob_loss_weights
    lines = []
    k = 0
    for name in net.outputs:
        weight = weights[name]
        for _ in range(net.blobs[name].count):
            value = values[k]
            suffix = f" (* {_g(weight)} = {_g(weight * value)} loss)" if weight else ""
            if numbered:
                lines.append(f"    {what} net output #{k}: {name} = {_g(value)}{suffix}")
            else:
                lines.append(f"{name} = {_g(value)}{suffix}")
            k += 1
    return lines
