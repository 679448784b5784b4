"""DetectionOutput and MultiBoxLoss at SSD300 size: 8732 priors (the six PriorBox layers of
SSD300 VGG16), 21 classes (VOC), batch 8.

DetectionOutput uses SSD300's deploy settings (NMS 0.45, top_k 400, keep_top_k 200, confidence
0.01) on softmax scores of random logits, so every class keeps many candidates (a heavy case).
MultiBoxLoss uses SSD300's training settings (overlap 0.5, MAX_NEGATIVE mining 3:1) with 3
ground truths per image; its forward (matching and mining) and backward are timed. One run
after a warm-up by default: the figures are indicative, not a minimum over many.

    python benchmarks/bench_ssd.py
    python benchmarks/bench_ssd.py --repeat 5 --device cuda
    python benchmarks/bench_ssd.py --threads 1
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_roi_pooling import timed  # noqa: E402

import caffe  # noqa: E402
from caffe.blob import Blob  # noqa: E402
from caffe.layer import create_layer  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402

# (feature map size, min_size, max_size, aspect ratios, step) of SSD300's PriorBox layers.
SSD300_PRIORS = [(38, 30, 60, [2], 8), (19, 60, 111, [2, 3], 16), (10, 111, 162, [2, 3], 32),
                 (5, 162, 213, [2, 3], 64), (3, 213, 264, [2], 100), (1, 264, 315, [2], 300)]
NUM_CLASSES = 21
DETECTION_OUTPUT = (
    "name: 'detection_out' type: 'DetectionOutput' detection_output_param { num_classes: 21 "
    "share_location: true background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 400 } "
    "code_type: CENTER_SIZE keep_top_k: 200 confidence_threshold: 0.01 }")
MULTIBOX_LOSS = (
    "name: 'mbox_loss' type: 'MultiBoxLoss' multibox_loss_param { loc_loss_type: SMOOTH_L1 "
    "conf_loss_type: SOFTMAX loc_weight: 1 num_classes: 21 share_location: true "
    "match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true "
    "background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3 neg_overlap: 0.5 "
    "code_type: CENTER_SIZE mining_type: MAX_NEGATIVE } loss_param { normalization: VALID }")


def layer_of(text: str):
    return create_layer(text_format.Parse(text, caffe_pb2.LayerParameter()))


def ssd300_priors() -> np.ndarray:
    """The (1, 2, 8732*4) prior blob of SSD300, made by the PriorBox layer."""
    parts = []
    for size, low, high, ratios, step in SSD300_PRIORS:
        text = (f"name: 'p' type: 'PriorBox' prior_box_param {{ min_size: {low} "
                f"max_size: {high} {' '.join(f'aspect_ratio: {r}' for r in ratios)} flip: true "
                f"clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 "
                f"step: {step} offset: 0.5 }}")
        layer = layer_of(text)
        bottom, top = [Blob((1, 1, size, size)), Blob((1, 3, 300, 300))], [Blob()]
        layer.SetUp(bottom, top)
        layer.Forward(bottom, top)
        parts.append(top[0].data.copy())
    return np.concatenate(parts, axis=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs (minimum reported)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        caffe.set_mode_gpu()
    rng = np.random.default_rng(0)
    priors = ssd300_priors()
    num_priors = priors.shape[2] // 4
    n = args.batch
    loc = Blob((n, num_priors * 4))
    loc.data[...] = rng.normal(0, 0.5, loc.shape)
    logits = rng.normal(0, 1, (n, num_priors, NUM_CLASSES))
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    conf_prob, conf_logits, prior = Blob((n, num_priors * NUM_CLASSES)), Blob(
        (n, num_priors * NUM_CLASSES)), Blob(priors.shape)
    conf_prob.data[...] = prob.reshape(n, -1)
    conf_logits.data[...] = logits.reshape(n, -1)
    prior.data[...] = priors
    gt_rows = []
    for i in range(n):
        for j in range(3):
            centre, size = rng.uniform(0.25, 0.75, 2), rng.uniform(0.1, 0.5, 2)
            gt_rows.append([i, rng.integers(1, NUM_CLASSES), j, *(centre - size / 2),
                            *(centre + size / 2), 0])
    gt = Blob((1, 1, len(gt_rows), 8))
    gt.data[...] = np.asarray(gt_rows)[None, None]

    detect = layer_of(DETECTION_OUTPUT)
    det_bottom, det_top = [loc, conf_prob, prior], [Blob()]
    detect.SetUp(det_bottom, det_top)
    loss = layer_of(MULTIBOX_LOSS)
    loss_bottom, loss_top = [loc, conf_logits, prior, gt], [Blob()]
    loss.SetUp(loss_bottom, loss_top)

    def det_forward():
        detect.Forward(det_bottom, det_top)

    def loss_forward():
        loss.Forward(loss_bottom, loss_top)

    def loss_backward():
        loss.Backward(loss_top, [True, True, False, False], loss_bottom)

    for fn in (det_forward, loss_forward, loss_backward):
        fn()
    rows = [("DetectionOutput forward", det_forward,
             f"{det_top[0].shape[2]} detections"),
            ("MultiBoxLoss forward", loss_forward,
             f"{loss.num_matches} matches, loss {float(loss_top[0].data):.3f}"),
            ("MultiBoxLoss backward", loss_backward, "")]
    print(f"SSD300 size: {num_priors} priors, {NUM_CLASSES} classes, batch {n}; "
          f"{platform.processor() or platform.machine()}, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"min of {args.repeat} run(s) after a warm-up")
    print()
    print("| layer pass | ms | note |")
    print("|---|---:|---|")
    for name, fn, note in rows:
        ms = min(timed(fn, args.device) for _ in range(args.repeat))
        print(f"| {name} | {ms:.1f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
