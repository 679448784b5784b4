"""The detection example: synthetic shapes -> VOC XML -> ``caffe convert_annoset`` -> a tiny SSD
built with ``caffe.model_libs`` -> ``caffe train`` with detection mAP in its test phase -> the
detections drawn on test images.

    python examples/detection/run.py [--iters N] [--work DIR]

1. writes a synthetic dataset (``dataset.py``: coloured rectangles and circles on noise, their
   boxes known exactly) as PNGs, VOC XML annotations, list files and a label map;
2. converts both splits to AnnotatedDatum LMDBs with ``caffe convert_annoset``;
3. writes the train/test/deploy nets and the solver with SSD's ``ssd_pascal.py`` recipe
   (``ssd_pascal_style.py``) on a six-convolution body for 64 x 64 images: SSD's samplers
   and distortions, MultiBoxLoss, DetectionOutput + DetectionEvaluate, ``eval_type:
   "detection"``;
4. trains with ``caffe train``, which logs ``Test net output #0: detection_eval = <mAP>``;
5. runs the deploy net on test images and draws its detections (and the true boxes) into
   ``detections.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)  # run from a source checkout too
sys.path.insert(0, HERE)

from dataset import CLASSES, write_dataset  # noqa: E402
from ssd_pascal_style import SSDConfig, write_all  # noqa: E402

SIZE = 64  # image side, pixels
MAP_LINE = re.compile(r"Iteration (\d+), Testing net.*?detection_eval = ([0-9.eE+-]+)", re.S)


def caffe_cli(args: list[str], cwd: str, log_path: str | None = None,
              in_process: bool = False) -> str:
    """Run ``caffe <args>`` in ``cwd`` as a user would; return (and optionally save) its log.
    ``in_process`` calls the same command-line entry point in this process instead (the test
    does, to skip interpreter start-ups), capturing the glog-style log of the caffe logger."""
    print("$ caffe " + " ".join(args), flush=True)
    if not in_process:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # The log goes to a file as it is written (follow it with tail -f), or to a temporary
        # one when it is not to be kept.
        with (open(log_path, "w+") if log_path else tempfile.TemporaryFile("w+")) as f:
            returncode = subprocess.run([sys.executable, "-m", "caffe.tools.cli", *args],
                                        cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                        text=True).returncode
            f.seek(0)
            output = f.read()
    else:
        output, returncode = _cli_in_process(args, cwd)
        if log_path:
            with open(log_path, "w") as f:
                f.write(output)
    if returncode:
        raise RuntimeError(f"caffe {args[0]} failed:\n{output[-4000:]}")
    return output


def _cli_in_process(args: list[str], cwd: str) -> tuple[str, int]:
    import io
    import logging

    from caffe.log import GlogFormatter
    from caffe.tools import cli

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(GlogFormatter())
    logger = logging.getLogger("caffe")
    # The CLI configures glog's handlers on the caffe logger; put the caller's back after.
    saved = (list(logger.handlers), logger.level, logger.propagate)
    previous = os.getcwd()
    try:
        os.chdir(cwd)
        logger.addHandler(handler)
        returncode = cli.main(list(args))
    finally:
        os.chdir(previous)
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
    return stream.getvalue(), int(returncode or 0)


def tiny_ssd_config(num_test: int, max_iter: int, batch_size: int, test_interval: int,
                    base_lr: float) -> SSDConfig:
    """SSD's recipe on the tiny body: three prior layers (8, 4 and 2 cells) for the 12-36
    pixel shapes, batch norm in every new layer, CPU solver."""
    test_batch_size = 10 if num_test % 10 == 0 else math.gcd(num_test, 8) or 1
    # Step down the rate at 2/3 and 8/9 of training, as SSD's 80k/100k of 120k.
    steps = sorted({max(1, max_iter * 2 // 3), max(1, max_iter * 8 // 9)})
    return SSDConfig(
        body="tiny", train_data="train_lmdb", test_data="test_lmdb",
        label_map_file="data/labelmap.prototxt", name_size_file=None,
        resize_height=SIZE, resize_width=SIZE, mean_value=[127, 127, 127], expand_ratio=2.0,
        use_batchnorm=True, num_classes=1 + len(CLASSES), model_name="tiny_ssd",
        save_dir="model", mbox_source_layers=["conv4", "conv5", "conv6"],
        min_sizes=[12, 24, 40], max_sizes=[24, 40, 60], steps=[8, 16, 32],
        aspect_ratios=[[2], [2], [2]], normalizations=[], gpus="", batch_size=batch_size,
        accum_batch_size=batch_size, base_lr=base_lr, max_iter=max_iter, stepvalue=steps,
        snapshot=max_iter, display=max(1, max_iter // 20), num_test_image=num_test,
        test_batch_size=test_batch_size, test_interval=test_interval, ap_version="11point",
        keep_top_k=50, confidence_threshold=0.05)


def detect(work: str, cfg: SSDConfig, weights: str, count: int,
           threshold: float = 0.3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The deploy net's detections on the first ``count`` test images: the images (BGR uint8)
    and, per image, rows [label, score, xmin, ymin, xmax, ymax] in pixels above
    ``threshold``."""
    import caffe
    from caffe.data.image import imread

    net = caffe.Net(os.path.join(work, cfg.save_dir, "deploy.prototxt"), weights, caffe.TEST)
    with open(os.path.join(work, "data", "test.txt")) as f:
        names = [line.split()[0] for line in f][:count]
    images = [imread(os.path.join(work, "data", name)) for name in names]
    batch = np.stack([im.astype(np.float32).transpose(2, 0, 1) for im in images])
    batch -= np.asarray(cfg.mean_value, dtype=np.float32)[:, None, None]
    net.blobs["data"].reshape(*batch.shape)
    out = net.forward(data=batch)["detection_out"][0, 0]
    size = np.array([cfg.resize_width, cfg.resize_height] * 2, dtype=np.float32)
    found = []
    for index in range(len(images)):
        rows = out[(out[:, 0] == index) & (out[:, 2] >= threshold)]
        # An untrained net may decode boxes far outside (or at inf); keep them drawable.
        corners = np.clip(np.nan_to_num(rows[:, 3:7], posinf=1.0, neginf=0.0), 0.0, 1.0)
        found.append(np.concatenate([rows[:, 1:3], corners * size], axis=1))
    return images, found


def draw(images: list[np.ndarray], found: list[np.ndarray], truth: list[list[tuple]],
         path: str, zoom: int = 3) -> None:
    """Tile the images (zoomed), true boxes in white, detections in their class colour with
    name and score; write a PNG."""
    import cv2

    colours = {1: (0, 200, 255), 2: (255, 120, 0)}  # BGR: rectangle orange, circle blue
    tiles = []
    for image, rows, objects in zip(images, found, truth):
        tile = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        for _, *box in objects:
            x0, y0, x1, y1 = (int(v * zoom) for v in box)
            # Just outside the shape, so that it shows on light shapes too.
            cv2.rectangle(tile, (x0 - 1, y0 - 1), (x1, y1), (255, 255, 255), 1)
        for label, score, *box in rows:
            x0, y0, x1, y1 = (int(round(v * zoom)) for v in box)
            colour = colours.get(int(label), (0, 255, 0))
            cv2.rectangle(tile, (x0, y0), (x1, y1), colour, 2)
            cv2.putText(tile, f"{CLASSES[int(label) - 1]} {score:.2f}", (x0 + 2, max(y0 - 4, 10)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
        tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0))))
    columns = min(4, len(tiles))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    cv2.imwrite(path, np.concatenate(rows, axis=0))


def read_truth(work: str, count: int) -> list[list[tuple]]:
    """The true (name, xmin, ymin, xmax, ymax) of the first ``count`` test images."""
    truth = []
    with open(os.path.join(work, "data", "test.txt")) as f:
        xmls = [line.split()[1] for line in f][:count]
    for xml in xmls:
        text = open(os.path.join(work, "data", xml)).read()
        objects = re.findall(r"<name>(\w+)</name>.*?<xmin>(\d+)</xmin>\s*<ymin>(\d+)</ymin>\s*"
                             r"<xmax>(\d+)</xmax>\s*<ymax>(\d+)</ymax>", text, re.S)
        truth.append([(name, *map(int, box)) for name, *box in objects])
    return truth


def run(work: str, num_train: int = 400, num_test: int = 100, max_iter: int = 6000,
        batch_size: int = 8, test_interval: int | None = None, base_lr: float = 0.01,
        num_draw: int = 8, seed: int = 1, in_process: bool = False) -> dict:
    """The whole example in ``work``; returns the test-phase mAPs by iteration, the final
    mAP, the PNG path and the seconds taken."""
    start = time.time()
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    paths = write_dataset(data, num_train, num_test, size=SIZE, seed=seed)
    for split in ("train", "test"):
        caffe_cli(["convert_annoset", "-anno_type", "detection", "-label_map_file",
                   paths["label_map"], "-check_label", data + os.sep, paths[split],
                   os.path.join(work, f"{split}_lmdb")], cwd=work, in_process=in_process)
    cfg = tiny_ssd_config(num_test, max_iter, batch_size, test_interval or max_iter, base_lr)
    files = write_all(cfg, work)
    log_path = os.path.join(work, "train.log")
    log = caffe_cli(["train", "-solver", os.path.relpath(files["solver"], work)], cwd=work,
                    log_path=log_path, in_process=in_process)
    maps = {int(it): float(value) for it, value in MAP_LINE.findall(log)}
    if not maps:
        raise RuntimeError(f"no 'detection_eval' test output in {log_path}")
    weights = os.path.join(work, cfg.save_dir, f"{cfg.model_name}_iter_{max_iter}.caffemodel")
    images, found = detect(work, cfg, weights, num_draw)
    png = os.path.join(work, "detections.png")
    draw(images, found, read_truth(work, num_draw), png)
    return {"maps": maps, "map": maps[max(maps)], "png": png, "log": log_path,
            "seconds": time.time() - start, "detections": sum(len(f) for f in found)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=os.path.join(HERE, "work"))
    parser.add_argument("--train", type=int, default=400, help="training images")
    parser.add_argument("--test", type=int, default=100, help="test images")
    parser.add_argument("--iters", type=int, default=6000, help="training iterations")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--test-interval", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    result = run(args.work, args.train, args.test, args.iters, args.batch, args.test_interval,
                 args.lr)
    print("\n  iter   test mAP (11point)")
    for it, value in sorted(result["maps"].items()):
        print(f"  {it:5d}   {value:.4f}")
    print(f"\n{result['detections']} detections drawn in {result['png']}; log in "
          f"{result['log']}; done in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
