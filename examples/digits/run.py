"""The main example: scikit-learn's digits -> LMDB -> ``caffe train`` -> ``caffe test`` -> classify.

    python examples/digits/run.py

1. writes train/test LMDBs of Datums and the mean image (``prepare.py``; the digits ship inside
   scikit-learn, nothing is downloaded);
2. trains LeNet with Caffe's command line and a solver file, logging as C++ Caffe does;
3. reads the log back with ``parse_log`` and prints the falling loss and the test accuracy;
4. scores the final snapshot with ``caffe test``;
5. classifies a few test digits with ``caffe.Classifier`` and checks them against a manual
   ``caffe.io.Transformer`` + ``net.forward``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)  # run from a source checkout too

import caffe  # noqa: E402
from caffe.data import db as dbmod  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402
from caffe.tools.parse_log import parse_log  # noqa: E402

sys.path.insert(0, HERE)
from prepare import prepare  # noqa: E402

SOLVER = "examples/digits/lenet_solver.prototxt"
TRAIN_TEST = "examples/digits/lenet_train_test.prototxt"
DEPLOY = "examples/digits/lenet_deploy.prototxt"
WEIGHTS = "examples/digits/lenet_iter_600.caffemodel"
LOG = "examples/digits/train.log"


def caffe_cli(*args: str, log_path: str | None = None) -> str:
    """Run ``caffe <args>`` as a user would; return (and optionally save) its log."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "caffe.tools.cli", *args]
    print("$ caffe " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if log_path:
        with open(os.path.join(ROOT, log_path), "w") as f:
            f.write(output)
    if proc.returncode:
        sys.exit(f"caffe {args[0]} failed:\n{output}")
    return output


def test_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` test digits as H x W x 1 floats in [0, 1], and their labels."""
    images, labels = [], []
    with dbmod.open_db(os.path.join(HERE, "digits_test_lmdb"), "r", "lmdb") as db:
        for _, value in db.new_cursor():
            if len(images) == count:
                break
            datum = caffe_pb2.Datum.FromString(value)
            images.append(caffe.io.datum_to_array(datum).transpose(1, 2, 0) / 255.0)
            labels.append(datum.label)
    return np.asarray(images, dtype=np.float32), np.asarray(labels)


def main() -> int:
    start = time.time()
    os.chdir(ROOT)
    prepare(HERE)

    caffe_cli("train", "-solver", SOLVER, log_path=LOG)
    train_rows, test_rows = parse_log(LOG)
    print("\n  iter   train loss")
    for row in train_rows:
        print(f"  {int(row['NumIters']):4d}   {row['loss']:.4f}")
    print("\n  iter   test accuracy   test loss")
    for row in test_rows:
        print(f"  {int(row['NumIters']):4d}   {row['accuracy']:.4f}          {row['loss']:.4f}")

    out = caffe_cli("test", "-model", TRAIN_TEST, "-weights", WEIGHTS, "-iterations", "4")
    accuracy = float(re.findall(r"\] accuracy = ([0-9.eE+-]+)", out)[-1])
    print(f"\ncaffe test: accuracy = {accuracy:.4f} over the 360 held-out digits")

    mean = caffe.io.blobproto_to_array(caffe_pb2.BlobProto.FromString(
        open(os.path.join(HERE, "digits_mean.binaryproto"), "rb").read()))[0]
    classifier = caffe.Classifier(DEPLOY, WEIGHTS, image_dims=(8, 8), mean=mean,
                                  raw_scale=255, input_scale=0.00390625)
    images, labels = test_images(8)
    probs = classifier.predict(list(images), oversample=False)

    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", mean)
    transformer.set_input_scale("data", 0.00390625)
    manual = np.stack([net.forward(data=transformer.preprocess("data", im)[None])["prob"][0].copy()
                       for im in images])
    np.testing.assert_allclose(probs, manual, rtol=1e-4, atol=1e-6)
    print("\nclassified 8 test digits (Classifier == Transformer + net.forward):")
    print("  true:      " + " ".join(str(v) for v in labels))
    print("  predicted: " + " ".join(str(v) for v in probs.argmax(axis=1)))
    print(f"\ndone in {time.time() - start:.0f} s; log in {LOG}")
    return 0 if accuracy >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
