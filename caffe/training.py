"""What every way of running a solver shares, below the CLI and the launchers: turning SIGINT /
SIGHUP into solver actions, the progress line on a terminal, and loading finetuning weights.

``caffe train`` (:mod:`caffe.tools.train`), the spawn launcher and the torchrun / Slurm entry
(:mod:`caffe.parallel`) all use these; none of them imports another's module for them.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from caffe.errors import CaffeError
from caffe.solver import Solver, SolverAction

log = logging.getLogger("caffe")


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
        """The action for the signal received since the last call (SIGHUP first), else NONE."""
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
        """Solver callback at the start of an iteration: the first call starts the clock."""
        if self.start_time is None:
            self.start_time = time.monotonic()
            self.start_iter = self.solver.iter

    def on_gradients_ready(self) -> None:
        """Solver callback after backward: redraw the progress line with the ETA."""
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
        """Wipe the progress line so a log line can take its place."""
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


# --- finetuning weights -------------------------------------------------------------------
def copy_layers(solver: Solver, model_list: str) -> None:
    """Load comma-separated weight files into the train net and every test net."""
    for model in (m for m in model_list.split(",") if m):
        log.info("Finetuning from %s", model)
        solver.net.copy_from(model)
        for test_net in solver.test_nets:
            test_net.copy_from(model)


def attach_progress(solver: Solver) -> TerminalProgress | None:
    """On a terminal, show progress and route the glog handler through it."""
    if not sys.stderr.isatty():
        return None
    from caffe.log import install_glog_handler

    progress = TerminalProgress(solver, sys.stderr)
    install_glog_handler(progress.stream(), level=logging.getLogger("caffe").getEffectiveLevel())
    solver.add_callback(progress)
    return progress
