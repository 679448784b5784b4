"""Drawing a NetParameter as a graph (pycaffe's ``caffe.draw``).

Layers are boxes (record shape), blobs are octagons; an edge runs from each bottom blob to its
layer and from the layer to each top blob. A layer computing in place (one bottom, one top, the
same name) is green and its blob gets an edge both ways; Convolution/Deconvolution boxes are
red, Pooling orange, InnerProduct purple, the rest blue. Top edges are labelled with the batch
size (Data) or ``num_output`` (Convolution, Deconvolution, InnerProduct).

``net_graph`` builds the graph as plain Python data (no Graphviz needed), ``get_pydot_graph``
turns it into a ``pydot.Dot``, and ``draw_net`` / ``draw_net_to_file`` render it with Graphviz's
``dot`` program to PNG, SVG, PDF or any format dot knows (``.raw``/``.dot``/``.gv`` files get
the dot source itself). Requires ``pydot`` (``pip install pydot``) and, for images, Graphviz.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from caffe.errors import CaffeError, NetError
from caffe.proto import caffe_pb2

__all__ = ["LAYER_STYLE_DEFAULT", "NEURON_LAYER_STYLE", "BLOB_STYLE", "GraphNode", "NetGraph",
           "get_pooling_types_dict", "get_edge_label", "get_layer_lr_mult", "get_layer_label",
           "choose_color_by_layertype", "net_graph", "get_pydot_graph", "draw_net",
           "draw_net_to_file"]

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}

# Formats written as dot source, without running dot.
_SOURCE_FORMATS = ("raw", "dot", "gv")

_LEARNING_LAYERS = ("Convolution", "Deconvolution", "InnerProduct")


@dataclass
class GraphNode:
    """A node of the drawing: ``kind`` is "layer" or "blob"; ``attrs`` are Graphviz attributes
    (label, shape, colours)."""

    name: str
    kind: str
    label: str
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class NetGraph:
    """A net as nodes (by unique name) and edges ``(source, destination, label)``."""

    name: str
    rankdir: str
    nodes: dict[str, GraphNode] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)

    def layer_nodes(self) -> list[GraphNode]:
        """The nodes that stand for layers."""
        return [n for n in self.nodes.values() if n.kind == "layer"]

    def blob_nodes(self) -> list[GraphNode]:
        """The nodes that stand for blobs."""
        return [n for n in self.nodes.values() if n.kind == "blob"]


def get_pooling_types_dict() -> dict[int, str]:
    """Pooling method number -> name (0 -> "MAX", ...)."""
    enum = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {value.number: value.name for value in enum.values}


def get_edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """What a layer's top edges say: the batch size of a Data layer, the ``num_output`` of
    a Convolution, Deconvolution or InnerProduct; nothing for other layers."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def get_layer_lr_mult(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """The (weights, bias) learning rate multipliers of a Convolution, Deconvolution or
    InnerProduct layer; 1.0 where no ``param`` says otherwise."""
    if layer.type not in _LEARNING_LAYERS:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    mults = [spec.lr_mult for spec in layer.param]
    if len(mults) > 2:
        raise ValueError(f"layer '{layer.name}' has {len(mults)} param specs; expected at most 2 "
                         "(weights, bias)")
    mults += [1.0] * (2 - len(mults))
    return mults[0], mults[1]


def _record_escape(text: str) -> str:
    """Escape the characters that structure Graphviz record labels."""
    for char in "\\{}|<>":
        text = text.replace(char, "\\" + char)
    return text


def _spatial_values(kernel: int, kernel_h: int, kernel_w: int) -> str:
    if kernel_h or kernel_w:
        return f"{kernel_h}x{kernel_w}" if kernel_h != kernel_w else str(kernel_h)
    return str(kernel)


def _first(values, default: int) -> int:
    return values[0] if len(values) else default


def get_layer_label(layer: caffe_pb2.LayerParameter, rankdir: str,
                    display_lrm: bool = False) -> str:
    """The text of a layer's box: name, type, and kernel/stride/pad for spatial layers (and
    the lr multipliers with ``display_lrm``). Parts are separated by spaces when the graph runs
    vertically (TB, BT: width is free) and by line breaks otherwise."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    parts = [_record_escape(layer.name)]
    if layer.type == "Pooling":
        pool = get_pooling_types_dict().get(layer.pooling_param.pool, "?")
        parts.append(f"({layer.type} {pool})")
    else:
        parts.append(f"({_record_escape(layer.type)})")
    if layer.type == "Pooling":
        p = layer.pooling_param
        kernel = _spatial_values(p.kernel_size, p.kernel_h, p.kernel_w)
        stride = _spatial_values(p.stride, p.stride_h, p.stride_w)
        pad = _spatial_values(p.pad, p.pad_h, p.pad_w)
        if p.global_pooling:
            kernel = "global"
    elif layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        kernel = _spatial_values(_first(p.kernel_size, 1), p.kernel_h, p.kernel_w)
        stride = _spatial_values(_first(p.stride, 1), p.stride_h, p.stride_w)
        pad = _spatial_values(_first(p.pad, 0), p.pad_h, p.pad_w)
    else:
        kernel = None
    if kernel is not None:
        parts.append(separator.join([f"kernel size: {kernel}", f"stride: {stride}",
                                     f"pad: {pad}"]))
    if display_lrm and layer.type in _LEARNING_LAYERS:
        weights_mult, bias_mult = get_layer_lr_mult(layer)
        if weights_mult or bias_mult:
            parts.append(f"lr mult: {weights_mult:.1f}, {bias_mult:.1f}")
    return separator.join(parts)


def choose_color_by_layertype(layertype: str) -> str:
    """The fill colour of a (not in-place) layer's box."""
    if layertype in ("Convolution", "Deconvolution"):
        return "#FF5050"
    if layertype == "Pooling":
        return "#FF9900"
    if layertype == "InnerProduct":
        return "#CC33FF"
    return LAYER_STYLE_DEFAULT["fillcolor"]


def _phase_value(phase) -> int | None:
    if phase is None or phase == "ALL":
        return None
    if isinstance(phase, str):
        try:
            return caffe_pb2.Phase.Value(phase)
        except ValueError:
            raise CaffeError(f"unknown phase {phase!r}: use TRAIN, TEST or ALL") from None
    return int(phase)


def _in_phase(layer: caffe_pb2.LayerParameter, phase: int) -> bool:
    """Whether the layer is in the net of ``phase`` by its include/exclude phase rules (rules
    without a phase match every phase; other rule fields are not considered)."""
    if layer.include and layer.exclude:
        raise NetError(f"layer '{layer.name}' specifies both include and exclude rules; "
                       "specify either include rules or exclude rules, not both")
    if layer.include:
        return any(not rule.HasField("phase") or rule.phase == phase for rule in layer.include)
    return not any(rule.HasField("phase") and rule.phase == phase for rule in layer.exclude)


def _current_format(caffe_net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """V0/V1 nets (``layers { ... }``) upgraded to ``layer { ... }``; others as they are."""
    if not caffe_net.layers:
        return caffe_net
    from caffe.upgrade import upgrade_net_as_needed

    upgraded = caffe_pb2.NetParameter()
    upgraded.CopyFrom(caffe_net)
    return upgrade_net_as_needed(upgraded, caffe_net.name or "<net>")


def net_graph(caffe_net: caffe_pb2.NetParameter, rankdir: str = "LR", label_edges: bool = True,
              phase=None, display_lrm: bool = False) -> NetGraph:
    """The drawing of ``caffe_net`` as plain data: layer and blob nodes, and edges.

    ``phase`` (caffe.TRAIN, caffe.TEST, or None for every layer) keeps only the layers of that
    phase's net.
    """
    caffe_net = _current_format(caffe_net)
    phase = _phase_value(phase)
    graph = NetGraph(name=caffe_net.name or "Net", rankdir=rankdir)
    for layer in caffe_net.layer:
        if phase is not None and not _in_phase(layer, phase):
            continue
        node_name = f"{layer.name}_{layer.type}"
        if node_name in graph.nodes:
            # Layers of different phases may share name and type; keep both boxes.
            suffix = 2
            while f"{node_name}_{suffix}" in graph.nodes:
                suffix += 1
            node_name = f"{node_name}_{suffix}"
        in_place = (len(layer.bottom) == 1 and len(layer.top) == 1
                    and layer.bottom[0] == layer.top[0])
        if in_place:
            style = dict(NEURON_LAYER_STYLE)
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        graph.nodes[node_name] = GraphNode(node_name, "layer", label, style)
        for bottom in layer.bottom:
            blob_node = _blob_node(graph, bottom)
            graph.edges.append((blob_node, node_name, ""))
        edge_label = get_edge_label(layer) if label_edges else ""
        for top in layer.top:
            blob_node = _blob_node(graph, top)
            graph.edges.append((node_name, blob_node, edge_label))
    return graph


def _blob_node(graph: NetGraph, blob: str) -> str:
    name = f"{blob}_blob"
    if name not in graph.nodes:
        graph.nodes[name] = GraphNode(name, "blob", blob, dict(BLOB_STYLE))
    return name


def _pydot():
    try:
        import pydot
    except ImportError:
        raise CaffeError("drawing nets needs the pydot package: pip install pydot") from None
    return pydot


def get_pydot_graph(caffe_net: caffe_pb2.NetParameter, rankdir: str, label_edges: bool = True,
                    phase=None, display_lrm: bool = False):
    """A ``pydot.Dot`` digraph of ``caffe_net`` (see ``net_graph``)."""
    pydot = _pydot()
    graph = net_graph(caffe_net, rankdir, label_edges=label_edges, phase=phase,
                      display_lrm=display_lrm)
    dot = pydot.Dot(graph.name, graph_type="digraph", rankdir=rankdir)
    for node in graph.nodes.values():
        dot.add_node(pydot.Node(node.name, label=node.label, **node.attrs))
    for source, destination, label in graph.edges:
        attrs = {"label": label} if label else {}
        dot.add_edge(pydot.Edge(source, destination, **attrs))
    return dot


def draw_net(caffe_net: caffe_pb2.NetParameter, rankdir: str, ext: str = "png", phase=None,
             display_lrm: bool = False) -> bytes:
    """The drawing of ``caffe_net`` encoded in format ``ext`` (png, svg, pdf, ...)."""
    dot = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext in _SOURCE_FORMATS:
        return dot.to_string().encode("utf-8")
    if shutil.which("dot") is None:
        raise CaffeError("drawing a net as an image needs Graphviz's 'dot' program on PATH "
                         "(apt-get install graphviz); '.raw' or '.dot' files need no Graphviz")
    try:
        return dot.create(format=ext)
    except Exception as exc:  # pydot reports dot's own failures with assorted exception types
        # pydot's message holds dot's whole stdout; its first and last lines say what failed.
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        detail = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1][:300]}"
        raise CaffeError(f"Graphviz could not draw the net as {ext!r}: {detail}") from None


def draw_net_to_file(caffe_net: caffe_pb2.NetParameter, filename: str, rankdir: str = "LR",
                     phase=None, display_lrm: bool = False) -> None:
    """Draw ``caffe_net`` into ``filename``, in the format its extension names (``.raw``,
    ``.dot`` and ``.gv`` get the dot source)."""
    from caffe.protoio import atomic_write

    ext = os.path.splitext(os.fspath(filename))[1].lstrip(".").lower() or "png"
    atomic_write(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm))
