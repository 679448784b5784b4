"""C++ Caffe 1.0 peer: the reference build's pycaffe ``net.forward()`` in CPU mode.

Run it with ``/opt/anchors/refpy`` (numpy<2) from a folder that holds no ``caffe`` package.
Threads: OpenBLAS's pool, sized by ``OPENBLAS_NUM_THREADS`` (set by the orchestrator); Caffe's
own CPU code (im2col, pooling, LRN, ...) runs on one thread.
"""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")

from common import dump, emit, fed_net, load_input, parser, time_forward  # noqa: E402

import caffe  # noqa: E402


def main() -> int:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    caffe.set_mode_cpu()
    net = fed_net(caffe, args, load_input(args))
    net.forward()
    dump(args.dump, {n: net.blobs[n].data for n in args.outputs.split(",")})
    times = time_forward(net.forward, args.warmup, args.iterations)
    emit(times, threads=os.environ.get("OPENBLAS_NUM_THREADS"), caffe_file=caffe.__file__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
