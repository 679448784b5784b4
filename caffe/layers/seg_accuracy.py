"""SegAccuracy of DeepLab v2 (deeplab-public-ver2): scores of a predicted label map against the
ground truth, from a confusion matrix.

Reads ``seg_accuracy_param { ignore_label (repeated) reset }``; ``metric`` is parsed but, as in
DeepLab, does not change the output. Bottoms: scores (N, C, H, W) and labels (N, 1, H, W).
Top: (1, 1, 1, 3) = [pixel accuracy, mean class recall, mean Jaccard (IoU)].

Each pixel whose label is not ignored adds one to confusion[label, prediction], prediction =
the class of the largest score (ties go to the larger class index, as C++'s sort of
(score, class) pairs in decreasing order does). With ``reset`` (the default) the matrix starts
from zero at every forward; without it the counts accumulate over forwards. Then

- accuracy = trace / total (0 when total is 0),
- mean recall = mean over the classes with ground-truth pixels of confusion[c, c] / row_c
  (0 when no class has any),
- mean Jaccard = mean over all C classes of confusion[c, c] / (row_c + col_c - confusion[c, c]),
  a class counting 1 when numerator and denominator are equal (no pixels, or all correct).

A label outside [0, C) that is not ignored is an error (DeepLab: LOG(FATAL)). No backward.
"""

from __future__ import annotations

import torch

from caffe.layer import Layer, register
from caffe.layers.loss import check_label_range, integer_labels


def seg_predictions(scores: torch.Tensor) -> torch.Tensor:
    """The top-1 class per pixel of (N, C, L) scores; ties go to the larger class index."""
    channels = scores.shape[1]
    best = scores.amax(dim=1, keepdim=True)
    index = torch.arange(channels, device=scores.device).view(1, -1, 1)
    return torch.where(scores == best, index, -1).amax(dim=1)


def confusion_scores(confusion: torch.Tensor) -> tuple[float, float, float]:
    """(accuracy, mean recall over present classes, mean Jaccard) of a (C, C) count matrix."""
    confusion = confusion.to(torch.float64)
    diag = confusion.diagonal()
    total = float(confusion.sum())
    accuracy = float(diag.sum()) / total if total else 0.0
    rows = confusion.sum(1)
    present = rows > 0
    recall = float((diag[present] / rows[present]).mean()) if bool(present.any()) else 0.0
    union = rows + confusion.sum(0) - diag
    jaccard = torch.where(diag == union, torch.ones_like(diag), diag / union.clamp_min(1))
    return accuracy, recall, float(jaccard.mean())


@register("SegAccuracy")
class SegAccuracyLayer(Layer):
    """DeepLab's SegAccuracy layer; see the module docstring."""

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        param = self.layer_param.seg_accuracy_param
        self.ignore_labels = sorted(set(param.ignore_label))
        self.reset = param.reset
        channels = bottom[0].shape[1] if bottom[0].num_axes > 1 else 1
        self.confusion = torch.zeros(channels, channels, dtype=torch.int64)

    def reshape(self, bottom, top):
        data, label = bottom[0], bottom[1]
        shapes = f"scores {list(data.shape)}, label {list(label.shape)}"
        self.check(data.num_axes == 4 and label.num_axes == 4,
                   f"scores and label must be 4-D (N, C, H, W) ({shapes})")
        self.check(data.shape[1] >= 1, f"the scores need at least one channel ({shapes})")
        self.check(data.shape[0] == label.shape[0],
                   f"The data and label should have the same number ({shapes})")
        self.check(label.shape[1] == 1, f"The label should have one channel ({shapes})")
        self.check(data.shape[2:] == label.shape[2:],
                   f"The data should have the same height and width as label ({shapes})")
        self.check(data.shape[1] == self.confusion.shape[0],
                   f"the number of classes changed since setup ({shapes})")
        top[0].reshape([1, 1, 1, 3])

    def forward(self, bottom, top):
        num, channels = bottom[0].shape[:2]
        scores = bottom[0].device_data().reshape(num, channels, -1)
        labels = integer_labels(bottom[1].device_data()).reshape(-1)
        predicted = seg_predictions(scores).reshape(-1)
        valid = torch.ones_like(labels, dtype=torch.bool)
        for ignored in self.ignore_labels:
            valid &= labels != ignored
        check_label_range(self, labels, valid, channels)
        pairs = labels[valid] * channels + predicted[valid]
        counts = torch.bincount(pairs, minlength=channels * channels).view(channels, channels)
        if self.reset:
            self.confusion.zero_()
        self.confusion += counts.cpu()
        values = torch.tensor(confusion_scores(self.confusion), dtype=top[0].dtype)
        top[0].mutable_device_data().view(-1).copy_(values)

    def backward(self, top, propagate_down, bottom):
        self.check(not any(propagate_down), "SegAccuracy has no backward")
