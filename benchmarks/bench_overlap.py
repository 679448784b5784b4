"""Overlapped all-reduce (``layer_wise_reduce: true``) against one reduction after backward
(``false``): iteration time of data-parallel training on 2 CPU processes (Gloo).

The net has large fully connected layers (DummyData 64 x 1024 -> 3 x InnerProduct 2048 ->
InnerProduct 10 -> SoftmaxWithLoss, ~10.5 M parameters, 42 MB of diffs per iteration), so the
all-reduce is a sizeable part of an iteration; buckets of 4 MiB let the reduction of the top
layers run while the lower layers' backward is computed. Each setting runs in its own pair of
spawned processes (one torch thread each), ``--warmup`` iterations, then ``--iters`` timed;
the time is rank 0's ms per iteration, the minimum over ``--repeat`` alternating runs.

    python benchmarks/bench_overlap.py            # writes results_overlap.json and the README
    python benchmarks/bench_overlap.py --no-write --iters 5 --repeat 1

CUDA: with two or more GPUs, ``--gpu`` runs the same on devices 0 and 1 (NCCL).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

NET = """name: 'fc'
layer { name: 'data' type: 'DummyData' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 64 dim: 1024 } shape { dim: 64 }
    data_filler { type: 'gaussian' std: 1 } data_filler { type: 'constant' value: 1 } } }
layer { name: 'fc1' type: 'InnerProduct' bottom: 'data' top: 'fc1'
  inner_product_param { num_output: 2048 weight_filler { type: 'gaussian' std: 0.01 } } }
layer { name: 'relu1' type: 'ReLU' bottom: 'fc1' top: 'fc1' }
layer { name: 'fc2' type: 'InnerProduct' bottom: 'fc1' top: 'fc2'
  inner_product_param { num_output: 2048 weight_filler { type: 'gaussian' std: 0.01 } } }
layer { name: 'relu2' type: 'ReLU' bottom: 'fc2' top: 'fc2' }
layer { name: 'fc3' type: 'InnerProduct' bottom: 'fc2' top: 'fc3'
  inner_product_param { num_output: 2048 weight_filler { type: 'gaussian' std: 0.01 } } }
layer { name: 'relu3' type: 'ReLU' bottom: 'fc3' top: 'fc3' }
layer { name: 'fc4' type: 'InnerProduct' bottom: 'fc3' top: 'fc4'
  inner_product_param { num_output: 10 weight_filler { type: 'gaussian' std: 0.01 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'fc4' bottom: 'label' top: 'loss' }
"""

BEGIN, END = "<!-- overlap:begin -->", "<!-- overlap:end -->"


def _rank(rank: int, uid: str, layer_wise: bool, gpu: bool, warmup: int, iters: int,
          out: str) -> None:
    import torch

    import caffe
    from caffe.parallel import NCCL
    from caffe.proto import caffe_pb2

    torch.set_num_threads(1)
    os.environ["CAFFE_REDUCE_BUCKET_BYTES"] = str(4 * 2**20)
    from caffe.log import install_glog_handler

    install_glog_handler(level=40)
    if gpu:
        caffe.set_device(rank)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    caffe.set_solver_count(2)
    caffe.set_solver_rank(rank)
    param = caffe_pb2.SolverParameter()
    from google.protobuf import text_format

    text_format.Merge(NET, param.net_param)
    param.base_lr, param.lr_policy, param.momentum = 0.01, "fixed", 0.9
    param.max_iter, param.random_seed = warmup + iters, 1
    param.layer_wise_reduce = layer_wise
    param.snapshot_after_train = False
    solver = caffe.get_solver(param)
    nccl = NCCL(solver, uid)
    nccl.bcast()
    solver.add_callback(nccl)
    solver.step(warmup)
    if gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    solver.step(iters)
    if gpu:
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / iters * 1e3
    nccl.finish()
    if rank == 0:
        Path(out).write_text(json.dumps(ms))


def run_once(layer_wise: bool, gpu: bool, warmup: int, iters: int) -> float:
    import tempfile

    import torch.multiprocessing as mp

    from caffe.parallel import NCCL

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ms.json")
        mp.start_processes(_rank, args=(NCCL.new_uid(), layer_wise, gpu, warmup, iters, out),
                           nprocs=2, join=True, start_method="spawn")
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    from layers import machine_info, update_readme

    times = {True: [], False: []}
    for _ in range(args.repeat):
        for layer_wise in (True, False):
            times[layer_wise].append(run_once(layer_wise, args.gpu, args.warmup, args.iters))
    best = {k: min(v) for k, v in times.items()}
    result = {"machine": machine_info("cuda" if args.gpu else "cpu"),
              "processes": 2, "ms_per_iter_layer_wise_true": round(best[True], 2),
              "ms_per_iter_layer_wise_false": round(best[False], 2),
              "samples": {str(k): [round(t, 2) for t in v] for k, v in times.items()}}
    print(json.dumps(result, indent=1))
    if not args.no_write:
        name = "results_overlap_gpu.json" if args.gpu else "results_overlap.json"
        (HERE / name).write_text(json.dumps(result, indent=1) + "\n")
        m = result["machine"]
        section = (
            "## Overlapped all-reduce (bench_overlap.py)\n\n"
            f"2 {'GPU' if args.gpu else 'CPU'} processes, 4 FC layers (~10.5 M parameters), "
            f"batch 64 per process; ms per iteration (min of {args.repeat}).\n"
            f"Machine: {m['cpu']}, {m['cpu_count']} cores, load "
            f"{m.get('load_average_1min', '?')} (a shared machine: other work inflates both).\n\n"
            "| layer_wise_reduce | ms / iter |\n|---|---|\n"
            f"| true (bucketed, during backward) | {best[True]:.1f} |\n"
            f"| false (one all_reduce after backward) | {best[False]:.1f} |\n\n"
            "On one host Gloo's reduction runs on the same cores as backward, so on a small "
            "CPU machine there is little to overlap with; the overlap pays where the reduction "
            "waits on a network or runs on NCCL beside the GPU's compute.\n"
            "No CUDA machine was available when this was written; `--gpu` needs two GPUs.\n")
        update_readme(HERE / "README.md", section, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
