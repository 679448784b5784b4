"""Detection mAP from DetectionEvaluate records, as the SSD fork's solver computes it.

A DetectionEvaluate top holds rows ``[item, label, value, tp, fp]``: a row with item -1 gives the
number of ground-truth boxes (``value``) of ``label`` in one batch; any other row is one
detection with its score (``value``) and whether it was a true or a false positive (both 0: it
matched a difficult box that is not evaluated, and is left out).

- ``compute_ap(tp, fp, num_pos, ap_version, scores)``: SSD's ComputeAP (``11point``: VOC2007's
  11 recall points; ``MaxIntegral``: VOC2012 / ILSVRC, area under the precision envelope;
  ``Integral``: area under the raw precision-recall curve), in float32 as the fork computes it.
- ``DetectionAccumulator``: one test net output's records over the test iterations;
  ``average_precisions`` / ``mean_ap`` of them. Every label that has a count row takes part in
  the mean (a label with no ground truth at all has AP 0; a label no detection ever named is
  skipped with the fork's warning "Missing true_pos for label" but still counts in the
  denominator).
- ``mean_ap(records_list, ap_version)``: the same for a list of record arrays.
- ``test_detection(solver, test_net_id)``: the fork's Solver::TestDetection (``eval_type:
  "detection"``), logging ``Test net output #k: <blob> = <mAP>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from caffe.common import root_solver
from caffe.errors import CaffeError, SolverError
from caffe.solver import _g

log = logging.getLogger("caffe")

AP_VERSIONS = ("11point", "MaxIntegral", "Integral")
_EPS = np.float32(1e-6)


def _float32_sum(terms: np.ndarray) -> np.float32:
    """A float32 sum in order (C++'s ``ap += term`` loop): cumsum adds sequentially."""
    return np.cumsum(terms, dtype=np.float32)[-1] if terms.size else np.float32(0)


def precision_recall(tp, fp, num_pos: int, scores=None) -> tuple[np.ndarray, np.ndarray]:
    """Float32 precision and recall after each detection, detections taken by descending
    ``scores`` (a stable sort; without scores, in the given order)."""
    tp = np.asarray(tp, dtype=np.int64).reshape(-1)
    fp = np.asarray(fp, dtype=np.int64).reshape(-1)
    if tp.shape != fp.shape:
        raise CaffeError(f"tp must have same size as fp ({tp.size} vs {fp.size})")
    if np.any(tp != 1 - fp):
        raise CaffeError("tp and fp must be complementary (each detection is one of them)")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if scores.shape != tp.shape:
            raise CaffeError(f"{scores.size} scores for {tp.size} detections")
        order = np.argsort(-scores, kind="stable")
        tp, fp = tp[order], fp[order]
    if tp.size == 0 or num_pos == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(fp)
    if tp_sum[-1] > num_pos:
        raise CaffeError(f"{tp_sum[-1]} true positives for {num_pos} ground-truth boxes")
    prec = tp_sum.astype(np.float32) / (tp_sum + fp_sum).astype(np.float32)
    rec = tp_sum.astype(np.float32) / np.float32(num_pos)
    return prec, rec


def compute_ap(tp, fp, num_pos: int, ap_version: str = "Integral", scores=None) -> float:
    """SSD's ComputeAP of one class: ``tp``/``fp`` 0/1 per detection (by descending score, or
    sorted by ``scores`` when given), ``num_pos`` ground-truth boxes. 0 when there are no
    detections or no ground truth."""
    if ap_version not in AP_VERSIONS:
        raise CaffeError(f"Unknown ap_version: {ap_version!r} (one of {', '.join(AP_VERSIONS)})")
    prec, rec = precision_recall(tp, fp, num_pos, scores)
    if prec.size == 0:
        return 0.0
    if ap_version == "11point":
        # Best precision at recall >= t for t = 0, 0.1, ..., 1 (float recall against the double
        # t, as C++ compares them), summed from t = 1 down.
        thresholds = np.arange(11, dtype=np.float64) / 10.0
        reached = rec.astype(np.float64)[None, :] >= thresholds[:, None]
        max_precs = np.where(reached, prec[None, :], np.float32(0)).max(axis=1)
        return float(_float32_sum(max_precs[::-1] / np.float32(11)))
    if ap_version == "MaxIntegral":
        # The precision envelope (best precision at this recall or later) times each recall
        # step, walking from the last detection back; then the first step, from recall 0.
        envelope = np.maximum.accumulate(prec[::-1])[::-1]
        step = np.abs(rec[1:] - rec[:-1])
        terms = np.where(step > _EPS, envelope[:-1] * step, np.float32(0))[::-1]
        return float(_float32_sum(np.append(terms, rec[0] * envelope[0])))
    step = np.abs(rec - np.concatenate([[np.float32(0)], rec[:-1]]))
    return float(_float32_sum(np.where(step > _EPS, prec * step, np.float32(0))))


class DetectionAccumulator:
    """The records of one DetectionEvaluate output gathered over test iterations."""

    def __init__(self) -> None:
        self.num_pos: dict[int, int] = {}
        self._parts: list[np.ndarray] = []  # (label, tp, fp) rows of each batch
        self._scores: list[np.ndarray] = []

    def add(self, records) -> None:
        """Take one batch's records, a (..., 5) array (the top is (1, 1, R, 5))."""
        rows = np.asarray(records).reshape(-1, 5)
        item = rows[:, 0].astype(np.int64)
        label = rows[:, 1].astype(np.int64)
        counts = item == -1
        for lab, value in zip(label[counts].tolist(), rows[counts, 2].astype(np.int64).tolist()):
            self.num_pos[lab] = self.num_pos.get(lab, 0) + value
        tp = rows[:, 3].astype(np.int64)
        fp = rows[:, 4].astype(np.int64)
        keep = ~counts & ~((tp == 0) & (fp == 0))
        self._parts.append(np.stack([label[keep], tp[keep], fp[keep]], axis=1))
        self._scores.append(rows[keep, 2].astype(np.float32))

    @property
    def has_detections(self) -> bool:
        """Whether any detection rows were added."""
        return any(part.shape[0] for part in self._parts)

    def average_precisions(self, ap_version: str = "Integral") -> dict[int, float]:
        """AP per label that has a count row and at least one detection (label order)."""
        if not self._parts:
            return {}
        rows = np.concatenate(self._parts)
        scores = np.concatenate(self._scores)
        aps: dict[int, float] = {}
        # Group the detections by label once; arrival order is kept within a label, which
        # is the order the fork's stable sort falls back on for equal scores.
        order = np.argsort(rows[:, 0], kind="stable")
        labels, starts = np.unique(rows[order, 0], return_index=True)
        bounds = dict(zip(labels.tolist(), zip(starts.tolist(),
                                               np.append(starts[1:], order.size).tolist())))
        for label in sorted(self.num_pos):
            if label not in bounds:
                log.warning("Missing true_pos for label: %d", label)
                continue
            begin, end = bounds[label]
            pick = order[begin:end]
            aps[label] = compute_ap(rows[pick, 1], rows[pick, 2], self.num_pos[label],
                                    ap_version, scores[pick])
        return aps

    def mean_ap(self, ap_version: str = "Integral",
                aps: dict[int, float] | None = None) -> float:
        """The mean of ``average_precisions`` (or of ``aps`` already computed) over every label
        with a count row: a float32 sum in label order, as the fork; NaN when there is none."""
        if aps is None:
            aps = self.average_precisions(ap_version)
        total = _float32_sum(np.asarray([aps[k] for k in sorted(aps)], dtype=np.float32))
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(total / np.float32(len(self.num_pos)))


def mean_ap(records_list: Iterable, ap_version: str = "Integral") -> float:
    """mAP of DetectionEvaluate records gathered over several batches (one array per batch)."""
    acc = DetectionAccumulator()
    for records in records_list:
        acc.add(records)
    return acc.mean_ap(ap_version)


def test_detection(solver, test_net_id: int = 0) -> None:
    """Solver::TestDetection: run ``test_iter`` batches of test net ``test_net_id``, gather
    each output's DetectionEvaluate records and log its mAP (``ap_version``; per class too with
    ``show_per_class_result``). Every output must be (..., R, 5) records. An output that never
    held a detection logs no mAP (the fork logs none then either)."""
    p = solver.param
    if getattr(solver, "test_reducer", None) is not None:
        # The records of a batch vary in length: they are not summed over ranks, the root
        # evaluates alone (on the test data its layers read).
        if not root_solver():
            return
        log.warning("eval_type 'detection': the parallel test evaluates on the root solver "
                    "only")
    log.info("Iteration %d, Testing net (#%d)", solver.iter, test_net_id)
    test_net = solver.test_nets[test_net_id]
    test_net.share_with(solver.net)
    test_iter = p.test_iter[test_net_id]
    outputs = list(test_net.outputs)
    accumulators = [DetectionAccumulator() for _ in outputs]
    loss = 0.0
    for _ in range(test_iter):
        if solver.serve_test_requests():
            break
        iter_loss = test_net.forward_prefilled()
        if p.test_compute_loss:
            loss += iter_loss
        for name, acc in zip(outputs, accumulators):
            blob = test_net.blobs[name]
            if blob.num_axes < 1 or blob.shape[-1] != 5:
                raise SolverError(f"eval_type 'detection': test net output {name!r} has shape "
                                  f"{list(blob.shape)}; DetectionEvaluate records (1, 1, R, 5) "
                                  f"are expected")
            acc.add(blob.cpu_data())
    if solver.requested_early_exit:
        log.info("Test interrupted.")
        return
    if p.test_compute_loss:
        log.info("Test loss: %s", _g(loss / test_iter if test_iter else float("nan")))
    for k, (name, acc) in enumerate(zip(outputs, accumulators)):
        if not acc.has_detections:
            log.warning("Test net output #%d: %s holds no detection to evaluate", k, name)
            continue
        aps = acc.average_precisions(p.ap_version)
        if p.show_per_class_result:
            for label in sorted(aps):
                log.info("class%d: %s", label, _g(aps[label]))
        log.info("    Test net output #%d: %s = %s", k, name,
                 _g(acc.mean_ap(p.ap_version, aps)))
