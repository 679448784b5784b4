"""Fillers: the one place parameter blobs get their first values (Caffe's filler.hpp)."""

from __future__ import annotations

import contextlib
import math
import threading

import torch

from caffe import common
from caffe.blob import Blob
from caffe.errors import CaffeError


def _fans(blob: Blob) -> tuple[int, int]:
    """fan_in = count / num, fan_out = count / channels, as Caffe computes them."""
    count = blob.count
    fan_in = count // blob.shape[0] if blob.num_axes else count
    if blob.num_axes > 1:
        fan_out = count // blob.shape[1]
    else:
        fan_out = count
    return fan_in, fan_out


def _variance_n(param, blob: Blob) -> float:
    fan_in, fan_out = _fans(blob)
    norm = param.variance_norm
    if norm == param.FAN_OUT:
        return float(fan_out)
    if norm == param.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return float(fan_in)


_skipping = threading.local()


@contextlib.contextmanager
def skipped():
    """Build layers without filling their blobs (left unallocated until first touched): for a
    Net whose every parameter is about to be overwritten, as caffe.export.fold builds one."""
    before = getattr(_skipping, "on", False)
    _skipping.on = True
    try:
        yield
    finally:
        _skipping.on = before


def fill(blob: Blob, param) -> None:
    """Fill ``blob``'s data as the FillerParameter ``param`` says."""
    if getattr(_skipping, "on", False):
        return
    kind = param.type
    gen = common.generator(torch.device("cpu"))
    shape = blob.shape
    dtype = blob.dtype
    if blob.count == 0:
        return
    if kind == "constant":
        values = torch.full(shape, param.value, dtype=dtype)
    elif kind == "uniform":
        # Caffe's caffe_rng_uniform CHECKs a <= b (so a NaN bound fails too).
        if not param.min <= param.max:
            raise CaffeError(f"uniform filler needs min <= max, got min {param.min} and max "
                             f"{param.max}")
        values = torch.empty(shape, dtype=dtype).uniform_(param.min, param.max, generator=gen)
    elif kind == "gaussian":
        # Caffe's caffe_rng_gaussian CHECKs sigma > 0 (CHECK_GT).
        if not param.std > 0:
            raise CaffeError(f"gaussian filler needs std > 0, got std {param.std} (mean "
                             f"{param.mean})")
        values = torch.empty(shape, dtype=dtype).normal_(param.mean, param.std, generator=gen)
        if param.sparse >= 0:
            if blob.num_axes < 2:
                raise CaffeError("gaussian filler with sparse needs a blob of at least 2 axes")
            num_outputs = shape[0]
            non_zero_prob = param.sparse / num_outputs
            mask = torch.rand(shape, generator=gen, dtype=torch.float64) < non_zero_prob
            values = values * mask.to(dtype)
    elif kind == "positive_unitball":
        values = torch.rand(shape, generator=gen, dtype=dtype)
        flat = values.reshape(shape[0], -1) if blob.num_axes else values.reshape(1, -1)
        flat /= flat.sum(dim=1, keepdim=True)
        values = flat.reshape(shape)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(param, blob))
        values = torch.empty(shape, dtype=dtype).uniform_(-scale, scale, generator=gen)
    elif kind == "msra":
        std = math.sqrt(2.0 / _variance_n(param, blob))
        values = torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=gen)
    elif kind == "bilinear":
        if blob.num_axes != 4 or shape[2] != shape[3]:
            raise CaffeError(f"bilinear filler needs a 4-D blob with square kernels, got shape "
                             f"{list(shape)}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        pos = torch.arange(k, dtype=torch.float64)
        w = 1 - (pos / f - c).abs()
        kernel = (w[:, None] * w[None, :]).to(dtype)
        values = kernel.expand(shape).clone()
    else:
        raise CaffeError(f"Unknown filler name: {kind!r} (known: constant, uniform, gaussian, "
                         f"positive_unitball, xavier, msra, bilinear)")
    if kind != "gaussian" and param.sparse >= 0:
        raise CaffeError(f"Sparsity not supported by the {kind} filler")
    blob.mutable_cpu_data()[...] = values.numpy()
