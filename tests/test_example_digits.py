"""examples/digits: prepare.py writes the LMDBs and mean; the LeNet prototxt reads them."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from caffe.data import db as dbmod
from caffe.data.datum import datum_to_image, parse_datum
from caffe.data.transformer import load_mean_file
from caffe.proto import caffe_pb2

pytest.importorskip("sklearn")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("digits_prepare", EXAMPLE / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("digits")
    return module, module.prepare(str(out)), out


def test_prepare_writes_train_test_and_mean(prepared):
    module, paths, _ = prepared
    images, labels = module.load_digits()
    seen = {}
    for split, expected in (("train", 1437), ("test", 360)):
        with dbmod.open_db(paths[split]) as db:
            records = list(db.new_cursor())
        assert len(records) == expected
        for key, value in records:
            datum = parse_datum(value)
            index = int(key.split("_digit")[1])
            assert (datum.channels, datum.height, datum.width) == (1, 8, 8)
            np.testing.assert_array_equal(datum_to_image(datum), images[index])
            assert datum.label == labels[index]
            seen[index] = split
    assert len(seen) == len(images)  # a partition of the whole set
    train = np.stack([images[i] for i, s in sorted(seen.items()) if s == "train"])
    mean = load_mean_file(paths["mean"])
    # The float32 sum of 1437 integer pixels (below 2**24) is exact and the division rounds
    # once: relative error u, for means that are all >= 0.
    np.testing.assert_allclose(mean, train.astype(np.float64).mean(0), rtol=1e-5)


def test_lenet_prototxt_reads_the_prepared_data(prepared):
    from caffe.net import Net

    _, paths, out = prepared
    text = (EXAMPLE / "lenet_train_test.prototxt").read_text().replace("examples/digits/",
                                                                       f"{out}/")
    proto = out / "net.prototxt"
    proto.write_text(text)
    train = Net(str(proto), caffe_pb2.TRAIN)
    test = Net(str(proto), caffe_pb2.TEST)
    assert train.blobs["data"].data.shape == (64, 1, 8, 8)
    assert test.blobs["data"].data.shape == (90, 1, 8, 8)
    assert "accuracy" in test.blobs and "accuracy" not in train.blobs
    test.forward()
    assert 0.0 <= float(test.blobs["accuracy"].data) <= 1.0
    solver = (EXAMPLE / "lenet_solver.prototxt").read_text()
    from google.protobuf import text_format

    param = text_format.Parse(solver, caffe_pb2.SolverParameter())
    assert param.net == "examples/digits/lenet_train_test.prototxt"
    assert list(param.test_iter) == [4]  # 4 x 90 = the 360 test digits


def test_main_example_trains_to_95_percent_and_classifies():
    """The README's first command: train with `caffe train`, score with `caffe test`, classify."""
    import re
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(EXAMPLE / "run.py")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    accuracy = float(re.search(r"caffe test: accuracy = ([0-9.]+)", proc.stdout).group(1))
    assert accuracy >= 0.95
    true, predicted = re.search(r"true:\s+([0-9 ]+)\n\s+predicted:\s+([0-9 ]+)",
                                proc.stdout).groups()
    hits = sum(a == b for a, b in zip(true.split(), predicted.split()))
    assert hits >= 6
