"""Framework overhead and threads: what the OpenMP wait policy and the thread count cost, and
the per-iteration cost of tiny nets next to C++ Caffe's.

    python benchmarks/bench_overhead.py            # writes results_overhead.json
    python benchmarks/bench_overhead.py --pieces --compare-tree DIR   # per-piece table

Every figure comes from a fresh child process, because torch's OpenMP runtime reads its wait
policy once, when torch loads. Configurations:
- "before": torch imported before caffe (libgomp keeps its spinning default), SGD's per-blob
  update, every layer on the full thread pool (the state before the thread changes);
- "policy": caffe imported first (``OMP_WAIT_POLICY=PASSIVE``), nothing else changed;
- "after": as shipped: PASSIVE, SGD's fused torch._foreach_* update, and small parameter-free
  layers on one thread (caffe.layer.SMALL_LAYER_COUNT);
- "tree" (with ``--compare-tree DIR``, e.g. a ``git archive`` of an older commit): "after"'s
  child run on the caffe package in DIR, for before/after figures of other changes;
- "torch" (logreg only): the net written by hand in PyTorch eager (autograd and
  ``torch.optim.SGD`` with the solver's momentum, decay and rate policy, the same HDF5 rows);
- "cpp" (tiny nets only, when /opt/anchors/refcaffe and /opt/anchors/refpy exist, as
  ``../shared/tools/setup-reference-caffe.sh`` installs them): C++ Caffe 1.0's solver on the
  same solver files and data, stepped through its pycaffe (``solver.step``: the C++ loop),
  with ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` set to the thread count.
The configurations alternate, ``--repeat`` rounds; the JSON keeps every sample.

Cases:
- ``caffenet_b1_busy``: model-zoo CaffeNet deploy net, batch 1, random (filler) weights, TEST
  forward, ms per pass (wall and process CPU), while a busy-loop child holds one core;
- ``logreg``: pycaffe's "brewing logreg" notebook's train net (HDF5Data batch 10, 4 features
  -> InnerProduct 2 -> Accuracy and SoftmaxWithLoss), SGD, 1000 iterations;
- ``lenet``: examples/digits LeNet (8x8 digits LMDB, batch 64), SGD, 100 iterations.
Solver cases time ``solver.step(n)`` after 3 warm-up iterations, as process CPU and wall time;
they also time the same n iterations as 10 chunks and keep the fastest chunk's per-iteration
time ("chunk"), the figure least disturbed by other work on a shared machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REFPY = Path("/opt/anchors/refpy")
REFCAFFE = Path("/opt/anchors/refcaffe")
TINY_NETS = ("logreg", "lenet")
ITERATIONS = {"logreg": 1000, "lenet": 100}

# The child's first part sets caffepy up for its configuration; the second, shared with C++
# Caffe's child (its pycaffe has the same get_solver/step), times the case.
CHILD_SETUP = r"""
import json, os, sys, time
first_torch = sys.argv[1] == "before"
if first_torch:
    import torch
import caffe, torch
threads = int(sys.argv[2]); case = sys.argv[3]; work = sys.argv[4]
torch.set_num_threads(threads)
caffe.set_mode_cpu()
if sys.argv[1] in ("before", "policy"):  # the per-blob update, every layer on the pool
    import caffe.layer
    from caffe.solvers.sgd import SGDSolver
    SGDSolver._plain_sgd = lambda self: False
    caffe.layer.SMALL_LAYER_COUNT = 0
"""
CPP_SETUP = r"""
import json, os, sys, time
os.environ.setdefault("GLOG_minloglevel", "2")
import caffe
threads = int(sys.argv[2]); case = sys.argv[3]; work = sys.argv[4]
caffe.set_mode_cpu()
"""
CHILD_RUN = r"""
def clock(fn, n):
    t0, c0 = time.perf_counter(), time.process_time()
    fn(n)
    return time.perf_counter() - t0, time.process_time() - c0
if case == "caffenet_b1_busy":
    net = caffe.Net("tests/models/zoo/bvlc_reference_caffenet_deploy.prototxt", caffe.TEST)
    net.blobs["data"].reshape(1, 3, 227, 227); net.reshape()
    net.blobs["data"].data[...] = 0.5
    def run(n):
        for _ in range(n): net.forward()
    n = 10
else:
    solver = caffe.get_solver(os.path.join(work, case + "_solver.prototxt"))
    run = solver.step
    n = int(sys.argv[5])
run(3)
wall, cpu = clock(run, n)
result = {"n": n, "wall_s": wall, "cpu_s": cpu,
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "caffe_file": caffe.__file__}
if case != "caffenet_b1_busy":
    chunks = [clock(run, n // 10) for _ in range(10)]
    result["chunk_wall_s_min"] = min(w for w, _ in chunks) / (n // 10)
    result["chunk_cpu_s_min"] = min(c for _, c in chunks) / (n // 10)
print(json.dumps(result))
"""
CHILD = CHILD_SETUP + CHILD_RUN
CPP_CHILD = CPP_SETUP + CHILD_RUN

# logreg written by hand in PyTorch eager: autograd, torch.optim.SGD with the solver's
# momentum, weight decay and "inv" rate, the same HDF5 rows in order, the accuracy computed.
TORCH_SETUP = r"""
import json, os, sys, time, types
import h5py, torch
import torch.nn.functional as F
threads = int(sys.argv[2]); case = sys.argv[3]; work = sys.argv[4]
torch.set_num_threads(threads)
torch.manual_seed(1701)
with h5py.File(os.path.join(work, "train.h5"), "r") as f:
    x_all = torch.from_numpy(f["data"][()]); y_all = torch.from_numpy(f["label"][()]).long()
linear = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(linear.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
state = {"iter": 0, "row": 0}
def step(n):
    for _ in range(n):
        row = state["row"]
        x, y = x_all[row:row + 10], y_all[row:row + 10]
        state["row"] = (row + 10) % len(x_all)
        opt.param_groups[0]["lr"] = 0.01 * (1 + 0.0001 * state["iter"]) ** -0.75
        opt.zero_grad()
        out = linear(x)
        loss = F.cross_entropy(out, y)
        accuracy = (out.argmax(1) == y).float().mean()
        loss.backward()
        opt.step()
        loss.item()
        state["iter"] += 1
# What CHILD_RUN calls: caffe.get_solver(path).step(n), and caffe.__file__ for the record.
caffe = types.SimpleNamespace(__file__=torch.__file__,
                              get_solver=lambda path: types.SimpleNamespace(step=step))
"""
TORCH_CHILD = TORCH_SETUP + CHILD_RUN


# ``--pieces``: each piece of one logreg iteration timed alone (timeit, best of 7 x N calls,
# 1 thread), for the per-change figures; the solver is stepped 20 times first.
PIECES_CHILD = r"""
import json, logging, os, sys, timeit
import caffe, torch
torch.set_num_threads(1)
logging.getLogger("caffe").setLevel(logging.WARNING)
solver = caffe.get_solver(os.path.join(sys.argv[1], "logreg_solver.prototxt"))
solver.step(20)
net = solver.net
out = {}
def t(name, fn, n=2000):
    out[name] = min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e6
for name in ("data", "ip1", "accuracy", "loss"):
    i = net.layer_names_index[name]
    layer, bottom, top = net.layers[i], net.bottom_vecs[i], net.top_vecs[i]
    t(name + " Forward", lambda: layer.Forward(bottom, top))
    if net.layer_need_backward[i]:
        down = net.bottom_need_backward[i]
        t(name + " Backward", lambda: layer.Backward(top, down, bottom))
splits = [i for i, layer in enumerate(net.layers) if layer.type == "Split"]
t("Split Forward (both)",
  lambda: [net.layers[i].Forward(net.bottom_vecs[i], net.top_vecs[i]) for i in splits])
t("clear_param_diffs", net.clear_param_diffs)
t("apply_update", solver.apply_update)
t("forward_backward", net.forward_backward, 1000)
t("step, per iteration", lambda: solver.step(100), 10)
out["step, per iteration"] /= 100
blob = net.blobs["ip1"]
t("blob.device_data()", blob.device_data, 100000)
t("blob.data", lambda: blob.data, 100000)
t("blob.reshape(same shape)", lambda: blob.reshape([10, 2]), 100000)
print(json.dumps(out))
"""


def pieces(work: Path, tree: Path | None, rounds: int = 3) -> None:
    """Print each piece's best time for this checkout (and ``tree``), alternating runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OMP_NUM_THREADS")}
    trees = {"this": (ROOT, env)}
    if tree:
        trees["tree"] = (tree, {**env, "PYTHONPATH": str(tree)})
    best: dict[str, dict[str, float]] = {name: {} for name in trees}
    for _ in range(rounds):
        for name, (cwd, child_env) in trees.items():
            out = subprocess.run([sys.executable, "-c", PIECES_CHILD, str(work)], cwd=cwd,
                                 env=child_env, capture_output=True, text=True, timeout=600,
                                 check=True)
            for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
                best[name][key] = min(value, best[name].get(key, value))
    print("| piece | " + " | ".join(f"{name} (us)" for name in trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for key in best["this"]:
        print(f"| {key} | " + " | ".join(f"{best[name][key]:.2f}" for name in trees) + " |")


def write_inputs(work: Path) -> None:
    """The logreg HDF5 data and net, a copy of the LeNet net reading the digits LMDBs by
    absolute path (so C++ Caffe can run from ``work``, outside this checkout's ``caffe``
    package), and both solvers (no display, no snapshot, no test)."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 4)).astype(np.float32)
    with h5py.File(work / "train.h5", "w") as f:
        f["data"] = x
        f["label"] = (x[:, 0] > 0).astype(np.float32)
    (work / "train.txt").write_text(f"{work / 'train.h5'}\n")
    (work / "logreg.prototxt").write_text(f"""
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "{work / 'train.txt'}" batch_size: 10 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }}
""")
    lenet = (ROOT / "examples/digits/lenet_train_test.prototxt").read_text()
    (work / "lenet.prototxt").write_text(
        lenet.replace('"examples/digits/', f'"{ROOT / "examples/digits"}/'))
    for case in TINY_NETS:
        (work / f"{case}_solver.prototxt").write_text(
            f'train_net: "{work / case}.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\n'
            f'weight_decay: 0.0005\nlr_policy: "inv"\ngamma: 0.0001\npower: 0.75\n'
            f'display: 0\nmax_iter: 100000\nsnapshot: 0\nsnapshot_prefix: "{work / case}"\n'
            f'random_seed: 1701\nsolver_mode: CPU\n')


def torch_file() -> str:
    import torch

    return torch.__file__


def cpp_available() -> bool:
    """Whether the reference C++ Caffe build (and its pycaffe) is installed."""
    return REFCAFFE.exists() and REFPY.exists()


def child(config: str, threads: int, case: str, work: Path, tree: Path | None = None) -> dict:
    """One measurement in a fresh process: caffepy in ``config`` ("tree": caffepy from
    ``tree``), or C++ Caffe ("cpp")."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "PYTHONPATH")}
    env["GLOG_minloglevel"] = "2"
    args = [config, str(threads), case, str(work), str(ITERATIONS.get(case, 0))]
    if config == "cpp":
        # OpenBLAS sizes its pool from these; run from work, where no caffepy shadows pycaffe.
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
        cmd, cwd = [str(REFPY), "-c", CPP_CHILD, *args], work
    elif config == "torch":
        cmd, cwd = [sys.executable, "-c", TORCH_CHILD, *args], work
    else:
        cwd = ROOT
        if config == "tree":  # from the tree's folder: ``python -c`` imports from the cwd
            env["PYTHONPATH"], cwd = str(tree), tree
            args[0] = "after"
        cmd = [sys.executable, "-c", CHILD, *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"{case} ({config}, {threads} threads) failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {"cpp": "/opt/anchors", "tree": str(tree),
                "torch": os.path.dirname(torch_file())}.get(config, str(ROOT))
    if not result["caffe_file"].startswith(expected):
        raise RuntimeError(f"{case} ({config}): imported {result['caffe_file']}, "
                           f"expected a caffe under {expected}")
    return result


def summarize(samples: dict[str, list[dict]]) -> dict:
    """Per configuration: the fastest sample; tiny nets in us per iteration."""
    summary = {}
    for key, runs in samples.items():
        case = key.split("/")[0]
        if case == "caffenet_b1_busy":
            summary[key] = {"wall_ms_min": min(r["wall_s"] / r["n"] * 1e3 for r in runs),
                            "cpu_ms_min": min(r["cpu_s"] / r["n"] * 1e3 for r in runs)}
        else:
            summary[key] = {
                "us_per_iter_cpu_min": min(r["cpu_s"] / r["n"] * 1e6 for r in runs),
                "us_per_iter_wall_min": min(r["wall_s"] / r["n"] * 1e6 for r in runs),
                "us_per_iter_cpu_chunk_min": min(r["chunk_cpu_s_min"] * 1e6 for r in runs),
                "us_per_iter_wall_chunk_min": min(r["chunk_wall_s_min"] * 1e6 for r in runs)}
    for key in list(summary):
        case, config, threads = key.split("/")
        cpp = summary.get(f"{case}/cpp/{threads}")
        if cpp and config != "cpp":
            summary[key]["ratio_to_cpp_cpu_chunk"] = (
                summary[key]["us_per_iter_cpu_chunk_min"] / cpp["us_per_iter_cpu_chunk_min"])
            summary[key]["ratio_to_cpp_wall_chunk"] = (
                summary[key]["us_per_iter_wall_chunk_min"] / cpp["us_per_iter_wall_chunk_min"])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="alternating rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--cases", default="caffenet_b1_busy,logreg,lenet",
                        help="comma-separated cases to run")
    parser.add_argument("--compare-tree", type=Path, default=None,
                        help="also run a caffe package from this folder (e.g. an older "
                             "commit's git archive) as configuration 'tree'")
    parser.add_argument("--no-cpp", action="store_true", help="skip C++ Caffe")
    parser.add_argument("--pieces", action="store_true",
                        help="only time each piece of a logreg iteration alone (and print a "
                             "table; with --compare-tree, that tree's too)")
    args = parser.parse_args(argv)
    if args.pieces:
        with tempfile.TemporaryDirectory() as tmp:
            write_inputs(Path(tmp))
            pieces(Path(tmp), args.compare_tree.resolve() if args.compare_tree else None)
        return 0
    import numpy
    import torch

    cpp = cpp_available() and not args.no_cpp
    if not cpp and not args.no_cpp:
        print(f"C++ Caffe not found ({REFCAFFE}, {REFPY}): the cpp peer is skipped",
              flush=True)
    tree = args.compare_tree.resolve() if args.compare_tree else None
    configs = []
    for case in args.cases.split(","):
        for threads in (2, 1):
            names = ["before", "policy", "after"]
            if case in TINY_NETS:
                names += (["tree"] if tree else []) + (["cpp"] if cpp else [])
            if case == "logreg":
                names.append("torch")
            configs += [(case, config, threads) for config in names]
    samples: dict[str, list[dict]] = {}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_inputs(work)
        for _ in range(args.repeat):
            for case, config, threads in configs:
                busy = None
                if case.endswith("_busy"):
                    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                try:
                    result = child(config, threads, case, work, tree)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                result["load1"] = os.getloadavg()[0]
                samples.setdefault(f"{case}/{config}/{threads}", []).append(result)
                print(case, config, threads, result, flush=True)
    summary = summarize(samples)
    payload = {
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": numpy.__version__},
        "openmp": "libgomp (torch.__config__.parallel_info(): ATen parallel backend OpenMP)",
        "cpp_caffe": str(REFCAFFE) if cpp else None,
        "compare_tree": str(tree) if tree else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load1_start": load_start, "load1_end": os.getloadavg()[0],
        "summary": summary, "samples": samples,
    }
    (args.out / "results_overhead.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
