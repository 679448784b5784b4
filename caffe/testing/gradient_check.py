"""Finite-difference gradient checking of a layer's backward (Caffe's GradientChecker).

The objective is either half the sum of squares of every top (``top_id < 0``) or twice one top
element. Analytic gradients come from one Backward; numerical ones from central differences
``(f(x + h) - f(x - h)) / 2h`` per checked element, with the RNG reseeded before every forward so
stochastic layers see the same draws. Run layers in float64 for tight checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from caffe import common
from caffe.blob import Blob
from caffe.errors import CaffeError
from caffe.layer import Layer


class GradientCheckError(CaffeError, AssertionError):
    """Analytic and numerical gradients disagree beyond the threshold.

    ``failures`` lists ``(blob_id, element, value, analytic, numeric)`` for every element that
    failed; blob ids count the layer's parameter blobs first, then the checked bottoms.
    """

    def __init__(self, message: str, failures: Sequence[tuple] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


class GradientChecker:
    """Compare a layer's Backward against finite differences of its Forward.

    ``check_bottom``: -1 checks every bottom (and propagates down to all), ``i >= 0`` checks only
    bottom ``i``, anything below -1 checks only the layer's parameter blobs. Elements whose
    absolute value lies within ``kink_range`` of ``kink`` are skipped (non-differentiable points).
    """

    def __init__(self, stepsize: float = 1e-2, threshold: float = 1e-2, seed: int = 1701,
                 kink: float = 0.0, kink_range: float = -1.0) -> None:
        self.stepsize = stepsize
        self.threshold = threshold
        self.seed = seed
        self.kink = kink
        self.kink_range = kink_range

    # --- public modes ------------------------------------------------------------------------
    def check_gradient(self, layer: Layer, bottom: Sequence[Blob], top: Sequence[Blob],
                       check_bottom: int = -1) -> None:
        """One pass with the objective sum(top^2)/2 over all tops."""
        layer.SetUp(bottom, top)
        self.check_gradient_single(layer, bottom, top, check_bottom, -1, -1)

    def check_gradient_exhaustive(self, layer: Layer, bottom: Sequence[Blob],
                                  top: Sequence[Blob], check_bottom: int = -1) -> None:
        """One pass per top element, each with the objective 2 * top[i][j]."""
        layer.SetUp(bottom, top)
        if not top:
            raise CaffeError("exhaustive gradient check needs at least one top blob")
        for i, blob in enumerate(top):
            for j in range(blob.count):
                self.check_gradient_single(layer, bottom, top, check_bottom, i, j)

    def check_gradient_eltwise(self, layer: Layer, bottom: Sequence[Blob],
                               top: Sequence[Blob]) -> None:
        """For elementwise layers: top[i][j] depends only on bottom[k][j]."""
        layer.SetUp(bottom, top)
        if not top:
            raise CaffeError("elementwise gradient check needs at least one top blob")
        for i, blob in enumerate(top):
            for j in range(blob.count):
                self.check_gradient_single(layer, bottom, top, -1, i, j, element_wise=True)

    # --- one objective -------------------------------------------------------------------------
    def check_gradient_single(self, layer: Layer, bottom: Sequence[Blob], top: Sequence[Blob],
                              check_bottom: int, top_id: int, top_data_id: int,
                              element_wise: bool = False) -> None:
        """Check one objective: element ``top_data_id`` of top ``top_id`` (both < 0: half the
        sum of squares of every top), for the bottoms and parameters ``check_bottom`` selects
        (see the class); raises GradientCheckError listing the mismatches."""
        if element_wise:
            if top_id < 0 or top_data_id < 0:
                raise CaffeError("element_wise checking needs a top_id and top_data_id")
            for b in bottom:
                if b.count != top[top_id].count:
                    raise CaffeError("element_wise checking needs bottoms as large as the top")
        blobs = list(layer.blobs)
        for blob in blobs:
            blob.mutable_cpu_diff()[...] = 0
        propagate_down = [check_bottom == -1] * len(bottom)
        if check_bottom == -1:
            blobs += list(bottom)
        elif check_bottom >= 0:
            if check_bottom >= len(bottom):
                raise CaffeError(f"check_bottom {check_bottom} out of range "
                                 f"({len(bottom)} bottoms)")
            blobs.append(bottom[check_bottom])
            propagate_down[check_bottom] = True
        if not blobs:
            raise CaffeError("No blobs to check.")

        common.set_random_seed(self.seed)
        layer.Forward(bottom, top)
        self._objective(top, top_id, top_data_id)
        layer.Backward(top, propagate_down, bottom)
        computed = [blob.cpu_diff().copy() for blob in blobs]

        failures = []
        for blob_id, blob in enumerate(blobs):
            for feat in range(blob.count):
                estimated = 0.0
                if not element_wise or feat == top_data_id:
                    estimated = self._estimate(layer, bottom, top, blob, feat, top_id,
                                               top_data_id)
                value = float(blob.cpu_data().reshape(-1)[feat])
                if self.kink - self.kink_range <= abs(value) <= self.kink + self.kink_range:
                    continue
                got = float(computed[blob_id].reshape(-1)[feat])
                scale = max(abs(got), abs(estimated), 1.0)
                if abs(got - estimated) > self.threshold * scale:
                    failures.append((blob_id, feat, value, got, estimated))
        if failures:
            lines = [f"  blob {b} element {f} (value {v:.6g}): backward {g:.6g}, "
                     f"finite difference {e:.6g}" for b, f, v, g, e in failures[:10]]
            raise GradientCheckError(
                f"{layer.type} layer {layer.name!r}: {len(failures)} gradient(s) differ "
                f"(top_id={top_id}, top_data_id={top_data_id}, threshold {self.threshold}):\n"
                + "\n".join(lines), failures)

    def _estimate(self, layer, bottom, top, blob: Blob, feat: int, top_id: int,
                  top_data_id: int) -> float:
        data = blob.mutable_cpu_data().reshape(-1)
        original = data[feat]
        data[feat] = original + self.stepsize
        common.set_random_seed(self.seed)
        layer.Forward(bottom, top)
        positive = self._objective(top, top_id, top_data_id)
        data = blob.mutable_cpu_data().reshape(-1)
        data[feat] = original - self.stepsize
        common.set_random_seed(self.seed)
        layer.Forward(bottom, top)
        negative = self._objective(top, top_id, top_data_id)
        blob.mutable_cpu_data().reshape(-1)[feat] = original
        return (positive - negative) / self.stepsize / 2.0

    @staticmethod
    def _objective(top: Sequence[Blob], top_id: int, top_data_id: int) -> float:
        """Set the top diffs to d(objective)/d(top) and return the objective."""
        if top_id < 0:
            loss = 0.0
            for blob in top:
                data = blob.cpu_data()
                loss += float(np.sum(data.astype(np.float64) ** 2)) / 2.0
                blob.mutable_cpu_diff()[...] = data
            return loss
        for blob in top:
            blob.mutable_cpu_diff()[...] = 0
        weight = 2.0
        blob = top[top_id]
        blob.mutable_cpu_diff().reshape(-1)[top_data_id] = weight
        return float(blob.cpu_data().reshape(-1)[top_data_id]) * weight
