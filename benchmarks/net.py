"""Whole-net timings: a caffepy training iteration and TEST forward against hand-written torch.

For LeNet (batch 64, 1x28x28) and a CaffeNet-like net (batch 8, 3x227x227) this times

- train: one ``solver.step(1)`` of a caffepy SGD solver (clear diffs, forward, backward, weight
  decay, momentum update) against the same iteration written by hand in torch: an ``nn.Module``
  of the same layers, ``F.cross_entropy``, ``backward()`` and ``torch.optim.SGD`` with the same
  momentum, weight decay and per-parameter learning-rate and decay multipliers;
- test: ``net.forward()`` of the TEST-phase net ending in Softmax against the module in
  ``eval()`` mode under ``torch.no_grad()``.

Data come from ``Input`` layers filled once (no disk IO, no data transformation): both sides see
the same fixed batch. The torch model starts from the caffepy net's initial weights, and the
script checks that both compute the same numbers (TEST probabilities; LeNet's first training
loss) before timing. Times are per iteration, the minimum over ``--repeat`` interleaved samples
after warm-up iterations; ratio = caffepy / torch.

    python benchmarks/net.py --threads 1 --clock cpu        # writes results_net.json, README
    python benchmarks/net.py --only LeNet --no-write

Results go to ``benchmarks/results_net.json`` and the "Nets" section of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from google.protobuf import text_format

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from layers import keep_freed_memory, machine_info, sample_orders, update_readme  # noqa: E402

import caffe  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402

BEGIN, END = "<!-- nets:begin -->", "<!-- nets:end -->"
BASE_LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 0.0005

# --- the nets, as Caffe prototxt bodies (between the Input layer and the classifier) ---------
_FILL = ("weight_filler { type: 'xavier' } bias_filler { type: 'constant' value: 0.1 }")
_LR = "param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }"


def _conv(name, bottom, num, kernel, stride=1, pad=0, group=1):
    return (f"layer {{ name: '{name}' type: 'Convolution' bottom: '{bottom}' top: '{name}' {_LR} "
            f"convolution_param {{ num_output: {num} kernel_size: {kernel} stride: {stride} "
            f"pad: {pad} group: {group} {_FILL} }} }}\n")


def _ip(name, bottom, num):
    return (f"layer {{ name: '{name}' type: 'InnerProduct' bottom: '{bottom}' top: '{name}' "
            f"{_LR} inner_product_param {{ num_output: {num} {_FILL} }} }}\n")


def _relu(name, blob):
    return f"layer {{ name: '{name}' type: 'ReLU' bottom: '{blob}' top: '{blob}' }}\n"


def _pool(name, bottom, kernel, stride):
    return (f"layer {{ name: '{name}' type: 'Pooling' bottom: '{bottom}' top: '{name}' "
            f"pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} }} }}\n")


def _lrn(name, bottom):
    return (f"layer {{ name: '{name}' type: 'LRN' bottom: '{bottom}' top: '{name}' "
            f"lrn_param {{ local_size: 5 alpha: 0.0001 beta: 0.75 }} }}\n")


def _dropout(name, blob):
    return (f"layer {{ name: '{name}' type: 'Dropout' bottom: '{blob}' top: '{blob}' "
            f"dropout_param {{ dropout_ratio: 0.5 }} }}\n")


LENET = (_conv("conv1", "data", 20, 5) + _pool("pool1", "conv1", 2, 2)
         + _conv("conv2", "pool1", 50, 5) + _pool("pool2", "conv2", 2, 2)
         + _ip("ip1", "pool2", 500) + _relu("relu1", "ip1") + _ip("ip2", "ip1", 10))

CAFFENET = (_conv("conv1", "data", 96, 11, stride=4) + _relu("relu1", "conv1")
            + _pool("pool1", "conv1", 3, 2) + _lrn("norm1", "pool1")
            + _conv("conv2", "norm1", 256, 5, pad=2, group=2) + _relu("relu2", "conv2")
            + _pool("pool2", "conv2", 3, 2) + _lrn("norm2", "pool2")
            + _conv("conv3", "norm2", 384, 3, pad=1) + _relu("relu3", "conv3")
            + _conv("conv4", "conv3", 384, 3, pad=1, group=2) + _relu("relu4", "conv4")
            + _conv("conv5", "conv4", 256, 3, pad=1, group=2) + _relu("relu5", "conv5")
            + _pool("pool5", "conv5", 3, 2)
            + _ip("fc6", "pool5", 4096) + _relu("relu6", "fc6") + _dropout("drop6", "fc6")
            + _ip("fc7", "fc6", 4096) + _relu("relu7", "fc7") + _dropout("drop7", "fc7")
            + _ip("fc8", "fc7", 1000))


def lenet_module() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2, ceil_mode=True), nn.Flatten(),
        nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, 10))


def caffenet_module() -> nn.Module:
    def lrn():
        return nn.LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=1.0)

    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 1000))


@dataclass
class NetCase:
    name: str
    body: str  # prototxt layers from 'data' to the classifier output `output`
    output: str
    batch: int
    input_shape: tuple[int, ...]
    classes: int
    module: Callable[[], nn.Module]
    check_train_loss: bool  # no dropout: the first training losses must agree


CASES = [
    NetCase("LeNet", LENET, "ip2", 64, (1, 28, 28), 10, lenet_module, True),
    NetCase("CaffeNet", CAFFENET, "fc8", 8, (3, 227, 227), 1000, caffenet_module, False),
]


def net_param(case: NetCase, batch: int, train: bool) -> caffe_pb2.NetParameter:
    dims = " ".join(f"dim: {d}" for d in (batch, *case.input_shape))
    if train:
        head = (f"layer {{ name: 'data' type: 'Input' top: 'data' top: 'label' input_param {{ "
                f"shape {{ {dims} }} shape {{ dim: {batch} }} }} }}\n")
        tail = (f"layer {{ name: 'loss' type: 'SoftmaxWithLoss' bottom: '{case.output}' "
                f"bottom: 'label' top: 'loss' }}\n")
    else:
        head = (f"layer {{ name: 'data' type: 'Input' top: 'data' input_param {{ "
                f"shape {{ {dims} }} }} }}\n")
        tail = (f"layer {{ name: 'prob' type: 'Softmax' bottom: '{case.output}' "
                f"top: 'prob' }}\n")
    text = f"name: '{case.name}'\n" + head + case.body + tail
    return text_format.Parse(text, caffe_pb2.NetParameter())


def solver_param(case: NetCase, batch: int) -> caffe_pb2.SolverParameter:
    param = caffe_pb2.SolverParameter()
    param.net_param.CopyFrom(net_param(case, batch, train=True))
    param.base_lr = BASE_LR
    param.lr_policy = "fixed"
    param.momentum = MOMENTUM
    param.weight_decay = WEIGHT_DECAY
    param.max_iter = 1_000_000
    param.display = 0
    param.snapshot_after_train = False
    param.type = "SGD"
    return param


# --- the two sides ----------------------------------------------------------------------------

class Sides:
    """The caffepy solver and TEST net, and the torch module and optimizer, on one batch."""

    def __init__(self, case: NetCase, batch: int) -> None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, *case.input_shape), dtype=np.float32)
        labels = rng.integers(0, case.classes, size=batch)

        self.solver = caffe.get_solver(solver_param(case, batch))
        net = self.solver.net
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = labels
        self.test_net = caffe.Net(net_param(case, batch, train=False), caffe.TEST)
        self.test_net.share_with(net)
        self.test_net.blobs["data"].data[...] = x

        self.model = case.module()
        layers = [m for m in self.model if isinstance(m, (nn.Conv2d, nn.Linear))]
        learnable = [name for name in net.params if len(net.params[name])]
        assert len(layers) == len(learnable), (len(layers), learnable)
        weights, biases = [], []
        for module, name in zip(layers, learnable):
            w, b = net.params[name]
            module.weight.data.copy_(torch.from_numpy(w.data.reshape(module.weight.shape)))
            module.bias.data.copy_(torch.from_numpy(b.data))
            weights.append(module.weight)
            biases.append(module.bias)
        # Caffe's lr_mult 1 / decay_mult 1 for weights, lr_mult 2 / decay_mult 0 for biases;
        # with a fixed rate, torch's momentum form (W -= lr * buf) equals Caffe's (W -= V).
        self.optimizer = torch.optim.SGD(
            [{"params": weights, "lr": BASE_LR, "weight_decay": WEIGHT_DECAY},
             {"params": biases, "lr": 2 * BASE_LR, "weight_decay": 0.0}],
            lr=BASE_LR, momentum=MOMENTUM)
        self.x = torch.from_numpy(x.copy())
        self.labels = torch.from_numpy(labels)

    # caffepy
    def caffe_train(self) -> None:
        self.solver.step(1)

    def caffe_test(self) -> None:
        self.test_net.forward()

    # torch
    def torch_train(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.x), self.labels)
        loss.backward()
        self.optimizer.step()

    def torch_test(self) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return torch.softmax(self.model(self.x), 1)

    def check(self, case: NetCase) -> dict:
        """Both sides compute the same numbers before any update (returns the differences)."""
        out = {}
        prob = self.test_net.forward()["prob"].copy()
        out["test_prob_max_abs_diff"] = float(np.abs(prob - self.torch_test().numpy()).max())
        if case.check_train_loss:
            self.model.train()
            with torch.no_grad():
                torch_loss = float(F.cross_entropy(self.model(self.x), self.labels))
            caffe_loss = float(self.solver.net.forward()["loss"])
            out["train_loss_caffe"] = caffe_loss
            out["train_loss_torch"] = torch_loss
        return out


def timed(fn: Callable, clock: Callable[[], float], number: int) -> float:
    start = clock()
    for _ in range(number):
        fn()
    return (clock() - start) / number


def run_case(case: NetCase, batch: int, repeat: int, number: int, warmup: int,
             clock: Callable[[], float]) -> dict:
    sides = Sides(case, batch)
    checks = sides.check(case)
    if checks["test_prob_max_abs_diff"] > 1e-4:
        raise SystemExit(f"{case.name}: TEST outputs differ by "
                         f"{checks['test_prob_max_abs_diff']:g}; the two nets do not match")
    if case.check_train_loss and abs(checks["train_loss_caffe"] - checks["train_loss_torch"]) \
            > 1e-4 * max(1.0, abs(checks["train_loss_torch"])):
        raise SystemExit(f"{case.name}: training losses differ: {checks}")
    functions = {"caffe_train": sides.caffe_train, "torch_train": sides.torch_train,
                 "caffe_test": sides.caffe_test, "torch_test": sides.torch_test}
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    runs = {key: [] for key in functions}
    for order in sample_orders(list(functions), repeat):
        for key in order:
            runs[key].append(timed(functions[key], clock, number) * 1e3)
    best = {key: min(values) for key, values in runs.items()}
    return {
        "net": case.name, "batch": batch, "input": [batch, *case.input_shape],
        **{f"{key}_ms": round(value, 3) for key, value in best.items()},
        **{f"{key}_median_ms": round(float(np.median(values)), 3)
           for key, values in runs.items()},
        "train_ratio": round(best["caffe_train"] / best["torch_train"], 3),
        "test_ratio": round(best["caffe_test"] / best["torch_test"], 3),
        "checks": checks,
    }


NOTES = """\
What is compared: caffepy's `solver.step(1)` runs Caffe's iteration (zero the parameter diffs,
forward, backward, then per parameter weight decay, momentum `V = m V + lr dW`, `W -= V`);
the torch side runs `zero_grad(set_to_none=True)`, the module, `F.cross_entropy`,
`backward()` and `torch.optim.SGD.step()` (for-loop implementation, torch's CPU default),
which with a fixed learning rate is the same update. TEST is `net.forward()` of the deploy
net (ending in Softmax) against `model.eval()` under `no_grad`. Both start from the same
weights and are checked to give the same TEST probabilities (and, for LeNet, which has no
dropout, the same first training loss) before timing. Data come from `Input` layers filled
once: no disk IO or data transformation is timed (see "Data" for that).

Where the difference goes (torch.profiler and per-phase timings, same settings):
- CaffeNet train: forward + backward are within ~3% of torch (the copies of convolution
  outputs and input gradients into the blobs' fixed storage, the InnerProduct weight gradient
  accumulated into its diff as in Caffe). The rest is the update over 61M parameters:
  clearing the diffs (~30 ms, needed because Caffe's backward accumulates into them) and the
  solver's per-parameter passes (decay, momentum, copy into the diff, `W -= diff`: ~155 ms)
  against ~135 ms for `torch.optim.SGD.step()`.
- LeNet: most of the gap is the convolutions' output copies (~0.5 ms of conv1's ~1 ms in TEST).
- With glibc's default malloc (`--default-malloc`) torch pays page faults for its fresh
  gradients and activations, and the CaffeNet train ratio is ~0.9.
"""


def markdown(results: list[dict], info: dict, args, command: str) -> str:
    load = info.get("load_average_1min")
    load_note = f", load average {load:.1f} at the start" if load is not None else ""
    malloc_note = (", glibc keeps freed memory (`keep_freed_memory` in layers.py)"
                   if info.get("malloc_keeps_freed_memory") else "")
    lines = [
        "## Nets",
        "",
        f"`{command}`: one training iteration and one TEST forward of whole nets, caffepy "
        "against the same net and update written by hand in torch; ms per iteration, the "
        f"minimum over {args.repeat} interleaved samples of {args.number} iteration(s) after "
        f"{args.warmup} warm-up iteration(s); ratio = caffepy / torch.",
        "",
        f"Machine: {info['cpu']} ({info['cpu_count']} CPUs, {info['torch_threads']} torch "
        f"threads), {info['platform']}, Python {info['python']}, torch {info['torch']}, numpy "
        f"{info['numpy']}, {info['date']}. float32, {info['clock']} clock{load_note}"
        f"{malloc_note}.",
        "",
        "| net | batch | train ms | torch train ms | train ratio | test ms | torch test ms | "
        "test ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['net']} | {r['batch']} | {r['caffe_train_ms']:.2f} | "
            f"{r['torch_train_ms']:.2f} | {r['train_ratio']:.2f} | {r['caffe_test_ms']:.2f} | "
            f"{r['torch_test_ms']:.2f} | {r['test_ratio']:.2f} |")
    return "\n".join(lines) + "\n\n" + NOTES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=8, help="timing samples per function")
    parser.add_argument("--number", type=int, default=1, help="iterations per sample")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time, steadier on a shared machine (use with "
                             "--threads 1)")
    parser.add_argument("--lenet-batch", type=int, default=64)
    parser.add_argument("--caffenet-batch", type=int, default=8)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc settings alone (see layers.keep_freed_memory)")
    parser.add_argument("--only", default="", help="run the nets whose name contains this")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="folder for results_net.json and README.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    logging.getLogger("caffe").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    caffe.set_mode_cpu()
    caffe.set_random_seed(0)
    torch.manual_seed(0)
    info = machine_info("cpu")
    info["clock"] = args.clock
    info["malloc_keeps_freed_memory"] = not args.default_malloc and keep_freed_memory()
    batches = {"LeNet": args.lenet_batch, "CaffeNet": args.caffenet_batch}
    print(f"# {info['cpu']} | {info['cpu_count']} CPUs | torch {info['torch']} "
          f"({info['torch_threads']} threads) | {args.clock} clock")
    print(f"{'net':<10}{'batch':>6}{'train ms':>11}{'torch':>9}{'ratio':>7}"
          f"{'test ms':>10}{'torch':>9}{'ratio':>7}")
    results = []
    for case in CASES:
        if args.only and args.only not in case.name:
            continue
        r = run_case(case, batches[case.name], args.repeat, args.number, args.warmup, clock)
        results.append(r)
        print(f"{r['net']:<10}{r['batch']:>6}{r['caffe_train_ms']:>11.2f}"
              f"{r['torch_train_ms']:>9.2f}{r['train_ratio']:>7.2f}{r['caffe_test_ms']:>10.2f}"
              f"{r['torch_test_ms']:>9.2f}{r['test_ratio']:>7.2f}", flush=True)
    if args.no_write:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "repeat": args.repeat, "number": args.number,
               "warmup": args.warmup, "dtype": "float32", "results": results}
    (args.out / "results_net.json").write_text(json.dumps(payload, indent=2) + "\n")
    command = " ".join(["python benchmarks/net.py"] + list(sys.argv[1:] if argv is None
                                                           else argv))
    update_readme(args.out / "README.md", markdown(results, info, args, command),
                  begin=BEGIN, end=END)
    print(f"wrote {args.out / 'results_net.json'} and {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
