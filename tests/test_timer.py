"""caffe.Timer: elapsed time between start and stop, in Caffe's units."""

from __future__ import annotations

import time

import pytest

from caffe.timer import Timer


def test_timer_measures_elapsed_time():
    timer = Timer()
    assert timer.milliseconds() == 0.0 and not timer.has_run_at_least_once
    timer.start()
    assert timer.running
    time.sleep(0.05)
    timer.stop()
    assert not timer.running
    ms = timer.milliseconds()
    assert 45 <= ms < 1000
    assert timer.seconds() == pytest.approx(ms / 1e3)
    assert timer.microseconds() == pytest.approx(ms * 1e3)
    # A stopped timer keeps its reading.
    time.sleep(0.01)
    assert timer.milliseconds() == ms


def test_reading_a_running_timer_stops_it():
    timer = Timer()
    timer.Start()
    timer.start()  # already running: the start time stays
    time.sleep(0.02)
    elapsed = timer.MilliSeconds()
    assert not timer.running and elapsed >= 15
    timer.start()
    timer.stop()
    assert timer.milliseconds() < elapsed
