"""caffepy peer: ``net.forward()`` of this repo's ``caffe`` (per-layer path, or optimized).

    python benchmarks/peers/run_caffepy.py --prototxt net.prototxt --weights net.caffemodel \
        --input x.npy --batch 1 --outputs prob [--mode default|optimized|bf16|compiled|...]

Threads: ``caffe.set_num_threads(--threads)``; the OpenMP wait policy is caffepy's own choice
(``caffe._threads``: PASSIVE with a 1000-spin wait unless the environment sets one).
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import dump, emit, fed_net, load_input, parser, time_forward

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import caffe  # noqa: E402

# mode -> (precision, torch.compile)
MODES = {"optimized": ("float32", False), "bf16": ("bfloat16", False),
         "compiled": ("float32", True), "compiled_bf16": ("bfloat16", True)}


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["default", *MODES], default="default")
    args = p.parse_args()
    caffe.set_mode_cpu()
    caffe.set_num_threads(args.threads)
    net = fed_net(caffe, args, load_input(args))
    names = args.outputs.split(",")
    if args.mode != "default":
        if not hasattr(caffe.Net, "optimize_for_inference"):
            raise SystemExit("caffe.Net has no optimize_for_inference")
        keep = [n for n in names if n not in net.outputs]
        precision, compiled = MODES[args.mode]
        net.optimize_for_inference(keep=keep, fold=True, channels_last=True,
                                   precision=precision, compile=compiled)
    net.forward()
    dump(args.dump, {n: net.blobs[n].data for n in names})
    times = time_forward(net.forward, args.warmup, args.iterations)
    emit(times, threads=caffe.common.num_threads())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
