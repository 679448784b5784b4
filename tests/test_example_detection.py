"""examples/detection: the whole SSD path, shortened (8 training images, 2 iterations).

Synthetic VOC data -> ``caffe convert_annoset`` -> AnnotatedData LMDBs -> the ssd_pascal.py-style
nets on the tiny body -> ``caffe train`` with a detection test phase -> detections drawn. The
full run's mAP is stated in examples/detection/README.md; here the pipeline must run end to end
and produce a number that is an mAP, and the PNG."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "detection"
NEEDED = {  # the SSD pieces the example stands on, by module
    "caffe.layers.annotated_data": "the AnnotatedData layer",
    "caffe.tools.convert_annoset": "caffe convert_annoset",
    "caffe.layers.detection_evaluate": "the DetectionEvaluate layer",
    "caffe.detection": "the solver's detection test phase (caffe.detection)",
}
missing = [what for module, what in NEEDED.items() if importlib.util.find_spec(module) is None]
if missing:
    pytest.skip(f"the detection example needs {', '.join(missing)}", allow_module_level=True)
cv2 = pytest.importorskip("cv2")
pytest.importorskip("lmdb")

import caffe  # noqa: E402
from caffe.data import db as dbmod  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402

NUM_TRAIN, NUM_TEST, NUM_DRAW = 8, 4, 4


def example(name: str):
    """A module of examples/detection, imported as the example imports its siblings."""
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("detection")
    result = example("run").run(str(work), num_train=NUM_TRAIN, num_test=NUM_TEST, max_iter=2,
                                batch_size=4, test_interval=2, num_draw=NUM_DRAW,
                                in_process=True)
    return work, result


def test_pipeline_reports_a_map_and_draws_the_png(pipeline):
    work, result = pipeline
    log = Path(result["log"]).read_text()
    assert "Test net output #0: detection_eval = " in log
    assert sorted(result["maps"]) == [2]  # tested at the end (test_interval = max_iter)
    assert isinstance(result["map"], float) and 0.0 <= result["map"] <= 1.0
    png = cv2.imread(result["png"])
    # Four 64 x 64 tiles zoomed 3x with a 2-pixel border, in one row.
    assert png.shape == (4 + 3 * 64, NUM_DRAW * (4 + 3 * 64), 3)
    assert (work / "model" / "tiny_ssd_iter_2.caffemodel").is_file()


def test_convert_annoset_wrote_every_image_and_box(pipeline):
    work, _ = pipeline
    dataset = example("dataset")
    for split, count in (("train", NUM_TRAIN), ("test", NUM_TEST)):
        with dbmod.open_db(str(work / f"{split}_lmdb")) as db:
            records = [caffe_pb2.AnnotatedDatum.FromString(v) for _, v in db.new_cursor()]
        assert len(records) == count
        lines = (work / "data" / f"{split}.txt").read_text().split("\n")
        for record, line in zip(records, lines):
            xml = (work / "data" / line.split()[1]).read_text()
            boxes = sorted((g.group_label, round(b.bbox.xmin * 64), round(b.bbox.ymax * 64))
                           for g in record.annotation_group for b in g.annotation)
            names = [n.split("</name>")[0] for n in xml.split("<name>")[1:]]
            xmins = [int(v.split("</xmin>")[0]) for v in xml.split("<xmin>")[1:]]
            ymaxs = [int(v.split("</ymax>")[0]) for v in xml.split("<ymax>")[1:]]
            assert boxes == sorted((dataset.CLASSES.index(n) + 1, x, y)
                                   for n, x, y in zip(names, xmins, ymaxs))
            assert (record.datum.height, record.datum.width) == (64, 64)


def test_ssd_pascal_style_nets_build_and_train(pipeline, monkeypatch):
    """The recipe's tiny train/test/deploy nets build in caffepy, a solver step lowers nothing
    to NaN, and the deploy net emits DetectionOutput rows. (The recipe's VGG16 SSD300 nets are
    the fork's files, which tests/test_net_spec_ssd.py compares with and
    tests/test_fork_models_detection.py runs.)"""
    work, _ = pipeline
    recipe, run = example("ssd_pascal_style"), example("run")
    cfg = run.tiny_ssd_config(NUM_TEST, max_iter=1, batch_size=2, test_interval=1, base_lr=0.01)
    cfg.save_dir = "recipe"
    files = recipe.write_all(cfg, str(work))
    monkeypatch.chdir(work)
    caffe.set_random_seed(3)
    solver = caffe.get_solver(files["solver"])
    before = solver.net.params["conv1"][0].data.copy()
    solver.step(1)
    loss = float(solver.net.blobs["mbox_loss"].data)
    assert math.isfinite(loss) and loss > 0
    assert not np.array_equal(solver.net.params["conv1"][0].data, before)
    test = solver.test_nets[0]
    assert test.blobs["detection_eval"].data.shape[-1] == 5  # SSD's (item, label, score, tp, fp)
    deploy = caffe.Net(files["deploy"], caffe.TEST)
    out = deploy.forward(data=np.zeros((1, 3, 64, 64), np.float32))["detection_out"]
    assert out.shape[:2] == (1, 1) and out.shape[3] == 7
