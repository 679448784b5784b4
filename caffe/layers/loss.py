"""Shared pieces of the loss layers: normalization modes and label checks (Caffe's LossLayer).

Caffe's ``LossLayer::GetNormalizer`` divides a summed loss by

- ``FULL``: outer_num * inner_num (every prediction, ignored ones included),
- ``VALID``: the number of predictions whose label is not ``ignore_label``,
- ``BATCH_SIZE``: outer_num,
- ``NONE``: 1,

and never by less than 1, so that a batch with every label ignored gives a zero loss rather
than NaN. The legacy ``loss_param.normalize`` is read only when ``normalization`` is unset:
true means VALID, false means BATCH_SIZE.
"""

from __future__ import annotations

import torch

from caffe.layer import Layer
from caffe.proto import caffe_pb2

FULL = caffe_pb2.LossParameter.FULL
VALID = caffe_pb2.LossParameter.VALID
BATCH_SIZE = caffe_pb2.LossParameter.BATCH_SIZE
NONE = caffe_pb2.LossParameter.NONE

# Caffe's kLOG_THRESHOLD: probabilities are clipped here before taking logs.
LOG_THRESHOLD = 1e-20
# FLT_MIN: SoftmaxWithLoss clips probabilities at the smallest normal float, in float64 too.
FLT_MIN = 1.1754943508222875e-38


def normalization_mode(loss_param, default: int = VALID) -> int:
    """The NormalizationMode a loss layer uses: ``normalization`` if set, else the legacy
    ``normalize`` bool, else ``default`` (VALID for most layers; SigmoidCrossEntropyLoss and
    InfogainLoss keep their historical BATCH_SIZE)."""
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return VALID if loss_param.normalize else BATCH_SIZE
    return default


def get_normalizer(mode: int, outer_num: int, inner_num: int,
                   valid_count: torch.Tensor | None = None) -> torch.Tensor | float:
    """Caffe's GetNormalizer; ``valid_count`` (a 0-d tensor) stands in for VALID when given."""
    if mode == FULL:
        return float(max(1, outer_num * inner_num))
    if mode == VALID:
        if valid_count is None:
            return float(max(1, outer_num * inner_num))
        return valid_count.clamp_min(1)
    if mode == BATCH_SIZE:
        return float(max(1, outer_num))
    if mode == NONE:
        return 1.0
    raise ValueError(f"Unknown normalization mode: {mode}")


def ignore_label_of(param) -> int | None:
    """``param.ignore_label`` when set (LossParameter or AccuracyParameter), else None."""
    return param.ignore_label if param.HasField("ignore_label") else None


def integer_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels as int64, truncated toward zero as C++'s static_cast<int> does."""
    return labels.to(torch.int64)


def check_label_range(layer: Layer, labels: torch.Tensor, valid: torch.Tensor | None,
                      num_classes: int, what: str = "label") -> None:
    """Raise a LayerError naming the first label outside [0, num_classes) among ``valid`` ones.

    Caffe only DCHECKs this (a debug build aborts, a release build reads out of bounds); here it
    is always checked, because an out-of-range index would otherwise fail inside torch.
    """
    bad = (labels < 0) | (labels >= num_classes)
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        flat = bad.reshape(-1).nonzero()[0, 0]
        value = int(labels.reshape(-1)[flat])
        layer.check(False, f"{what} value {value} (at label index {int(flat)}) is outside "
                           f"the valid range [0, {num_classes})")


def loss_scale(top_diff: torch.Tensor, normalizer) -> torch.Tensor:
    """The factor a loss layer's bottom diff is scaled by: loss weight / normalizer."""
    return top_diff / normalizer
