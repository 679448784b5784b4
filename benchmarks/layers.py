"""Per-layer framework overhead: caffepy layers against the bare torch calls doing the same math.

Each case builds one layer at a CaffeNet- or GoogLeNet-sized shape, times ``Forward`` and
``Backward`` (as a Net runs them: reshape check, top written in place, parameter diffs
accumulated), then times the torch operator(s) that compute the same result on the same tensors
(``F.conv2d`` and ``aten.convolution_backward``, max pooling with indices and its backward,
``F.local_response_norm`` and autograd, ...). The ratio layer / torch is the framework's
overhead; 1.00 means none. Times are the minimum over ``--repeat`` runs after a warm-up, layer
and torch runs interleaved. Layer types missing from the build are skipped.

    python benchmarks/layers.py                 # batch 8, writes results_layers.json and README
    python benchmarks/layers.py --batch 16 --repeat 9
    python benchmarks/layers.py --device cuda   # on a GPU (times include a synchronize)

Results go to ``benchmarks/results_layers.json`` and the "Layers" section of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from google.protobuf import text_format

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import caffe  # noqa: E402
from caffe import common  # noqa: E402
from caffe.blob import Blob  # noqa: E402
from caffe.layer import Layer, create_layer, layer_type_list  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402

aten = torch.ops.aten
BEGIN, END = "<!-- layers:begin -->", "<!-- layers:end -->"


@dataclass
class Case:
    """One layer at one shape. ``baseline(layer, bottom, top)`` returns the torch forward and
    backward closures; ``labels`` lists bottoms that hold integer labels (no gradient)."""

    net: str
    name: str
    layer_type: str
    prototxt: str
    shapes: list[tuple[int, ...]]
    baseline: Callable
    labels: dict[int, int] = field(default_factory=dict)  # bottom index -> number of classes
    phase: str = "TRAIN"
    in_place: bool = False  # top is the bottom (the baseline still gets separate tensors)


# --- baselines: the same math as bare torch calls -------------------------------------

def _data(blob: Blob) -> torch.Tensor:
    return blob.device_data()


def conv_baseline(transposed: bool):
    def build(layer, bottom, top):
        x, w = _data(bottom[0]), _data(layer.blobs[0])
        b = _data(layer.blobs[1]) if len(layer.blobs) > 1 else None
        g = layer.geom
        dy = top[0].device_diff()
        op = F.conv_transpose2d if transposed else F.conv2d

        def fwd():
            if transposed:
                return op(x, w, b, g.stride, g.pad, 0, layer.group, g.dilation)
            return op(x, w, b, g.stride, g.pad, g.dilation, layer.group)

        def bwd():
            return aten.convolution_backward(dy, x, w, [w.shape[1] * layer.group if transposed
                                                        else w.shape[0]] if b is not None
                                             else None, g.stride, g.pad, g.dilation, transposed,
                                             [0, 0], layer.group, [True, True, b is not None])
        return fwd, bwd
    return build


def pool_baseline(layer, bottom, top):
    """The pooling kernels with outputs preallocated once (their ``out=`` variants): a fresh
    19 MB gradient per call costs 0 or 2 ms more depending on the allocator's state (whether
    the freed block comes back or new pages are faulted in), which swamps the comparison."""
    x = _data(bottom[0])
    dy = top[0].device_diff()
    plan = layer.plan
    k, s, p = plan.kernel, plan.stride, plan.pad
    out, dx = torch.empty_like(dy), torch.empty_like(x)
    if layer.method == caffe_pb2.PoolingParameter.MAX:
        _, index = F.max_pool2d(x, k, s, p, ceil_mode=True, return_indices=True)
        out_index = torch.empty_like(index)

        def fwd():
            return aten.max_pool2d_with_indices.out(x, k, s, p, [1, 1], True, out=out,
                                                    indices=out_index)

        def bwd():
            return aten.max_pool2d_with_indices_backward.grad_input(
                dy, x, k, s, p, [1, 1], True, index, grad_input=dx)
    else:
        def fwd():
            return aten.avg_pool2d.out(x, k, s, p, True, True, None, out=out)

        def bwd():
            return aten.avg_pool2d_backward.grad_input(dy, x, k, s, p, True, True, None,
                                                       grad_input=dx)
    return fwd, bwd


def autograd_baseline(function: Callable[..., torch.Tensor], n_inputs: int = 1):
    """Forward = ``function`` on the bottoms; backward = autograd through it (graph kept)."""
    def build(layer, bottom, top):
        inputs = [_data(b).detach().clone().requires_grad_(i < n_inputs)
                  for i, b in enumerate(bottom)]
        dy = top[0].device_diff()

        def fwd():
            with torch.no_grad():
                return function(layer, *inputs)

        graph = function(layer, *inputs)

        def bwd():
            for t in inputs:
                t.grad = None
            graph.backward(dy.view(graph.shape), retain_graph=True)
        return fwd, bwd
    return build


def lrn_function(layer, x):
    return F.local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k)


def ip_baseline(layer, bottom, top):
    x = _data(bottom[0]).view(layer.M, layer.K)
    w, b = _data(layer.blobs[0]), _data(layer.blobs[1])
    dy = top[0].device_diff().view(layer.M, -1)

    def fwd():
        return F.linear(x, w, b)

    def bwd():  # what autograd computes for F.linear
        return dy @ w, dy.t() @ x, dy.sum(0)
    return fwd, bwd


def batch_norm_baseline(layer, bottom, top):
    x = _data(bottom[0])
    c = x.shape[1]
    mean, var = torch.zeros(c, device=x.device), torch.ones(c, device=x.device)
    dy = top[0].device_diff()
    _, save_mean, save_invstd = aten.native_batch_norm(x, None, None, mean, var, True, 0.001,
                                                        layer.eps)

    def fwd():
        return aten.native_batch_norm(x, None, None, mean, var, True, 0.001, layer.eps)

    def bwd():
        return aten.native_batch_norm_backward(dy, x, None, None, None, save_mean, save_invstd,
                                               True, layer.eps, [True, False, False])
    return fwd, bwd


def softmax_baseline(layer, bottom, top):
    x = _data(bottom[0])
    y = torch.softmax(x, 1)
    dy = top[0].device_diff()

    def fwd():
        return torch.softmax(x, 1)

    def bwd():
        return aten._softmax_backward_data(dy, y, 1, x.dtype)
    return fwd, bwd


def softmax_loss_baseline(layer, bottom, top):
    x = _data(bottom[0]).detach().clone().requires_grad_(True)
    label = _data(bottom[1]).long()
    graph = F.cross_entropy(x, label)

    def fwd():
        with torch.no_grad():
            return F.cross_entropy(x, label)

    def bwd():
        x.grad = None
        graph.backward(retain_graph=True)
    return fwd, bwd


def lstm_baseline(layer, bottom, top):
    x = _data(bottom[0])
    steps, num, dim = x.shape
    hidden = layer.num_output
    lstm = torch.nn.LSTM(dim, hidden).to(x.device)
    xr = x.detach().clone().requires_grad_(True)
    dy = top[0].device_diff()
    graph, _ = lstm(xr)

    def fwd():
        with torch.no_grad():
            return lstm(xr)

    def bwd():
        xr.grad = None
        lstm.zero_grad(set_to_none=True)
        graph.backward(dy, retain_graph=True)
    return fwd, bwd


def rnn_baseline(layer, bottom, top):
    """torch.nn.RNN (tanh) and the output layer o = tanh(W_ho h + b_o) of Caffe's RNN."""
    x = _data(bottom[0])
    steps, num, dim = x.shape
    hidden = layer.num_output
    rnn = torch.nn.RNN(dim, hidden, nonlinearity="tanh").to(x.device)
    out = torch.nn.Linear(hidden, hidden).to(x.device)
    xr = x.detach().clone().requires_grad_(True)
    dy = top[0].device_diff()

    def function():
        return torch.tanh(out(rnn(xr)[0]))

    graph = function()

    def fwd():
        with torch.no_grad():
            return function()

    def bwd():
        xr.grad = None
        rnn.zero_grad(set_to_none=True)
        out.zero_grad(set_to_none=True)
        graph.backward(dy, retain_graph=True)
    return fwd, bwd


# --- cases ------------------------------------------------------------------------------

def conv_proto(layer_type: str, params: str) -> str:
    return (f"type: '{layer_type}' convolution_param {{ {params} weight_filler {{ type: "
            f"'gaussian' std: 0.01 }} bias_filler {{ type: 'constant' value: 0.1 }} }}")


def cases(n: int) -> list[Case]:
    conv, deconv = conv_baseline(False), conv_baseline(True)
    lrn = autograd_baseline(lrn_function)
    ip = "weight_filler { type: 'gaussian' std: 0.01 } bias_filler { type: 'constant' }"
    return [
        Case("CaffeNet", "conv1 11x11/4", "Convolution",
             conv_proto("Convolution", "num_output: 96 kernel_size: 11 stride: 4"),
             [(n, 3, 227, 227)], conv),
        Case("CaffeNet", "conv2 5x5 group 2", "Convolution",
             conv_proto("Convolution", "num_output: 256 kernel_size: 5 pad: 2 group: 2"),
             [(n, 96, 27, 27)], conv),
        Case("CaffeNet", "conv3 3x3", "Convolution",
             conv_proto("Convolution", "num_output: 384 kernel_size: 3 pad: 1"),
             [(n, 256, 13, 13)], conv),
        Case("CaffeNet", "pool1 MAX 3/2", "Pooling",
             "type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 stride: 2 }",
             [(n, 96, 55, 55)], pool_baseline),
        Case("CaffeNet", "norm1 LRN 5", "LRN",
             "type: 'LRN' lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }",
             [(n, 96, 55, 55)], lrn),
        Case("CaffeNet", "fc6 9216->4096", "InnerProduct",
             f"type: 'InnerProduct' inner_product_param {{ num_output: 4096 {ip} }}",
             [(n, 256, 6, 6)], ip_baseline),
        Case("CaffeNet", "fc7 4096->4096", "InnerProduct",
             f"type: 'InnerProduct' inner_product_param {{ num_output: 4096 {ip} }}",
             [(n, 4096)], ip_baseline),
        Case("CaffeNet", "prob Softmax", "Softmax", "type: 'Softmax'", [(n, 1000)],
             softmax_baseline),
        Case("CaffeNet", "loss SoftmaxWithLoss", "SoftmaxWithLoss", "type: 'SoftmaxWithLoss'",
             [(n, 1000), (n,)], softmax_loss_baseline, labels={1: 1000}),
        Case("GoogLeNet", "conv2/3x3", "Convolution",
             conv_proto("Convolution", "num_output: 192 kernel_size: 3 pad: 1"),
             [(n, 64, 56, 56)], conv),
        Case("GoogLeNet", "inception_3a/1x1", "Convolution",
             conv_proto("Convolution", "num_output: 64 kernel_size: 1"),
             [(n, 192, 28, 28)], conv),
        Case("GoogLeNet", "inception_3a/5x5", "Convolution",
             conv_proto("Convolution", "num_output: 32 kernel_size: 5 pad: 2"),
             [(n, 16, 28, 28)], conv),
        Case("GoogLeNet", "pool2 MAX 3/2", "Pooling",
             "type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 stride: 2 }",
             [(n, 192, 56, 56)], pool_baseline),
        Case("GoogLeNet", "inception pool MAX 3/1 pad 1", "Pooling",
             "type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 }",
             [(n, 192, 28, 28)], pool_baseline),
        Case("GoogLeNet", "pool5 AVE 7/1", "Pooling",
             "type: 'Pooling' pooling_param { pool: AVE kernel_size: 7 stride: 1 }",
             [(n, 1024, 7, 7)], pool_baseline),
        Case("GoogLeNet", "conv2/norm2 LRN 5", "LRN",
             "type: 'LRN' lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }",
             [(n, 192, 56, 56)], lrn),
        Case("GoogLeNet", "loss3/classifier 1024->1000", "InnerProduct",
             f"type: 'InnerProduct' inner_product_param {{ num_output: 1000 {ip} }}",
             [(n, 1024)], ip_baseline),
        Case("FCN", "upscore 4x4/2 deconv", "Deconvolution",
             conv_proto("Deconvolution", "num_output: 64 kernel_size: 4 stride: 2 pad: 1"),
             [(n, 64, 28, 28)], deconv),
        Case("BN-GoogLeNet", "conv2/bn BatchNorm", "BatchNorm", "type: 'BatchNorm'",
             [(n, 192, 56, 56)], batch_norm_baseline),
        Case("BN-GoogLeNet", "conv2/bn BatchNorm in place", "BatchNorm", "type: 'BatchNorm'",
             [(n, 192, 56, 56)], batch_norm_baseline, in_place=True),
        Case("LRCN", "lstm1 T=16 256->256", "LSTM",
             "type: 'LSTM' recurrent_param { num_output: 256 weight_filler { type: 'uniform' "
             "min: -0.08 max: 0.08 } bias_filler { type: 'constant' } }",
             [(16, n, 256), (16, n)], lstm_baseline, labels={1: 0}),
        Case("LRCN-like", "rnn T=16 256->256", "RNN",
             "type: 'RNN' recurrent_param { num_output: 256 weight_filler { type: 'uniform' "
             "min: -0.08 max: 0.08 } bias_filler { type: 'constant' } }",
             [(16, n, 256), (16, n)], rnn_baseline, labels={1: 0}),
    ]


# --- timing -----------------------------------------------------------------------------

def build(case: Case, dtype=torch.float32):
    param = text_format.Parse(case.prototxt, caffe_pb2.LayerParameter())
    param.name = case.name
    param.phase = caffe_pb2.Phase.Value(case.phase)
    layer = create_layer(param, dtype=dtype)
    rng = np.random.default_rng(0)
    bottom = []
    for i, shape in enumerate(case.shapes):
        blob = Blob(shape, dtype=dtype)
        if i in case.labels:
            classes = case.labels[i]
            values = rng.integers(0, classes, size=shape) if classes else np.ones(shape)
            if not classes:  # continuation markers: a new sequence at t = 0
                values[0] = 0
            blob.data[...] = values
        else:
            blob.data[...] = rng.standard_normal(shape, dtype=np.float32)
        bottom.append(blob)
    top = [bottom[0]] if case.in_place else [Blob(dtype=dtype)]
    layer.SetUp(bottom, top)
    top[0].diff[...] = rng.standard_normal(top[0].shape, dtype=np.float32)
    propagate = [i not in case.labels for i in range(len(bottom))]
    return layer, bottom, top, propagate


def _sync() -> None:
    if common.mode() == common.GPU:
        torch.cuda.synchronize()


CLOCK = time.perf_counter


def timed(fn: Callable, number: int = 1) -> float:
    """Seconds per call of ``fn``, over ``number`` back-to-back calls."""
    _sync()
    start = CLOCK()
    for _ in range(number):
        fn()
    _sync()
    return (CLOCK() - start) / number


def calls_per_sample(fn: Callable, min_seconds: float = 0.03) -> int:
    """Enough calls for one timing sample to last ``min_seconds`` (timeit's autorange), sized
    from a second call: the first one pays lazy allocations (a blob's first touch) and would
    leave the samples too short to average out a cold cache at their start."""
    fn()
    once = max(timed(fn), 1e-7)
    return max(1, int(np.ceil(min_seconds / once)))


def sample_orders(keys: list[str], repeat: int) -> list[list[str]]:
    """``repeat`` interleaved orders of ``keys``: every rotation of them, forwards and
    backwards, in turn. A call runs slower right after some others (a large forward leaves the
    caches and the allocator in another state), so each function follows each of the others
    in some rounds; drifts over time hit both sides."""
    patterns = [keys[i:] + keys[:i] for i in range(len(keys))]
    patterns += [list(reversed(p)) for p in patterns]
    return [patterns[r % len(patterns)] for r in range(repeat)]


def run_case(case: Case, repeat: int, min_time: float = 0.03) -> dict:
    layer, bottom, top, propagate = build(case)
    torch_fwd, torch_bwd = case.baseline(layer, bottom, top)

    def layer_fwd():
        layer.Forward(bottom, top)

    def layer_bwd():
        layer.Backward(top, propagate, bottom)

    functions = {"layer_fwd": layer_fwd, "torch_fwd": torch_fwd, "layer_bwd": layer_bwd,
                 "torch_bwd": torch_bwd}
    # Warm-up (allocators, caches, lazy initialisation), then one call count per function.
    number = {key: calls_per_sample(fn, min_time) for key, fn in functions.items()}
    runs = {key: [] for key in functions}
    for order in sample_orders(list(functions), repeat):
        for key in order:
            runs[key].append(timed(functions[key], number[key]) * 1e3)
    best = {key: min(values) for key, values in runs.items()}
    return {
        "net": case.net, "layer": case.name, "type": case.layer_type,
        "bottom_shapes": [list(s) for s in case.shapes], "top_shape": list(top[0].shape),
        **{f"{key}_ms": round(value, 4) for key, value in best.items()},
        **{f"{key}_median_ms": round(float(np.median(values)), 4)
           for key, values in runs.items()},
        "fwd_ratio": round(best["layer_fwd"] / best["torch_fwd"], 3),
        "bwd_ratio": round(best["layer_bwd"] / best["torch_bwd"], 3),
    }


class _TrivialLayer(Layer):
    """A layer that does no math (not registered): what is left is the framework's cost."""

    def __init__(self, param, work: int) -> None:
        super().__init__(param)
        self.work = work  # 0: nothing, 1: reshape the top, 2: also fetch the blobs' tensors

    def reshape(self, bottom, top):
        if self.work:
            top[0].reshape_like(bottom[0])

    def forward(self, bottom, top):
        if self.work > 1:
            bottom[0].device_data()
            top[0].mutable_device_data()

    def backward(self, top, propagate_down, bottom):
        if self.work > 1:
            top[0].device_diff()
            bottom[0].mutable_device_diff()


def fixed_costs(number: int = 20000, repeat: int = 7) -> dict:
    """Microseconds per ``Forward``/``Backward`` of a layer doing no math on an 8x1000 blob:
    the dispatch alone, plus reshaping the top, plus fetching the bottom and top tensors (what
    every real layer does)."""
    import timeit

    param = caffe_pb2.LayerParameter(name="trivial", type="Trivial")
    out = {}
    for work, label in [(0, "dispatch"), (1, "reshape_top"), (2, "reshape_and_tensors")]:
        layer = _TrivialLayer(param, work)
        bottom, top = [Blob((8, 1000))], [Blob()]
        layer.SetUp(bottom, top)
        for key, fn in [("forward", lambda lay=layer, b=bottom, t=top: lay.Forward(b, t)),
                        ("backward",
                         lambda lay=layer, b=bottom, t=top: lay.Backward(t, [True], b))]:
            best = min(timeit.repeat(fn, number=number, repeat=repeat, timer=CLOCK))
            out[f"{label}_{key}_us"] = round(best / number * 1e6, 2)
    return out


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the system
    (mallopt M_MMAP_THRESHOLD and M_TRIM_THRESHOLD at 1 GiB). torch's CPU allocator does not
    cache, so a call that returns a fresh tensor of many megabytes gets its pages either
    recycled or faulted in anew depending on the heap's state, which moved the baselines by up
    to 2x between runs; with this, fresh outputs are recycled (the baselines' best case).
    Returns whether it took effect (glibc only)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)
                    and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def machine_info(device: str) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "device": device,
    }
    if hasattr(os, "getloadavg"):  # other work on a shared machine inflates the timings
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


NOTES = """\
Reading the ratios:
- Convolution/Deconvolution write into the blob's fixed storage, and torch's convolution kernels
  only return fresh tensors, so the top (forward) and the bottom diff (backward) cost one extra
  copy each: a few per cent, up to ~13% where the output is large next to the arithmetic
  (CaffeNet conv1). 1x1 kernels skip torch's convolution and run as matrix products written
  straight into the blobs (as Caffe's own 1x1 path does), which beats the baseline backward.
- Pooling, LRN and InnerProduct write their results in place (`out=` variants); LRN computes
  its window sums once and reuses them, so it beats `F.local_response_norm` plus autograd.
  InnerProduct accumulates into the weight diff as Caffe does (a read-modify-write of the
  4096x4096 gradient where the baseline writes a fresh one): up to ~15% on fc7's backward.
- BatchNorm (TRAIN) computes its statistics in two passes (mean, then the sum of squares of
  the centered values through the reductions of torch's batch-norm backward kernel), about
  twice as fast as torch's training-mode `native_batch_norm`. Its backward is three passes
  (the two per-channel sums, an affine pass, an `addcmul`) where the baseline's fused kernel
  makes two but returns a fresh tensor, which the layer would have to copy into the blob
  anyway; run in place it keeps y for backward, as Caffe keeps x_norm.
- LSTM/RNN run the input transform for all timesteps as one matrix product (as Caffe does),
  take per-step views with one `unbind` per pass, and compute the backward factors that do not
  depend on the recurrence for all steps at once (six kernels per LSTM step). The LSTM forward
  baseline is torch's fused oneDNN inference kernel for the whole sequence.
- Softmax and SoftmaxWithLoss call torch's fused softmax kernels with `out=` (on a 2-D view
  when only unit axes follow the softmax axis: the last-axis kernel is ~6x faster there).
  At a few microseconds of math they pay the framework's fixed cost: see `fixed_costs` in
  results_layers.json (a layer doing no math: ~0.2 us dispatch; ~4.5 us once it reshapes its
  top and fetches its tensors, because `Blob.reshape` drops the cached tensor views even when
  the shape is unchanged, so each forward rebuilds them), plus, for the loss, the label
  conversion and range check and `Layer.Forward`'s loss dot product.
- Timing: interleaved samples, each function after each of the others in turn (a call runs
  slower right after some others), minimum of the runs. On a shared machine use
  `--threads 1 --clock cpu`: process CPU time of one thread is far steadier than wall time,
  though memory-bound calls of a millisecond or two still vary by 10-30% between runs. glibc
  is asked to keep freed memory (`keep_freed_memory`): torch's CPU allocator does not cache,
  and a baseline returning a fresh 19 MB tensor otherwise pays 0 to 6 ms of page faults
  depending on the heap's state (`--default-malloc` shows that regime, where the memory-heavy
  backward ratios drop to 0.4-0.6).
"""


def markdown(results: list[dict], info: dict, batch: int, repeat: int,
             command: str = "") -> str:
    load = info.get("load_average_1min")
    load_note = f", load average {load:.1f}" if load is not None else ""
    malloc_note = (", glibc keeps freed memory (`keep_freed_memory`)"
                   if info.get("malloc_keeps_freed_memory") else "")
    lines = [
        "## Layers",
        "",
        f"`{command or f'python benchmarks/layers.py --batch {batch} --repeat {repeat}'}`: "
        "each caffepy layer's "
        "`Forward`/`Backward` against the bare torch call(s) doing the same math on the same "
        "tensors; ratio = layer / torch (1.00: no framework overhead). Minimum of the runs, ms.",
        "",
        f"Machine: {info['cpu']} ({info['cpu_count']} CPUs, {info['torch_threads']} torch "
        f"threads{', GPU ' + info['gpu'] if 'gpu' in info else ''}), {info['platform']}, "
        f"Python {info['python']}, torch {info['torch']}, numpy {info['numpy']}, "
        f"{info['date']}. Batch {batch}, float32, {info['clock']} clock"
        f"{load_note}{malloc_note}.",
        "",
        "| net | layer | type | bottom | fwd ms | torch fwd ms | fwd ratio | bwd ms | "
        "torch bwd ms | bwd ratio |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        shape = "x".join(str(d) for d in r["bottom_shapes"][0])
        lines.append(
            f"| {r['net']} | {r['layer']} | {r['type']} | {shape} | {r['layer_fwd_ms']:.3f} | "
            f"{r['torch_fwd_ms']:.3f} | {r['fwd_ratio']:.2f} | {r['layer_bwd_ms']:.3f} | "
            f"{r['torch_bwd_ms']:.3f} | {r['bwd_ratio']:.2f} |")
    return "\n".join(lines) + "\n\n" + NOTES


def update_readme(path: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the README's block between the ``begin`` and ``end`` markers (or append it)."""
    block = f"{begin}\n{section}{end}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--min-time", type=float, default=0.03,
                        help="seconds per timing sample (fast calls are repeated to fill it)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time, steadier on a shared machine (use with "
                             "--threads 1)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc settings alone (see keep_freed_memory)")
    parser.add_argument("--only", default="", help="run the cases whose layer type or name "
                                                   "contains this text")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="folder for results_layers.json and README.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        CLOCK = time.process_time
    if args.device == "cuda":
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    caffe.set_random_seed(0)
    known = set(layer_type_list())
    info = machine_info(args.device)
    info["clock"] = args.clock
    info["malloc_keeps_freed_memory"] = not args.default_malloc and keep_freed_memory()
    print(f"# {info['cpu']} | {info['cpu_count']} CPUs | torch {info['torch']} "
          f"({info['torch_threads']} threads) | batch {args.batch} | {args.device}")
    header = f"{'net':<13}{'layer':<30}{'fwd ms':>9}{'torch':>9}{'ratio':>7}" \
             f"{'bwd ms':>10}{'torch':>9}{'ratio':>7}"
    print(header)
    results, skipped = [], []
    for case in cases(args.batch):
        if args.only and args.only not in case.layer_type and args.only not in case.name:
            continue
        if case.layer_type not in known:
            skipped.append(case.layer_type)
            print(f"{case.net:<13}{case.name:<30}  skipped: no {case.layer_type} layer")
            continue
        r = run_case(case, args.repeat, args.min_time)
        results.append(r)
        print(f"{r['net']:<13}{r['layer']:<30}{r['layer_fwd_ms']:>9.3f}"
              f"{r['torch_fwd_ms']:>9.3f}{r['fwd_ratio']:>7.2f}{r['layer_bwd_ms']:>10.3f}"
              f"{r['torch_bwd_ms']:>9.3f}{r['bwd_ratio']:>7.2f}", flush=True)
    fixed = fixed_costs() if args.device == "cpu" else {}
    if fixed:
        print("framework cost of a layer doing no math (us): " + ", ".join(
            f"{key[:-3]} {value:.2f}" for key, value in fixed.items()))
    if args.no_write:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "batch": args.batch, "repeat": args.repeat,
               "fixed_costs": fixed,
               "min_time_s": args.min_time, "dtype": "float32",
               "skipped": sorted(set(skipped)), "results": results}
    (args.out / "results_layers.json").write_text(json.dumps(payload, indent=2) + "\n")
    command = " ".join(["python benchmarks/layers.py"] + list(sys.argv[1:] if argv is None
                                                              else argv))
    update_readme(args.out / "README.md",
                  markdown(results, info, args.batch, args.repeat, command))
    print(f"wrote {args.out / 'results_layers.json'} and {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
