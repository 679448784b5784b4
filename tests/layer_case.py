"""Shared test helpers: run one golden layer case from C++ Caffe, build and run a layer on given
bottoms, and gradient-check a layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from caffe.blob import Blob
from caffe.layer import create_layer
from caffe.proto import caffe_pb2
from caffe.testing import GradientChecker

GOLDEN = Path(__file__).parent / "golden"
# The golden README's tolerances for C++ Caffe's float32 (OpenBLAS) against caffepy's float32
# (torch), which sum in other orders. Why they suffice: the cases' reductions have at most ~100
# terms (forward: 27 in conv_basic; backward: sums over batch and positions) with sum|x| at most
# ~10 where results cancel. Rounding errors of random sign put two orders of an n-term float32 sum
# about sqrt(n) * u * sum|x| apart (u = eps / 2; the worst case is (n - 1) * eps * sum|x|,
# tolerance.py): ~6e-6, within atol 1e-5, and ~1e-6 relative where terms do not cancel, within
# rtol 1e-4. Gradients chain two such sums (top diff through the forward's derivative): a factor
# 10 on both. Measured, the worst golden element uses 3% of FWD_TOL (conv_basic's top 0).
FWD_TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_TOL = dict(rtol=1e-3, atol=1e-4)


def load_case(name: str, fork: bool = False) -> dict:
    """One golden layer case: from golden/layers, or golden/fork/layers when ``fork``."""
    folder = GOLDEN / "fork" / "layers" if fork else GOLDEN / "layers"
    with np.load(folder / f"{name}.npz") as npz:
        return {k: npz[k] for k in npz.files}


def layer_param_of_case(case: dict) -> caffe_pb2.LayerParameter:
    net = text_format.Parse(str(case["prototxt"]), caffe_pb2.NetParameter())
    (param,) = [lp for lp in net.layer if lp.name == "L"]
    param.phase = caffe_pb2.Phase.Value(str(case["phase"]))
    return param


def _blob(array: np.ndarray, dtype: torch.dtype) -> Blob:
    blob = Blob(array.shape, dtype=dtype)
    blob.data[...] = array
    return blob


def build_case_layer(case: dict, dtype: torch.dtype = torch.float32):
    """The layer under test with its golden bottoms and initial parameters loaded."""
    param = layer_param_of_case(case)
    bottom = [_blob(case[f"bottom_{i}"], dtype) for i in range(len(param.bottom))]
    top = []
    for name in param.top:
        if name in param.bottom:
            top.append(bottom[list(param.bottom).index(name)])
        else:
            top.append(Blob(dtype=dtype))
    layer = create_layer(param, dtype=dtype)
    layer.SetUp(bottom, top)
    for j, blob in enumerate(layer.blobs):
        key = f"param_{j}_before"
        if key in case:
            blob.data[...] = case[key]
    return layer, bottom, top


def run_golden_case(name: str, fork: bool = False) -> None:
    """Forward, state update, and backward of one golden case, compared with C++ Caffe (or,
    ``fork``, with a fork-layer case)."""
    case = load_case(name, fork)
    layer, bottom, top = build_case_layer(case)
    for blob in layer.blobs:
        blob.diff[...] = 0
    layer.Forward(bottom, top)
    for i, blob in enumerate(top):
        np.testing.assert_allclose(blob.data, case[f"top_{i}"], **FWD_TOL,
                                   err_msg=f"{name}: top {i}")
    for j, blob in enumerate(layer.blobs):
        key = f"param_{j}_after_forward"
        if key in case:
            np.testing.assert_allclose(blob.data, case[key], **FWD_TOL,
                                       err_msg=f"{name}: param {j} after forward")
    if not any(k.startswith("bottom_diff_") or k.startswith("param_diff_") for k in case):
        return
    for i, blob in enumerate(top):
        if f"top_diff_{i}" in case:
            blob.diff[...] = case[f"top_diff_{i}"]
    propagate = [f"bottom_diff_{i}" in case for i in range(len(bottom))]
    layer.Backward(top, propagate, bottom)
    for i, blob in enumerate(bottom):
        if propagate[i]:
            np.testing.assert_allclose(blob.diff, case[f"bottom_diff_{i}"], **GRAD_TOL,
                                       err_msg=f"{name}: bottom diff {i}")
    for j, blob in enumerate(layer.blobs):
        key = f"param_diff_{j}"
        if key in case:
            np.testing.assert_allclose(blob.diff, case[key], **GRAD_TOL,
                                       err_msg=f"{name}: param diff {j}")


def make_layer(layer_prototxt: str, phase: str = "TRAIN", dtype: torch.dtype = torch.float64,
               name: str = "L"):
    """A layer from the text of one LayerParameter, e.g. "type: 'ReLU' relu_param {...}"
    (``name`` when the text names none)."""
    param = text_format.Parse(layer_prototxt, caffe_pb2.LayerParameter())
    if not param.name:
        param.name = name
    param.phase = caffe_pb2.Phase.Value(phase)
    return create_layer(param, dtype=dtype)


def random_blobs(shapes, dtype: torch.dtype = torch.float64, seed: int = 0, low: float = -1.0,
                 high: float = 1.0) -> list[Blob]:
    rng = np.random.default_rng(seed)
    return [_blob(rng.uniform(low, high, size=s), dtype) for s in shapes]


def blobs_of(arrays, dtype: torch.dtype = torch.float64) -> list[Blob]:
    """One blob per array (or nested list / number), holding its values."""
    return [_blob(np.asarray(values), dtype) for values in arrays]


def build_layer(layer_prototxt: str, arrays, n_tops: int = 1, phase: str = "TRAIN",
                dtype: torch.dtype = torch.float64):
    """A layer SetUp on bottoms holding ``arrays`` and ``n_tops`` new tops: (layer, bottom, top)."""
    layer = make_layer(layer_prototxt, phase, dtype)
    bottom = blobs_of(arrays, dtype)
    top = [Blob(dtype=dtype) for _ in range(n_tops)]
    layer.SetUp(bottom, top)
    return layer, bottom, top


def forward_layer(layer_prototxt: str, arrays, n_tops: int = 1, phase: str = "TRAIN",
                  dtype: torch.dtype = torch.float64):
    """SetUp and Forward of one layer on bottoms holding ``arrays``: (layer, bottom, top, loss)."""
    layer, bottom, top = build_layer(layer_prototxt, arrays, n_tops, phase, dtype)
    return layer, bottom, top, layer.Forward(bottom, top)


def forward_top(layer_prototxt: str, x, phase: str = "TRAIN") -> np.ndarray:
    """The (float64) top values of one Forward of a one-bottom, one-top layer on ``x``."""
    return forward_layer(layer_prototxt, [x], phase=phase)[2][0].data.copy()


def gradient_check(layer_prototxt: str, bottom_shapes, *, phase: str = "TRAIN",
                   check_bottom: int = -1, stepsize: float = 1e-3, threshold: float = 1e-3,
                   kink: float = 0.0, kink_range: float = -1.0, seed: int = 0,
                   bottom_values=None, n_tops: int = 1, exhaustive: bool = False) -> None:
    """float64 finite-difference check of one layer on random bottoms (raises on mismatch)."""
    layer = make_layer(layer_prototxt, phase)
    bottom = random_blobs(bottom_shapes, seed=seed)
    if bottom_values is not None:
        for blob, values in zip(bottom, bottom_values):
            if values is not None:
                blob.reshape(np.shape(values))
                blob.data[...] = values
    top = [Blob(dtype=torch.float64) for _ in range(n_tops)]
    checker = GradientChecker(stepsize, threshold, kink=kink, kink_range=kink_range)
    if exhaustive:
        checker.check_gradient_exhaustive(layer, bottom, top, check_bottom)
    else:
        checker.check_gradient(layer, bottom, top, check_bottom)
