"""OpenCV dnn 4.x peer: ``cv2.dnn.readNetFromCaffe`` on the same prototxt and weights.

Backend DNN_BACKEND_OPENCV, target DNN_TARGET_CPU, ``cv2.setNumThreads(--threads)``.
"""

from __future__ import annotations

import cv2
from common import dump, emit, load_input, parser, time_forward


def main() -> int:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    cv2.setNumThreads(args.threads)
    net = cv2.dnn.readNetFromCaffe(args.prototxt, args.weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    x = load_input(args)
    names = args.outputs.split(",")

    def forward():
        net.setInput(x)
        return net.forward(names)

    outs = forward()
    dump(args.dump, dict(zip(names, outs)))
    times = time_forward(forward, args.warmup, args.iterations)
    framework = next((line.split(":", 1)[1].strip()
                      for line in cv2.getBuildInformation().splitlines()
                      if "Parallel framework" in line), "?")
    emit(times, threads=cv2.getNumThreads(), opencv=cv2.__version__,
         parallel_framework=framework)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
