"""Fork layers side by side: caffepy against OpenCV dnn and hand-written PyTorch, one run.

ROIPooling at Faster R-CNN size (300 ROIs pooled 7x7 from a 1x512x38x50 map, spatial_scale
1/16) and DetectionOutput at SSD300 size (8732 priors, 21 classes, batch 8, SSD300's deploy
NMS settings on softmax scores of random logits: the heavy case where every class fills its
top_k of 400). Peers, on the same inputs:

- OpenCV dnn: a one-layer Caffe prototxt (Input layers + the layer) read with
  ``cv2.dnn.readNetFromCaffe``. OpenCV 5 dropped the Caffe importer: put an OpenCV 4.x on
  PYTHONPATH (``pip install --target DIR opencv-python-headless==4.*``); without one the peer
  is skipped.
- PyTorch by hand: ROIPooling as the usual loop of ``F.adaptive_max_pool2d`` over each ROI's
  crop (autograd for the backward; its bins equal the fork's for ROIs inside the map);
  DetectionOutput as the usual per-image, per-class loop with a greedy NMS that keeps one box
  per step (ssd.pytorch's ``Detect``), then the keep_top_k cut.
- C++ Caffe: not built on this machine, so not run.

Samples alternate between the implementations (each after each of the others); the table
gives the minimum and the median, ms, with load averages before and after. As in layers.py,
glibc is asked to keep freed memory (``--default-malloc``: not), so that fresh multi-megabyte
tensors do not fault their pages in anew on each call.

    PYTHONPATH=/tmp/cv4 python benchmarks/bench_fork_layers.py --threads 1 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_roi_pooling import PROTOTXT as ROI_LAYER  # noqa: E402
from bench_roi_pooling import random_rois  # noqa: E402
from bench_ssd import DETECTION_OUTPUT, NUM_CLASSES, layer_of, ssd300_priors  # noqa: E402
from layers import keep_freed_memory  # noqa: E402

from caffe.blob import Blob  # noqa: E402


def opencv():
    """cv2 when it can read Caffe prototxts (OpenCV 4.x), else None."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2 if hasattr(cv2.dnn, "readNetFromCaffe") else None


def cv_net(cv2, inputs: dict[str, tuple[int, ...]], layer: str, path: Path):
    """A dnn net of Input layers and one layer, or None when OpenCV refuses it."""
    text = "".join(
        f"layer {{ name: '{name}' type: 'Input' top: '{name}' input_param {{ shape {{ "
        + " ".join(f"dim: {d}" for d in shape) + " } } }\n" for name, shape in inputs.items())
    path.write_text(text + layer + "\n")
    try:
        return cv2.dnn.readNetFromCaffe(str(path))
    except cv2.error as err:
        print(f"OpenCV dnn cannot build the layer: {str(err).splitlines()[-1]}")
        return None


def cv_forward(net, inputs: dict[str, np.ndarray]):
    for name, value in inputs.items():
        net.setInput(value, name)
    return net.forward()


# --- ROIPooling ------------------------------------------------------------------------------
def torch_roi_pool(features: torch.Tensor, rois: torch.Tensor, scale: float) -> torch.Tensor:
    """Hand-written ROI max pooling: each ROI's crop (C round of the scaled box, clipped to
    the map) through adaptive_max_pool2d, one ROI at a time."""
    height, width = features.shape[2:]
    box = rois[:, 1:].mul(scale).add(0.5).floor().to(torch.int64).tolist()
    batch = rois[:, 0].to(torch.int64).tolist()
    out = []
    for b, (x1, y1, x2, y2) in zip(batch, box):
        x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
        x2, y2 = min(max(x2, x1), width - 1), min(max(y2, y1), height - 1)
        out.append(F.adaptive_max_pool2d(features[b:b + 1, :, y1:y2 + 1, x1:x2 + 1], (7, 7)))
    return torch.cat(out)


def roi_cases(args, rng, tmp: Path, cv2):
    h, w = 38, 50
    x = rng.standard_normal((1, 512, h, w)).astype(np.float32)
    rois = random_rois(300, (h * 16, w * 16), rng).astype(np.float32)
    layer = layer_of(ROI_LAYER.replace("name: 'roi_pool5'", "name: 'pool'"))
    features, roi_blob, top = Blob((1, 512, h, w)), Blob((300, 5)), Blob()
    features.data[...], roi_blob.data[...] = x, rois
    bottom = [features, roi_blob]
    layer.SetUp(bottom, [top])
    top.diff[...] = rng.standard_normal(top.shape)

    def caffepy_backward():
        layer.Backward([top], [True, False], bottom)

    xt = torch.from_numpy(x).requires_grad_()
    rt, dy = torch.from_numpy(rois), torch.from_numpy(top.diff.copy())

    def torch_train():
        xt.grad = None
        torch_roi_pool(xt, rt, 1 / 16).backward(dy)

    cases = {"caffepy forward": lambda: layer.Forward(bottom, [top]),
             "caffepy forward + backward": lambda: (layer.Forward(bottom, [top]),
                                                     caffepy_backward()),
             "PyTorch loop forward": lambda: torch_roi_pool(xt.detach(), rt, 1 / 16),
             "PyTorch loop forward + backward": torch_train}
    if cv2 is not None:
        net = cv_net(cv2, {"data": x.shape, "rois": rois.shape},
                     "layer { name: 'pool' type: 'ROIPooling' bottom: 'data' bottom: 'rois' "
                     "top: 'pool' roi_pooling_param { pooled_h: 7 pooled_w: 7 "
                     "spatial_scale: 0.0625 } }", tmp / "roi.prototxt")
        if net is not None:
            cases["OpenCV dnn forward"] = lambda: cv_forward(net, {"data": x, "rois": rois})
    layer.Forward(bottom, [top])
    ours = top.data.copy()
    notes = {"PyTorch loop forward": _diff(ours, torch_roi_pool(xt.detach(), rt, 1 / 16).numpy(),
                                           "caffepy")}
    if "OpenCV dnn forward" in cases:
        notes["OpenCV dnn forward"] = _diff(ours, cases["OpenCV dnn forward"](), "caffepy")
    return cases, notes


def _diff(ours: np.ndarray, theirs: np.ndarray, name: str) -> str:
    if ours.shape != theirs.shape:
        return f"shape {list(theirs.shape)} vs {name} {list(ours.shape)}"
    same = np.mean(ours == theirs)
    return f"{100 * same:.1f}% of outputs equal to {name}'s"


def _same_rows(ours: np.ndarray, theirs: np.ndarray) -> str:
    """How many detection rows the peer gives exactly as caffepy does, in any order."""
    mine = {tuple(row) for row in ours.reshape(-1, 7).tolist()}
    other = {tuple(row) for row in theirs.reshape(-1, 7).tolist()}
    return (f"{len(theirs.reshape(-1, 7))} detections, {len(mine & other)} rows equal to "
            f"caffepy's (order aside)")


# --- DetectionOutput -------------------------------------------------------------------------
def torch_detect(loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor,
                 variances: torch.Tensor) -> torch.Tensor:
    """Hand-written SSD post-processing (ssd.pytorch's Detect): decode, then per image and
    class the scores > 0.01, their best 400, greedy NMS at 0.45 one kept box per step; then
    the best 200 of the image."""
    centre = (priors[:, :2] + priors[:, 2:]) / 2
    size = priors[:, 2:] - priors[:, :2]
    rows = []
    for i in range(loc.shape[0]):
        c = loc[i, :, :2] * variances[:, :2] * size + centre
        s = torch.exp(loc[i, :, 2:] * variances[:, 2:]) * size
        boxes = torch.cat([c - s / 2, c + s / 2], 1)
        found = []
        for label in range(1, conf.shape[2]):
            scores = conf[i, :, label]
            mask = scores > 0.01
            cand, cand_scores = boxes[mask], scores[mask]
            order = cand_scores.argsort(descending=True)[:400]
            area = (cand[:, 2] - cand[:, 0]) * (cand[:, 3] - cand[:, 1])
            keep = []
            while order.numel():
                best = order[0]
                keep.append(best)
                rest = order[1:]
                lt = torch.maximum(cand[rest, :2], cand[best, :2])
                rb = torch.minimum(cand[rest, 2:], cand[best, 2:])
                inter = (rb - lt).clamp(min=0).prod(1)
                overlap = inter / (area[rest] + area[best] - inter)
                order = rest[overlap <= 0.45]
            if keep:
                k = torch.stack(keep)
                found.append(torch.cat([torch.full((len(k), 1), float(label)),
                                        cand_scores[k, None], cand[k]], 1))
        found = torch.cat(found)
        found = found[found[:, 1].argsort(descending=True)[:200]]
        rows.append(torch.cat([torch.full((len(found), 1), float(i)), found], 1))
    return torch.cat(rows)


def detection_cases(args, rng, tmp: Path, cv2):
    priors = ssd300_priors().astype(np.float32)
    p = priors.shape[2] // 4
    n = 8
    loc = rng.normal(0, 0.5, (n, p * 4)).astype(np.float32)
    logits = rng.normal(0, 1, (n, p, NUM_CLASSES))
    prob = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    conf = prob.reshape(n, -1)
    blobs = [Blob(loc.shape), Blob(conf.shape), Blob(priors.shape)]
    for blob, value in zip(blobs, (loc, conf, priors)):
        blob.data[...] = value
    layer, top = layer_of(DETECTION_OUTPUT), Blob()
    layer.SetUp(blobs, [top])
    lt, ct = torch.from_numpy(loc).view(n, p, 4), torch.from_numpy(prob)
    pt = torch.from_numpy(priors).view(2, p, 4)
    cases = {"caffepy forward": lambda: layer.Forward(blobs, [top]),
             "PyTorch loop forward": lambda: torch_detect(lt, ct, pt[0], pt[1])}
    layer.Forward(blobs, [top])
    ours = top.data.copy()
    notes = {"caffepy forward": f"{ours.shape[2]} detections",
             "PyTorch loop forward": f"{len(torch_detect(lt, ct, pt[0], pt[1]))} detections"}
    if cv2 is not None:
        text = DETECTION_OUTPUT.replace("name: 'detection_out'", "name: 'det'")
        net = cv_net(cv2, {"loc": loc.shape, "conf": conf.shape, "prior": priors.shape},
                     f"layer {{ {text} bottom: 'loc' bottom: 'conf' bottom: 'prior' "
                     "top: 'det' }", tmp / "det.prototxt")
        if net is not None:
            inputs = {"loc": loc, "conf": conf, "prior": priors}
            cases["OpenCV dnn forward"] = lambda: cv_forward(net, inputs)
            theirs = cv_forward(net, inputs)
            notes["OpenCV dnn forward"] = _same_rows(ours, theirs)
    return cases, notes


def sample(cases: dict, repeat: int) -> dict[str, list[float]]:
    """Interleaved wall-clock samples of each case, ms, after one warm-up call each."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=("roi", "detection"), default=None)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (fresh tensors fault their pages in)")
    args = parser.parse_args(argv)
    kept = False if args.default_malloc else keep_freed_memory()
    torch.set_num_threads(args.threads)
    cv2 = opencv()
    if cv2 is not None:
        cv2.setNumThreads(args.threads)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    groups = [("ROIPooling 300 ROIs 7x7, 1x512x38x50", roi_cases),
              ("DetectionOutput SSD300, batch 8", detection_cases)]
    if args.only:
        groups = [groups[0 if args.only == "roi" else 1]]
    results = []
    for title, make in groups:
        cases, notes = make(args, rng, tmp, cv2)
        for name, ms in sample(cases, args.repeat).items():
            results.append((title, name, min(ms), statistics.median(ms), notes.get(name, "")))
    load_after = os.getloadavg()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"{cpu}, {os.cpu_count()} CPUs, {args.threads} thread(s); torch {torch.__version__}, "
          f"OpenCV {cv2.__version__ if cv2 else 'none with a Caffe importer'}; float32; "
          f"{args.repeat} interleaved samples after a warm-up; "
          f"{'glibc keeps freed memory' if kept else 'default malloc'}; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print()
    print("| layer | implementation | min ms | median ms | note |")
    print("|---|---|---:|---:|---|")
    for title, name, low, mid, note in results:
        print(f"| {title} | {name} | {low:.1f} | {mid:.1f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
