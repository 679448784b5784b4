"""ROIPooling at Faster R-CNN size: 300 ROIs pooled 7x7 from a 512-channel 38x50 map (VGG16
conv5_3 of a 600x800 image, spatial_scale 1/16).

Times the layer's ``Forward`` and ``Backward`` (top diff random) after one warm-up run, then
prints a table. One run by default: the figure is indicative, not a minimum over many.

    python benchmarks/bench_roi_pooling.py
    python benchmarks/bench_roi_pooling.py --repeat 5 --device cuda
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import caffe  # noqa: E402
from caffe.blob import Blob  # noqa: E402
from caffe.layer import create_layer  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402

PROTOTXT = ("name: 'roi_pool5' type: 'ROIPooling' "
            "roi_pooling_param { pooled_h: 7 pooled_w: 7 spatial_scale: 0.0625 }")


def random_rois(count: int, image_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Boxes [0, x1, y1, x2, y2] of 16 to full-image size anywhere in the image."""
    h, w = image_hw
    size = rng.uniform(16, [w, h], (count, 2))
    x1 = rng.uniform(0, w - size[:, 0])
    y1 = rng.uniform(0, h - size[:, 1])
    return np.stack([np.zeros(count), x1, y1, x1 + size[:, 0], y1 + size[:, 1]], 1)


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=300)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--map", type=int, nargs=2, default=(38, 50), metavar=("H", "W"))
    parser.add_argument("--repeat", type=int, default=1, help="timed runs (minimum reported)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        caffe.set_mode_gpu()
    rng = np.random.default_rng(0)
    h, w = args.map
    param = text_format.Parse(PROTOTXT, caffe_pb2.LayerParameter())
    layer = create_layer(param)
    features, rois, top = Blob((1, args.channels, h, w)), Blob((args.rois, 5)), Blob()
    features.data[...] = rng.standard_normal(features.shape)
    rois.data[...] = random_rois(args.rois, (h * 16, w * 16), rng)
    bottom = [features, rois]
    layer.SetUp(bottom, [top])
    top.diff[...] = rng.standard_normal(top.shape)

    def forward():
        layer.Forward(bottom, [top])

    def backward():
        layer.Backward([top], [True, False], bottom)

    forward()
    backward()
    fwd = min(timed(forward, args.device) for _ in range(args.repeat))
    bwd = min(timed(backward, args.device) for _ in range(args.repeat))
    print(f"ROIPooling 7x7, spatial_scale 1/16; {platform.processor() or platform.machine()}, "
          f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"float32, min of {args.repeat} run(s) after a warm-up")
    print()
    print("| features | rois | top | forward ms | backward ms |")
    print("|---|---:|---|---:|---:|")
    print(f"| {'x'.join(map(str, features.shape))} | {args.rois} | "
          f"{'x'.join(map(str, top.shape))} | {fwd:.1f} | {bwd:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
