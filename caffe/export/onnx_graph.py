"""The ONNX graph builder and the per-type converter registry the ONNX writer uses.

A converter is a function ``convert(ctx: LayerContext) -> list[str]`` registered by Caffe type
(``@converter("Convolution")``), as layers are: it reads the layer's parameter message, its
blobs and the static bottom/top shapes caffepy worked out, writes ONNX nodes through
``ctx.g`` and returns the ONNX value names of the layer's tops. A layer ONNX cannot express
raises ``NotExportable`` with the reason; the writer gathers every such layer into one error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from caffe.errors import CaffeError

Converter = Callable[["LayerContext"], list[str]]
_CONVERTERS: dict[str, Converter] = {}


class ExportError(CaffeError):
    """A net (or part of one) that cannot be exported as asked."""


class NotExportable(Exception):
    """Raised by a converter: this layer, as configured, has no ONNX form (the reason)."""


def converter(*type_names: str) -> Callable[[Converter], Converter]:
    """Decorator: register ``fn`` as the ONNX converter of the Caffe layer type(s)."""

    def wrap(fn: Converter) -> Converter:
        for name in type_names:
            if name in _CONVERTERS:
                raise CaffeError(f"an ONNX converter for layer type {name!r} is already "
                                 f"registered")
            _CONVERTERS[name] = fn
        return fn

    return wrap


def converter_for(type_name: str) -> Converter | None:
    """The registered converter of ``type_name``, or None."""
    import caffe.export.onnx_fork  # noqa: F401  (each module registers its converters)
    import caffe.export.onnx_layers  # noqa: F401
    import caffe.export.onnx_pooling  # noqa: F401
    import caffe.export.onnx_recurrent  # noqa: F401
    return _CONVERTERS.get(type_name)


def exportable_types() -> list[str]:
    """Every Caffe layer type with an ONNX converter, sorted."""
    converter_for("")
    return sorted(_CONVERTERS)


class OnnxGraph:
    """Accumulates nodes and initializers with unique value names.

    ``reserved`` names (the graph's input and output blob names) are never given to internal
    values, so in-place Caffe blobs (one blob name, several values) stay unambiguous.
    """

    def __init__(self, opset: int, reserved: Sequence[str] = ()) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set(reserved)
        self._node_names: set[str] = set()
        self.scope = ""

    def fresh(self, hint: str) -> str:
        """A value name not used before, ``hint`` itself when free."""
        return _unused(hint, self._used)

    def _node_name(self, op_type: str) -> str:
        return _unused(f"{self.scope}/{op_type}" if self.scope else op_type, self._node_names)

    def const(self, value, hint: str = "const", dtype=np.float32) -> str:
        """An initializer holding ``value`` (cast to ``dtype``); returns its name."""
        array = np.asarray(value, dtype=dtype)
        name = self.fresh(f"{self.scope}/{hint}" if self.scope else hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        """A 1-D int64 initializer (shapes, axes, pads, slice bounds)."""
        return self.const(list(values), hint, np.int64)

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, n_out: int = 1,
           **attrs) -> str | list[str]:
        """Append one node; returns its output name (a list when ``n_out`` > 1)."""
        base = hint or (f"{self.scope}/{op_type}" if self.scope else op_type)
        outputs = [self.fresh(base if n_out == 1 else f"{base}:{i}") for i in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs,
                                           name=self._node_name(op_type), **attrs))
        return outputs[0] if n_out == 1 else outputs

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """A Reduce* node over ``axes``: axes as an input from opset 18 (13 for ReduceSum),
        as an attribute before."""
        keep = int(keepdims)
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op(op_type, [x, self.ints(axes, "axes")], keepdims=keep)
        return self.op(op_type, [x], axes=list(axes), keepdims=keep)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        """Reshape to ``shape`` (0 copies the input's dim at that index, -1 is inferred)."""
        return self.op("Reshape", [x, self.ints(shape, "shape")])

    def slice(self, x: str, starts, ends, axes, steps=None) -> str:
        """An ONNX Slice of ``x`` (starts, ends, axes and optional steps as constant inputs);
        returns the output name."""
        inputs = [x, self.ints(starts, "starts"), self.ints(ends, "ends"), self.ints(axes, "axes")]
        if steps is not None:
            inputs.append(self.ints(steps, "steps"))
        return self.op("Slice", inputs)

    def scaled(self, x: str, scale: float) -> str:
        """``x * scale``, or ``x`` itself when the scale is 1."""
        return x if scale == 1 else self.op("Mul", [x, self.const(scale, "scale")])

    def shifted(self, x: str, shift: float) -> str:
        """``x + shift`` as an ONNX Add, or ``x`` itself when the shift is 0."""
        return x if shift == 0 else self.op("Add", [x, self.const(shift, "shift")])


@dataclass
class LayerContext:
    """What a converter sees of one Caffe layer."""

    g: OnnxGraph
    layer: object  # caffe.layer.Layer
    bottoms: list[str]
    bottom_shapes: list[list[int]]
    top_shapes: list[list[int]]
    blobs: list[np.ndarray] = field(default_factory=list)
    bottom_blobs: list = field(default_factory=list)  # the net's Blobs, for constant tops

    @property
    def param(self):
        """The layer's LayerParameter."""
        return self.layer.layer_param

    @property
    def name(self) -> str:
        """The layer's name."""
        return self.layer.layer_param.name

    @property
    def type(self) -> str:
        """The layer's Caffe type string."""
        return self.layer.layer_param.type

    def bshape(self, i: int = 0) -> list[int]:
        """The shape of bottom ``i`` as the net saw it."""
        return self.bottom_shapes[i]

    def tshape(self, i: int = 0) -> list[int]:
        """The shape of top ``i`` as the net saw it."""
        return self.top_shapes[i]

    def axis(self, axis: int, i: int = 0) -> int:
        """Caffe's CanonicalAxisIndex for bottom ``i``."""
        n = len(self.bottom_shapes[i])
        return axis + n if axis < 0 else axis

    def blob_const(self, j: int, hint: str, shape: Sequence[int] | None = None) -> str:
        """Parameter blob ``j`` as an initializer (reshaped to ``shape`` when given)."""
        value = self.blobs[j]
        if shape is not None:
            value = value.reshape(shape)
        return self.g.const(value, hint)

    def refuse(self, reason: str):
        """Stop the export of this layer with NotExportable naming ``reason``."""
        raise NotExportable(reason)


def broadcast_shape(param_shape: Sequence[int], axis: int, ndim: int) -> list[int]:
    """Shape that lines a (Scale/Bias/BatchNorm-style) parameter up with axes
    [axis, axis + len(param_shape)) of an ``ndim``-axis blob, for numpy/ONNX broadcasting."""
    return list(param_shape) + [1] * (ndim - axis - len(param_shape))


def _unused(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first not in ``taken``, which it joins."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name
