"""Hand-written PyTorch eager peer (benchmarks/peers/torch_models.py) on the caffemodel's weights.

    python benchmarks/peers/run_torch.py --model caffenet --prototxt ... --weights ... \
        --input x.npy --batch 1 --outputs prob            # TEST forward, inference_mode
    python benchmarks/peers/run_torch.py --model caffenet --train ...   # training step

Threads: ``torch.set_num_threads(--threads)``. torch is imported before caffe, so caffepy's
``OMP_WAIT_POLICY`` default does not apply: OpenMP keeps libgomp's default (or whatever the
environment sets). caffe is used only to read the weights (``caffe.Net(...).params``); the
timed forward is torch.nn alone. The training step is ``zero_grad``, forward (train mode:
dropout on), ``F.cross_entropy``, ``backward`` and ``torch.optim.SGD.step()`` (lr 0.01,
momentum 0.9, weight decay 5e-4); ``--no-step`` times forward + backward only, as ``caffe
time`` does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch  # before caffe: see the module docstring
import torch.nn.functional as F
from common import dump, emit, load_input, parser, time_forward
from torch_models import MODELS, load_caffe

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import caffe  # noqa: E402


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), required=True)
    p.add_argument("--train", action="store_true", help="time the training step")
    p.add_argument("--no-step", action="store_true", help="training: forward + backward only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    caffe.set_mode_cpu()
    net = caffe.Net(args.prototxt, caffe.TEST, weights=args.weights)
    params = {name: [b.data for b in blobs] for name, blobs in net.params.items()}
    model = load_caffe(MODELS[args.model](), params)
    del net, params
    x = torch.from_numpy(load_input(args))
    names = args.outputs.split(",")

    if args.train:
        labels = torch.from_numpy(
            np.random.default_rng(0).integers(0, 1000, size=args.batch))
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                    weight_decay=5e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model.logits(x), labels).backward()
            if not args.no_step:
                optimizer.step()

        times = time_forward(step, args.warmup, args.iterations)
    else:
        model.eval()

        def forward():
            with torch.inference_mode():
                return model(x)

        outs = forward()
        outs = outs if isinstance(outs, tuple) else (outs,)
        if args.model == "ssd300":  # no DetectionOutput: the blobs that feed it
            dump(args.dump, {"mbox_loc": outs[0].numpy(), "mbox_conf_flatten": outs[1].numpy()})
        else:
            dump(args.dump, {names[0]: outs[0].numpy()})
        times = time_forward(forward, args.warmup, args.iterations)
    emit(times, threads=torch.get_num_threads(), torch=torch.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
