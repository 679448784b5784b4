"""DetectionEvaluate records, SSD's AP / mAP (caffe.detection) and the solver's detection test."""

import logging
import textwrap

import numpy as np
import pytest

from caffe.blob import Blob
from caffe.detection import DetectionAccumulator, compute_ap, mean_ap
from caffe.errors import CaffeError, LayerError, SolverError
from caffe.layer import create_layer
from caffe.proto import caffe_pb2
from caffe.protoio import parse_text
from caffe.solver import get_solver

from solver_case import write_solver_prototxt

# AP sums at most 12 float32 terms of size <= 1, each step rounding by <= 2^-24 relative:
# |error| < 12 * 6e-8 < 1e-6.
AP_ATOL = 1e-6

A = [0.0, 0.0, 0.5, 0.5]
B = [0.5, 0.5, 1.0, 1.0]
A_SHIFTED = [0.05, 0.0, 0.55, 0.5]  # IoU with A: 0.225 / 0.275 = 0.818
FAR = [0.6, 0.0, 0.9, 0.3]


def evaluate(dets, gts, *, num_classes=3, sizes=None, tmp_path=None, forwards=1, **param):
    """The top of a DetectionEvaluate layer over detection rows (image, label, score, box)
    and ground-truth rows (image, label, box, difficult), as (R, 5) rows."""
    layer_param = caffe_pb2.LayerParameter(name="eval", type="DetectionEvaluate",
                                           bottom=["det", "gt"], top=["out"])
    p = layer_param.detection_evaluate_param
    p.num_classes = num_classes
    for key, value in param.items():
        setattr(p, key, value)
    if sizes is not None:
        path = tmp_path / "name_size.txt"
        path.write_text("".join(f"img{i} {h} {w}\n" for i, (h, w) in enumerate(sizes)))
        p.name_size_file = str(path)
    det = Blob()
    det.reshape([1, 1, len(dets), 7])
    det.data[...] = np.asarray([[i, c, s, *box] for i, c, s, box in dets]).reshape(det.shape)
    gt = Blob()
    gt.reshape([1, 1, len(gts), 8])
    gt.data[...] = np.asarray([[i, c, 0, *box, d] for i, c, box, d in gts]).reshape(gt.shape)
    top = Blob()
    layer = create_layer(layer_param)
    layer.SetUp([det, gt], [top])
    for _ in range(forwards):
        layer.Forward([det, gt], [top])
    assert top.shape[:2] == (1, 1) and top.shape[3] == 5
    return top.data.reshape(-1, 5).copy()


DETS = [(0, 1, 0.6, FAR), (0, 1, 0.8, A_SHIFTED), (0, 2, 0.5, A), (0, 1, 0.9, A),
        (0, 1, 0.7, B), (1, 1, 0.4, A)]
GTS = [(0, 1, A, 0), (0, 1, B, 1)]


def test_records_true_and_false_positives_by_descending_score():
    out = evaluate(DETS, GTS, evaluate_difficult_gt=False)
    np.testing.assert_array_equal(out, np.asarray([
        [-1, 1, 1, -1, -1],      # class 1: one non-difficult box
        [-1, 2, 0, -1, -1],      # class 2: none
        [0, 1, 0.9, 1, 0],       # takes A
        [0, 1, 0.8, 0, 1],       # A again: a duplicate
        [0, 1, 0.7, 0, 0],       # on difficult B, not evaluated: neither
        [0, 1, 0.6, 0, 1],       # overlaps nothing
        [0, 2, 0.5, 0, 1],       # no class-2 box in image 0
        [1, 1, 0.4, 0, 1],       # image 1 has no ground truth
    ], dtype=np.float32))


def test_difficult_boxes_evaluated_and_overlap_threshold():
    out = evaluate(DETS, GTS, evaluate_difficult_gt=True)
    assert out[0].tolist() == [-1, 1, 2, -1, -1]
    assert out[4].tolist() == pytest.approx([0, 1, 0.7, 1, 0])  # B now counts
    # Alone, the shifted box (IoU 0.818) is a hit at 0.8 and a miss at 0.85.
    for threshold, expected in ((0.8, [1, 0]), (0.85, [0, 1])):
        out = evaluate([(0, 1, 0.8, A_SHIFTED)], GTS, overlap_threshold=threshold)
        assert out[2, 3:].tolist() == expected


def test_no_detections_gives_only_the_count_rows():
    # DetectionOutput's placeholder when it finds nothing: [image, -1, -1, ...] per image
    out = evaluate([(0, -1, -1, [-1] * 4)], GTS + [(0, 2, B, 0)])
    np.testing.assert_array_equal(out, [[-1, 1, 2, -1, -1], [-1, 2, 1, -1, -1]])


def test_name_size_file_compares_pixel_boxes_with_the_plus_one_convention(tmp_path):
    # 10x10 image: ground truth [0, 0, 5, 5] (6*6 = 36 px), detection [0, 0, 4, 5] (5*6 = 30
    # px) overlap 30 / 36 = 0.833; normalized the overlap is 0.2 / 0.25 = 0.8.
    det, gts = [(0, 1, 0.9, [0, 0, 0.4, 0.5])], [(0, 1, A, 0)]
    assert evaluate(det, gts, overlap_threshold=0.82)[2, 3] == 0
    assert evaluate(det, gts, overlap_threshold=0.82, sizes=[(10, 10)], tmp_path=tmp_path
                    )[2, 3] == 1
    # The images of the file are taken in turn: the second forward evaluates on 1000x1000,
    # where the overlap is (400+1)(500+1) / (501*501) = 0.8004.
    assert evaluate(det, gts, overlap_threshold=0.82, sizes=[(10, 10), (1000, 1000)],
                    tmp_path=tmp_path, forwards=2)[2, 3] == 0


def test_layer_checks_shapes_and_background():
    with pytest.raises(LayerError, match="Found background label in the dataset"):
        evaluate(DETS, [(0, 0, A, 0)])
    with pytest.raises(LayerError, match="Must provide num_classes"):
        layer = create_layer(parse_text("name: 'e' type: 'DetectionEvaluate' bottom: 'a' "
                                        "bottom: 'b' top: 'c'", caffe_pb2.LayerParameter()))
        layer.SetUp([Blob([1, 1, 1, 7]), Blob([1, 1, 1, 8])], [Blob()])


# tp/fp by descending score, with num_pos; AP values worked out by hand.
# Case 1: hit, miss, hit, miss, miss with 3 boxes: precision 1, 1/2, 2/3, 1/2, 2/5 at recall
#   1/3, 1/3, 2/3, 2/3, 2/3. 11point: t = 0..0.3 -> 1, t = 0.4..0.6 -> 2/3, t >= 0.7 -> 0:
#   (4 + 2) / 11. Integral: 1 * 1/3 + 2/3 * 1/3 = 5/9; MaxIntegral the same (envelope 1, 2/3).
# Case 2: miss, hit, hit with 2 boxes: precision 0, 1/2, 2/3 at recall 0, 1/2, 1.
#   Integral: 1/2 * 1/2 + 2/3 * 1/2 = 7/12; MaxIntegral: envelope 2/3 everywhere -> 2/3;
#   11point: 2/3 at every t -> 2/3.
# Case 3: seven hits of ten boxes: recall 0.7 in float32 (0.69999999) is below 0.7, so
#   11point takes 7 points, not 8: 7/11.
AP_CASES = [
    ([1, 0, 1, 0, 0], 3, {"11point": 6 / 11, "Integral": 5 / 9, "MaxIntegral": 5 / 9}),
    ([0, 1, 1], 2, {"11point": 2 / 3, "Integral": 7 / 12, "MaxIntegral": 2 / 3}),
    ([1] * 7, 10, {"11point": 7 / 11, "Integral": 0.7, "MaxIntegral": 0.7}),
]


@pytest.mark.parametrize("ap_version", ["11point", "Integral", "MaxIntegral"])
@pytest.mark.parametrize("tp, num_pos, expected", AP_CASES)
def test_compute_ap_on_hand_computed_cases(tp, num_pos, expected, ap_version):
    tp = np.asarray(tp)
    assert compute_ap(tp, 1 - tp, num_pos, ap_version) == pytest.approx(
        expected[ap_version], abs=AP_ATOL)
    # the same detections shuffled, with their scores: sorted back before the curve
    scores = np.linspace(1, 0.1, tp.size)
    perm = np.random.default_rng(0).permutation(tp.size)
    assert compute_ap(tp[perm], 1 - tp[perm], num_pos, ap_version, scores=scores[perm]) == \
        compute_ap(tp, 1 - tp, num_pos, ap_version)


def test_compute_ap_edge_cases():
    assert compute_ap([], [], 3) == 0.0
    assert compute_ap([0, 0], [1, 1], 0) == 0.0  # no ground truth
    with pytest.raises(CaffeError, match="Unknown ap_version"):
        compute_ap([1], [0], 1, "VOC")
    with pytest.raises(CaffeError, match="2 true positives for 1"):
        compute_ap([1, 1], [0, 0], 1)


def records(count_rows, det_rows):
    return np.asarray([[-1, c, n, -1, -1] for c, n in count_rows]
                      + [[0, c, s, t, 1 - t] for c, s, t in det_rows], dtype=np.float32)


def test_mean_ap_over_iterations_and_classes(caplog):
    # class 1 over two batches: hit 0.9, miss 0.3, hit 0.2 of 2 boxes (precision 1, 1/2, 2/3
    # at recall 1/2, 1/2, 1: Integral 1/2 + 2/3 * 1/2 = 5/6); class 2: a box, never detected
    # (skipped, counted); class 3: no box, one false detection (AP 0). A tp = fp = 0 row
    # (matched a difficult box) is left out. mAP = (5/6 + 0) / 3.
    first = records([(1, 1), (2, 1), (3, 0)], [(1, 0.9, 1), (1, 0.3, 0), (3, 0.5, 0)])
    second = np.concatenate([records([(1, 1), (2, 0), (3, 0)], [(1, 0.2, 1)]),
                             [[0, 1, 0.95, 0, 0]]])
    with caplog.at_level(logging.WARNING, logger="caffe"):
        value = mean_ap([first, second[None, None]], "Integral")
    assert value == pytest.approx((5 / 6) / 3, abs=AP_ATOL)
    assert "Missing true_pos for label: 2" in caplog.text
    acc = DetectionAccumulator()
    acc.add(first)
    acc.add(second)
    assert acc.num_pos == {1: 2, 2: 1, 3: 0}
    aps = acc.average_precisions("11point")
    # 11point: t <= 0.5 -> 1, t >= 0.6 -> 2/3: (6 + 5 * 2/3) / 11
    assert aps[1] == pytest.approx((6 + 10 / 3) / 11, abs=AP_ATOL) and aps[3] == 0
    assert 2 not in aps


DETECTIONS_LAYER = """
import numpy as np
import caffe

A, B, FAR = [0, 0, .5, .5], [.5, .5, 1, 1], [.6, 0, .9, .3]
# Per test batch: detections (image, label, score, box) and ground truth (label, box).
BATCHES = [([(0, 1, .9, A), (0, 1, .3, FAR)], [(1, A), (2, B)]),
           ([(0, 1, .2, B)], [(1, B)])]

class Detections(caffe.Layer):
    def setup(self, bottom, top):
        self.batch = 0
    def reshape(self, bottom, top):
        dets, gts = BATCHES[self.batch % 2]
        top[0].reshape(1, 1, len(dets), 7)
        top[1].reshape(1, 1, len(gts), 8)
    def forward(self, bottom, top):
        dets, gts = BATCHES[self.batch % 2]
        top[0].data[...] = np.array([[i, c, s] + b for i, c, s, b in dets])[None, None]
        top[1].data[...] = np.array([[0, c, 0] + b + [0] for c, b in gts])[None, None]
        self.batch += 1
    def backward(self, top, propagate_down, bottom):
        pass
"""

DETECTION_NET = """
name: 'det'
layer { name: 'target' type: 'Input' top: 't' input_param { shape { dim: 1 dim: 3 } }
        include { phase: TRAIN } }
layer { name: 'p' type: 'Parameter' top: 'w' parameter_param { shape { dim: 1 dim: 3 } }
        include { phase: TRAIN } }
layer { name: 'loss' type: 'EuclideanLoss' bottom: 'w' bottom: 't' top: 'loss'
        include { phase: TRAIN } }
layer { name: 'dets' type: 'Python' top: 'det' top: 'label' include { phase: TEST }
        python_param { module: 'fixed_detections' layer: 'Detections' } }
layer { name: 'eval' type: 'DetectionEvaluate' bottom: 'det' bottom: 'label'
        top: 'detection_eval' include { phase: TEST }
        detection_evaluate_param { num_classes: 3 background_label_id: 0 } }
"""


@pytest.fixture
def detection_solver(tmp_path, monkeypatch):
    (tmp_path / "fixed_detections.py").write_text(DETECTIONS_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(extra, net=DETECTION_NET):
        solver_file = write_solver_prototxt(tmp_path, textwrap.dedent(f"""
            base_lr: 0.1 lr_policy: 'fixed' test_iter: 2 test_interval: 100
            eval_type: 'detection' {extra}
        """), net)
        return get_solver(solver_file)

    return make


def test_solver_detection_test_phase_logs_the_map(detection_solver, caplog):
    # class 1: hit 0.9, miss 0.3, hit 0.2 of 2 boxes; class 2: one box, no detection.
    # 11point AP of class 1: (6 + 5 * 2/3) / 11 = 0.848485; mAP over both classes: 0.424242.
    # Integral: 5/6 -> mAP 0.416667.
    solver = detection_solver("ap_version: '11point' show_per_class_result: true")
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.test_all()
    messages = [r.getMessage() for r in caplog.records]
    assert "Iteration 0, Testing net (#0)" in messages
    assert "class1: 0.848485" in messages
    assert "Missing true_pos for label: 2" in messages
    assert "    Test net output #0: detection_eval = 0.424242" in messages
    caplog.clear()
    solver = detection_solver("")  # ap_version defaults to Integral
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.test_all()
    assert "    Test net output #0: detection_eval = 0.416667" in caplog.messages


def test_solver_detection_needs_record_outputs(detection_solver):
    # a second test net output that is not records: the ground truth, flattened
    solver = detection_solver("", DETECTION_NET + """
        layer { name: 'flat' type: 'Flatten' bottom: 'label' top: 'flat'
                include { phase: TEST } }""")
    with pytest.raises(SolverError, match=r"'flat' has shape \[1, 16\]"):
        solver.test_all()
    with pytest.raises(SolverError, match="Unknown evaluation type: 'segmentation'"):
        detection_solver("").init(parse_text("eval_type: 'segmentation'",
                                             caffe_pb2.SolverParameter()))
