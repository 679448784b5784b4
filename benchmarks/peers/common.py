"""What every peer runner shares: its command line, the timing loop and the result line.

The runners run under different interpreters (this repo's Python, the reference C++ Caffe's
numpy-1 venv, the OpenCV 4 venv), so this module needs only the standard library and numpy.
A runner prints one line ``RESULT {json}`` on stdout (logs from the peer may surround it).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every TEST-forward runner takes (the orchestrator passes them all)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--prototxt", required=True, help="deploy net (TEST phase)")
    p.add_argument("--weights", required=True, help=".caffemodel written by caffepy")
    p.add_argument("--input", required=True, help=".npy of the input batch (N, C, H, W)")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--outputs", required=True, help="comma-separated blobs to dump")
    p.add_argument("--dump", default="", help=".npz to write the outputs to (agreement)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    return p


def fed_net(caffe, args, x: np.ndarray):
    """``caffe.Net`` (caffepy's or pycaffe's module) of the runner's TEST net and weights,
    reshaped to the input batch ``x`` and holding it."""
    net = caffe.Net(args.prototxt, caffe.TEST, weights=args.weights)
    data = net.inputs[0]
    net.blobs[data].reshape(*x.shape)
    net.reshape()
    net.blobs[data].data[...] = x
    return net


def load_input(args) -> np.ndarray:
    """The first ``--batch`` images of the shared input, float32 and C-contiguous."""
    x = np.load(args.input)[: args.batch]
    if len(x) != args.batch:
        raise SystemExit(f"input {args.input} holds {len(x)} images, batch {args.batch} asked")
    return np.ascontiguousarray(x, dtype=np.float32)


def time_forward(forward: Callable[[], object], warmup: int, iterations: int) -> list[float]:
    """Wall-clock ms of each of ``iterations`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        forward()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        forward()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def dump(path: str, outputs: dict[str, np.ndarray]) -> None:
    """Write the named output arrays (float32 copies) for the orchestrator's agreement check."""
    if path:
        np.savez(path, **{k: np.array(v, dtype=np.float32) for k, v in outputs.items()})


def emit(times_ms: list[float], **info) -> None:
    """Print the result line the orchestrator parses."""
    print("RESULT " + json.dumps({"times_ms": [round(t, 4) for t in times_ms], **info}),
          flush=True)
