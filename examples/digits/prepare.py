"""Prepare the digits example's data: scikit-learn's 8x8 handwritten digits as Caffe LMDBs.

    python examples/digits/prepare.py [OUTPUT_DIR]     (default: examples/digits)

Loads the 1,797 digits that ship inside scikit-learn (no download), splits them with a fixed
seed into 1,437 training and 360 test images, and writes, under OUTPUT_DIR:

    digits_train_lmdb/       raw Datums: 1 x 8 x 8 uint8 grey (0..16 scaled to 0..255), label 0-9
    digits_test_lmdb/        keys %08d_digit<index>, as convert_imageset writes them
    digits_mean.binaryproto  the training set's mean image (what compute_image_mean computes)

Then train from the repository root, as with Caffe's examples:

    caffe train -solver examples/digits/lenet_solver.prototxt
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np

try:
    import caffe  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from caffe.data import db as dbmod  # noqa: E402
from caffe.data.datum import image_to_datum  # noqa: E402
from caffe.tools.compute_image_mean import (  # noqa: E402
    compute_mean,
    mean_blobproto,
    write_binaryproto,
)

TRAIN_SIZE = 1437
SEED = 0


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images N x 1 x 8 x 8 uint8, labels N) from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return pixels[:, None], digits.target.astype(np.int64)


def write_split(path: str, images: np.ndarray, labels: np.ndarray, indices) -> None:
    if os.path.exists(path):
        shutil.rmtree(path)
    with dbmod.AtomicNewDB(path, dbmod.LMDB) as db:
        txn = db.new_transaction()
        for i, index in enumerate(indices):
            datum = image_to_datum(images[index], int(labels[index]))
            txn.put(dbmod.format_key(i, f"digit{index}"), datum.SerializeToString())
        txn.commit()


def prepare(output_dir: str) -> dict[str, str]:
    os.makedirs(output_dir, exist_ok=True)
    images, labels = load_digits()
    order = np.random.default_rng(SEED).permutation(len(images))
    paths = {"train": os.path.join(output_dir, "digits_train_lmdb"),
             "test": os.path.join(output_dir, "digits_test_lmdb"),
             "mean": os.path.join(output_dir, "digits_mean.binaryproto")}
    write_split(paths["train"], images, labels, order[:TRAIN_SIZE])
    write_split(paths["test"], images, labels, order[TRAIN_SIZE:])
    mean, _ = compute_mean(paths["train"], "lmdb")
    write_binaryproto(mean_blobproto(mean), paths["mean"])
    print(f"wrote {TRAIN_SIZE} training and {len(images) - TRAIN_SIZE} test digits, and the "
          f"mean image, under {output_dir}")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    prepare(args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
