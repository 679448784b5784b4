"""``to_onnx``: write a caffe Net as an ONNX graph that computes Caffe's exact numbers.

Nodes are written directly with ``onnx.helper`` (not through ``torch.onnx.export``), one
registered converter per Caffe type (``onnx_layers``, ``onnx_pooling``, ``onnx_recurrent``,
``onnx_fork``), so each of Caffe's semantics is encoded on purpose: pooled sizes computed
here and written as explicit pads in floor mode, AVE pooling's clipped divisor, LRN's
alpha / size, Eltwise coeff, Caffe's ArgMax tie order, cont-gated recurrences, ...

Opset: 17 by default. Everything the converters need exists by then (Softmax over one axis,
Split sizes as an input: 13; HardSwish: 14), and 17 is what deployed runtimes accept widely
(onnxruntime >= 1.13, TensorRT >= 8.5, OpenVINO >= 2022.3); nothing here is better expressed at
18 or later. Opsets 14 up to the installed onnx's newest are accepted (from 18 the Reduce ops
take their axes as an input; the writer follows).

Graph inputs and outputs are named after the blobs; internal values get unique names, so a blob
written in place (ReLU on conv1) is several values inside the graph but one name at its edges.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np

from caffe.errors import CaffeError
from caffe.export.fold import fold_net

DEFAULT_OPSET = 17
MIN_OPSET = 14


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise CaffeError("ONNX export needs the onnx package: pip install 'caffepy[export]'") \
            from None
    return onnx


def to_onnx(net, path: str | os.PathLike | None, *, opset: int | None = None,
            dynamic_batch: bool = True, inputs: Sequence[str] | None = None,
            outputs: Sequence[str] | None = None, fold: bool = False):
    """Export ``net`` (a ``caffe.Net``) to ONNX and write it to ``path`` (temp file + rename;
    ``None`` writes nothing); returns the ``onnx.ModelProto``.

    ``inputs``/``outputs`` (blob names; default the net's) export the part of the net between
    them; an input blob enters after the last layer that writes it, an output is the blob's
    final value (as ``net.blobs`` shows it after a forward). ``dynamic_batch`` makes axis 0 of
    every graph input symbolic: ``batch``, or ``<blob>_dim0`` for an input whose axis 0
    differs from the first input's; the other axes stay the net's (PriorBox tops, Crop and
    resize sizes are fixed by them). ``fold`` first simplifies the TEST net with
    ``caffe.export.fold.fold_net`` (BatchNorm/Scale folded into convolutions).
    Raises ``ExportError`` listing every layer (name and type) that ONNX cannot express.
    """
    onnx = _import_onnx()
    from caffe.export.onnx_graph import ExportError

    if fold:
        net = fold_net(net, keep=list(inputs or ()) + list(outputs or ()))
    opset = _check_opset(onnx, opset, ExportError)
    model = _Builder(net, opset, dynamic_batch, inputs, outputs).build()
    if path is not None:
        _write_atomically(model, os.fspath(path))
    return model


def _check_opset(onnx, opset, error) -> int:
    newest = onnx.defs.onnx_opset_version()
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= newest:
        raise error(f"ONNX opset {opset} is not supported: choose {MIN_OPSET}..{newest} (the "
                    f"installed onnx's newest); the default is {DEFAULT_OPSET}")
    return opset


def _write_atomically(model, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".onnx-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Builder:
    """One export: choose the layers the outputs need, convert them, assemble and check."""

    def __init__(self, net, opset, dynamic_batch, inputs, outputs) -> None:
        from caffe.export.onnx_graph import ExportError

        self.Error = ExportError
        self.net = net
        self.opset = opset
        self.dynamic_batch = dynamic_batch
        names = net._blob_names
        self.bottoms = [[names[b] for b in ids] for ids in net.bottom_id_vecs]
        self.tops = [[names[b] for b in ids] for ids in net.top_id_vecs]
        self.shapes = {name: list(blob.shape) for name, blob in zip(names, net._blobs)}
        self.inputs = list(net.inputs if inputs is None else inputs)
        # By default the net's outputs, less any input blob no layer consumes.
        self.outputs = [b for b in net.outputs if b not in self.inputs] if outputs is None \
            else list(outputs)
        self._check_names()

    # --- which layers ------------------------------------------------------------------------
    def _check_names(self) -> None:
        for kind, names in (("input", self.inputs), ("output", self.outputs)):
            unknown = [n for n in names if n not in self.shapes]
            if unknown:
                raise self.Error(f"net {self.net.name!r}: unknown {kind} blob(s) {unknown}; "
                                 f"the net's blobs: {list(self.shapes)}")
            if len(set(names)) != len(names):
                raise self.Error(f"net {self.net.name!r}: {kind} blobs repeat: {names}")
        both = set(self.inputs) & set(self.outputs)
        if both:
            raise self.Error(f"net {self.net.name!r}: blob(s) {sorted(both)} are both an input "
                             f"and an output of the export")
        if not self.outputs:
            raise self.Error(f"net {self.net.name!r} has no outputs to export")
        last_writer: dict[str, int] = {}
        for i, tops in enumerate(self.tops):
            for t in tops:
                last_writer[t] = i
        # An input blob replaces the blob's value after the last layer that writes it.
        self.release = {b: last_writer.get(b, -1) for b in self.inputs}

    def _needed_layers(self) -> list[int]:
        need = set(self.outputs)
        needed = []
        for i in reversed(range(len(self.tops))):
            need -= {b for b, at in self.release.items() if at == i}
            if any(t in need for t in self.tops[i]):
                needed.append(i)
                need -= set(self.tops[i])
                need |= set(self.bottoms[i])
        need -= {b for b, at in self.release.items() if at == -1}
        if need:
            raise self.Error(f"net {self.net.name!r}: blob(s) {sorted(need)} are needed but "
                             f"produced by no layer and not among the inputs")
        return needed[::-1]

    # --- conversion --------------------------------------------------------------------------
    def build(self):
        """Convert the needed layers in net order, then assemble and check the model."""
        from caffe.export.onnx_graph import OnnxGraph

        needed = self._needed_layers()
        layers = self.net.layers
        graph_inputs = list(self.inputs)
        for i in needed:  # Input layers the chosen inputs do not replace
            if layers[i].layer_param.type == "Input":
                graph_inputs += [t for t in self.tops[i] if t not in graph_inputs]
        g = OnnxGraph(self.opset, reserved=graph_inputs + self.outputs)
        value = {b: b for b, at in self.release.items() if at == -1}  # blob -> ONNX value
        expected: dict[str, list[int]] = {}  # ONNX value -> Caffe's static shape
        refused: list[str] = []
        needed_set = set(needed)
        for i, layer in enumerate(layers):
            if i in needed_set and layer.layer_param.type == "Input":
                value.update({t: t for t in self.tops[i]})
            elif i in needed_set:
                tops = self._convert(g, i, [value[b] for b in self.bottoms[i]], refused)
                for t, v in zip(self.tops[i], tops):
                    value[t] = v
                    expected.setdefault(v, self.shapes[t])
            for b, at in self.release.items():
                if at == i:
                    value[b] = b
        if refused:
            raise self.Error(
                f"net {self.net.name!r}: {len(refused)} layer(s) cannot be exported to ONNX: "
                f"{', '.join(refused)}. Export the part of the net around them with "
                f"to_onnx(..., inputs=[blob names], outputs=[blob names]).")
        self._name_outputs(g, value)
        self.symbols = self._batch_symbols(graph_inputs)
        for b in self.outputs:
            expected[b] = self.shapes[b]
        return self._assemble(g, graph_inputs, expected)

    def _convert(self, g, i: int, bottoms: list[str], refused: list[str]) -> list[str]:
        """Run layer ``i``'s converter; a layer it refuses is added to ``refused`` and gets
        placeholder tops, so that every such layer is listed in one error."""
        from caffe.export.onnx_graph import LayerContext, NotExportable, converter_for

        layer = self.net.layers[i]
        lp = layer.layer_param
        placeholder = [f"<refused {lp.name}>"] * len(self.tops[i])
        fn = converter_for(lp.type)
        if fn is None:
            refused.append(f"{lp.name!r} ({lp.type}: {_why_not(lp.type)})")
            return placeholder
        g.scope = lp.name
        ctx = LayerContext(g, layer, bottoms, [self.shapes[b] for b in self.bottoms[i]],
                           [self.shapes[t] for t in self.tops[i]],
                           [np.asarray(b.data, dtype=np.float32) for b in layer.blobs],
                           list(self.net.bottom_vecs[i]))
        try:
            return fn(ctx)
        except NotExportable as exc:
            refused.append(f"{lp.name!r} ({lp.type}: {exc})")
            return placeholder
        except CaffeError:
            raise
        except Exception as exc:
            raise self.Error(f"net {self.net.name!r}, layer {lp.name!r} ({lp.type}): ONNX "
                             f"conversion failed: {type(exc).__name__}: {exc} (bottom shapes "
                             f"{ctx.bottom_shapes})") from exc

    def _assemble(self, g, graph_inputs: list[str], expected: dict):
        """The ModelProto, checked (see ``_check``) on a copy whose large weights are typed
        inputs: shape inference and the checker need their shapes only (small initializers,
        e.g. Reshape targets, keep their values), so a 200 MB net is not serialised for them."""
        from onnx import TensorProto, helper

        def info(name):
            shape = list(self.shapes[name])
            if name in self.symbols:
                shape[0] = self.symbols[name]
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

        inputs = [info(b) for b in graph_inputs]
        outputs = [helper.make_tensor_value_info(b, TensorProto.FLOAT, None)
                   for b in self.outputs]
        opsets = [helper.make_opsetid("", self.opset)]

        def model(initializers, extra_inputs=()):
            graph = helper.make_graph(g.nodes, self.net.name or "caffe_net",
                                      inputs + list(extra_inputs), outputs,
                                      initializer=initializers)
            return helper.make_model(graph, opset_imports=opsets, producer_name="caffepy",
                                     ir_version=helper.find_min_ir_version_for(opsets))

        small = [t for t in g.initializers if _numel(t) <= _SMALL]
        large = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                 for t in g.initializers if _numel(t) > _SMALL]
        shaped_outputs = self._check(model(small, large), expected)
        result = model(g.initializers)
        del result.graph.output[:]
        result.graph.output.extend(shaped_outputs)
        result.doc_string = f"Caffe net {self.net.name!r} exported by caffepy"
        return result

    def _batch_symbols(self, graph_inputs) -> dict[str, str]:
        """Symbolic axis 0 per graph input: 'batch' where it equals the first input's axis 0
        (the batch the inputs share), '<blob>_dim0' for an input of another length."""
        if not self.dynamic_batch:
            return {}
        shaped = [b for b in graph_inputs if self.shapes[b]]
        if not shaped:
            return {}
        batch = self.shapes[shaped[0]][0]
        return {b: "batch" if self.shapes[b][0] == batch else f"{b}_dim0" for b in shaped}

    def _name_outputs(self, g, value) -> None:
        """Give each output's final value its blob's name: rename the producing node's output
        when nothing else reads it, else add an Identity."""
        producers = {out: node for node in g.nodes for out in node.output}
        consumed = {name for node in g.nodes for name in node.input}
        renamed = set()
        for b in self.outputs:
            v = value[b]
            node = producers.get(v)
            if node is not None and v not in consumed and v not in renamed:
                node.output[list(node.output).index(v)] = b
                renamed.add(v)
            else:
                g.nodes.append(_identity(v, b))

    # --- checks ------------------------------------------------------------------------------
    def _check(self, model, expected):
        """onnx.checker (full check) and strict shape inference; every value's inferred shape
        must be Caffe's (a symbolic batch standing for the net's). Returns the outputs'
        value infos with their inferred shapes."""
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=True,
                                                         strict_mode=True, data_prop=True)
            onnx.checker.check_model(inferred, full_check=True)
        except Exception as exc:
            raise self.Error(f"net {self.net.name!r}: the ONNX graph fails onnx's checks "
                             f"(a caffepy bug): {type(exc).__name__}: {exc}") from exc
        static = {sym: self.shapes[b][0] for b, sym in self.symbols.items()}
        infos = {vi.name: vi for vi in list(inferred.graph.value_info) +
                 list(inferred.graph.output)}
        for name, want in expected.items():
            vi = infos.get(name)
            if vi is None or not vi.type.tensor_type.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else static.get(d.dim_param)
                    for d in vi.type.tensor_type.shape.dim]
            if None not in dims and dims != list(want):
                raise self.Error(f"net {self.net.name!r}: ONNX value {name!r} has shape {dims} "
                                 f"but Caffe's blob has {list(want)} (a caffepy bug)")
        return [infos[b] for b in self.outputs]


_WHY_NOT = {
    "Python": "a Python layer runs user code",
    "DetectionOutput": "NMS with a data-dependent output is not expressed",
    "Proposal": "NMS with a data-dependent output is not expressed",
    "PSROIPooling": "position-sensitive ROI pooling has no ONNX op",
    "HDF5Output": "it writes files",
}


def _why_not(type_name: str) -> str:
    """Why a layer type without an ONNX converter is left out, in a few words."""
    if type_name.endswith("Data"):  # Data, ImageData, HDF5Data, AnnotatedData, ...
        return "a data layer; name its tops in inputs="
    if type_name.endswith(("Loss", "Accuracy")) or type_name == "DetectionEvaluate":
        return "a loss or metric layer; end the export before it with outputs="
    return _WHY_NOT.get(type_name, "no ONNX converter")


_SMALL = 4096  # elements: initializers up to this size stay in the checked copy


def _numel(tensor) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1


def _identity(src: str, dst: str):
    from onnx import helper

    return helper.make_node("Identity", [src], [dst], name=f"output/{dst}")
