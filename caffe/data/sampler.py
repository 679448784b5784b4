"""SSD's patch sampler (the fork's util/sampler): candidate crops of one image for AnnotatedData.

Each ``BatchSampler`` draws up to ``max_trials`` windows (``Sampler``: a scale s in [min_scale,
max_scale] and an aspect ratio r in [min_aspect_ratio, max_aspect_ratio], r clamped to
[s^2, 1/s^2]; width s*sqrt(r), height s/sqrt(r), top-left uniform inside the image) and keeps
those meeting its ``SampleConstraint`` against the ground-truth boxes, at most ``max_sample``.
The windows of every sampler are pooled; the layer crops to one of them at random.

The constraint is tested as the fork does: a window passes when some ground-truth box passes
the *first* check the constraint enables (jaccard overlap, else sample coverage, else object
coverage); later checks only decide whether the fork returns early. A constraint with no bounds
passes every window, and with bounds but no ground truth passes none.

Random draws come from the caller's numpy Generator (all trials of a sampler at once); the
geometry of a given draw is the fork's, in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from caffe import bbox_util
from caffe.errors import DataError
from caffe.proto import caffe_pb2

F32 = np.float32
UNIT_BOX = np.array([0, 0, 1, 1], dtype=F32)


def check_batch_sampler(batch_sampler: caffe_pb2.BatchSampler) -> None:
    """The fork's CHECKs on a Sampler, at setup rather than at the first draw."""
    s = batch_sampler.sampler
    if not s.max_scale >= s.min_scale:
        raise DataError(f"sampler max_scale {s.max_scale} < min_scale {s.min_scale}")
    if not s.min_scale > 0:
        raise DataError(f"sampler min_scale must be > 0, got {s.min_scale}")
    if not s.max_scale <= 1:
        raise DataError(f"sampler max_scale must be <= 1, got {s.max_scale}")
    if not s.max_aspect_ratio >= s.min_aspect_ratio:
        raise DataError(f"sampler max_aspect_ratio {s.max_aspect_ratio} < min_aspect_ratio "
                        f"{s.min_aspect_ratio}")
    if not s.min_aspect_ratio > 0:
        raise DataError(f"sampler min_aspect_ratio must be > 0, got {s.min_aspect_ratio}")
    if not np.isfinite(F32(s.max_aspect_ratio)):
        raise DataError("sampler max_aspect_ratio must be finite")


def sample_boxes(sampler: caffe_pb2.Sampler, count: int, rng: np.random.Generator
                 ) -> np.ndarray:
    """SampleBBox, ``count`` times: windows (count, 4) in the unit square."""
    scale = rng.uniform(sampler.min_scale, sampler.max_scale, count).astype(F32)
    ratio = rng.uniform(sampler.min_aspect_ratio, sampler.max_aspect_ratio, count).astype(F32)
    square = scale.astype(np.float64) ** 2  # std::pow(float, 2.) is a double
    ratio = np.maximum(ratio, square.astype(F32))
    ratio = np.minimum(ratio, (1 / square).astype(F32))
    root = np.sqrt(ratio)
    width = scale * root
    height = scale / root
    w_off = (rng.random(count) * (1 - width)).astype(F32)
    h_off = (rng.random(count) * (1 - height)).astype(F32)
    return np.stack([w_off, h_off, w_off + width, h_off + height], axis=-1)


def _in_range(values: np.ndarray, constraint, low: str, high: str) -> np.ndarray:
    ok = np.ones(values.shape, dtype=bool)
    if constraint.HasField(low):
        ok &= ~(values < F32(getattr(constraint, low)))
    if constraint.HasField(high):
        ok &= ~(values > F32(getattr(constraint, high)))
    return ok


def satisfy_sample_constraint(samples: np.ndarray, objects: np.ndarray,
                              constraint: caffe_pb2.SampleConstraint) -> np.ndarray:
    """SatisfySampleConstraint of each window in ``samples`` (S, 4) against the ground-truth
    ``objects`` (G, 4): a bool mask (S,)."""
    checks = (("min_jaccard_overlap", "max_jaccard_overlap"),
              ("min_sample_coverage", "max_sample_coverage"),
              ("min_object_coverage", "max_object_coverage"))
    enabled = [c for c in checks if constraint.HasField(c[0]) or constraint.HasField(c[1])]
    if not enabled:
        return np.ones(len(samples), dtype=bool)
    if len(objects) == 0:
        return np.zeros(len(samples), dtype=bool)
    a = samples[:, None, :]
    b = objects[None, :, :]
    low, high = enabled[0]
    if low.endswith("jaccard_overlap"):
        values = bbox_util.np_jaccard(a, b)
    elif low.endswith("sample_coverage"):
        values = bbox_util.np_coverage(np.broadcast_to(a, (len(samples), len(objects), 4)), b)
    else:
        values = bbox_util.np_coverage(np.broadcast_to(b, (len(samples), len(objects), 4)), a)
    return _in_range(values, constraint, low, high).any(axis=1)


def generate_samples(source: np.ndarray, objects: np.ndarray,
                     batch_sampler: caffe_pb2.BatchSampler, rng: np.random.Generator
                     ) -> np.ndarray:
    """GenerateSamples: the windows (K, 4) one BatchSampler keeps, in draw order."""
    trials = int(batch_sampler.max_trials)
    if trials <= 0:
        return np.zeros((0, 4), dtype=F32)
    samples = bbox_util.np_locate(source, sample_boxes(batch_sampler.sampler, trials, rng))
    kept = samples[satisfy_sample_constraint(samples, objects, batch_sampler.sample_constraint)]
    if batch_sampler.HasField("max_sample"):
        kept = kept[:int(batch_sampler.max_sample)]
    return kept


def generate_batch_samples(objects: np.ndarray,
                           batch_samplers: Sequence[caffe_pb2.BatchSampler],
                           rng: np.random.Generator) -> np.ndarray:
    """GenerateBatchSamples: the windows (K, 4) of every sampler that uses the original image,
    pooled in sampler order."""
    pooled = [generate_samples(UNIT_BOX, objects, bs, rng)
              for bs in batch_samplers if bs.use_original_image]
    return np.concatenate(pooled) if pooled else np.zeros((0, 4), dtype=F32)
