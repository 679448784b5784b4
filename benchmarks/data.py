"""Throughput of the Data layer with transformation: images/s, 1 and 2 decoding threads.

    python benchmarks/data.py [--images 512] [--batches 8] [--threads 1 2] [--no-write]

Builds an LMDB of 256x256 JPEG-encoded Datums in a temporary directory (synthetic images with
natural-image-like smooth structure and noise, quality 95), then runs a TRAIN Data layer with
batch_size 256, crop_size 227, mirror and per-channel mean_value (the ImageNet recipe), and
measures forward() throughput after the prefetch queue has been drained, so every timed batch
had to be read, decoded and transformed. Results (with machine info) go to
benchmarks/results_data.json and the "Data" section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from caffe import common  # noqa: E402
from caffe.blob import Blob  # noqa: E402
from caffe.data import db as dbmod  # noqa: E402
from caffe.data import image as cvimage  # noqa: E402
from caffe.data import prefetch  # noqa: E402
from caffe.data.datum import encoded_datum  # noqa: E402
from caffe.layer import create_layer  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402

BATCH = 256
CROP = 227
SIZE = 256


def synthetic_image(rng: np.random.Generator) -> np.ndarray:
    """A 256x256x3 uint8 image: smooth blobs (upsampled 8x8 noise) plus fine noise."""
    coarse = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.float32)
    smooth = cvimage.resize(coarse, SIZE, SIZE)
    noisy = smooth + rng.normal(0, 12, size=smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def build_db(path: str, count: int) -> int:
    rng = np.random.default_rng(0)
    total = 0
    with dbmod.open_db(path, dbmod.NEW, "lmdb") as db:
        txn = db.new_transaction()
        for i in range(count):
            datum = encoded_datum(synthetic_image(rng), "jpg", label=i % 1000)
            total += len(datum.data)
            txn.put(dbmod.format_key(i, f"synthetic{i}.jpg"), datum.SerializeToString())
        txn.commit()
    return total // count


def measure(source: str, threads: int, batches: int) -> dict:
    prefetch.set_decode_threads(threads)
    common.set_random_seed(0)
    param = text_format.Parse(
        f"name: 'data' type: 'Data' top: 'data' top: 'label' "
        f"data_param {{ source: '{source}' backend: LMDB batch_size: {BATCH} }} "
        f"transform_param {{ crop_size: {CROP} mirror: true "
        f"mean_value: 104 mean_value: 117 mean_value: 123 }}", caffe_pb2.LayerParameter())
    param.phase = caffe_pb2.TRAIN
    layer = create_layer(param)
    top = [Blob(), Blob()]
    layer.SetUp([], top)
    # Drain what was prefetched during setup so every timed batch is produced while we wait.
    for _ in range(param.data_param.prefetch + 1):
        layer.Forward([], top)
    start = time.perf_counter()
    for _ in range(batches):
        layer.Forward([], top)
    elapsed = time.perf_counter() - start
    layer.stop_prefetch()
    prefetch.set_decode_threads(1)
    return {"decode_threads": threads, "batches": batches, "seconds": round(elapsed, 3),
            "images_per_s": round(batches * BATCH / elapsed, 1),
            "ms_per_batch": round(1000 * elapsed / batches, 1)}


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__,
            "decoder": "opencv " + cvimage.cv2.__version__ if cvimage.has_opencv() else "Pillow"}
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def write_readme_section(results: dict) -> None:
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    rows = "\n".join(f"| {r['decode_threads']} | {r['images_per_s']:.0f} | "
                     f"{r['ms_per_batch']:.0f} |" for r in results["results"])
    m = results["machine"]
    section = (
        "## Data\n\n"
        "`python benchmarks/data.py` — throughput of the `Data` layer with transformation "
        f"(TRAIN, batch {BATCH}, crop {CROP}, mirror, mean_value) reading "
        f"{results['config']['images']} {SIZE}x{SIZE} JPEG Datums (about "
        f"{results['config']['mean_jpeg_bytes'] // 1024} KiB each) from an LMDB, timed after "
        "the prefetch queue is drained. Decoding threads are set with "
        "`caffe.data.set_decode_threads(n)` or `CAFFE_DATA_THREADS`.\n\n"
        "| decode threads | images/s | ms/batch |\n|---:|---:|---:|\n"
        f"{rows}\n\n"
        f"Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, Python {m['python']}, "
        f"torch {m['torch']}, {m['decoder']}; 1-minute load average at the start "
        f"{m.get('load_average_1m', 'n/a')} (other work on the machine lowers the numbers). "
        "Raw results: `benchmarks/results_data.json`.\n")
    start = text.find("## Data\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("" if end < 0 else text[end:])
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-write", action="store_true",
                        help="print the results without updating results_data.json/README.md")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="caffepy-bench-data-")
    try:
        source = os.path.join(tmp, "jpeg_lmdb")
        t0 = time.perf_counter()
        mean_bytes = build_db(source, args.images)
        print(f"built {args.images} JPEG datums ({mean_bytes} bytes each on average) in "
              f"{time.perf_counter() - t0:.1f} s")
        info = machine_info()
        results = [measure(source, n, args.batches) for n in args.threads]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"benchmark": "Data layer images/s",
              "config": {"images": args.images, "image_size": SIZE, "encoding": "jpg",
                         "mean_jpeg_bytes": mean_bytes, "batch_size": BATCH, "crop_size": CROP,
                         "mirror": True, "phase": "TRAIN", "backend": "lmdb"},
              "machine": info, "results": results}
    print(json.dumps(report, indent=2))
    if not args.no_write:
        out = HERE / "results_data.json"
        tmp_out = out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp_out, out)
        write_readme_section(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
