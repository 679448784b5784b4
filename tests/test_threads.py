"""caffe picks torch's OpenMP wait policy at import (README, "Threads"); the thread count.

Each case runs a fresh interpreter: libgomp reads its environment once, when torch loads.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import caffe
from caffe.errors import CaffeError


def _python(code: str, **env: str | None) -> subprocess.CompletedProcess:
    environ = dict(os.environ)
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV"):
        environ.pop(key, None)
    for key, value in env.items():
        if value is not None:
            environ[key] = value
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                          text=True, timeout=60, check=True)


def _spincount(stderr: str) -> str:
    """libgomp's idle spin count, as OMP_DISPLAY_ENV=VERBOSE prints it when it loads."""
    lines = [line for line in stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    assert lines, stderr
    return lines[0].split("=")[1].strip().strip("'")


def test_import_sets_passive_policy_that_openmp_reads():
    # libgomp's default spins 300000 times, PASSIVE alone 0; caffe's 1000 in the printed count
    # shows that the variables set inside `import caffe` reached the runtime.
    out = _python("import os, caffe; print(os.environ['OMP_WAIT_POLICY'], "
                  "caffe._threads.WAIT_POLICY_SET_BY_CAFFE)", OMP_DISPLAY_ENV="VERBOSE")
    assert out.stdout.split() == ["PASSIVE", "True"]
    assert _spincount(out.stderr) == caffe._threads.DEFAULT_SPIN_COUNT == "1000"


def test_user_spin_count_is_kept():
    out = _python("import caffe", GOMP_SPINCOUNT="5", OMP_DISPLAY_ENV="VERBOSE")
    assert _spincount(out.stderr) == "5"


def test_user_policy_is_kept():
    out = _python("import os, caffe; print(os.environ['OMP_WAIT_POLICY'], "
                  "caffe._threads.WAIT_POLICY_SET_BY_CAFFE)",
                  OMP_WAIT_POLICY="ACTIVE", OMP_DISPLAY_ENV="VERBOSE")
    assert out.stdout.split() == ["ACTIVE", "False"]
    assert _spincount(out.stderr) != "0"


def test_torch_imported_first_is_reported_not_changed():
    # Setting the variable after torch loaded would not reach OpenMP; caffe leaves it unset
    # and says so in the solver's start-up log line.
    out = _python("import os, torch, caffe; from caffe.common import threads_summary; "
                  "print(os.environ.get('OMP_WAIT_POLICY')); print(threads_summary())")
    first, summary = out.stdout.splitlines()
    assert first == "None"
    assert "torch was imported before caffe" in summary


def test_set_num_threads():
    before = torch.get_num_threads()
    try:
        caffe.set_num_threads(1)
        assert torch.get_num_threads() == 1
        assert caffe.common.num_threads() == 1
        assert "CPU threads: 1" in caffe.common.threads_summary()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(CaffeError, match="at least 1"):
        caffe.set_num_threads(0)


class _ThreadProbe(caffe.layer.Layer):
    """Records the torch thread count its forward and backward run with."""

    seen: list[int]

    def setup(self, bottom, top):
        self.seen = []

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        self.seen.append(torch.get_num_threads())

    def backward(self, top, propagate_down, bottom):
        self.seen.append(torch.get_num_threads())


@pytest.mark.parametrize("count,with_param,expected", [
    (10, False, 1),                               # tiny and parameter-free: one thread
    (caffe.layer.SMALL_LAYER_COUNT, False, 2),    # big enough for the pool
    (10, True, 2),                                # parameters: GEMMs keep their rounding
])
def test_small_layers_run_on_one_thread(count, with_param, expected):
    from caffe.proto import caffe_pb2

    layer = _ThreadProbe(caffe_pb2.LayerParameter(name="probe", type="Probe"))
    if with_param:
        layer.blobs.append(caffe.Blob((3,)))
    bottom, top = [caffe.Blob((count // 2,))], [caffe.Blob((count - count // 2,))]
    layer.SetUp(bottom, top)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        layer.Forward(bottom, top)
        layer.Backward(top, [True], bottom)
        assert layer.seen == [expected, expected]
        assert torch.get_num_threads() == 2  # restored after the layer
    finally:
        torch.set_num_threads(before)
