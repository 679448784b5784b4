"""Test helper: a layer run in place (top is bottom) must give the numbers it gives on separate
blobs: the same top values, bottom diff and parameter diffs."""

from __future__ import annotations

import numpy as np
import torch

from caffe import common
from caffe.blob import Blob

from layer_case import blobs_of, make_layer


def run_layer(layer_prototxt: str, values: np.ndarray, top_diff: np.ndarray, *, in_place: bool,
              phase: str = "TRAIN", params=None, seed: int = 1701):
    """Forward then backward once; returns (top data, bottom diff, [param diffs], [params])."""
    layer = make_layer(layer_prototxt, phase)
    (bottom,) = blobs_of([values])
    top = bottom if in_place else Blob(dtype=torch.float64)
    layer.SetUp([bottom], [top])
    if params is not None:
        for blob, value in zip(layer.blobs, params):
            blob.data[...] = value
    for blob in layer.blobs:
        blob.diff[...] = 0
    common.set_random_seed(seed)
    layer.Forward([bottom], [top])
    top_data = top.data.copy()
    top.diff[...] = top_diff
    layer.Backward([top], [True], [bottom])
    return (top_data, bottom.diff.copy(), [b.diff.copy() for b in layer.blobs],
            [b.data.copy() for b in layer.blobs])


def check_in_place(layer_prototxt: str, shape, *, phase: str = "TRAIN", values=None,
                   seed: int = 3) -> None:
    """Separate blobs and in-place use of one layer agree (to float64 rounding)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=shape) if values is None else np.asarray(values, np.float64)
    dy = rng.uniform(-1, 1, size=x.shape)
    ref_top, ref_dx, ref_dp, params = run_layer(layer_prototxt, x, dy, in_place=False,
                                                phase=phase)
    top, dx, dp, _ = run_layer(layer_prototxt, x, dy, in_place=True, phase=phase,
                               params=params)
    np.testing.assert_allclose(top, ref_top, rtol=1e-12, atol=1e-12, err_msg="top data")
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12, err_msg="bottom diff")
    for j, (got, want) in enumerate(zip(dp, ref_dp)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"param diff {j}")
