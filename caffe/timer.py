"""Caffe's ``Timer``: wall time between ``start()`` and ``stop()``.

In GPU mode the CUDA device is synchronized at start and stop, so the time covers the kernels
queued in between (as Caffe's GPU timer measures with CUDA events). Reading the time of a
running timer stops it first, as Caffe's does.
"""

from __future__ import annotations

import logging
import time

import torch

from caffe import common

logger = logging.getLogger("caffe")


def _sync() -> None:
    if common.mode() == common.GPU and torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    """``start()``, ``stop()``, then ``milliseconds()`` (pycaffe: ``ms``) / ``microseconds()`` /
    ``seconds()``."""

    def __init__(self) -> None:
        self.running = False
        self.has_run_at_least_once = False
        self._start = 0.0
        self._stop = 0.0

    def start(self) -> None:
        """Start timing (a no-op while running); in GPU mode waits for queued device work first."""
        if not self.running:
            _sync()
            self._start = time.perf_counter()
            self.running = True
            self.has_run_at_least_once = True

    def stop(self) -> None:
        """Stop timing (a no-op when stopped), after queued device work in GPU mode."""
        if self.running:
            _sync()
            self._stop = time.perf_counter()
            self.running = False

    def _elapsed(self) -> float:
        if not self.has_run_at_least_once:
            logger.warning("Timer has never been run before reading time.")
            return 0.0
        if self.running:
            self.stop()
        return self._stop - self._start

    def seconds(self) -> float:
        """Elapsed seconds of the last start/stop interval; stops a running timer first."""
        return self._elapsed()

    def milliseconds(self) -> float:
        """Elapsed milliseconds, as ``caffe time`` reports them."""
        return self._elapsed() * 1e3

    def microseconds(self) -> float:
        """Elapsed microseconds."""
        return self._elapsed() * 1e6

    @property
    def ms(self) -> float:
        """pycaffe's ``Timer.ms``: the elapsed milliseconds (stops a running timer first)."""
        return self.milliseconds()

    # C++ Caffe's spellings.
    Start = start
    Stop = stop
    Seconds = seconds
    MilliSeconds = milliseconds
    MicroSeconds = microseconds


CPUTimer = Timer
