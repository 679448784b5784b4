"""The gradient test of the Python-layer tutorials, ``test_gradient_for_python_layer``, on top of
caffe's GradientChecker."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from caffe.proto import caffe_pb2
from caffe.testing.gradient_check import GradientChecker, GradientCheckError

# float64 finite differences: the truncation error of a central difference is O(h^2) ~ 1e-6 of
# the third derivative's scale and the rounding error ~ eps64 * |f| / h ~ 1e-13, so a 1e-3
# relative threshold only fails on a wrong backward. A layer that cannot run in float64 is
# checked in float32 with Caffe's own test settings (rounding ~ eps32 * |f| / h ~ 1e-5).
_SETTINGS = {torch.float64: (1e-3, 1e-3), torch.float32: (1e-2, 1e-2)}


def test_gradient_for_python_layer(input_names_and_values: Sequence[tuple[str, np.ndarray]],
                                   output_names: Sequence[str], py_module: str, py_layer: str,
                                   param_str: str | None = None,
                                   propagate_down: Sequence[bool] | None = None) -> None:
    """Check a Python layer's backward against finite differences of its forward.

    Builds a one-layer net: Input tops named and shaped after ``input_names_and_values`` (a
    list of ``(name, array)``), holding those arrays, feeding ``python_param { module: py_module
    layer: py_layer param_str: param_str }`` with tops ``output_names``; float64 where the layer
    allows it. Checks every input whose ``propagate_down`` entry is true (all by default) and
    the layer's parameter blobs, with the objective sum(top^2)/2. On a mismatch raises an
    AssertionError (GradientCheckError) naming the worst element: its bottom (or parameter
    blob), index, analytic and numeric gradient.
    """
    inputs = [(str(name), np.asarray(value)) for name, value in input_names_and_values]
    if propagate_down is None:
        propagate_down = [True] * len(inputs)
    propagate_down = [bool(p) for p in propagate_down]
    if len(propagate_down) != len(inputs):
        raise ValueError(f"propagate_down has {len(propagate_down)} entries for "
                         f"{len(inputs)} inputs")
    net_param = _one_layer_net(inputs, list(output_names), py_module, py_layer, param_str)
    net = _build(net_param)
    layer_id = len(net.layers) - 1
    layer = net.layers[layer_id]
    bottom, top = net.bottom_vecs[layer_id], net.top_vecs[layer_id]
    for blob, (_, value) in zip(bottom, inputs):
        blob.data[...] = value
    stepsize, threshold = _SETTINGS[net.dtype]
    checker = GradientChecker(stepsize, threshold)
    checks = [i for i, p in enumerate(propagate_down) if p] or ([-2] if layer.blobs else [])
    if not checks:
        raise ValueError("nothing to check: no input propagates down and the layer has no "
                         "parameter blobs")
    worst = None
    for check_bottom in checks:
        try:
            checker.check_gradient_single(layer, bottom, top, check_bottom, -1, -1)
        except GradientCheckError as err:
            names = [f"parameter blob {j}" for j in range(len(layer.blobs))]
            if check_bottom >= 0:
                names.append(f"bottom {inputs[check_bottom][0]!r}")
            shapes = [b.shape for b in layer.blobs] + (
                [bottom[check_bottom].shape] if check_bottom >= 0 else [])
            for blob_id, feat, _, analytic, numeric in err.failures:
                error = abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1.0)
                if worst is None or error > worst[0]:
                    index = tuple(int(i) for i in np.unravel_index(feat, shapes[blob_id]))
                    worst = (error, names[blob_id], index, analytic, numeric, len(err.failures))
    if worst is not None:
        _, where, index, analytic, numeric, count = worst
        raise GradientCheckError(
            f"Python layer {py_module}.{py_layer}: gradient check failed ({count} element(s) "
            f"beyond threshold {threshold} in {net.dtype}); worst element: {where} index "
            f"{index}: analytic {analytic:.6g}, numeric {numeric:.6g}")


test_gradient_for_python_layer.__test__ = False  # not a pytest test, despite its name


def _one_layer_net(inputs, output_names, py_module, py_layer, param_str):
    net = caffe_pb2.NetParameter(name=f"test_{py_layer}")
    data = net.layer.add(name="input", type="Input")
    for name, value in inputs:
        data.top.append(name)
        data.input_param.shape.add().dim.extend(value.shape)
    layer = net.layer.add(name=py_layer, type="Python")
    layer.bottom.extend(name for name, _ in inputs)
    layer.top.extend(output_names)
    layer.python_param.module = py_module
    layer.python_param.layer = py_layer
    if param_str is not None:
        layer.python_param.param_str = param_str
    return net


def _build(net_param):
    """The net in float64, or in float32 when the layer cannot run in float64."""
    from caffe import TRAIN
    from caffe.net import Net

    try:
        return Net(net_param, TRAIN, dtype=torch.float64)
    except Exception:  # noqa: BLE001 - a layer that cannot take float64: retry in float32
        return Net(net_param, TRAIN, dtype=torch.float32)
