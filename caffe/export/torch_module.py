"""``to_torch(net)``: a caffe Net as a plain ``torch.nn.Module`` that computes what the net does.

The net is first turned into a ``Plan`` (``build_plan``): the layers needed for the chosen
outputs, each as a call of a ``caffe.functional`` function (``caffe.export.converters``), and
its parameter blobs, copied. ``CaffeModule`` runs a plan; ``caffe.export.codegen`` writes one
as source. Parameters live in one child module per layer named after it (``conv1.weight``,
``conv1.bias``; BatchNorm's ``bn1.mean``/``variance``/``scale_factor`` are buffers), so the
state dict of either form loads into the other.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from caffe.errors import CaffeError
from caffe.export.converters import Call, get_converter
from caffe.export.fold import fold_net
from caffe.proto import caffe_pb2

_DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
                "DenseImageData", "ImageSegData", "Input"}


@dataclass
class Op:
    """One exported layer: ``tops = func(*bottoms, **tensors, **kwargs)``."""

    layer: str
    type: str
    func: Callable | None
    bottoms: list[str]
    tops: list[str]
    tensors: dict[str, tuple[str, str]]  # argument -> (child module, tensor name)
    kwargs: dict[str, Any]
    training: bool = False
    per_bottom: bool = False
    use_bottoms: bool = True
    alias: bool = False


@dataclass
class Plan:
    """What an exported net computes: inputs, ops in order, outputs and the copied tensors."""

    name: str
    inputs: list[str]
    outputs: list[str]
    ops: list[Op]
    # child module -> {"params": {name: tensor}, "frozen": {names}, "buffers": {name: tensor}}
    children: dict[str, dict] = field(default_factory=dict)
    loss_weights: list[float] = field(default_factory=list)
    training: bool = False
    input_shapes: dict[str, tuple] = field(default_factory=dict)


def python_name(name: str, taken: set[str], reserved: Sequence[str] = ()) -> str:
    """A Python identifier for a Caffe name ('inception_3a/1x1' -> 'inception_3a_1x1'), unique
    among ``taken`` (which it joins), never a keyword, a ``reserved`` name or an
    ``nn.Module`` attribute."""
    base = re.sub(r"\W", "_", name) or "_"
    if base[0].isdigit():
        base = "_" + base
    if keyword.iskeyword(base) or hasattr(nn.Module, base) or base in reserved:
        base += "_"
    candidate, k = base, 1
    while candidate in taken:
        candidate, k = f"{base}_{k}", k + 1
    taken.add(candidate)
    return candidate


def _check_names(net, names: Sequence[str], what: str) -> None:
    blobs = net.blobs
    unknown = [n for n in names if n not in blobs]
    if unknown:
        raise CaffeError(f"export of net {net.name!r}: unknown {what} blob(s) {unknown}; the "
                         f"net's blobs are {list(blobs)}")


def build_plan(net, inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None,
               fold: bool = False, share_weights: bool = False) -> Plan:
    """The ops that compute ``outputs`` (default ``net.outputs``) from ``inputs`` (default
    ``net.inputs``), with the layers' blobs copied (or, with ``share_weights``, viewed: the
    tensors are the blobs' storage). Raises one CaffeError listing every needed layer that
    cannot be exported."""
    if fold:
        net = fold_net(net, keep=list(inputs or ()) + list(outputs or ()),
                       share_weights=share_weights)
    inputs = list(net.inputs if inputs is None else inputs)
    outputs = list(net.outputs if outputs is None else outputs)
    _check_names(net, inputs, "input")
    _check_names(net, outputs, "output")
    names = net._blob_names
    tops_of = [[names[b] for b in ids] for ids in net.top_id_vecs]
    bottoms_of = [[names[b] for b in ids] for ids in net.bottom_id_vecs]

    # Which layer computes the current value of each blob, walking the net in order.
    produced = {t for tops in tops_of for t in tops}
    source: dict[str, tuple] = {n: ("input",) for n in inputs if n not in produced}
    pending = set(inputs) - set(source)
    deps: dict[int, list[tuple]] = {}
    for i, tops in enumerate(tops_of):
        if pending.intersection(tops):
            for t in tops:
                source[t] = ("input",) if t in pending else ("cut", i)
                pending.discard(t)
            continue
        deps[i] = [source.get(b, ("missing", b)) for b in bottoms_of[i]]
        for t in tops:
            source[t] = ("layer", i)

    needed: set[int] = set()
    problems: list[str] = []
    stack = [source.get(o, ("missing", o)) for o in outputs]
    while stack:
        src = stack.pop()
        if src[0] == "layer" and src[1] not in needed:
            needed.add(src[1])
            stack.extend(deps[src[1]])
        elif src[0] == "cut":
            problems.append(f"layer {net._layer_names[src[1]]!r} is cut off by inputs= but "
                            f"its other tops are needed")
        elif src[0] == "missing":
            problems.append(f"blob {src[1]!r} is neither computed nor an input")

    plan = Plan(name=net.name, inputs=inputs, outputs=outputs, ops=[],
                training=net.phase == caffe_pb2.TRAIN)
    blobs = net.blobs
    plan.input_shapes = {n: tuple(blobs[n].shape) for n in inputs}
    plan.loss_weights = [float(net.blob_loss_weights[o]) for o in outputs]
    taken: set[str] = set()
    registered: dict[tuple[int, int], tuple[str, str]] = {}
    refused: list[str] = []
    for i in sorted(needed):
        layer = net.layers[i]
        convert = get_converter(layer.type)
        reason = None
        if convert is None:
            if layer.type in _DATA_LAYERS:
                reason = "a data layer: feed its tops with inputs=[...]"
            elif layer.type == "Python":
                reason = "a Python layer: its code runs on numpy, outside torch"
            else:
                reason = "no torch converter"
        else:
            try:
                call = convert(layer, net.bottom_vecs[i], net.top_vecs[i])
            except NotImplementedError as exc:
                reason = f"not exportable: {exc}"
        if reason is not None:
            refused.append(f"{net._layer_names[i]!r} ({layer.type}: {reason})")
            continue
        plan.ops.append(_op(net, i, call, plan.children, taken, registered, share_weights))
    if refused or problems:
        lines = []
        if refused:
            lines.append(f"{len(refused)} layer(s) cannot be exported: " + ", ".join(refused))
        lines += problems
        raise CaffeError(f"export of net {net.name!r} (outputs {outputs}, inputs {inputs}): "
                         + "; ".join(lines) + ". Export the part before them with "
                         "outputs=[...] or start after them with inputs=[...].")
    return plan


def _op(net, i: int, call: Call, children: dict, taken: set[str],
        registered: dict, share_weights: bool) -> Op:
    layer = net.layers[i]
    lname = net._layer_names[i]
    names = net._blob_names
    tensors: dict[str, tuple[str, str]] = {}
    child = None

    def own() -> str:
        nonlocal child
        if child is None:
            child = python_name(lname, taken)
            children[child] = {"params": {}, "frozen": set(), "buffers": {}}
        return child

    for pid, arg in enumerate(call.blobs):
        if arg is None:
            continue
        net_id = net.param_id_vecs[i][pid]
        owner = net.param_owners[net_id]
        key = net.param_layer_indices[owner] if owner >= 0 else (i, pid)
        if key not in registered:
            value = layer.blobs[pid].device_data().detach()
            if not share_weights:
                value = value.clone()
            entry = children[own()]
            if arg in call.buffers:
                entry["buffers"][arg] = value
            else:
                entry["params"][arg] = value
                specs = layer.layer_param.param
                if pid < len(specs) and specs[pid].HasField("lr_mult") and \
                        specs[pid].lr_mult == 0:
                    entry["frozen"].add(arg)
            registered[key] = (child, arg)
        tensors[arg] = registered[key]
    for arg, value in call.extra.items():
        children[own()]["buffers"][arg] = value
        tensors[arg] = (child, arg)
    return Op(layer=lname, type=layer.type, func=call.func,
              bottoms=[names[b] for b in net.bottom_id_vecs[i]],
              tops=[names[b] for b in net.top_id_vecs[i]], tensors=tensors,
              kwargs=dict(call.kwargs), training=call.training, per_bottom=call.per_bottom,
              use_bottoms=call.use_bottoms, alias=call.alias)


def last_uses(ops: Sequence[Op], keep: Sequence[str]) -> list[list[str]]:
    """For each op, the blob names no later op reads (and not in ``keep``): what can be
    dropped after it, so activations live only while they are needed."""
    last: dict[str, int] = {}
    for k, op in enumerate(ops):
        for name in op.bottoms:
            last[name] = k
        for name in op.tops:
            last.setdefault(name, k)  # a top nobody reads goes right after its op
    drops: list[list[str]] = [[] for _ in ops]
    kept = set(keep)
    for name, k in last.items():
        if name not in kept:
            drops[k].append(name)
    return drops


def run_ops(module: nn.Module, ops: Sequence[Op], blobs: dict[str, torch.Tensor],
            drops: Sequence[Sequence[str]] = ()) -> None:
    """Run ``ops`` on the named tensors in ``blobs`` (updated with every top); after op k,
    the names in ``drops[k]`` leave ``blobs``."""
    for k, op in enumerate(ops):
        if op.alias:
            for t in op.tops:
                blobs[t] = blobs[op.bottoms[0]]
        else:
            _run_op(module, op, blobs)
        if drops:
            for name in drops[k]:
                blobs.pop(name, None)


def _run_op(module: nn.Module, op: Op, blobs: dict[str, torch.Tensor]) -> None:
    """One op: its function on its bottoms and tensors, its results stored as its tops."""
    kwargs = {arg: getattr(getattr(module, child), name)
              for arg, (child, name) in op.tensors.items()}
    kwargs.update(op.kwargs)
    if op.training:
        kwargs["training"] = module.training
    args = [blobs[b] for b in op.bottoms] if op.use_bottoms else []
    if op.per_bottom:
        outs = tuple(op.func(a, **kwargs) for a in args)
    else:
        out = op.func(*args, **kwargs)
        outs = out if isinstance(out, tuple) else (out,)
    for t, value in zip(op.tops, outs):
        blobs[t] = value


class CaffeModule(nn.Module):
    """A caffe Net as a torch module (see ``to_torch``)."""

    def __init__(self, plan: Plan, as_dict: bool = False) -> None:
        super().__init__()
        for child, entry in plan.children.items():
            holder = nn.Module()
            for name, value in entry["params"].items():
                holder.register_parameter(name, nn.Parameter(
                    value, requires_grad=name not in entry["frozen"]))
            for name, value in entry["buffers"].items():
                holder.register_buffer(name, value)
            self.add_module(child, holder)
        self.net_name = plan.name
        self.input_names = tuple(plan.inputs)
        self.output_names = tuple(plan.outputs)
        self.loss_weights = tuple(plan.loss_weights)
        self.as_dict = as_dict
        self._ops = list(plan.ops)
        self._drops = last_uses(self._ops, self.output_names)
        self.train(plan.training)

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise CaffeError(f"net {self.net_name!r} takes {len(self.input_names)} input(s) "
                             f"{list(self.input_names)}, got {len(inputs)}")
        blobs = dict(zip(self.input_names, inputs))
        run_ops(self, self._ops, blobs, self._drops)
        if self.as_dict:
            return {name: blobs[name] for name in self.output_names}
        return tuple(blobs[name] for name in self.output_names)

    def weighted_loss(self, outputs) -> torch.Tensor:
        """sum_i loss_weight_i * sum(output_i): the loss Caffe's solver minimizes."""
        values = outputs.values() if isinstance(outputs, dict) else outputs
        total = None
        for weight, value in zip(self.loss_weights, values):
            if weight:
                term = value.sum() * weight
                total = term if total is None else total + term
        if total is None:
            raise CaffeError(f"net {self.net_name!r} has no output with a loss weight")
        return total

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, inputs={list(self.input_names)}, " \
               f"outputs={list(self.output_names)}, ops={len(self._ops)}"


def to_torch(net, *, inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None,
             as_dict: bool = False, fold: bool = False) -> CaffeModule:
    """A ``torch.nn.Module`` computing ``net``'s ``outputs`` from its ``inputs``.

    ``forward(*tensors)`` takes the input blobs in ``net.inputs`` order (or ``inputs=``) and
    returns the outputs in ``net.outputs`` order (or ``outputs=``), always as a tuple (even for
    one output), or as a dict by blob name with ``as_dict=True``. Parameters are copies of the
    layers' blobs, named ``<layer>.weight``, ``<layer>.bias`` and so on (layer names made into
    identifiers); BatchNorm statistics are buffers. The module starts in train() mode for a
    TRAIN net and eval() for a TEST net; train()/eval() then switch Dropout and BatchNorm's
    default ``use_global_stats`` as Caffe's phases do. Loss tops of a TRAIN net are outputs;
    ``module.loss_weights`` gives their weights and ``module.weighted_loss(outs)`` the total.
    ``fold=True`` first simplifies the net with ``caffe.export.fold.fold_net``.
    Layers that cannot be exported (Python, data layers, ...) raise one CaffeError naming them
    all; ``outputs=`` before them (or ``inputs=`` after them) exports the rest.
    """
    return CaffeModule(build_plan(net, inputs, outputs, fold), as_dict=as_dict)
