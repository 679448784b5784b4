"""Framework overhead and threads: what the OpenMP wait policy and the thread count cost.

    python benchmarks/bench_overhead.py            # writes results_overhead.json

Every figure comes from a fresh child process, because torch's OpenMP runtime reads its wait
policy once, when torch loads. Three configurations:
- "before": torch imported before caffe (libgomp keeps its spinning default), SGD's per-blob
  update, every layer on the full thread pool: what caffepy did before these changes;
- "policy": caffe imported first (``OMP_WAIT_POLICY=PASSIVE``), nothing else changed;
- "after": as shipped: PASSIVE, SGD's fused torch._foreach_* update, and small parameter-free
  layers on one thread (caffe.layer.SMALL_LAYER_COUNT).
The configurations alternate, ``--repeat`` rounds; the JSON keeps every sample.

Cases:
- ``caffenet_b1_busy``: model-zoo CaffeNet deploy net, batch 1, random (filler) weights, TEST
  forward, ms per pass (wall and process CPU), while a busy-loop child holds one core;
- ``logreg``: pycaffe's "brewing logreg" net (HDF5Data batch 10, 4 features -> InnerProduct 2
  -> SoftmaxWithLoss), SGD, iterations per second over 1000 iterations;
- ``lenet``: examples/digits LeNet (8x8 digits LMDB, batch 64), SGD, iterations/s over 100.
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

CHILD = r"""
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
    n = 1000 if case == "logreg" else 100
run(3)
wall, cpu = clock(run, n)
print(json.dumps({"n": n, "wall_s": wall, "cpu_s": cpu,
                  "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def write_inputs(work: Path) -> None:
    """The logreg HDF5 data and nets, and both solvers (no display, no snapshot, no test)."""
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
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }}
""")
    nets = {"logreg": work / "logreg.prototxt",
            "lenet": ROOT / "examples/digits/lenet_train_test.prototxt"}
    for case, net in nets.items():
        (work / f"{case}_solver.prototxt").write_text(
            f'train_net: "{net}"\nbase_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\n'
            f'lr_policy: "inv"\ngamma: 0.0001\npower: 0.75\ndisplay: 0\nmax_iter: 100000\n'
            f'snapshot: 0\nsnapshot_prefix: "{work / case}"\nrandom_seed: 1701\n'
            f'solver_mode: CPU\n')


def child(policy: str, threads: int, case: str, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["GLOG_minloglevel"] = "2"
    out = subprocess.run([sys.executable, "-c", CHILD, policy, str(threads), case, str(work)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise RuntimeError(f"{case} ({policy}, {threads} threads) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="alternating rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args(argv)
    import numpy
    import torch

    configs = [(case, policy, threads)
               for case in ("caffenet_b1_busy", "logreg", "lenet")
               for threads in (2, 1)
               for policy in ("before", "policy", "after")]
    samples: dict[str, list[dict]] = {}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_inputs(work)
        for _ in range(args.repeat):
            for case, policy, threads in configs:
                busy = None
                if case.endswith("_busy"):
                    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                try:
                    result = child(policy, threads, case, work)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                result["load1"] = os.getloadavg()[0]
                samples.setdefault(f"{case}/{policy}/{threads}", []).append(result)
                print(case, policy, threads, result, flush=True)
    summary = {}
    for key, runs in samples.items():
        case = key.split("/")[0]
        if case == "caffenet_b1_busy":
            summary[key] = {"wall_ms_min": min(r["wall_s"] / r["n"] * 1e3 for r in runs),
                            "cpu_ms_min": min(r["cpu_s"] / r["n"] * 1e3 for r in runs)}
        else:
            summary[key] = {"it_per_s_cpu_max": max(r["n"] / r["cpu_s"] for r in runs),
                            "it_per_s_wall_max": max(r["n"] / r["wall_s"] for r in runs)}
    payload = {
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": numpy.__version__},
        "openmp": "libgomp (torch.__config__.parallel_info(): ATen parallel backend OpenMP)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load1_start": load_start, "load1_end": os.getloadavg()[0],
        "summary": summary, "samples": samples,
    }
    (args.out / "results_overhead.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
